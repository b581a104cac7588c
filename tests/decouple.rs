//! `longtail decouple` end to end (issue 16): a 1-epoch `ce.fmnist-lt` run on tiny IDX data, then
//! every second stage on it — the before/after table, `RUN/stage-<name>/` with its files, the
//! stored result reused, `--json`, and bad stages and run folders as one clear error line.

mod util;
use util::{assert_fails, longtail, stderr, stdout, write_tiny_idx, TinyIdx};

use std::path::Path;

/// `overall many medium few` of the table row starting with `label`, as printed (`-` for an
/// empty group: the tiny data has no class with more than 100 images).
fn row(out: &str, label: &str) -> Vec<String> {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` row in:\n{out}"));
    line[label.len()..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Trains `ce.fmnist-lt` for one epoch on 12×12 IDX data (30 → 3 images per class, 20 % of each
/// class held out for validation) into `dir/run`.
fn train_ce(dir: &Path) {
    let spec = TinyIdx {
        side: 12,
        train_per_class: 30,
        test_per_class: 6,
        seed: 7,
        bright: 220,
        dark: 20,
        noise_shift: 60,
        invert: false,
    };
    let idx = write_tiny_idx(dir, "idx", &spec);
    let o = longtail(dir, &["presets", "ce.fmnist-lt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cfg: toml::Table = toml::from_str(&stdout(&o)).unwrap();
    let data = cfg["data"].as_table_mut().unwrap();
    data.insert("dataset".into(), "fmnist".into());
    data.insert("data_dir".into(), idx.to_string_lossy().into_owned().into());
    data.insert("imbalance".into(), 10.0.into());
    data.insert("val_fraction".into(), 0.2.into());
    let optim = cfg["optim"].as_table_mut().unwrap();
    optim.insert("epochs".into(), 1.into());
    optim.insert("batch_size".into(), 16.into());
    std::fs::write(dir.join("ce.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    let o = longtail(
        dir,
        &["train", "--config", "ce.toml", "--out", "run", "--quiet"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn decouple_runs_every_stage_and_reuses_stored_results() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    train_ce(p);
    let stages = [
        ("crt", "stage-crt", "crt"),
        ("lws", "stage-lws", "lws"),
        ("tau-norm", "stage-tau-norm", "tau-norm"),
        ("la", "stage-la", "la"),
        ("la:0.5", "stage-la-0.5", "la"),
        ("wb", "stage-wb", "wb"),
    ];
    let mut before: Option<Vec<String>> = None;
    for (stage, folder, name) in stages {
        let o = longtail(
            p,
            &[
                "decouple",
                "run",
                "--stage",
                stage,
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--device",
                "cpu",
            ],
        );
        assert!(o.status.success(), "{stage}: {}", stderr(&o));
        let out = stdout(&o);
        let b = row(&out, "before ");
        let a = row(&out, &format!("after {name} "));
        assert_eq!(b.len(), 4, "{out}");
        assert_eq!(a.len(), 4, "{out}");
        let overall: f64 = a[0].parse().unwrap();
        assert!((0.0..=100.0).contains(&overall), "{out}");
        assert_eq!(a[1], "-", "no many-shot class in the tiny data: {out}");
        // Every stage starts from the same run.
        match &before {
            None => before = Some(b),
            Some(first) => assert_eq!(first, &b, "{out}"),
        }
        assert_eq!(row(&out, "val before ").len(), 4, "{out}");
        let sdir = p.join("run").join(folder);
        for f in ["model.safetensors", "logits.safetensors", "result.json"] {
            assert!(sdir.join(f).is_file(), "{stage}: no {f}");
        }
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sdir.join("result.json")).unwrap())
                .unwrap();
        let stored = result["test"]["overall"].as_f64().unwrap();
        assert!(
            (100.0 * stored - overall).abs() < 0.006,
            "{result} vs {out}"
        );
        for k in ["many", "medium", "few"] {
            assert!(result["test"].get(k).is_some(), "{result}");
        }
        if stage == "la:0.5" {
            assert!(out.contains("τ = 0.5 (given)"), "{out}");
        }
        if stage == "tau-norm" {
            // ce.fmnist-lt has a cosine classifier: τ-norm changes nothing and says so.
            assert!(out.contains("note: the classifier is cosine"), "{out}");
            assert_eq!(row(&out, "before "), a, "{out}");
        }
        if stage == "la" {
            assert!(out.contains("chosen on the validation split"), "{out}");
        }
    }
    // The same stage again: read back, same numbers.
    let o = longtail(p, &["decouple", "run", "--stage", "la:0.5", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["reused"], true, "{v}");
    assert_eq!(v["tau"], 0.5);
    let stored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("run/stage-la-0.5/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(v["test"], stored["test"]);
}

#[test]
fn bad_stages_and_run_folders_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("empty")).unwrap();
    assert_fails(
        &longtail(p, &["decouple", "empty", "--stage", "ncm"]),
        "unknown stage `ncm`",
    );
    assert_fails(
        &longtail(p, &["decouple", "empty", "--stage", "la:abc"]),
        "must be a number",
    );
    assert_fails(
        &longtail(
            p,
            &["decouple", "missing", "--stage", "crt", "--device", "cpu"],
        ),
        "no such run folder",
    );
    assert_fails(
        &longtail(
            p,
            &["decouple", "empty", "--stage", "lws", "--device", "cpu"],
        ),
        "holds no last.safetensors",
    );
}
