//! Integration tests of `longtail-ride`: parity with the official RIDE loss, hand-computed
//! constants, expert-count variants, errors and presets.

use candle_core::{DType, Device, Tensor, Var};
use longtail_backbone::{Arch, Blocks};
use longtail_data::AugmentKind;
use longtail_fixtures::{json as read_json, load as load_fixture};
use longtail_ride::presets::PRESETS;
use longtail_ride::Ride;
use longtail_ride::{ldam_ce, RideError, RideLoss, RideLossConfig};
use longtail_train::{LrSchedule, MethodKind, RunConfig};

fn json_f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn cifar_lt_counts(dataset: &str, profile: &str) -> Vec<usize> {
    let json = read_json("cifar_lt_ldam_profile_counts.json");
    json["profiles"][dataset][profile]["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|x| x.as_u64().expect("count") as usize)
        .collect()
}

fn cifar_config() -> RideLossConfig {
    RideLossConfig {
        diversity_factor: -0.45,
        reweight_epoch: Some(160),
        ..RideLossConfig::default()
    }
}

/// Deterministic pseudo-random logits in [-30, 30] (`s·cos`), shape [B, E, C].
fn lcg_logits(b: usize, e: usize, c: usize, seed: u64) -> Tensor {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..b * e * c)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            30.0 * (2.0 * u - 1.0)
        })
        .collect();
    Tensor::from_vec(data, (b, e, c), &Device::Cpu).unwrap()
}

fn max_violation(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() - (atol + rtol * w.abs()))
        .fold(f32::MIN, f32::max)
}

/// Expected: fixtures/official/ride_loss_c10.safetensors, made by the official `RIDELoss`
/// (`additional_diversity_factor=-0.45, reweight=True, reweight_epoch=160`, other arguments
/// default) on E = 3, B = 32, C = 10 logits from `torch.Generator().manual_seed(201)`, at epochs
/// 1 and 170; the recipe is in ride_loss_c10.json beside it. Fixture logits are [E, B, C];
/// ours are [B, E, C].
#[test]
fn ride_loss_matches_official_values_and_gradients() {
    let fx = load_fixture("ride_loss_c10.safetensors");
    let counts: Vec<usize> = fx["cls_num_list"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|n| n as usize)
        .collect();
    let targets = fx["targets"].clone();
    assert_eq!(targets.dtype(), DType::I64);
    let logits = Var::from_tensor(
        &fx["expert_logits"]
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap(),
    )
    .unwrap();
    let mut loss = RideLoss::new(&cifar_config(), &counts, &Device::Cpu).unwrap();
    for epoch in [1usize, 170] {
        loss.begin_epoch(epoch);
        let value = loss.forward(logits.as_tensor(), &targets).unwrap();
        let got = value.to_scalar::<f32>().unwrap();
        let want = fx[&format!("loss_epoch{epoch}")]
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("epoch {epoch}: loss {got} vs official {want}");
        assert!(
            (got - want).abs() <= 1e-4 + 1e-6 * want.abs(),
            "epoch {epoch}: loss {got} vs official {want}"
        );
        let grads = value.backward().unwrap();
        let grad = grads
            .get(logits.as_tensor())
            .expect("gradient of the logits");
        let got = grad
            .transpose(0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = fx[&format!("grad_epoch{epoch}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let v = max_violation(&got, &want, 1e-6, 1e-5);
        let max_abs = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        eprintln!("epoch {epoch}: max |grad diff| {max_abs:e}");
        assert!(v <= 0.0, "epoch {epoch}: gradient off tolerance by {v}");
    }
}

/// The derived constants equal the official float32 ones listed in ride_loss_c10.json.
#[test]
fn constants_match_official_cifar10_json() {
    let json = read_json("ride_loss_c10.json");
    let counts = cifar_lt_counts("cifar10_lt", "if100");
    let loss = RideLoss::new(&cifar_config(), &counts, &Device::Cpu).unwrap();
    let k = &json["derived_constants_float32"];
    let pairs: [(&[f64], Vec<f64>); 3] = [
        (loss.margins(), json_f64s(&k["m_list (LDAM margin per class, before x30)"])),
        (
            loss.drw_weights(),
            json_f64s(&k["per_cls_weights_enabled (DRW CE weights, used when epoch > 160)"]),
        ),
        (
            loss.class_temperatures(),
            json_f64s(&k["per_cls_weights_enabled_diversity (per-class diversity temperature T_c, used when epoch > 160)"]),
        ),
    ];
    for (got, want) in pairs {
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{g} vs official {w}"
            );
        }
    }
    let t_mean = k["mean T_c (temperature_mean after epoch 160; 1 before)"]
        .as_f64()
        .unwrap();
    assert!((loss.mean_class_temperature() - t_mean).abs() < 1e-6);
}

/// CIFAR-10-LT numbers of docs/ride.md §3 "Derived numbers" (4 decimals).
#[test]
fn cifar10_margins_and_temperatures_match_spec() {
    let loss = RideLoss::new(
        &cifar_config(),
        &[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
        &Device::Cpu,
    )
    .unwrap();
    let margins = [
        0.1581, 0.1797, 0.2042, 0.2321, 0.2638, 0.2998, 0.3407, 0.3872, 0.4405, 0.5,
    ];
    let temps = [
        1.0, 0.9299, 0.8879, 0.8627, 0.8476, 0.8385, 0.8331, 0.8299, 0.8279, 0.8267,
    ];
    for (g, w) in loss.margins().iter().zip(margins) {
        assert!((g - w).abs() < 6e-5, "margin {g} vs {w}");
    }
    for (g, w) in loss.class_temperatures().iter().zip(temps) {
        assert!((g - w).abs() < 6e-5, "temperature {g} vs {w}");
    }
}

/// CIFAR-100-LT IF 100 (n_i = floor(500·0.01^(i/99))): margins 0.1581 … 0.5, DRW weights
/// 0.0449 … 4.378, T from 1.0 to 0.8067, T̄ = 0.8471 (docs/ride.md §3 "Derived numbers").
#[test]
fn cifar100_constants_match_hand_computed() {
    let counts: Vec<usize> = (0..100)
        .map(|i| (500.0 * 0.01f64.powf(i as f64 / 99.0)) as usize)
        .collect();
    assert_eq!(counts, cifar_lt_counts("cifar100_lt", "if100"));
    assert_eq!(counts.iter().sum::<usize>(), 10_847);
    let loss = RideLoss::new(&cifar_config(), &counts, &Device::Cpu).unwrap();
    let close = |g: f64, w: f64, tol: f64| assert!((g - w).abs() < tol, "{g} vs {w}");
    close(loss.margins()[0], 0.1581, 6e-5);
    close(loss.margins()[99], 0.5, 1e-12);
    close(loss.drw_weights()[0], 0.0449, 6e-5);
    close(loss.drw_weights()[99], 4.378, 6e-4);
    close(loss.drw_weights().iter().sum(), 100.0, 1e-9);
    close(loss.class_temperatures()[0], 1.0, 1e-12);
    close(loss.class_temperatures()[99], 0.8067, 6e-5);
    close(loss.mean_class_temperature(), 0.8471, 6e-5);
    // Monotone: rarer classes get larger margins and weights and sharper temperatures.
    for j in 1..100 {
        assert!(loss.margins()[j] >= loss.margins()[j - 1]);
        assert!(loss.drw_weights()[j] >= loss.drw_weights()[j - 1]);
        assert!(loss.class_temperatures()[j] <= loss.class_temperatures()[j - 1]);
    }
}

/// DRW and per-class temperatures switch on exactly at epoch `reweight_epoch + 1` (1-based).
#[test]
fn reweighting_switches_on_after_reweight_epoch() {
    let fx = load_fixture("ride_loss_c10.safetensors");
    let counts = cifar_lt_counts("cifar10_lt", "if100");
    let logits = fx["expert_logits"]
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap();
    let targets = &fx["targets"];
    let mut loss = RideLoss::new(&cifar_config(), &counts, &Device::Cpu).unwrap();
    let value = |loss: &RideLoss| {
        loss.forward(&logits, targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let before = fx["loss_epoch1"].to_scalar::<f32>().unwrap();
    let after = fx["loss_epoch170"].to_scalar::<f32>().unwrap();
    for epoch in [1usize, 159, 160] {
        loss.begin_epoch(epoch);
        assert!(!loss.is_reweighting(), "epoch {epoch}");
        assert_eq!(loss.active_temperature_mean(), 1.0);
        assert!((value(&loss) - before).abs() < 1e-4);
    }
    for epoch in [161usize, 200] {
        loss.begin_epoch(epoch);
        assert!(loss.is_reweighting(), "epoch {epoch}");
        assert!((value(&loss) - after).abs() < 1e-4);
    }
    // Without a reweight epoch it never switches.
    let mut never = RideLoss::new(&RideLossConfig::default(), &counts, &Device::Cpu).unwrap();
    never.begin_epoch(10_000);
    assert!(!never.is_reweighting());
}

/// With one expert the mean equals the expert, so the diversity term is 0 and the loss is the
/// plain LDAM cross-entropy; with E = 2 and 6 the loss is finite and has finite gradients.
#[test]
fn expert_count_variants() {
    let counts = [300usize, 120, 40, 9, 3];
    let targets = Tensor::new(&[0u32, 1, 2, 3, 4, 4, 0, 2], &Device::Cpu).unwrap();
    for epoch in [1usize, 170] {
        let mut loss = RideLoss::new(&cifar_config(), &counts, &Device::Cpu).unwrap();
        loss.begin_epoch(epoch);
        let one = lcg_logits(8, 1, 5, 7);
        let got = loss
            .forward(&one, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let weights = loss.is_reweighting().then(|| loss.drw_weights().to_vec());
        let want = ldam_ce(
            &one.squeeze(1).unwrap(),
            &targets,
            loss.margins(),
            30.0,
            weights.as_deref(),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!(
            (got - want).abs() < 1e-5,
            "E = 1, epoch {epoch}: {got} vs LDAM CE {want}"
        );
        for e in [2usize, 6] {
            let z = Var::from_tensor(&lcg_logits(8, e, 5, e as u64)).unwrap();
            let value = loss.forward(z.as_tensor(), &targets).unwrap();
            assert!(value.to_scalar::<f32>().unwrap().is_finite());
            let grad = value
                .backward()
                .unwrap()
                .get(z.as_tensor())
                .unwrap()
                .clone();
            assert_eq!(grad.dims(), &[8, e, 5]);
            let g = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0));
        }
    }
}

/// λ = 0 keeps each expert's own cross-entropy (differs from official, RIDE issue #7), and a
/// negative λ lowers the loss when experts disagree (it rewards divergence from the mean).
#[test]
fn zero_diversity_factor_keeps_individual_losses() {
    let counts = [50usize, 20, 5];
    let targets = Tensor::new(&[0u32, 1, 2, 1], &Device::Cpu).unwrap();
    let z = lcg_logits(4, 3, 3, 11);
    let cfg = RideLossConfig {
        diversity_factor: 0.0,
        ..cifar_config()
    };
    let loss = RideLoss::new(&cfg, &counts, &Device::Cpu).unwrap();
    let got = loss
        .forward(&z, &targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let mut want = 0.0;
    for e in 0..3 {
        let ze = z.narrow(1, e, 1).unwrap().squeeze(1).unwrap();
        want += ldam_ce(&ze, &targets, loss.margins(), 30.0, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    }
    assert!((got - want).abs() < 1e-4, "{got} vs Σ_e LDAM CE {want}");
    // The official fallback (CE on the mean logits, times E) would give a different value.
    let mean = z.mean(1).unwrap();
    let collab = 3.0
        * ldam_ce(&mean, &targets, loss.margins(), 30.0, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    assert!((got - collab).abs() > 1e-2);
    let diverse = RideLoss::new(&cifar_config(), &counts, &Device::Cpu).unwrap();
    let with_div = diverse
        .forward(&z, &targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        with_div < got,
        "λ < 0 should lower the loss: {with_div} vs {got}"
    );
}

#[test]
fn bad_inputs_give_typed_errors() {
    let dev = Device::Cpu;
    let cfg = RideLossConfig::default();
    assert!(matches!(
        RideLoss::new(&cfg, &[], &dev),
        Err(RideError::NoClasses)
    ));
    assert!(matches!(
        RideLoss::new(&cfg, &[4, 0, 2], &dev),
        Err(RideError::EmptyClass { class: 1 })
    ));
    let bad = RideLossConfig {
        max_margin: f64::INFINITY,
        ..cfg.clone()
    };
    assert!(matches!(
        RideLoss::new(&bad, &[4, 2], &dev),
        Err(RideError::NonFinite {
            field: "max_margin",
            ..
        })
    ));
    let bad = RideLossConfig {
        reweight_factor: 1.5,
        ..cfg.clone()
    };
    assert!(matches!(
        RideLoss::new(&bad, &[4, 2], &dev),
        Err(RideError::OutOfRange {
            field: "reweight_factor",
            ..
        })
    ));
    let loss = RideLoss::new(&cfg, &[4, 2, 1], &dev).unwrap();
    let z = Tensor::zeros((2, 3, 3), DType::F32, &dev).unwrap();
    let err = loss
        .forward(&z, &Tensor::new(&[0u32, 3], &dev).unwrap())
        .unwrap_err();
    assert!(
        err.to_string().contains("target 3 at batch position 1"),
        "{err}"
    );
    let err = loss
        .forward(&z, &Tensor::new(&[0i64, -1], &dev).unwrap())
        .unwrap_err();
    assert!(
        err.to_string().contains("target -1 at batch position 1"),
        "{err}"
    );
    let err = loss
        .forward(&z, &Tensor::new(&[0u32], &dev).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("targets: expected [2]"), "{err}");
    let wrong_c = Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
    let err = loss
        .forward(&wrong_c, &Tensor::new(&[0u32, 1], &dev).unwrap())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("expert logits: expected [B, E, 3]"),
        "{err}"
    );
    let flat = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    assert!(loss
        .forward(&flat, &Tensor::new(&[0u32, 1], &dev).unwrap())
        .is_err());
    let json = r#"{"max_margin": 0.5, "scal": 30.0}"#;
    assert!(
        serde_json::from_str::<RideLossConfig>(json).is_err(),
        "unknown field accepted"
    );
}

#[test]
fn loss_config_deserialises_with_defaults() {
    let cfg: RideLossConfig =
        serde_json::from_str(r#"{"diversity_factor": -0.45, "reweight_epoch": 160}"#).unwrap();
    assert_eq!(cfg, cifar_config());
}

fn preset(name: &str) -> RunConfig {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no preset {name}"))
        .config()
}

fn loss_of(c: &RunConfig) -> RideLossConfig {
    c.method.settings().unwrap()
}

fn steps_of(c: &RunConfig) -> (usize, [usize; 2], f64) {
    match c.optim.schedule {
        LrSchedule::Steps {
            warmup,
            step1,
            step2,
            gamma,
        } => (warmup, [step1, step2], gamma),
        ref other => panic!("not a step schedule: {other:?}"),
    }
}

#[test]
fn presets_are_complete_and_valid() {
    let mut names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
    for p in PRESETS {
        assert!(p.name.starts_with("ride."), "{}", p.name);
        let r = p.config();
        Ride.check(&r).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        r.check_common()
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert!(r.optim.epochs > 0 && r.optim.batch_size > 0 && r.optim.lr > 0.0);
        assert!(r.model.num_experts >= 2 && r.model.num_classes >= 2);
        let (_, milestones, _) = steps_of(&r);
        assert!(milestones[0] < milestones[1] && milestones[1] < r.optim.epochs);
        let epoch = loss_of(&r)
            .reweight_epoch
            .expect("every RIDE recipe re-weights");
        assert!(
            epoch < r.optim.epochs,
            "{}: re-weighting must happen before the end",
            p.name
        );
        let toml = r.to_toml().unwrap();
        assert_eq!(RunConfig::from_toml(&toml).unwrap(), r);
        assert_eq!(r.method.name, "ride");
        // RIDE's CIFAR recipe on the in-memory sets; the official resized-crop recipes on the
        // streamed benchmarks (docs/ride.md §6).
        let official = match r.data.dataset.as_str() {
            "imagenet-lt" | "places-lt" => AugmentKind::Imagenet,
            "inat2018" => AugmentKind::ResizedCropFlip,
            _ => AugmentKind::Standard,
        };
        assert_eq!(r.data.augment, official, "{}", p.name);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), PRESETS.len(), "duplicate preset names");
    for want in [
        "ride.cifar100-lt",
        "ride.cifar10-lt",
        "ride.imagenet-lt",
        "ride.inat2018",
        "ride.fmnist-lt",
    ] {
        assert!(names.contains(&want), "missing {want}");
    }
}

/// The official values of docs/ride.md §3 "Config values" and §5.
#[test]
fn presets_hold_official_values() {
    let c = preset("ride.cifar100-lt");
    assert_eq!(
        (c.model.arch, c.model.num_experts, c.model.reduce_dimension),
        (Arch::Resnet32, 3, true)
    );
    assert_eq!(c.model.blocks_per_stage, Some(Blocks::Uniform(5)));
    assert_eq!((c.optim.epochs, c.optim.batch_size), (200, 128));
    assert_eq!(
        (
            c.optim.lr,
            c.optim.sgd.weight_decay,
            c.optim.sgd.momentum,
            c.optim.sgd.nesterov
        ),
        (0.1, 5e-4, 0.9, true)
    );
    assert_eq!(steps_of(&c), (5, [160, 180], 0.01));
    assert_eq!(loss_of(&c), cifar_config());
    assert_eq!(c.model.num_classes, 100);
    assert_eq!(
        (c.data.dataset.as_str(), c.data.imbalance),
        ("cifar100-lt", 100.0)
    );

    let i = preset("ride.imagenet-lt");
    assert_eq!(i.model.arch, Arch::Resnext50);
    assert_eq!(
        (
            i.optim.epochs,
            i.optim.batch_size,
            i.optim.lr,
            i.optim.sgd.weight_decay
        ),
        (100, 256, 0.1, 2e-4)
    );
    assert_eq!(steps_of(&i), (5, [60, 80], 0.1));
    let il = loss_of(&i);
    assert_eq!(
        (il.diversity_factor, il.reweight_epoch, il.reweight_factor),
        (-0.2, Some(80), 0.02)
    );

    let n = preset("ride.inat2018");
    assert_eq!((n.model.arch, n.model.num_classes), (Arch::Resnet50, 8142));
    assert_eq!(
        (n.optim.batch_size, n.optim.lr, n.optim.sgd.weight_decay),
        (512, 0.2, 2e-4)
    );
    let nl = loss_of(&n);
    assert_eq!(
        (nl.diversity_factor, nl.reweight_epoch, nl.reweight_factor),
        (-0.2, Some(80), 0.015)
    );

    let ten = preset("ride.cifar10-lt");
    assert_eq!(
        (loss_of(&ten), ten.optim.clone()),
        (loss_of(&c), c.optim.clone())
    );
    assert_eq!(ten.model.num_classes, 10);

    let f = preset("ride.fmnist-lt");
    assert_eq!(
        (f.model.blocks_per_stage.clone(), f.model.in_channels),
        (Some(Blocks::Uniform(1)), 1)
    );
    assert_eq!((f.optim.epochs, loss_of(&f).reweight_epoch), (48, Some(32)));
    assert_eq!(steps_of(&f), (2, [32, 40], 0.1));
}

/// The loss also runs in f64; it then matches the official code evaluated in float64 on the
/// same inputs (`*_f64ref`, constants kept at their float32 values) much more tightly.
#[test]
fn ride_loss_in_f64_matches_official_f64_reference() {
    let fx = load_fixture("ride_loss_c10.safetensors");
    let counts = cifar_lt_counts("cifar10_lt", "if100");
    let z = fx["expert_logits"].to_dtype(DType::F64).unwrap();
    let logits = Var::from_tensor(&z.transpose(0, 1).unwrap().contiguous().unwrap()).unwrap();
    let mut loss = RideLoss::new(&cifar_config(), &counts, &Device::Cpu).unwrap();
    for epoch in [1usize, 170] {
        loss.begin_epoch(epoch);
        let value = loss.forward(logits.as_tensor(), &fx["targets"]).unwrap();
        assert_eq!(value.dtype(), DType::F64);
        let got = value.to_scalar::<f64>().unwrap();
        let want = fx[&format!("loss_epoch{epoch}_f64ref")]
            .to_scalar::<f64>()
            .unwrap();
        let loss_diff = (got - want).abs();
        let grads = value.backward().unwrap();
        let grad = grads.get(logits.as_tensor()).unwrap();
        let got = grad
            .transpose(0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let want = fx[&format!("grad_epoch{epoch}_f64ref")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let max = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f64::max);
        eprintln!("f64 epoch {epoch}: |loss diff| {loss_diff:e}, max |grad diff| {max:e}");
        assert!(
            loss_diff < 2e-6,
            "epoch {epoch}: loss differs from the f64 reference by {loss_diff}"
        );
        assert!(max < 1e-8, "epoch {epoch}: gradient differs by {max}");
    }
}

// ---------------------------------------------------------------- stage-2 router (docs/ride.md §4)

mod router {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use longtail_ride::{ExpertRouter, RideError, RouterConfig};

    type R = Result<(), Box<dyn std::error::Error>>;

    fn cfg(e: usize, d: usize, c: usize, k: usize) -> RouterConfig {
        RouterConfig {
            num_experts: e,
            feature_dim: d,
            num_classes: c,
            top_k: k,
            pos_weight: 100.0,
        }
    }

    /// A router with every weight 0 except the shared fc's, set to `fc_w` and `fc_b`.
    fn router_with_fc(
        c: &RouterConfig,
        fc_w: &[f32],
        fc_b: f32,
    ) -> Result<(VarMap, ExpertRouter), Box<dyn std::error::Error>> {
        let vm = VarMap::new();
        let r = ExpertRouter::new(
            c,
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu).pp("backbone"),
        )?;
        let data = vm.data().lock().unwrap();
        data["backbone.expert_help_pred_fc.weight"].set(&Tensor::from_slice(
            fc_w,
            (1, fc_w.len()),
            &Device::Cpu,
        )?)?;
        data["backbone.expert_help_pred_fc.bias"].set(&Tensor::new(&[fc_b], &Device::Cpu)?)?;
        drop(data);
        Ok((vm, r))
    }

    #[test]
    fn official_names_shapes_and_seeded_init() -> R {
        let c = RouterConfig::official(3, 48, 100);
        assert_eq!((c.top_k, c.pos_weight), (30, 100.0));
        assert_eq!(RouterConfig::official(3, 1536, 1000).top_k, 50);
        assert_eq!(
            RouterConfig::official(3, 48, 10).top_k,
            10,
            "k is capped at C (issue #28)"
        );
        let (vm, _) = ExpertRouter::seeded(&c, 3, &Device::Cpu)?;
        let data = vm.data().lock().unwrap();
        let mut shapes: Vec<(String, Vec<usize>)> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        shapes.sort();
        assert_eq!(
            shapes,
            vec![
                ("backbone.expert_help_pred_fc.bias".into(), vec![1]),
                ("backbone.expert_help_pred_fc.weight".into(), vec![1, 46]),
                (
                    "backbone.expert_help_pred_hidden_fcs.0.bias".into(),
                    vec![16]
                ),
                (
                    "backbone.expert_help_pred_hidden_fcs.0.weight".into(),
                    vec![16, 48]
                ),
                (
                    "backbone.expert_help_pred_hidden_fcs.1.bias".into(),
                    vec![16]
                ),
                (
                    "backbone.expert_help_pred_hidden_fcs.1.weight".into(),
                    vec![16, 48]
                ),
            ]
        );
        // docs/ride.md §2: the EA head adds 1,615 parameters for E = 3.
        let params: usize = shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, 1615);
        let w = data["backbone.expert_help_pred_hidden_fcs.0.weight"]
            .as_tensor()
            .clone();
        let std = w.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        assert!(
            (std - (2.0f32 / 48.0).sqrt()).abs() < 0.03,
            "Kaiming std {std}"
        );
        let (vm2, _) = ExpertRouter::seeded(&c, 3, &Device::Cpu)?;
        let w2 = vm2.data().lock().unwrap()["backbone.expert_help_pred_hidden_fcs.0.weight"]
            .as_tensor()
            .clone();
        assert_eq!(
            w.to_vec2::<f32>()?,
            w2.to_vec2::<f32>()?,
            "same seed, same weights"
        );
        Ok(())
    }

    #[test]
    fn targets_mark_a_wrong_ensemble_that_a_larger_one_fixes() -> R {
        // E = 3, C = 3, label 0 for every sample; rows of [e0, e1, e2] logits.
        let rows: [[[f32; 3]; 3]; 5] = [
            [[5., 0., 0.], [0., 0., 0.], [0., 0., 0.]], // right from expert 0 on
            [[0., 1., 0.], [3., 0., 0.], [0., 0., 0.]], // wrong, fixed by e0+e1
            [[0., 1., 0.], [0., 1., 0.], [9., 0., 0.]], // fixed only by all three
            [[0., 1., 0.], [0., 1., 0.], [0., 1., 0.]], // never right
            [[0., 1., 0.], [3., 0., 0.], [0., 9., 0.]], // right at 2 experts, wrong at 3
        ];
        let flat: Vec<f32> = rows.iter().flatten().flatten().copied().collect();
        let logits = Tensor::from_vec(flat, (5, 3, 3), &Device::Cpu)?;
        let y = Tensor::new(&[0u32; 5], &Device::Cpu)?;
        let t = ExpertRouter::targets(&logits, &y)?.to_vec2::<f32>()?;
        assert_eq!(
            t,
            vec![
                vec![0., 0.],
                vec![1., 0.],
                vec![1., 1.],
                vec![0., 0.],
                vec![1., 0.]
            ]
        );
        assert!(matches!(
            ExpertRouter::targets(&logits, &Tensor::new(&[0u32, 0, 3, 0, 0], &Device::Cpu)?),
            Err(RideError::TargetOutOfRange {
                index: 2,
                target: 3,
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn loss_is_bce_with_pos_weight_averaged_over_steps() -> R {
        // Hidden weights 0 → the logit is fc_w · top-k + fc_b; top-1 only (k = 1).
        let c = cfg(3, 2, 3, 1);
        let (_vm, r) = router_with_fc(
            &c,
            &[
                0.5, 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
            ],
            -1.0,
        )?;
        let rows: [[[f32; 3]; 3]; 2] = [
            [[0., 2., 0.], [4., 0., 0.], [0., 0., 0.]], // t = [1, 0]
            [[3., 0., 0.], [1., 0., 0.], [0., 0., 1.]], // t = [0, 0]
        ];
        let flat: Vec<f32> = rows.iter().flatten().flatten().copied().collect();
        let logits = Tensor::from_vec(flat, (2, 3, 3), &Device::Cpu)?;
        let feats = Tensor::ones((2, 3, 2), DType::F32, &Device::Cpu)?;
        let y = Tensor::new(&[0u32, 0], &Device::Cpu)?;
        let got = r.loss(&logits, &feats, &y)?.to_scalar::<f32>()? as f64;
        // Hand computation: x = 0.5·max(running mean) − 1.
        let sp = |z: f64| (1.0 + z.exp()).ln();
        let bce = |x: f64, t: f64| 100.0 * t * sp(-x) + (1.0 - t) * sp(x);
        // sample 0: step 0 mean = [0,2,0] → x = 0; step 1 mean = [2,1,0] → x = 0.
        // sample 1: step 0 mean = [3,0,0] → x = 0.5; step 1 mean = [2,0,0] → x = 0.
        let step0 = (bce(0.0, 1.0) + bce(0.5, 0.0)) / 2.0;
        let step1 = (bce(0.0, 0.0) + bce(0.0, 0.0)) / 2.0;
        let want = (step0 + step1) / 2.0;
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        // Finite for huge logits (softplus form, no log(0)).
        let (_vm, big) = router_with_fc(
            &c,
            &[
                1e4, 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
            ],
            0.0,
        )?;
        assert!(big
            .loss(&logits, &feats, &y)?
            .to_scalar::<f32>()?
            .is_finite());
        Ok(())
    }

    #[test]
    fn routing_runs_later_experts_only_for_unsure_samples() -> R {
        // Decision: continue iff 2 − top1(running mean) > 0, i.e. while the ensemble is unsure.
        let c = cfg(3, 2, 3, 1);
        let (_vm, r) = router_with_fc(
            &c,
            &[
                -1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
            ],
            2.0,
        )?;
        // Per sample, per expert logits: sample 0 confident at once, 1 after two experts, 2 never.
        let table: [[[f32; 3]; 3]; 3] = [
            [[5., 0., 0.], [0., 0., 7.], [0., 0., 7.]],
            [[1., 0., 0.], [0., 4., 0.], [0., 0., 9.]],
            [[1., 0., 0.], [1., 0., 0.], [1., 0., 0.]],
        ];
        let mut calls: Vec<(usize, Vec<u32>)> = vec![];
        let routed = r.route(3, |e, rows: &[u32]| {
            calls.push((e, rows.to_vec()));
            let l: Vec<f32> = rows.iter().flat_map(|&i| table[i as usize][e]).collect();
            Ok((
                Tensor::from_vec(l, (rows.len(), 3), &Device::Cpu)?,
                Tensor::ones((rows.len(), 2), DType::F32, &Device::Cpu)?,
            ))
        })?;
        assert_eq!(
            calls,
            vec![(0, vec![0, 1, 2]), (1, vec![1, 2]), (2, vec![2])]
        );
        // Sample 1: mean of e0+e1 = [0.5, 2, 0] → top1 2 → stop (2 − 2 = 0 is not > 0).
        assert_eq!(routed.experts_used, vec![1, 2, 3]);
        let got = routed.logits.to_vec2::<f32>()?;
        assert_eq!(got[0], vec![5., 0., 0.]);
        assert_eq!(got[1], vec![0.5, 2., 0.]);
        assert_eq!(got[2], vec![1., 0., 0.]);
        Ok(())
    }

    #[test]
    fn step_logit_is_fc_of_sorted_top_k_then_relu_hidden_of_normalised_features() -> R {
        let dev = Device::Cpu;
        let c = cfg(2, 2, 3, 2);
        let mut fc = vec![0f32; 18];
        fc[0] = 0.5; // top-1
        fc[1] = 0.25; // top-2
        fc[2] = 2.0; // hidden 0
        fc[3] = 7.0; // hidden 1 (clipped by the ReLU below)
        let (vm, r) = router_with_fc(&c, &fc, 0.0)?;
        let data = vm.data().lock().unwrap();
        let mut w = vec![0f32; 32];
        w[0] = 1.0; // hidden 0 reads feature 0
        w[3] = 1.0; // hidden 1 reads feature 1
        data["backbone.expert_help_pred_hidden_fcs.0.weight"].set(&Tensor::from_vec(
            w,
            (16, 2),
            &dev,
        )?)?;
        let mut b = vec![0f32; 16];
        b[0] = 0.1;
        b[1] = -1.0;
        data["backbone.expert_help_pred_hidden_fcs.0.bias"].set(&Tensor::from_vec(b, 16, &dev)?)?;
        drop(data);
        // features [3, 4] → [0.6, 0.8]; hidden = relu([0.7, −0.2]) = [0.7, 0]; top-2 of [1, 3, 2] = [3, 2].
        let x = r.step_logits(
            0,
            &Tensor::new(&[[3f32, 4.]], &dev)?,
            &Tensor::new(&[[1f32, 3., 2.]], &dev)?,
        )?;
        let got = x.to_vec1::<f32>()?[0];
        assert!(
            (got - (0.5 * 3.0 + 0.25 * 2.0 + 2.0 * 0.7)).abs() < 1e-6,
            "{got}"
        );
        Ok(())
    }

    #[test]
    fn bad_settings_and_shapes_are_typed_errors() -> R {
        let dev = Device::Cpu;
        let vb = || VarBuilder::zeros(DType::F32, &dev);
        assert!(matches!(
            ExpertRouter::new(&cfg(1, 4, 5, 2), vb()),
            Err(RideError::OutOfRange {
                field: "num_experts",
                ..
            })
        ));
        assert!(matches!(
            ExpertRouter::new(&cfg(3, 4, 5, 6), vb()),
            Err(RideError::OutOfRange { field: "top_k", .. })
        ));
        let mut bad = cfg(3, 4, 5, 2);
        bad.pos_weight = f64::NAN;
        assert!(matches!(
            ExpertRouter::new(&bad, vb()),
            Err(RideError::NonFinite {
                field: "pos_weight",
                ..
            })
        ));
        let r = ExpertRouter::new(&cfg(3, 4, 5, 2), vb())?;
        let f = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let m = Tensor::zeros((2, 5), DType::F32, &dev)?;
        assert!(matches!(
            r.step_logits(0, &f, &m),
            Err(RideError::Shape {
                what: "features",
                ..
            })
        ));
        assert!(matches!(
            r.step_logits(2, &f, &m),
            Err(RideError::OutOfRange { .. })
        ));
        Ok(())
    }
}

// ---------------------------------------------------- distillation from a 6-expert teacher (§4)

mod distill;
