//! TLC end to end: a tiny TLC run through the `longtail` binary, then `eval --uncertainty`
//! (JSON fields in range and consistent, plots, OOD data, a softmax-only method, a bad OOD set),
//! and the batch independence of the per-sample combination through `TlcMethod::predict`.
//!
//! The data are written by the tests in the real IDX format (12×12 grey images, 10 classes), so a
//! training epoch takes about a second.

mod util;
use util::{longtail, stderr, stdout, write_tiny_idx, TinyIdx};

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use longtail::backbone::MultiExpert;
use longtail::tlc::{Combination, Tlc, TlcLoss, TlcMethod};
use longtail::train::Method;

/// An IDX directory of `side`×`side` images: `per_class` train and 6 test images per class, each
/// class a bright block at its own position plus deterministic noise; `invert` flips every
/// pixel (255 − v), which makes an out-of-distribution set of the same shape.
fn idx_dir(dir: &Path, name: &str, per_class: usize, side: usize, invert: bool) -> PathBuf {
    let spec = TinyIdx {
        side,
        train_per_class: per_class,
        test_per_class: 6,
        seed: 11,
        bright: 220,
        dark: 20,
        noise_shift: 60,
        invert,
    };
    write_tiny_idx(dir, name, &spec)
}

/// The `<preset>` config pointed at a tiny IDX set (IF 10), 1 epoch, batch 16.
fn tiny_config(dir: &Path, preset: &str) -> PathBuf {
    let idx = idx_dir(dir, "idx", 20, 12, false);
    let o = longtail(dir, &["presets", preset]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cfg: toml::Table = toml::from_str(&stdout(&o)).unwrap();
    let data = cfg["data"].as_table_mut().unwrap();
    data.insert("dataset".into(), "fmnist".into());
    data.insert("data_dir".into(), idx.to_string_lossy().into_owned().into());
    data.insert("imbalance".into(), 10.0.into());
    let optim = cfg["optim"].as_table_mut().unwrap();
    optim.insert("epochs".into(), 1.into());
    optim.insert("batch_size".into(), 16.into());
    let path = dir.join(format!("{preset}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

fn train(dir: &Path, preset: &str, out: &str) {
    let cfg = tiny_config(dir, preset);
    let o = longtail(
        dir,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out,
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every metric of one `ScoreMetrics` object is in its range.
fn check_metrics(m: &serde_json::Value, with_ood: bool) {
    for key in ["accuracy", "ece15", "ece10", "aurc"] {
        let v = f(&m[key]);
        assert!((0.0..=1.0).contains(&v), "{key} = {v} in {m}");
    }
    assert!(f(&m["excess_aurc"]) >= -1e-12, "{m}");
    assert!(f(&m["excess_aurc"]) <= f(&m["aurc"]) + 1e-12, "{m}");
    for key in ["failure_auroc", "fpr_at_95_tpr"] {
        if !m[key].is_null() {
            let v = f(&m[key]);
            assert!((0.0..=1.0).contains(&v), "{key} = {v} in {m}");
        }
    }
    let acc = f(&m["accuracy"]);
    if acc > 0.0 && acc < 1.0 {
        assert!(!m["failure_auroc"].is_null(), "{m}");
    }
    if with_ood {
        let v = f(&m["ood_auroc"]);
        assert!((0.0..=1.0).contains(&v), "{v}");
    } else {
        assert!(m["ood_auroc"].is_null(), "{m}");
    }
}

#[test]
fn tlc_trains_then_eval_uncertainty_reports_consistent_json_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train(d, "tlc.fmnist-lt", "run");
    idx_dir(d, "ood", 3, 12, true);
    let o = longtail(
        d,
        &[
            "eval",
            "--checkpoint",
            "run",
            "--uncertainty",
            "--json",
            "--ood-data",
            "fmnist",
            "--ood-data-dir",
            "ood",
            "--plot-dir",
            "plots",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["method"], "tlc");
    assert_eq!(v["samples"], 60);
    let acc = f(&v["accuracy"]);
    assert!((0.0..=1.0).contains(&acc));
    let groups: u64 = v["group_samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .sum();
    assert_eq!(groups, 60);
    assert_eq!(v["ood"]["dataset"], "fmnist");
    assert_eq!(v["ood"]["samples"], 60);

    let scores = v["scores"].as_array().unwrap();
    let names: Vec<&str> = scores
        .iter()
        .map(|s| s["score"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tlc", "softmax"]);
    for s in scores {
        check_metrics(&s["overall"], true);
        // Both scores rank the same predictions: same accuracy.
        assert_eq!(f(&s["overall"]["accuracy"]), acc);
        let mut group_total = 0;
        for g in ["many", "medium", "few"] {
            if !s[g].is_null() {
                check_metrics(&s[g], true);
                group_total += s[g]["samples"].as_u64().unwrap();
            }
        }
        assert_eq!(group_total, 60);
        let bins = s["reliability"].as_array().unwrap();
        assert_eq!(bins.len(), 15);
        let counted: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(counted, 60);
    }

    let t = &v["tlc"];
    assert_eq!(t["configured_combination"], "per_sample");
    // The method's prediction is the per-sample combination.
    assert_eq!(f(&t["per_sample_accuracy"]), acc);
    assert!((0.0..=1.0).contains(&f(&t["official_accuracy"])));
    let u = f(&t["mean_uncertainty"]);
    assert!(u > 0.0 && u < 1.0, "{u}");
    let x = &t["early_exit"];
    let experts = x["expert_macs"].as_array().unwrap().len();
    assert_eq!(experts, 3);
    let (trunk, full) = (f(&x["trunk_macs"]), f(&x["full_macs"]));
    let first_expert = f(&x["expert_macs"][0]);
    let points = x["points"].as_array().unwrap();
    assert!(points.len() >= 2);
    let mut last = (f64::NEG_INFINITY, f64::INFINITY);
    for p in points {
        let (th, used) = (f(&p["threshold"]), f(&p["mean_experts"]));
        assert!(th > last.0, "thresholds ascend");
        assert!((1.0..=experts as f64).contains(&used), "{p}");
        // A higher threshold stops earlier: never more experts.
        assert!(used <= last.1 + 1e-12, "{p}");
        last = (th, used);
        let by: Vec<u64> = p["samples_by_experts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        assert_eq!(by.iter().sum::<u64>(), 60);
        let mean = by
            .iter()
            .enumerate()
            .map(|(k, n)| (k as f64 + 1.0) * *n as f64)
            .sum::<f64>()
            / 60.0;
        assert!((mean - used).abs() < 1e-9);
        let macs = f(&p["macs_per_image"]);
        assert!(macs >= trunk + first_expert - 1e-6 && macs <= full + 1e-6);
        assert!((f(&p["macs_saved"]) - (1.0 - macs / full)).abs() < 1e-12);
        assert!((0.0..=1.0).contains(&f(&p["accuracy"])));
    }
    // Threshold 0 never exits: every expert, no saving, the full per-sample prediction.
    let p0 = &points[0];
    assert_eq!(f(&p0["threshold"]), 0.0);
    assert_eq!(f(&p0["mean_experts"]), experts as f64);
    assert_eq!(f(&p0["macs_saved"]), 0.0);
    assert_eq!(f(&p0["accuracy"]), acc);
    // Threshold 1 always stops after expert 0 (w_1 = u_0 < 1): expert 0's accuracy, and the
    // saving is everything but the trunk and expert 0.
    let p1 = points.last().unwrap();
    assert_eq!(f(&p1["threshold"]), 1.0);
    assert_eq!(f(&p1["mean_experts"]), 1.0);
    assert!((f(&p1["macs_saved"]) - (1.0 - (trunk + first_expert) / full)).abs() < 1e-12);
    let o = longtail(d, &["eval", "--checkpoint", "run", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plain: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(f(&p1["accuracy"]), f(&plain["expert_accuracy"][0]));

    for name in ["risk_coverage.png", "reliability.png"] {
        let bytes = std::fs::read(d.join("plots").join(name)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name} is a PNG");
        assert!(bytes.len() > 5_000, "{name} has {} bytes", bytes.len());
    }
    assert_eq!(v["plots"].as_array().unwrap().len(), 2);

    // The tables name every metric and the early-exit curve.
    let o = longtail(d, &["eval", "--checkpoint", "run", "--uncertainty"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "failure AUROC",
        "FPR @ 95% TPR",
        "ECE (15 bins)",
        "AURC",
        "official",
        "early exit",
        "score `tlc`",
        "score `softmax`",
    ] {
        assert!(out.contains(needle), "{needle} missing: {out}");
    }
    assert!(!out.contains("OOD AUROC"), "no OOD set was given: {out}");
}

#[test]
fn eval_uncertainty_scores_a_softmax_method_and_refuses_bad_ood_sets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train(d, "ce.fmnist-lt", "run");
    let o = longtail(
        d,
        &["eval", "--checkpoint", "run", "--uncertainty", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["method"], "ce");
    assert!(v["tlc"].is_null());
    assert!(v["ood"].is_null());
    let scores = v["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 1);
    assert_eq!(scores[0]["score"], "softmax");
    check_metrics(&scores[0]["overall"], false);

    // OOD images of another size: one clear line, exit 2.
    idx_dir(d, "big", 3, 14, false);
    let o = longtail(
        d,
        &[
            "eval",
            "--checkpoint",
            "run",
            "--uncertainty",
            "--ood-data",
            "fmnist",
            "--ood-data-dir",
            "big",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    // One error line (the CLI may announce the device on stderr first).
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        line.contains("1×14×14") && line.contains("1×12×12"),
        "{err}"
    );
    // An OOD directory without --ood-data.
    let o = longtail(
        d,
        &[
            "eval",
            "--checkpoint",
            "run",
            "--uncertainty",
            "--ood-data-dir",
            "big",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--ood-data"), "{}", stderr(&o));
    // A missing OOD directory.
    let o = longtail(
        d,
        &[
            "eval",
            "--checkpoint",
            "run",
            "--uncertainty",
            "--ood-data",
            "fmnist",
            "--ood-data-dir",
            "nowhere",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("OOD data set"), "{}", stderr(&o));
}

/// Row `row` of `predict` for a batch of images.
fn predict_row(model: &MultiExpert, obj: &dyn Method, images: &[&Tensor], row: usize) -> Vec<f32> {
    let batch = Tensor::stack(images, 0).unwrap();
    let out = model.forward_t(&batch, false).unwrap();
    obj.predict(&out)
        .unwrap()
        .get(row)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn the_per_sample_combination_predicts_a_sample_the_same_in_any_batch() {
    let dev = Device::Cpu;
    let cfg = longtail::registry::preset("tlc.fmnist-lt").unwrap();
    let settings = Tlc::settings(&cfg).unwrap();
    assert!(matches!(
        settings.loss.combination,
        Combination::PerSample { .. }
    ));
    let (_vars, model) = MultiExpert::seeded(&cfg.model, 3, &dev).unwrap();
    let counts = [100, 60, 36, 21, 13, 8, 5, 3, 2, 1];
    let per_sample = TlcMethod(TlcLoss::new(settings.loss.clone(), &counts).unwrap());
    let mut official_cfg = settings.loss.clone();
    official_cfg.combination = Combination::Official {
        eta: settings.loss.combination.eta(),
    };
    let official = TlcMethod(TlcLoss::new(official_cfg, &counts).unwrap());
    let img = |seed: u64| {
        let v: Vec<f32> = (0..28 * 28)
            .map(|i| (((i as u64 + 1) * (seed * 2654435761 + 97)) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (1, 28, 28), &dev).unwrap()
    };
    let (x, others) = (img(1), [img(2), img(3), img(4), img(5)]);
    // The same image first in a batch of 4, and last in a batch of 2 with a different companion.
    let a = predict_row(
        &model,
        &per_sample,
        &[&x, &others[0], &others[1], &others[2]],
        0,
    );
    let b = predict_row(&model, &per_sample, &[&others[3], &x], 1);
    let alone = predict_row(&model, &per_sample, &[&x], 0);
    for (p, q) in [(&a, &b), (&a, &alone)] {
        for (u, v) in p.iter().zip(q.iter()) {
            assert!((u - v).abs() <= 1e-5 * (1.0 + u.abs()), "{p:?} vs {q:?}");
        }
    }
    let argmax = |r: &[f32]| {
        Tensor::new(r, &dev)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap()
    };
    assert_eq!(argmax(&a), argmax(&b));
    // The official combination normalises over the batch: the same image's combined logits change
    // with the batch (expert 0 alone gets weight 1/B).
    let oa = predict_row(
        &model,
        &official,
        &[&x, &others[0], &others[1], &others[2]],
        0,
    );
    let ob = predict_row(&model, &official, &[&others[3], &x], 1);
    let diff = oa
        .iter()
        .zip(&ob)
        .map(|(u, v)| (u - v).abs())
        .fold(0.0f32, f32::max);
    let scale = oa.iter().map(|u| u.abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-3 * scale, "official rows {oa:?} vs {ob:?}");
}
