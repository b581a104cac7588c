//! An ImageNet torchvision/timm ResNet state dict into a multi-expert trunk (SADE Places-LT).
//! The state dict is synthetic: torchvision's key names and Bottleneck shapes at tiny widths
//! (`resnet50(width_per_group=…)`-style planes 8/8/8/8, one block per stage).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use longtail_backbone::{Arch, BackboneConfig, Blocks, Layout, MultiExpert};
use longtail_hub::load_torchvision_trunk;

use crate::common::{max_abs_diff, values, TestResult};

/// A state dict under construction; each tensor gets its own deterministic values.
struct Dict {
    t: HashMap<String, Tensor>,
    seed: u64,
}

impl Dict {
    fn put(&mut self, k: String, shape: &[usize]) {
        self.seed += 1;
        self.t.insert(k, values(shape, self.seed));
    }

    /// BatchNorm2d entries, `num_batches_tracked` (int64 scalar) included.
    fn bn(&mut self, k: &str, c: usize) {
        for leaf in ["weight", "bias", "running_mean"] {
            self.put(format!("{k}.{leaf}"), &[c]);
        }
        let ones = Tensor::ones(c, DType::F32, &Device::Cpu).unwrap();
        self.t.insert(format!("{k}.running_var"), ones);
        let tracked = Tensor::new(7i64, &Device::Cpu).unwrap();
        self.t.insert(format!("{k}.num_batches_tracked"), tracked);
    }
}

/// torchvision key names and shapes: `conv1`, `bn1`, `layer{1..4}.{b}.{conv1..3,bn1..3,downsample}`,
/// `fc`.
fn torchvision_dict(planes: &[usize], groups: usize, classes: usize) -> HashMap<String, Tensor> {
    let mut d = Dict {
        t: HashMap::new(),
        seed: 0,
    };
    d.put("conv1.weight".into(), &[64, 3, 7, 7]);
    d.bn("bn1", 64);
    let mut in_c = 64;
    for (i, &p) in planes.iter().enumerate() {
        let width = if groups > 1 { p * 4 / 64 * groups } else { p };
        let out = 4 * p;
        let k = format!("layer{}.0", i + 1);
        d.put(format!("{k}.conv1.weight"), &[width, in_c, 1, 1]);
        d.bn(&format!("{k}.bn1"), width);
        d.put(format!("{k}.conv2.weight"), &[width, width / groups, 3, 3]);
        d.bn(&format!("{k}.bn2"), width);
        d.put(format!("{k}.conv3.weight"), &[out, width, 1, 1]);
        d.bn(&format!("{k}.bn3"), out);
        // torchvision: a projection when the stride is 2 (layer2..4) or the channels change.
        if i > 0 || in_c != out {
            d.put(format!("{k}.downsample.0.weight"), &[out, in_c, 1, 1]);
            d.bn(&format!("{k}.downsample.1"), out);
        }
        in_c = out;
    }
    d.put("fc.weight".into(), &[classes, in_c]);
    d.put("fc.bias".into(), &[classes]);
    d.t
}

fn tiny(arch: Arch, planes: Vec<usize>) -> BackboneConfig {
    BackboneConfig {
        blocks_per_stage: Some(Blocks::Uniform(1)),
        widths: Some(planes),
        ..BackboneConfig::new(arch, Layout::SharedLayer1, 3, 5)
    }
}

fn var(vm: &candle_nn::VarMap, k: &str) -> Tensor {
    vm.data().lock().unwrap()[k].as_tensor().clone()
}

#[test]
fn layer3_and_layer4_are_copied_into_every_expert() -> TestResult {
    for (arch, planes, groups) in [
        (Arch::Resnet152, vec![8, 8, 8, 8], 1),
        (Arch::Resnet50, vec![8, 16, 8, 16], 1),
        (Arch::Resnext50, vec![16, 16, 16, 16], 32),
    ] {
        let cfg = tiny(arch, planes.clone());
        let tv = torchvision_dict(&planes, groups, 1000);
        let (vm, net) = MultiExpert::seeded(&cfg, 3, &Device::Cpu)?;
        let head_before = var(&vm, "backbone.linears.1.weight");
        let report = load_torchvision_trunk(&vm, &cfg, &tv, "tv.safetensors".as_ref())?;
        assert_eq!(
            report.kept,
            vec![
                "backbone.linears.0.weight",
                "backbone.linears.1.weight",
                "backbone.linears.2.weight"
            ]
        );
        assert!(report.skipped.contains(&"fc.weight".to_string()));
        assert!(report
            .skipped
            .iter()
            .any(|k| k.ends_with("num_batches_tracked")));
        // Shared stem and stages keep their names.
        for k in [
            "conv1.weight",
            "bn1.running_mean",
            "layer1.0.conv2.weight",
            "layer2.0.downsample.1.bias",
        ] {
            assert_eq!(
                max_abs_diff(&var(&vm, &format!("backbone.{k}")), &tv[k]),
                0.0,
                "{k}"
            );
        }
        // layer3 / layer4 go to every expert.
        for e in 0..3 {
            for k in [
                "layer3.0.conv1.weight",
                "layer3.0.bn3.weight",
                "layer4.0.conv2.weight",
                "layer4.0.downsample.0.weight",
            ] {
                let (stage, tail) = k.split_once('.').unwrap();
                let ours = format!("backbone.{stage}s.{e}.{tail}");
                assert_eq!(max_abs_diff(&var(&vm, &ours), &tv[k]), 0.0, "{ours}");
            }
        }
        // The classifiers keep their seeded initialisation.
        assert_eq!(
            max_abs_diff(&var(&vm, "backbone.linears.1.weight"), &head_before),
            0.0
        );
        // All experts now compute the same features.
        let x = crate::common::values(&[1, 3, 32, 32], 9);
        let out = net.forward_t(&x, false)?;
        let f = out.features.squeeze(0)?;
        let d = max_abs_diff(&f.get(0)?, &f.get(2)?);
        assert!(d < 1e-5, "{arch:?}: experts differ by {d}");
    }
    Ok(())
}

#[test]
fn a_trunk_that_does_not_fit_is_listed_and_nothing_is_copied() -> TestResult {
    // Reduced expert widths (RIDE's 192/384 idea) cannot take torchvision's full-width stages.
    let planes = vec![8, 8, 8, 8];
    let mut cfg = tiny(Arch::Resnet50, planes.clone());
    cfg.widths = Some(vec![8, 8, 6, 6]);
    let mut tv = torchvision_dict(&planes, 1, 10);
    tv.remove("layer2.0.bn2.running_mean");
    tv.insert("layer9.0.conv1.weight".into(), values(&[2, 2], 1));
    let (vm, _net) = MultiExpert::seeded(&cfg, 3, &Device::Cpu)?;
    let before = var(&vm, "backbone.conv1.weight");
    let e = load_torchvision_trunk(&vm, &cfg, &tv, "tv.safetensors".as_ref())
        .unwrap_err()
        .to_string();
    for part in [
        "tv.safetensors",
        "missing keys [backbone.layer2.0.bn2.running_mean]",
        "layer9.0.conv1.weight",
        "backbone.layer3s.0.0.conv1.weight (model [6, 32, 1, 1], file [8, 32, 1, 1])",
    ] {
        assert!(e.contains(part), "`{part}` missing from: {e}");
    }
    assert_eq!(
        max_abs_diff(&var(&vm, "backbone.conv1.weight"), &before),
        0.0
    );
    Ok(())
}
