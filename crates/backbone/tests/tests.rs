//! Integration tests of longtail-backbone: official forward parity, weight loading, seeded init,
//! parameter and MAC counts, ImageNet variants, train-mode BatchNorm.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use longtail_backbone::{
    init_weights, load_weights, load_weights_file, num_trainable_params, trainable_vars, Arch,
    BackboneConfig, BackboneError, Blocks, Kernels, Layout, MultiExpert,
};
use longtail_fixtures::fixtures_dir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn build(cfg: &BackboneConfig) -> Result<(VarMap, MultiExpert), BackboneError> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = MultiExpert::new(cfg, vb)?;
    Ok((varmap, net))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest `|a - b| - rtol·|b|` (must be <= atol).
fn max_excess(a: &Tensor, b: &Tensor, rtol: f64) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff = (a - b).unwrap().abs().unwrap();
    let allowed = (b.abs().unwrap() * rtol).unwrap();
    (diff - allowed)
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Expected: `fixtures/official/<stem>.io.safetensors`, made by the official code on
/// `<stem>.safetensors` in eval mode (recipe: README "Model forward parity" and `<stem>.json`).
fn check_parity(stem: &str, cfg: BackboneConfig) -> TestResult {
    let dir = fixtures_dir();
    let (varmap, net) = build(&cfg)?;
    let report = load_weights_file(&varmap, dir.join(format!("{stem}.safetensors")))?;
    assert!(report
        .ignored
        .iter()
        .all(|k| k.ends_with("num_batches_tracked")));
    assert!(
        !report.ignored.is_empty(),
        "num_batches_tracked entries should be reported as ignored"
    );
    let io =
        candle_core::safetensors::load(dir.join(format!("{stem}.io.safetensors")), &Device::Cpu)?;
    let out = net.forward_t(&io["input"], false)?;
    let d = max_abs_diff(&out.expert_logits, &io["expert_logits"]);
    assert!(d <= 1e-4, "{stem}: expert_logits differ by {d}");
    let d = max_abs_diff(&out.logits, &io["logits"]);
    assert!(d <= 1e-4, "{stem}: logits differ by {d}");
    let d = max_excess(&out.features, &io["feat"], 1e-4);
    assert!(d <= 1e-4, "{stem}: feat exceeds 1e-4 + 1e-4|ref| by {d}");
    Ok(())
}

#[test]
fn ride_cifar_matches_official() -> TestResult {
    check_parity("ride_cifar_e3_c10", BackboneConfig::ride_cifar(3, 10))
}

#[test]
fn ride_baseline_cifar_matches_official() -> TestResult {
    check_parity(
        "ride_baseline_cifar_e1_c10",
        BackboneConfig::baseline_cifar(10),
    )
}

#[test]
fn sade_cifar_matches_official() -> TestResult {
    check_parity("sade_cifar_e3_c10", BackboneConfig::ride_cifar(3, 10))
}

#[test]
fn tlc_cifar_matches_official() -> TestResult {
    check_parity("tlc_cifar_e3_c10", BackboneConfig::tlc_cifar(3, 10))
}

#[test]
fn fixture_trainable_counts_match_readme() -> TestResult {
    for (cfg, want) in [
        (BackboneConfig::ride_cifar(3, 10), 770_896),
        (BackboneConfig::baseline_cifar(10), 464_144),
        (BackboneConfig::tlc_cifar(3, 10), 1_391_504),
    ] {
        let (varmap, _) = build(&cfg)?;
        assert_eq!(num_trainable_params(&varmap), want, "{cfg:?}");
    }
    Ok(())
}

/// docs/ride.md §2 "Totals" and "Other configurations"; docs/tlc.md §1 (K = 100).
#[test]
fn resnet32_parameter_counts_match_spec() -> TestResult {
    let cases = [
        (BackboneConfig::ride_cifar(3, 100), 783_856, 429),
        (
            BackboneConfig {
                reduce_dimension: false,
                ..BackboneConfig::ride_cifar(3, 100)
            },
            1_362_064,
            429,
        ),
        (BackboneConfig::ride_cifar(4, 100), 1_037_200, 0),
        (BackboneConfig::ride_cifar(6, 100), 1_543_888, 0),
        (BackboneConfig::baseline_cifar(100), 469_904, 0),
        (BackboneConfig::tlc_cifar(3, 100), 1_408_784, 0),
    ];
    for (cfg, want, entries) in cases {
        let (varmap, _) = build(&cfg)?;
        assert_eq!(num_trainable_params(&varmap), want, "{cfg:?}");
        if entries > 0 {
            // Every BN also has num_batches_tracked in the state dict (not a Var here).
            let vars = varmap.all_vars().len();
            let bns = varmap
                .data()
                .lock()
                .unwrap()
                .keys()
                .filter(|k| k.ends_with("running_mean"))
                .count();
            assert_eq!(vars + bns, entries);
        }
    }
    Ok(())
}

#[test]
fn key_names_follow_official_layout() -> TestResult {
    let (varmap, _) = build(&BackboneConfig::ride_cifar(3, 100))?;
    let data = varmap.data().lock().unwrap();
    let shape = |k: &str| data.get(k).map(|v| v.dims().to_vec());
    assert_eq!(shape("backbone.conv1.weight"), Some(vec![16, 3, 3, 3]));
    assert_eq!(
        shape("backbone.layer1.4.conv2.weight"),
        Some(vec![16, 16, 3, 3])
    );
    assert_eq!(
        shape("backbone.layer2s.1.0.conv1.weight"),
        Some(vec![24, 16, 3, 3])
    );
    assert_eq!(
        shape("backbone.layer3s.2.4.bn2.running_var"),
        Some(vec![48])
    );
    assert_eq!(shape("backbone.linears.0.weight"), Some(vec![48, 100]));
    assert!(data.keys().all(|k| k.starts_with("backbone.")));
    drop(data);
    let (varmap, _) = build(&BackboneConfig::baseline_cifar(100))?;
    let data = varmap.data().lock().unwrap();
    assert!(data.contains_key("backbone.layer3.4.conv2.weight"));
    assert_eq!(
        data.get("backbone.linear.weight")
            .map(|v| v.dims().to_vec()),
        Some(vec![64, 100])
    );
    drop(data);
    let cfg = BackboneConfig {
        use_norm: false,
        ..BackboneConfig::ride_cifar(3, 100)
    };
    let (varmap, _) = build(&cfg)?;
    let data = varmap.data().lock().unwrap();
    assert_eq!(
        data.get("backbone.linears.2.weight")
            .map(|v| v.dims().to_vec()),
        Some(vec![100, 48])
    );
    assert_eq!(
        data.get("backbone.linears.2.bias")
            .map(|v| v.dims().to_vec()),
        Some(vec![100])
    );
    Ok(())
}

#[test]
fn load_rejects_mismatched_state_dict_and_copies_nothing() -> TestResult {
    let dir = fixtures_dir();
    let ride =
        candle_core::safetensors::load(dir.join("ride_cifar_e3_c10.safetensors"), &Device::Cpu)?;
    // Wrong model: TLC keys differ (layer1s, 64-d linears).
    let (varmap, _) = build(&BackboneConfig::tlc_cifar(3, 10))?;
    match load_weights(&varmap, &ride) {
        Err(BackboneError::StateDict {
            missing,
            unexpected,
            mismatched,
        }) => {
            assert!(missing.contains(&"backbone.layer1s.0.0.conv1.weight".to_string()));
            assert!(unexpected.contains(&"backbone.layer1.0.conv1.weight".to_string()));
            assert!(!unexpected
                .iter()
                .any(|k| k.ends_with("num_batches_tracked")));
            assert!(mismatched
                .iter()
                .any(|m| m.name == "backbone.linears.0.weight"
                    && m.expected == vec![64, 10]
                    && m.got == vec![48, 10]));
        }
        other => panic!("expected a state-dict error, got {other:?}"),
    }
    // Right model, one extra key and one wrong shape: error, and the VarMap stays untouched.
    let (varmap, _) = build(&BackboneConfig::ride_cifar(3, 10))?;
    init_weights(&varmap, &BackboneConfig::ride_cifar(3, 10), 3)?;
    let before = trainable_vars(&varmap)[0]
        .1
        .as_tensor()
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut bad: HashMap<String, Tensor> = ride.clone();
    bad.insert(
        "backbone.extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu)?,
    );
    bad.insert(
        "backbone.bn1.weight".into(),
        Tensor::zeros(15, DType::F32, &Device::Cpu)?,
    );
    let err = load_weights(&varmap, &bad).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("backbone.extra.weight") && msg.contains("backbone.bn1.weight"),
        "{msg}"
    );
    let after = trainable_vars(&varmap)[0]
        .1
        .as_tensor()
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(before, after);
    // DataParallel prefix is stripped.
    let prefixed: HashMap<String, Tensor> = ride
        .iter()
        .map(|(k, v)| (format!("module.{k}"), v.clone()))
        .collect();
    let report = load_weights(&varmap, &prefixed)?;
    assert_eq!(report.loaded.len(), varmap.all_vars().len());
    // A missing file is a read error naming the path.
    let err = load_weights_file(&varmap, dir.join("no_such_file.safetensors")).unwrap_err();
    assert!(matches!(err, BackboneError::Read { .. }) && err.to_string().contains("no_such_file"));
    Ok(())
}

fn snapshot(varmap: &VarMap) -> Vec<(String, Vec<u32>)> {
    let data = varmap.data().lock().unwrap();
    let mut out: Vec<(String, Vec<u32>)> = data
        .iter()
        .map(|(k, v)| {
            let bits = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (k.clone(), bits.into_iter().map(f32::to_bits).collect())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn seeded_init_is_bit_identical_and_has_official_distributions() -> TestResult {
    let cfg = BackboneConfig::ride_cifar(3, 10);
    let (a, _) = MultiExpert::seeded(&cfg, 42, &Device::Cpu)?;
    let (b, _) = MultiExpert::seeded(&cfg, 42, &Device::Cpu)?;
    let (c, _) = MultiExpert::seeded(&cfg, 43, &Device::Cpu)?;
    assert_eq!(snapshot(&a), snapshot(&b));
    assert_ne!(snapshot(&a), snapshot(&c));
    let data = a.data().lock().unwrap();
    let get = |k: &str| data[k].as_tensor().clone();
    // BN: γ = 1, β = 0, running mean 0, var 1.
    assert_eq!(get("backbone.bn1.weight").to_vec1::<f32>()?, vec![1.0; 16]);
    assert_eq!(
        get("backbone.layer1.0.bn2.bias").to_vec1::<f32>()?,
        vec![0.0; 16]
    );
    assert_eq!(
        get("backbone.layer2s.0.0.bn1.running_var").to_vec1::<f32>()?,
        vec![1.0; 24]
    );
    // NormedLinear [48, 10]: unit-norm class columns, entries within (-1, 1).
    let w = get("backbone.linears.1.weight");
    let norms = w.sqr()?.sum(0)?.sqrt()?.to_vec1::<f32>()?;
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    // Kaiming fan-in: layer3s convs [48, 48, 3, 3] have std √(2/432) ≈ 0.0680 (15 convs × 20,736 draws).
    let mut sq = 0.0f64;
    let mut n = 0usize;
    for (k, v) in data.iter() {
        if k.starts_with("backbone.layer3s.") && k.ends_with("conv2.weight") {
            let vals = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            sq += vals.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
            n += vals.len();
        }
    }
    let std = (sq / n as f64).sqrt();
    assert!((std - (2.0f64 / 432.0).sqrt()).abs() < 0.002, "std {std}");
    Ok(())
}

#[test]
fn trainable_vars_skip_running_stats() -> TestResult {
    let (varmap, _) = build(&BackboneConfig::baseline_cifar(100))?;
    let vars = trainable_vars(&varmap);
    assert!(vars
        .iter()
        .all(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var")));
    assert!(vars.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name");
    // docs/candle.md §2: 157 Vars of which 95 trainable for ResNet-32 with FC; ours has no FC bias: 94.
    assert_eq!(varmap.all_vars().len(), 156);
    assert_eq!(vars.len(), 94);
    Ok(())
}

fn tiny_cfg(layout: Layout) -> BackboneConfig {
    BackboneConfig {
        layout,
        blocks_per_stage: Some(Blocks::Uniform(1)),
        ..BackboneConfig::new(Arch::Resnet32, layout, 3, 5)
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A deterministic pseudo-random input without candle's unseeded RNG.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn trunk_and_expert_calls_compose_to_the_full_forward() -> TestResult {
    for layout in [
        Layout::SharedLayer1,
        Layout::PerExpertLayer1,
        Layout::SharedLayer3,
    ] {
        let cfg = tiny_cfg(layout);
        let (_vm, net) = MultiExpert::seeded(&cfg, 1, &Device::Cpu)?;
        let xs = randn(&[3, 3, 12, 12], 5);
        let full = net.forward_t(&xs, false)?;
        assert_eq!(full.expert_logits.dims(), &[3, 3, 5]);
        assert_eq!(full.features.dims(), &[3, 3, 64]);
        let mean = full.expert_logits.mean(1)?;
        assert!(max_abs_diff(&mean, &full.logits) < 1e-6);
        // Subset in a chosen order.
        let sub = net.forward_experts(&xs, &[2, 0], false)?;
        assert!(
            max_abs_diff(
                &sub.expert_logits.i((.., 0))?,
                &full.expert_logits.i((.., 2))?
            ) < 1e-6
        );
        assert!(max_abs_diff(&sub.features.i((.., 1))?, &full.features.i((.., 0))?) < 1e-6);
        // Early exit: expert 1 on rows 1..3 of the trunk output.
        let trunk = net.forward_trunk(&xs, false)?;
        let part = net.forward_expert(&trunk.narrow(0, 1, 2)?, 1, false)?;
        assert!(max_abs_diff(&part.logits, &full.expert_logits.i((1..3, 1))?) < 1e-5);
        // Cosine logits lie in [-s, s].
        let m = full
            .expert_logits
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(m <= 30.0 + 1e-4);
    }
    Ok(())
}

#[test]
fn bad_inputs_give_typed_errors() -> TestResult {
    let (_vm, net) = MultiExpert::seeded(&tiny_cfg(Layout::SharedLayer1), 1, &Device::Cpu)?;
    let xs = randn(&[2, 1, 8, 8], 1);
    assert!(matches!(
        net.forward_t(&xs, false),
        Err(BackboneError::InputShape { channels: 3, .. })
    ));
    let xs = randn(&[2, 3, 8, 8], 1);
    for bad in [&[][..], &[3], &[0, 0]] {
        assert!(matches!(
            net.forward_experts(&xs, bad, false),
            Err(BackboneError::ExpertIndex { .. })
        ));
    }
    let cfg = BackboneConfig {
        num_classes: 0,
        ..BackboneConfig::ride_cifar(3, 10)
    };
    assert!(matches!(
        build(&cfg),
        Err(BackboneError::Config {
            field: "num_classes",
            ..
        })
    ));
    Ok(())
}

#[test]
fn any_input_size_and_one_channel() -> TestResult {
    // Fashion-MNIST-like 1×28×28 and an odd, non-square size.
    let cfg = BackboneConfig {
        in_channels: 1,
        ..tiny_cfg(Layout::SharedLayer1)
    };
    let (_vm, net) = MultiExpert::seeded(&cfg, 2, &Device::Cpu)?;
    let out = net.forward_t(&randn(&[2, 1, 28, 28], 3), false)?;
    assert_eq!(out.logits.dims(), &[2, 5]);
    let cfg = tiny_cfg(Layout::PerExpertLayer1);
    let (_vm, net) = MultiExpert::seeded(&cfg, 2, &Device::Cpu)?;
    let out = net.forward_t(&randn(&[1, 3, 15, 9], 3), true)?;
    assert_eq!(out.features.dims(), &[1, 3, 64]);
    Ok(())
}

/// Train mode: batch statistics, running mean/var updated with momentum 0.1 and unbiased variance.
#[test]
fn train_mode_batch_norm_matches_pytorch_semantics() -> TestResult {
    let cfg = tiny_cfg(Layout::SharedLayer1);
    let (varmap, net) = MultiExpert::seeded(&cfg, 9, &Device::Cpu)?;
    let xs = randn(&[4, 3, 8, 8], 11);
    // Expected running stats of bn1 from the conv1 output, computed by hand.
    let w = varmap.data().lock().unwrap()["backbone.conv1.weight"]
        .as_tensor()
        .clone();
    let y = xs.conv2d(&w, 1, 1, 1, 1)?; // [4, 16, 8, 8]
    let vals = y.transpose(0, 1)?.flatten_from(1)?.to_vec2::<f32>()?;
    let out_eval = net.forward_t(&xs, false)?;
    let out_train = net.forward_t(&xs, true)?;
    let data = varmap.data().lock().unwrap();
    let rm = data["backbone.bn1.running_mean"]
        .as_tensor()
        .to_vec1::<f32>()?;
    let rv = data["backbone.bn1.running_var"]
        .as_tensor()
        .to_vec1::<f32>()?;
    for (c, v) in vals.iter().enumerate() {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var_unbiased = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert!(
            (rm[c] as f64 - 0.1 * mean).abs() < 1e-5,
            "running_mean[{c}]"
        );
        assert!(
            (rv[c] as f64 - (0.9 + 0.1 * var_unbiased)).abs() < 1e-4,
            "running_var[{c}]"
        );
    }
    drop(data);
    // Batch statistics differ from the initial running ones, so the outputs differ.
    assert!(max_abs_diff(&out_eval.logits, &out_train.logits) > 1e-3);
    Ok(())
}

#[test]
fn gradients_reach_every_trainable_var() -> TestResult {
    let cfg = tiny_cfg(Layout::SharedLayer1);
    let (varmap, net) = MultiExpert::seeded(&cfg, 4, &Device::Cpu)?;
    let xs = randn(&[4, 3, 8, 8], 2);
    let out = net.forward_t(&xs, true)?;
    let target = randn(&[4, 3, 5], 7);
    let loss = (out.expert_logits * target)?.sum_all()?;
    let grads = loss.backward()?;
    for (name, var) in trainable_vars(&varmap) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), var.dims());
    }
    let data = varmap.data().lock().unwrap();
    assert!(grads
        .get(data["backbone.bn1.running_mean"].as_tensor())
        .is_none());
    Ok(())
}

/// `detached()` is the same network for inference: bit-identical eval outputs that build no
/// autograd graph (the original's do: its weights are Vars), on the weights it shares with the
/// original's VarMap; input gradients still flow. ResNet-32 (CIFAR blocks, cosine heads) and
/// a ResNet-50 with linear heads (bottlenecks, downsample, max-pool stem), both kernel paths.
#[test]
fn detached_network_is_the_same_function_without_a_graph() -> TestResult {
    let imagenet = BackboneConfig {
        blocks_per_stage: Some(Blocks::Uniform(1)),
        widths: Some(vec![8, 8, 8, 8]),
        use_norm: false,
        ..BackboneConfig::new(Arch::Resnet50, Layout::SharedLayer3, 3, 5)
    };
    for (cfg, side) in [(tiny_cfg(Layout::SharedLayer1), 8), (imagenet, 32)] {
        for kernels in [Kernels::Fast, Kernels::Stock] {
            let cfg = BackboneConfig {
                kernels,
                ..cfg.clone()
            };
            let (varmap, net) = MultiExpert::seeded(&cfg, 4, &Device::Cpu)?;
            // Non-trivial running statistics, through the original's train-mode passes.
            net.forward_t(&randn(&[4, 3, side, side], 9), true)?;
            let frozen = net.detached()?;
            let xs = randn(&[3, 3, side, side], 2);
            let (a, b) = (net.forward_t(&xs, false)?, frozen.forward_t(&xs, false)?);
            assert!(a.expert_logits.track_op(), "{kernels:?}");
            assert!(!b.expert_logits.track_op() && !b.features.track_op());
            assert_eq!(
                a.expert_logits.flatten_all()?.to_vec1::<f32>()?,
                b.expert_logits.flatten_all()?.to_vec1::<f32>()?,
                "{kernels:?}"
            );
            // Shared storage: a change to the VarMap (a load, an SGD step) reaches the copy.
            let data = varmap.data().lock().unwrap();
            let w = &data["backbone.conv1.weight"];
            w.set(&(w.as_tensor() * 0.5)?)?;
            drop(data);
            let (a, b) = (net.forward_t(&xs, false)?, frozen.forward_t(&xs, false)?);
            assert_eq!(
                a.logits.flatten_all()?.to_vec1::<f32>()?,
                b.logits.flatten_all()?.to_vec1::<f32>()?
            );
            // Gradients reach an input Var, none of the weights.
            let x = candle_core::Var::from_tensor(&xs)?;
            let grads = frozen
                .forward_t(x.as_tensor(), false)?
                .logits
                .sum_all()?
                .backward()?;
            assert!(grads.get(x.as_tensor()).is_some());
            for (name, var) in trainable_vars(&varmap) {
                assert!(grads.get(var.as_tensor()).is_none(), "{name}");
            }
        }
    }
    Ok(())
}

/// docs/ride.md §4 (ResNet-32 shared 24.04 M, reduced expert 25.44 M, RIDE-3 100.36 M) and docs/candle.md
/// §5.1 (plain ResNet-32 with FC 64→100: 68,868,352).
#[test]
fn resnet32_mac_counts() -> TestResult {
    let (_vm, net) = build(&BackboneConfig::baseline_cifar(100))?;
    let m = net.macs(32, 32, &[0])?;
    assert_eq!(m.total(), 68_868_352);
    assert_eq!(m.classifier, 6_400);
    let (_vm, net) = build(&BackboneConfig::ride_cifar(3, 100))?;
    let m = net.macs(32, 32, &[0, 1, 2])?;
    assert_eq!(m.trunk, 24_035_328);
    assert_eq!(m.per_expert, vec![25_440_960; 3]);
    assert_eq!(m.total(), 100_358_208);
    assert_eq!(net.macs(32, 32, &[1])?.total(), 24_035_328 + 25_440_960);
    let (_vm, net) = build(&BackboneConfig::tlc_cifar(3, 10))?;
    let m = net.macs(32, 32, &[0, 1, 2])?;
    // docs/tlc.md §1: ≈ 68.4 M per expert + 0.44 M stem ≈ 0.206 GMAC.
    assert_eq!(m.trunk, 442_368);
    assert_eq!((m.total() as f64 / 1e6).round(), 206.0);
    Ok(())
}

fn vm_shape(varmap: &VarMap, k: &str) -> Option<Vec<usize>> {
    varmap
        .data()
        .lock()
        .unwrap()
        .get(k)
        .map(|v| v.dims().to_vec())
}

/// torchvision's ResNet-50 / ResNeXt-50 32x4d with an FC head: 25,557,032 / 25,028,904
/// parameters, 4.09 / 4.23 GMACs at 224² (torchvision model docs).
#[test]
fn imagenet_single_branch_counts_match_torchvision() -> TestResult {
    for (arch, params, gmacs) in [
        (Arch::Resnet50, 25_557_032, 4.09),
        (Arch::Resnext50, 25_028_904, 4.23),
        (Arch::Resnet152, 60_192_808, 11.51),
    ] {
        let cfg = BackboneConfig {
            use_norm: false,
            ..BackboneConfig::new(arch, Layout::SharedLayer1, 1, 1000)
        };
        let (varmap, net) = build(&cfg)?;
        assert_eq!(num_trainable_params(&varmap), params, "{arch:?}");
        let m = net.macs(224, 224, &[0])?;
        assert_eq!(
            (m.total() as f64 / 1e7).round() / 100.0,
            gmacs,
            "{arch:?}: {}",
            m.total()
        );
        assert_eq!(
            vm_shape(&varmap, "backbone.layer4.0.downsample.0.weight"),
            Some(vec![2048, 1024, 1, 1])
        );
        assert_eq!(
            vm_shape(&varmap, "backbone.linear.weight"),
            Some(vec![1000, 2048])
        );
    }
    Ok(())
}

/// docs/tlc.md §1: ResNet-50, layer1..3 shared, layer4s per expert, NormedLinear(2048, 1000):
/// 8.54 M shared + 17.01 M per expert = 59.58 M with 3 experts; ≈ 3.28 + 0.81 GMAC per expert.
#[test]
fn tlc_imagenet_layout_counts() -> TestResult {
    let cfg = BackboneConfig::new(Arch::Resnet50, Layout::SharedLayer3, 3, 1000);
    let (varmap, net) = build(&cfg)?;
    assert_eq!(num_trainable_params(&varmap), 8_543_296 + 3 * 17_012_736);
    assert_eq!(
        vm_shape(&varmap, "backbone.layer3.5.conv3.weight"),
        Some(vec![1024, 256, 1, 1])
    );
    assert_eq!(
        vm_shape(&varmap, "backbone.layer4s.2.0.downsample.0.weight"),
        Some(vec![2048, 1024, 1, 1])
    );
    assert_eq!(
        vm_shape(&varmap, "backbone.linears.1.weight"),
        Some(vec![2048, 1000])
    );
    let m = net.macs(224, 224, &[0, 1, 2])?;
    assert_eq!((m.trunk as f64 / 1e7).round() / 100.0, 3.28);
    assert_eq!((m.total() as f64 / 1e7).round() / 100.0, 5.71);
    Ok(())
}

/// RIDE / SADE ResNeXt-50 reduced (docs/sade.md §6 shapes): forward on a tiny 64×64 image.
#[test]
fn ride_resnext50_keys_and_tiny_forward() -> TestResult {
    let cfg = BackboneConfig::ride_imagenet(Arch::Resnext50, 3, 7);
    let (varmap, net) = MultiExpert::seeded(&cfg, 5, &Device::Cpu)?;
    let expect = [
        ("backbone.conv1.weight", vec![64, 3, 7, 7]),
        ("backbone.layer1.0.conv1.weight", vec![128, 64, 1, 1]),
        ("backbone.layer1.1.conv1.weight", vec![128, 256, 1, 1]),
        ("backbone.layer1.0.conv2.weight", vec![128, 4, 3, 3]),
        ("backbone.layer1.0.downsample.0.weight", vec![256, 64, 1, 1]),
        ("backbone.layer2.3.conv2.weight", vec![256, 8, 3, 3]),
        ("backbone.layer2.0.downsample.1.running_mean", vec![512]),
        ("backbone.layer3s.0.0.conv1.weight", vec![384, 512, 1, 1]),
        ("backbone.layer3s.1.5.conv1.weight", vec![384, 768, 1, 1]),
        ("backbone.layer3s.2.0.conv2.weight", vec![384, 12, 3, 3]),
        (
            "backbone.layer3s.0.0.downsample.0.weight",
            vec![768, 512, 1, 1],
        ),
        ("backbone.layer4s.2.2.conv2.weight", vec![768, 24, 3, 3]),
        ("backbone.layer4s.0.0.conv3.weight", vec![1536, 768, 1, 1]),
        (
            "backbone.layer4s.1.0.downsample.0.weight",
            vec![1536, 768, 1, 1],
        ),
        ("backbone.linears.2.weight", vec![1536, 7]),
    ];
    for (k, s) in expect {
        assert_eq!(vm_shape(&varmap, k), Some(s), "{k}");
    }
    assert!(vm_shape(&varmap, "backbone.layer1.1.downsample.0.weight").is_none());
    assert!(vm_shape(&varmap, "backbone.layer3s.3.0.conv1.weight").is_none());
    // Fan-out init: conv1 std √(2/(49·64)).
    let w = varmap.data().lock().unwrap()["backbone.conv1.weight"]
        .as_tensor()
        .clone();
    let std = w.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    assert!(
        (std - (2.0f64 / (49.0 * 64.0)).sqrt()).abs() < 0.003,
        "{std}"
    );
    let out = net.forward_t(&randn(&[1, 3, 64, 64], 8), false)?;
    assert_eq!(out.expert_logits.dims(), &[1, 3, 7]);
    assert_eq!(out.features.dims(), &[1, 3, 1536]);
    Ok(())
}

/// A training step of the ImageNet networks backpropagates through the stem's 3/2/1 max pool
/// (candle's own max_pool2d has no gradient there), with the same gradients from the fast CPU
/// kernels and from stock ops.
#[test]
fn resnet50_tiny_train_step_reaches_every_var_with_either_kernels() -> TestResult {
    let mut grads_by_kernels = vec![];
    for kernels in [Kernels::Fast, Kernels::Stock] {
        let cfg = BackboneConfig {
            blocks_per_stage: Some(Blocks::Uniform(1)),
            kernels,
            ..BackboneConfig::ride_imagenet(Arch::Resnet50, 2, 4)
        };
        let (varmap, net) = MultiExpert::seeded(&cfg, 6, &Device::Cpu)?;
        // Square: candle 0.11's stock conv2d backward takes the output padding of both axes
        // from the height, so it fails on inputs whose H and W differ in parity after a stride.
        let out = net.forward_t(&randn(&[2, 3, 48, 48], 1), true)?;
        assert_eq!(out.expert_logits.dims(), &[2, 2, 4]);
        assert_eq!(out.features.dims(), &[2, 2, 1536]);
        let loss = (out.expert_logits * randn(&[2, 2, 4], 3))?.sum_all()?;
        let grads = loss.backward()?;
        let mut named = vec![];
        for (name, var) in trainable_vars(&varmap) {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{kernels:?}: no gradient for {name}"));
            named.push((name, g.clone()));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        grads_by_kernels.push(named);
    }
    let (fast, stock) = (&grads_by_kernels[0], &grads_by_kernels[1]);
    assert_eq!(fast.len(), stock.len());
    for ((name, f), (_, s)) in fast.iter().zip(stock) {
        let scale = s.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12);
        let err = max_abs_diff(f, s) / scale;
        assert!(
            err < 1e-3,
            "{name}: fast vs stock gradient rel. error {err}"
        );
    }
    let conv1 = fast
        .iter()
        .find(|(n, _)| n == "backbone.conv1.weight")
        .unwrap();
    assert!(
        conv1.1.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
        "no gradient reached the stem"
    );
    Ok(())
}

#[test]
fn config_serde_is_strict() -> TestResult {
    let cfg: BackboneConfig = serde_json::from_str(
        r#"{"arch": "resnet32", "layout": "per_expert_layer1", "num_experts": 3, "num_classes": 10,
            "blocks_per_stage": 2, "widths": [16, 32, 64]}"#,
    )?;
    assert_eq!(cfg.layout, Layout::PerExpertLayer1);
    assert_eq!(cfg.blocks(), vec![2, 2, 2]);
    assert_eq!(cfg.scale, 30.0);
    assert!(cfg.use_norm);
    let back: BackboneConfig = serde_json::from_str(&serde_json::to_string(&cfg)?)?;
    assert_eq!(back, cfg);
    let cfg: BackboneConfig = serde_json::from_str(
        r#"{"arch": "resnext50", "num_experts": 1, "num_classes": 10, "blocks_per_stage": [1, 1, 2, 1]}"#,
    )?;
    assert_eq!(cfg.blocks(), vec![1, 1, 2, 1]);
    let typo = serde_json::from_str::<BackboneConfig>(
        r#"{"arch": "resnet32", "num_experts": 3, "num_classes": 10, "num_expert": 2}"#,
    );
    assert!(typo.unwrap_err().to_string().contains("num_expert"));
    assert!(serde_json::from_str::<BackboneConfig>(
        r#"{"arch": "vgg", "num_experts": 3, "num_classes": 10}"#
    )
    .is_err());
    Ok(())
}

/// A checkpoint written by `VarMap::save` (no `num_batches_tracked`) loads back strictly and
/// reproduces the outputs bit for bit.
#[test]
fn varmap_checkpoint_round_trip() -> TestResult {
    let cfg = tiny_cfg(Layout::SharedLayer1);
    let (vm_a, net_a) = MultiExpert::seeded(&cfg, 21, &Device::Cpu)?;
    let xs = randn(&[2, 3, 8, 8], 4);
    net_a.forward_t(&xs, true)?; // move the running statistics away from 0 / 1
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ckpt.safetensors");
    vm_a.save(&path)?;
    let (vm_b, net_b) = MultiExpert::seeded(&cfg, 22, &Device::Cpu)?;
    let report = load_weights_file(&vm_b, &path)?;
    assert!(report.ignored.is_empty());
    assert_eq!(report.loaded.len(), vm_b.all_vars().len());
    assert_eq!(snapshot(&vm_a), snapshot(&vm_b));
    let (a, b) = (net_a.forward_t(&xs, false)?, net_b.forward_t(&xs, false)?);
    assert_eq!(max_abs_diff(&a.expert_logits, &b.expert_logits), 0.0);
    Ok(())
}

#[test]
fn init_rejects_unknown_parameters() -> TestResult {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    vb.get((2, 3, 4), "backbone.mystery")?;
    let err = init_weights(&varmap, &BackboneConfig::ride_cifar(3, 10), 0).unwrap_err();
    assert!(
        matches!(err, BackboneError::UnknownParameter { ref name, .. } if name == "backbone.mystery")
    );
    Ok(())
}

/// The sum over the ranks of a one-rank job: the tensor itself (its gradient passes through).
struct OneRank;

impl longtail_backbone::ops::RankSum for OneRank {
    fn sum_over_ranks(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        Ok(t.clone())
    }
}

/// Synchronised batch norm over one rank is per-rank batch norm: the same outputs, gradients
/// and running statistics as the fused train-mode kernels (it is computed with candle's ops in
/// two passes, so up to float rounding), and `set_sync_batch_norm(None)` turns it off again.
#[test]
fn sync_batch_norm_on_one_rank_is_batch_norm() -> TestResult {
    use longtail_backbone::ops::set_sync_batch_norm;
    let cfg = tiny_cfg(Layout::SharedLayer1);
    let run = |sync: bool| -> Result<(Tensor, Vec<Tensor>, Vec<f32>), BackboneError> {
        let (varmap, net) = MultiExpert::seeded(&cfg, 5, &Device::Cpu)?;
        if sync {
            set_sync_batch_norm(Some(std::rc::Rc::new(OneRank)));
        }
        let out = net.forward_t(&randn(&[6, 3, 8, 8], 8), true);
        let target = randn(&[6, 3, 5], 9);
        let grads = out.as_ref().map_err(|e| e.to_string()).and_then(|o| {
            (&o.expert_logits * &target)
                .and_then(|l| l.sum_all())
                .and_then(|l| l.backward())
                .map_err(|e| e.to_string())
        });
        if sync {
            assert!(set_sync_batch_norm(None).is_some());
        }
        let (out, grads) = (out?, grads.unwrap());
        let g = trainable_vars(&varmap)
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        let data = varmap.data().lock().unwrap();
        let rv = data["backbone.layer1.0.bn2.running_var"]
            .as_tensor()
            .to_vec1::<f32>()?;
        Ok((out.logits, g, rv))
    };
    let (y0, g0, rv0) = run(false)?;
    let (y1, g1, rv1) = run(true)?;
    assert!(max_abs_diff(&y0, &y1) < 1e-5, "{}", max_abs_diff(&y0, &y1));
    let mut worst = 0f32;
    for (a, b) in g0.iter().zip(&g1) {
        let scale = a.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        worst = worst.max(max_abs_diff(a, b) / scale);
    }
    eprintln!("worst relative gradient difference {worst:e}");
    assert!(worst < 1e-5, "{worst}");
    for (a, b) in rv0.iter().zip(&rv1) {
        assert!((a - b).abs() < 1e-5);
    }
    // Off again: the next train-mode forward is the fused kernel's.
    let (y2, _, _) = run(false)?;
    assert_eq!(max_abs_diff(&y0, &y2), 0.0);
    Ok(())
}
