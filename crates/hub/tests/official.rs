//! Official RIDE / SADE / TLC state dicts → our network, checked against the official logits.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use longtail_backbone::{BackboneConfig, Blocks};
use longtail_hub::{import_file, import_tensors, HubError, OfficialMethod};

use crate::common::{fixtures_dir, max_abs_diff, TestResult};

/// Expected: `fixtures/official/<stem>.io.safetensors`, the official code's eval-mode outputs on
/// `<stem>.safetensors` (recipe: the fixtures README, "Model forward parity").
fn check(stem: &str, method: OfficialMethod, want: BackboneConfig) -> TestResult {
    let dir = fixtures_dir();
    let imported = import_file(
        &dir.join(format!("{stem}.safetensors")),
        method,
        Some(10),
        &Device::Cpu,
    )?;
    assert_eq!(imported.config, want.check()?, "{stem}");
    assert!(!imported.ignored.is_empty());
    let io =
        candle_core::safetensors::load(dir.join(format!("{stem}.io.safetensors")), &Device::Cpu)?;
    let out = imported.model.forward_t(&io["input"], false)?;
    let d = max_abs_diff(&out.expert_logits, &io["expert_logits"]);
    assert!(d <= 1e-4, "{stem}: expert_logits differ by {d}");
    let d = max_abs_diff(&out.logits, &io["logits"]);
    assert!(d <= 1e-4, "{stem}: logits differ by {d}");
    Ok(())
}

#[test]
fn ride_imports_with_official_logits() -> TestResult {
    check(
        "ride_cifar_e3_c10",
        OfficialMethod::Ride,
        BackboneConfig::ride_cifar(3, 10),
    )
}

#[test]
fn ride_baseline_imports_with_official_logits() -> TestResult {
    check(
        "ride_baseline_cifar_e1_c10",
        OfficialMethod::Ride,
        BackboneConfig::baseline_cifar(10),
    )
}

#[test]
fn sade_imports_with_official_logits() -> TestResult {
    check(
        "sade_cifar_e3_c10",
        OfficialMethod::Sade,
        BackboneConfig::ride_cifar(3, 10),
    )
}

#[test]
fn tlc_imports_with_official_logits() -> TestResult {
    check(
        "tlc_cifar_e3_c10",
        OfficialMethod::Tlc,
        BackboneConfig::tlc_cifar(3, 10),
    )
}

fn ride_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures_dir().join("ride_cifar_e3_c10.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn import_err(
    tensors: HashMap<String, Tensor>,
    method: OfficialMethod,
    classes: Option<usize>,
) -> String {
    match import_tensors(
        "x.safetensors".as_ref(),
        tensors,
        method,
        classes,
        &Device::Cpu,
    ) {
        Ok(_) => panic!("import should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn data_parallel_prefixes_are_stripped() -> TestResult {
    let t: HashMap<String, Tensor> = ride_tensors()
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    let imported = import_tensors(
        "m.safetensors".as_ref(),
        t,
        OfficialMethod::Ride,
        None,
        &Device::Cpu,
    )?;
    assert_eq!(imported.config.num_experts, 3);
    Ok(())
}

#[test]
fn missing_unexpected_and_misshaped_keys_are_listed() -> TestResult {
    let mut t = ride_tensors();
    t.remove("backbone.layer2s.1.0.bn1.running_var");
    t.insert(
        "backbone.extra.weight".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu)?,
    );
    let w = t["backbone.layer3s.2.0.conv2.weight"].clone();
    t.insert(
        "backbone.layer3s.2.0.conv2.weight".into(),
        w.narrow(1, 0, 40)?,
    );
    let e = import_err(t, OfficialMethod::Ride, None);
    for part in [
        "missing keys [backbone.layer2s.1.0.bn1.running_var]",
        "unexpected keys [backbone.extra.weight]",
        "backbone.layer3s.2.0.conv2.weight (model [48, 48, 3, 3], file [48, 40, 3, 3])",
    ] {
        assert!(e.contains(part), "`{part}` missing from: {e}");
    }
    Ok(())
}

#[test]
fn another_architecture_or_class_count_is_an_error() -> TestResult {
    // A TLC file is not a RIDE model.
    let tlc = candle_core::safetensors::load(
        fixtures_dir().join("tlc_cifar_e3_c10.safetensors"),
        &Device::Cpu,
    )?;
    let e = import_err(tlc, OfficialMethod::Ride, None);
    assert!(e.contains("not an official ride model"), "{e}");
    // 10 classes in the file, 100 asked for.
    let e = import_err(ride_tensors(), OfficialMethod::Ride, Some(100));
    assert!(e.contains("10 classes but 100"), "{e}");
    // Not a backbone state dict at all.
    let mut tv = HashMap::new();
    tv.insert(
        "conv1.weight".to_string(),
        Tensor::zeros((64, 3, 7, 7), candle_core::DType::F32, &Device::Cpu)?,
    );
    tv.insert(
        "fc.weight".to_string(),
        Tensor::zeros((10, 64), candle_core::DType::F32, &Device::Cpu)?,
    );
    let e = import_err(tv, OfficialMethod::Sade, None);
    assert!(e.contains("torchvision"), "{e}");
    Ok(())
}

#[test]
fn shallower_and_wider_networks_are_read_off_the_shapes() -> TestResult {
    // Drop blocks 1..4 of every stage: a ResNet-8 with the RIDE layout.
    let t: HashMap<String, Tensor> = ride_tensors()
        .into_iter()
        .filter(|(k, _)| {
            let parts: Vec<&str> = k.split('.').collect();
            let block = if parts[1].ends_with('s') {
                parts.get(3)
            } else {
                parts.get(2)
            };
            !parts[1].starts_with("layer") || block == Some(&"0")
        })
        .collect();
    let imported = import_tensors(
        "r8.safetensors".as_ref(),
        t,
        OfficialMethod::Ride,
        None,
        &Device::Cpu,
    )?;
    assert_eq!(imported.config.blocks_per_stage, Some(Blocks::Uniform(1)));
    assert!(imported.config.reduce_dimension);
    let x = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu)?;
    assert_eq!(
        imported.model.forward_t(&x, false)?.expert_logits.dims(),
        &[1, 3, 10]
    );
    Ok(())
}

#[test]
fn an_unreadable_file_is_typed() {
    let e = import_file(
        "/no/such.safetensors".as_ref(),
        OfficialMethod::Tlc,
        None,
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(matches!(e, HubError::Io { .. }), "{e}");
}
