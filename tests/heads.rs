//! `longtail heads` end to end (issue 20): multi-expert heads on the tiny random DINOv2 trunk of
//! `fixtures/hf` over the bundled Fashion-MNIST-LT set (1-channel images, converted to RGB by the
//! trunk's preprocessing), with RIDE's and CE's losses, the feature cache reused across runs,
//! test-time aggregation on the heads' logits, and the heads saved with the trunk in metadata.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use util::{assert_fails, longtail, stderr, stdout};

/// The fixture `dinov2_tiny_random` as a trunk folder (`config.json` + `model.safetensors`).
fn trunk_folder(dir: &Path) -> PathBuf {
    let src = longtail_fixtures::hf_dir();
    let folder = dir.join("dinov2");
    std::fs::create_dir_all(&folder).unwrap();
    for (from, to) in [
        ("dinov2_tiny_random.config.json", "config.json"),
        ("dinov2_tiny_random.safetensors", "model.safetensors"),
    ] {
        std::fs::copy(src.join(from), folder.join(to)).unwrap();
    }
    folder
}

/// `overall many medium few` of the table row starting with `label`.
fn row(out: &str, label: &str) -> Vec<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` row in:\n{out}"));
    line[label.len()..]
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

#[test]
fn heads_on_a_dinov2_trunk_learn_with_ride_and_ce_and_reuse_the_cache() {
    let d = tempfile::tempdir().unwrap();
    let trunk = trunk_folder(d.path());
    let trunk = trunk.to_str().unwrap();
    let o = longtail(
        d.path(),
        &[
            "heads",
            "--backbone",
            trunk,
            "--preset",
            "ride.fmnist-lt",
            "--epochs",
            "6",
            "--out",
            "ride",
            "--cache-dir",
            "cache",
            "--test-time",
            "--device",
            "cpu",
        ],
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    // Both caches built, then training: one line per epoch whose loss falls.
    assert!(err.contains("train features: built") && err.contains("test features: built"));
    let losses: Vec<f64> = err
        .lines()
        .filter(|l| l.starts_with("epoch"))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 6, "{err}");
    assert!(losses[5] < losses[0], "{losses:?}");
    // The ensemble, each expert and test-time aggregation, by many / medium / few; the tiny
    // random trunk's 32-wide features still beat chance (10 %) clearly.
    let ride = row(&out, "ride (3 experts)");
    assert_eq!(ride.len(), 4, "{out}");
    assert!(ride[0] > 20.0, "{out}");
    for e in 0..3 {
        assert_eq!(row(&out, &format!("expert {e}")).len(), 4);
    }
    assert_eq!(row(&out, "test-time aggregation").len(), 4, "{out}");
    assert!(out.contains("learned expert weights:"), "{out}");
    assert!(out.contains("head training: 6 epochs in"), "{out}");

    // The heads, with the trunk and the run config in their metadata.
    let saved = d.path().join("ride/heads.safetensors");
    let loaded = longtail_trunks::load_heads(&saved, &Device::Cpu).unwrap();
    assert_eq!(loaded.heads.config().num_experts, 3);
    assert_eq!(loaded.metadata["family"], "dinov2");
    assert_eq!(
        Path::new(&loaded.metadata["trunk"]),
        std::fs::canonicalize(trunk).unwrap()
    );
    assert!(loaded.metadata["config"].contains("name = \"ride\""));
    assert_eq!(
        std::fs::read_to_string(d.path().join("ride/metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );

    // CE on the same trunk and data: the features come from the cache.
    let o = longtail(
        d.path(),
        &[
            "heads",
            "--backbone",
            trunk,
            "--preset",
            "ce.fmnist-lt",
            "--epochs",
            "6",
            "--out",
            "ce",
            "--cache-dir",
            "cache",
            "--quiet",
            "--device",
            "cpu",
        ],
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("train features: reused") && err.contains("test features: reused"),
        "{err}"
    );
    assert!(row(&out, "ce (1 expert)")[0] > 20.0, "{out}");
    let ce =
        longtail_trunks::load_heads(&d.path().join("ce/heads.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ce.heads.config().num_experts, 1);
}

#[test]
fn a_trunk_alias_in_the_preset_name_and_missing_trunks_are_clean_errors() {
    let d = tempfile::tempdir().unwrap();
    // `<preset>.<alias>` names hf://facebook/dinov2-small; offline with an empty cache it fails
    // at once, naming the file.
    let o = Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args([
            "heads",
            "--preset",
            "ride.fmnist-lt.dinov2-s",
            "--device",
            "cpu",
        ])
        .current_dir(d.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", d.path().join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .output()
        .unwrap();
    assert_fails(&o, "hf://facebook/dinov2-small");
    assert!(stderr(&o).contains("offline"), "{}", stderr(&o));

    let o = longtail(d.path(), &["heads", "--preset", "ride.fmnist-lt"]);
    assert_fails(&o, "name the trunk with --backbone");
    let o = longtail(
        d.path(),
        &["heads", "--backbone", "no-such-folder", "--device", "cpu"],
    );
    assert_fails(&o, "no-such-folder");
    // SADE's three experts are checked before anything is loaded.
    let o = longtail(
        d.path(),
        &[
            "heads",
            "--backbone",
            "dinov2-s",
            "--preset",
            "sade.fmnist-lt",
            "--experts",
            "2",
        ],
    );
    assert_fails(&o, "3");
}

/// The command form: `train --preset … --backbone …` is `heads --backbone …` (same
/// heads, same cache), and a flag `heads` cannot honour is refused.
#[test]
fn train_with_a_backbone_trains_heads_on_the_trunk() {
    let d = tempfile::tempdir().unwrap();
    let trunk = trunk_folder(d.path());
    let trunk = trunk.to_str().unwrap();
    let o = longtail(
        d.path(),
        &[
            "train",
            "--preset",
            "tlc.fmnist-lt",
            "--backbone",
            trunk,
            "--epochs",
            "3",
            "--out",
            "tlc",
            "--quiet",
            "--device",
            "cpu",
        ],
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    assert_eq!(row(&out, "tlc (3 experts)").len(), 4, "{out}");
    let saved =
        longtail_trunks::load_heads(&d.path().join("tlc/heads.safetensors"), &Device::Cpu).unwrap();
    assert!(saved.metadata["config"].contains("name = \"tlc\""));
    let o = longtail(
        d.path(),
        &[
            "train",
            "--backbone",
            trunk,
            "--compare-ce",
            "--device",
            "cpu",
        ],
    );
    assert_fails(&o, "--compare-ce");
}
