//! `export`: a run directory → model.safetensors (no optimizer state) + config.json + README.md.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use longtail_backbone::{BackboneConfig, Blocks, MultiExpert};
use longtail_hub::{export_run, read_checked, CardOptions, HubError};
use longtail_train::checkpoint;
use longtail_train::trainer::EpochRecord;

use crate::common::TestResult;

const CONFIG: &str = r#"seed = 0

[method]
name = "ride"

[data]
dataset = "cifar10-lt"

[model]
arch = "resnet32"
num_experts = 2
num_classes = 10
"#;

fn record(epoch: usize, acc: f64) -> EpochRecord {
    EpochRecord {
        epoch,
        loss: 1.0,
        accuracy: 0.5,
        val_accuracy: None,
        test_accuracy: acc,
        many_shot_acc: Some(0.9),
        medium_shot_acc: Some(0.5),
        few_shot_acc: None,
        lr: 0.1,
    }
}

/// A run directory as `longtail train` leaves it: last.safetensors with momentum and metadata,
/// and metrics.jsonl.
fn fake_run(dir: &Path) -> BTreeMap<String, String> {
    let cfg = BackboneConfig {
        blocks_per_stage: Some(Blocks::Uniform(1)),
        ..BackboneConfig::ride_cifar(2, 10)
    };
    let (vm, _) = MultiExpert::seeded(&cfg, 1, &Device::Cpu).unwrap();
    let momentum = BTreeMap::from([(
        "backbone.conv1.weight".to_string(),
        Tensor::ones((16, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]);
    let meta = BTreeMap::from([
        ("config".to_string(), CONFIG.to_string()),
        ("method".to_string(), "ride".to_string()),
        ("dataset".to_string(), "cifar10-lt".to_string()),
        (
            "class_counts".to_string(),
            "[50,40,30,25,20,15,10,8,6,5]".to_string(),
        ),
        (
            "class_names".to_string(),
            r#"["a","b","c","d","e","f","g","h","i","j"]"#.to_string(),
        ),
        ("epoch".to_string(), "2".to_string()),
    ]);
    checkpoint::save(&dir.join("last.safetensors"), &vm, Some(&momentum), &meta).unwrap();
    let lines: String = [record(1, 0.25), record(2, 0.4321)]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    meta
}

#[test]
fn export_writes_weights_config_and_card() -> TestResult {
    let d = tempfile::tempdir()?;
    let run = d.path().join("run");
    std::fs::create_dir(&run)?;
    let meta = fake_run(&run);
    let out = d.path().join("export");
    let opts = CardOptions {
        license: "mit".into(),
        repo_id: Some("me/ride-c10".into()),
    };
    let report = export_run(&run, &out, &opts)?;
    assert_eq!(report.dropped, 1);
    assert_eq!(report.results.as_ref().map(|r| r.epoch), Some(2));

    let model = read_checked(&out.join("model.safetensors"), &Device::Cpu)?;
    assert!(model.tensors.keys().all(|k| !k.starts_with("optimizer.")));
    assert_eq!(model.tensors.len(), report.tensors);
    for (k, v) in &meta {
        assert_eq!(model.metadata.get(k), Some(v), "{k}");
    }
    let original = read_checked(&run.join("last.safetensors"), &Device::Cpu)?;
    for (k, t) in &model.tensors {
        assert_eq!(
            crate::common::max_abs_diff(t, &original.tensors[k]),
            0.0,
            "{k}"
        );
    }

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json"))?)?;
    assert_eq!(json["library_name"], "longtail");
    assert_eq!(json["method"], "ride");
    assert_eq!(json["num_classes"], 10);
    assert_eq!(json["config"]["model"]["num_experts"], 2);
    assert_eq!(json["class_counts"][0], 50);

    let card = std::fs::read_to_string(out.join("README.md"))?;
    let front = card
        .strip_prefix("---\n")
        .unwrap()
        .split_once("\n---\n")
        .unwrap()
        .0;
    for line in [
        "library_name: longtail",
        "license: mit",
        "- long-tailed",
        "- image-classification",
        "- ride",
        "datasets:\n- cifar10",
        "metrics:\n- accuracy",
    ] {
        assert!(
            front.contains(line),
            "`{line}` missing from front matter:\n{front}"
        );
    }
    assert!(
        card.contains("| split | overall | many-shot | medium-shot | few-shot |"),
        "{card}"
    );
    assert!(
        card.contains("| test | 43.21 | 90.00 | 50.00 | – |"),
        "{card}"
    );
    assert!(
        card.contains("longtail eval --checkpoint hf://me/ride-c10"),
        "{card}"
    );
    assert!(card.contains("num_classes = 10"), "{card}");
    // Nothing but the output folder was created beside the run.
    assert_eq!(std::fs::read_dir(d.path())?.count(), 2);
    Ok(())
}

#[test]
fn export_never_overwrites_and_refuses_bad_runs() -> TestResult {
    let d = tempfile::tempdir()?;
    let run = d.path().join("run");
    std::fs::create_dir(&run)?;
    fake_run(&run);
    let out = d.path().join("export");
    export_run(&run, &out, &CardOptions::default())?;
    let card = std::fs::read(out.join("README.md"))?;
    let e = export_run(&run, &out, &CardOptions::default()).unwrap_err();
    assert!(matches!(e, HubError::OutputExists { .. }), "{e}");
    assert_eq!(std::fs::read(out.join("README.md"))?, card);

    // A truncated checkpoint: an error, and no output folder.
    let bytes = std::fs::read(run.join("last.safetensors"))?;
    std::fs::write(run.join("last.safetensors"), &bytes[..bytes.len() / 2])?;
    let out2 = d.path().join("export2");
    let e = export_run(&run, &out2, &CardOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a valid safetensors"), "{e}");
    assert!(!out2.exists());

    // A file without a run config (an official state dict): told to import it.
    let plain = d.path().join("plain.safetensors");
    crate::common::write(
        &plain,
        &BTreeMap::from([("w".to_string(), crate::common::values(&[2], 1))]),
        &[],
    );
    let e = export_run(&plain, &out2, &CardOptions::default()).unwrap_err();
    assert!(e.to_string().contains("longtail import"), "{e}");
    assert!(!out2.exists());
    // A directory that is no run.
    let e = export_run(d.path(), &out2, &CardOptions::default()).unwrap_err();
    assert!(e.to_string().contains("neither"), "{e}");
    Ok(())
}

/// Issue 14 case 7: the same tensors and metadata serialise to the same bytes every time (the
/// metadata map is written sorted, not in `HashMap` order), so two exports of a run are equal.
#[test]
fn export_is_byte_reproducible() -> TestResult {
    let d = tempfile::tempdir()?;
    let run = d.path().join("run");
    std::fs::create_dir(&run)?;
    let meta = fake_run(&run);
    let tensors = BTreeMap::from([
        ("b".to_string(), crate::common::values(&[3], 1)),
        ("a".to_string(), crate::common::values(&[2, 2], 2)),
    ]);
    let first = longtail_hub::file::to_bytes(&tensors, &meta)?;
    for _ in 0..8 {
        assert!(longtail_hub::file::to_bytes(&tensors, &meta)? == first);
    }
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    export_run(&run, &a, &CardOptions::default())?;
    export_run(&run, &b, &CardOptions::default())?;
    for f in ["model.safetensors", "config.json", "README.md"] {
        assert!(
            std::fs::read(a.join(f))? == std::fs::read(b.join(f))?,
            "{f}"
        );
    }
    Ok(())
}

/// Issue 14 case 8: a license that would add lines or keys to the card's YAML is refused
/// (nothing written); metadata from the file that is not a plain word is quoted.
#[test]
fn the_card_front_matter_cannot_be_broken() -> TestResult {
    let d = tempfile::tempdir()?;
    let run = d.path().join("run");
    std::fs::create_dir(&run)?;
    let mut meta = fake_run(&run);
    for license in ["mit\nfoo: bar", "mit # x", "", "a b"] {
        let opts = CardOptions {
            license: license.into(),
            repo_id: None,
        };
        let out = d.path().join("card");
        let e = export_run(&run, &out, &opts).unwrap_err();
        assert!(matches!(e, HubError::BadOption { .. }), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(!out.exists());
    }
    for license in ["apache-2.0", "cc-by-nc-4.0", "other", "gpl-3.0+"] {
        longtail_hub::export::check_license(license)?;
    }
    meta.insert("method".into(), "ride\nlicense: evil".into());
    let card = longtail_hub::model_card(&meta, None, &CardOptions::default())?;
    let front = card.split("\n---\n").next().unwrap();
    assert!(front.contains("- \"ride\\nlicense: evil\""), "{front}");
    let keys = front.lines().filter(|l| l.starts_with("license:")).count();
    assert_eq!(keys, 1, "{front}");
    Ok(())
}
