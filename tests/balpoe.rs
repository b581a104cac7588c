//! End-to-end tests of BalPoE through the `longtail` binary: its preset lists mixup, one short
//! epoch of `balpoe.fmnist-lt` on tiny data with `--mixup` overriding the preset's α, then
//! `eval --test-dist` with BalPoE's known-test-prior rows (docs/balpoe.md §3.2–§3.3). Each test
//! runs in a fresh temp dir.

mod util;
use util::{assert_fails, longtail, stderr, stdout, write_tiny_idx, TinyIdx};

use std::path::Path;

/// `balpoe.fmnist-lt` pointed at a tiny Fashion-MNIST-shaped IDX set of 12×12 images (200 in the
/// head class, imbalance 100; 10 test images per class), one epoch of batch 32.
fn tiny_config(dir: &Path) -> std::path::PathBuf {
    let spec = TinyIdx {
        side: 12,
        train_per_class: 200,
        test_per_class: 10,
        seed: 11,
        bright: 200,
        dark: 30,
        noise_shift: 59,
        invert: false,
    };
    let idx = write_tiny_idx(dir, "idx", &spec);
    let o = longtail(dir, &["presets", "balpoe.fmnist-lt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("mixup_alpha = 0.8"), "{text}");
    let mut cfg: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(cfg["method"]["name"].as_str(), Some("balpoe"));
    let data = cfg["data"].as_table_mut().unwrap();
    data.insert("dataset".into(), "fmnist".into());
    data.insert("data_dir".into(), idx.to_string_lossy().into_owned().into());
    data.insert("imbalance".into(), 100.0.into());
    let optim = cfg["optim"].as_table_mut().unwrap();
    optim.insert("epochs".into(), 1.into());
    optim.insert("batch_size".into(), 32.into());
    let path = dir.join("balpoe.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

#[test]
fn balpoe_trains_with_mixup_and_reports_the_known_prior_under_label_shift() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = tiny_config(p);
    let run = p.join("run");
    let o = longtail(
        p,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--mixup",
            "0.3",
            "--out",
            run.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("each expert alone"), "{}", stdout(&o));
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("mixup_alpha = 0.3"), "{saved}");
    let line = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let r: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(r["loss"].as_f64().unwrap().is_finite());
    assert!((0.0..=1.0).contains(&r["accuracy"].as_f64().unwrap()));

    let o = longtail(
        p,
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--test-dist",
            "forward10,uniform,backward10",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["method"], "balpoe");
    let dists = j["distributions"].as_array().unwrap();
    let prior = j["known_prior"].as_array().unwrap();
    assert_eq!(prior.len(), 3);
    for (d, k) in dists.iter().zip(prior) {
        assert_eq!(d["distribution"], k["distribution"]);
        let o = k["accuracy"]["overall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&o), "{k}");
    }
    // On the uniform set log q is the same for every class, so the known-prior rule predicts
    // exactly what the plain product of experts predicts.
    assert_eq!(dists[1]["distribution"], "uniform");
    assert_eq!(prior[1]["accuracy"], dists[1]["plain"]);

    // The text table has the known-prior rows (evaluated on the run's own tiny test set).
    let o = longtail(
        p,
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--test-dist",
            "forward50",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("known prior all") && table.contains("known prior few"),
        "{table}"
    );
}

#[test]
fn a_bad_mixup_alpha_is_one_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = longtail(
        dir.path(),
        &[
            "train",
            "--preset",
            "balpoe.fmnist-lt",
            "--mixup=-1",
            "--out",
            "x",
        ],
    );
    assert_fails(&o, "mixup_alpha must be a finite number > 0");
}
