//! End-to-end tests of SADE through the `longtail` binary: train on tiny data, then
//! `eval --test-dist` (plain averaging vs test-time aggregation under label shift), on a SADE and
//! on a RIDE checkpoint. Each test runs in a fresh temp dir.

mod util;
use util::{longtail, stderr, stdout, write_tiny_idx, TinyIdx};

use std::path::{Path, PathBuf};

/// A Fashion-MNIST-shaped IDX directory of 12×12 images: `per_class` train and `test_per_class`
/// test images per class, each class a bright block at its own position plus noise.
fn tiny_idx(dir: &Path, per_class: usize, test_per_class: usize) -> PathBuf {
    let spec = TinyIdx {
        side: 12,
        train_per_class: per_class,
        test_per_class,
        seed: 11,
        bright: 200,
        dark: 30,
        noise_shift: 59,
        invert: false,
    };
    write_tiny_idx(dir, "idx", &spec)
}

/// `longtail presets <method>.fmnist-lt` pointed at the tiny data (IF 100 as the bundled set,
/// 200 in the head: 200, 119, 71, 42, 25, 15, 8, 5, 3, 2, strictly decreasing, so class index =
/// frequency rank), one epoch of batch 32, and one test-time epoch.
fn tiny_config(dir: &Path, method: &str, test_per_class: usize) -> PathBuf {
    let idx = tiny_idx(dir, 200, test_per_class);
    let o = longtail(dir, &["presets", &format!("{method}.fmnist-lt")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cfg: toml::Table = toml::from_str(&stdout(&o)).unwrap();
    let data = cfg["data"].as_table_mut().unwrap();
    data.insert("dataset".into(), "fmnist".into());
    data.insert("data_dir".into(), idx.to_string_lossy().into_owned().into());
    data.insert("imbalance".into(), 100.0.into());
    let optim = cfg["optim"].as_table_mut().unwrap();
    optim.insert("epochs".into(), 1.into());
    optim.insert("batch_size".into(), 32.into());
    if let Some(t) = cfg["method"]
        .as_table_mut()
        .unwrap()
        .get_mut("test_time")
        .and_then(|t| t.as_table_mut())
    {
        t.insert("epochs".into(), 1.into());
    }
    let path = dir.join(format!("{method}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

fn train(dir: &Path, method: &str, test_per_class: usize) -> PathBuf {
    let cfg = tiny_config(dir, method, test_per_class);
    let out = dir.join(format!("run-{method}"));
    let o = longtail(
        dir,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    out
}

/// The per-class test counts of docs/sade.md §3 for 10 classes whose frequency rank is the class
/// index: `⌊100 · (1/ρ)^(k/9)⌋`, `k` = rank (forward) or `9 − rank` (backward).
fn expected_counts(name: &str, n_max: usize) -> Vec<usize> {
    let (ratio, backward) = if let Some(r) = name.strip_prefix("forward") {
        (r.parse::<f64>().unwrap(), false)
    } else if let Some(r) = name.strip_prefix("backward") {
        (r.parse::<f64>().unwrap(), true)
    } else {
        assert_eq!(name, "uniform");
        (1.0, false)
    };
    (0..10)
        .map(|c| {
            let k = if backward { 9 - c } else { c };
            (n_max as f64 * (1.0 / ratio).powf(k as f64 / 9.0)) as usize
        })
        .collect()
}

fn in_unit(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))
}

#[test]
fn sade_eval_under_eleven_test_distributions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let run = train(p, "sade", 6);
    // Evaluate on the bundled Fashion-MNIST-LT test set (100 per class, 28×28).
    let o = longtail(
        p,
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--dataset",
            "fmnist-lt",
            "--test-dist",
            "all",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["method"], "sade");
    assert_eq!(j["experts"], 3);
    assert_eq!(j["test_time"]["max_epochs"], 1);
    assert_eq!(j["test_time"]["blur_probability"], 0.2);
    let dists = j["distributions"].as_array().unwrap();
    let names: Vec<&str> = dists
        .iter()
        .map(|d| d["distribution"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "forward50",
            "forward25",
            "forward10",
            "forward5",
            "forward2",
            "uniform",
            "backward2",
            "backward5",
            "backward10",
            "backward25",
            "backward50"
        ]
    );
    for d in dists {
        let name = d["distribution"].as_str().unwrap();
        let want = expected_counts(name, 100);
        let counts: Vec<usize> = d["class_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(counts, want, "{name}");
        assert_eq!(
            d["samples"].as_u64().unwrap() as usize,
            want.iter().sum::<usize>(),
            "{name}"
        );
        let w: Vec<f64> = d["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(w.len(), 3);
        assert!(w.iter().all(|&x| x > 0.0 && x < 1.0), "{name}: {w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{name}: {w:?}");
        assert_eq!(d["epochs"], 1);
        for kind in ["plain", "aggregated"] {
            for field in ["overall", "many", "medium", "few"] {
                assert!(in_unit(&d[kind][field]), "{name} {kind} {field}: {d}");
            }
            assert!(d[kind]["overall"].is_f64());
        }
    }
    // Forward and backward of the same ratio hold the same number of images (docs/sade.md §3).
    for r in ["2", "5", "10", "25", "50"] {
        let n = |dir: &str| {
            dists
                .iter()
                .find(|d| d["distribution"] == format!("{dir}{r}").as_str())
                .unwrap()["samples"]
                .clone()
        };
        assert_eq!(n("forward"), n("backward"));
    }
    assert_eq!(dists[5]["samples"], 1000);
    assert_eq!(dists[0]["samples"], 276); // 100 + 64 + 41 + 27 + 17 + 11 + 7 + 4 + 3 + 2
}

#[test]
fn ride_checkpoint_gets_table_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let run = train(p, "ride", 8);
    let plots = p.join("plots");
    let o = longtail(
        p,
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--test-dist",
            "forward5,uniform,backward5",
            "--plot-dir",
            plots.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "F5",
        "Uni",
        "B5",
        "plain all",
        "aggregated few",
        "weight expert 2",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    // Uniform keeps every test image: 8 per class.
    let images = out.lines().find(|l| l.starts_with("images")).unwrap();
    assert_eq!(images.split_whitespace().nth(2), Some("80"), "{images}");
    let png = std::fs::read(plots.join("test_dist.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000, "{} bytes", png.len());
    // Issue 14 case 8: the settings line prints values, never a Rust `Some(…)`.
    let err = stderr(&o);
    assert!(
        err.contains("stop when a weight rounds below 0.05") && !err.contains("Some("),
        "{err}"
    );
}

#[test]
fn bad_test_dist_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let run = train(p, "sade", 4);
    let o = longtail(
        p,
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--test-dist",
            "sideways",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // One error line naming the bad value (an informational `device: …` line may precede it).
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("sideways"), "{err}");
}
