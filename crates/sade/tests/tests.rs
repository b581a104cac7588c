//! Integration tests of `longtail-sade`: parity with the official SADE loss, the inverse prior
//! and its tie-break, errors and presets.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use longtail_backbone::{Arch, Blocks};
use longtail_data::AugmentKind;
use longtail_fixtures::{json as read_json, load as load_fixture};
use longtail_sade::presets::{PLACES_BACKBONE_LR, PLACES_PRETRAINED, PRESETS};
use longtail_sade::{inverse_prior, SadeError, SadeLoss, SadeLossConfig};
use longtail_sade::{Sade, SadeSettings};
use longtail_train::{LrSchedule, MethodKind, RunConfig};

fn json_f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn fixture_counts(fx: &HashMap<String, Tensor>) -> Vec<usize> {
    fx["cls_num_list"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|n| n as usize)
        .collect()
}

/// Expected: fixtures/official/sade_loss_c10.safetensors, made by the official
/// `DiverseExpertLoss(cls_num_list, tau=2)` on E = 3, B = 32, C = 10 logits from
/// `torch.Generator().manual_seed(201)`; the recipe is in sade_loss_c10.json beside it. SADE has
/// no epoch hook, so both stored epochs are the same. Fixture logits are [E, B, C]; ours [B, E, C].
#[test]
fn sade_loss_matches_official_values_and_gradients() {
    let fx = load_fixture("sade_loss_c10.safetensors");
    let loss = SadeLoss::new(
        &SadeLossConfig { tau: 2.0 },
        &fixture_counts(&fx),
        &Device::Cpu,
    )
    .unwrap();
    let logits = Var::from_tensor(
        &fx["expert_logits"]
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(fx["targets"].dtype(), DType::I64);
    for epoch in [1usize, 170] {
        let value = loss.forward(logits.as_tensor(), &fx["targets"]).unwrap();
        let got = value.to_scalar::<f32>().unwrap();
        let want = fx[&format!("loss_epoch{epoch}")]
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("epoch {epoch}: loss {got} vs official {want}");
        assert!(
            (got - want).abs() <= 1e-4 + 1e-6 * want.abs(),
            "loss {got} vs official {want}"
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
        let mut max_abs = 0f32;
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-6 + 1e-5 * w.abs(),
                "gradient {g} vs official {w}"
            );
            max_abs = max_abs.max((g - w).abs());
        }
        eprintln!("epoch {epoch}: max |grad diff| {max_abs:e}");
    }
}

/// Prior, inverse prior and the experts' offsets equal the official float32 constants in
/// sade_loss_c10.json.
#[test]
fn constants_match_official_json() {
    let json = read_json("sade_loss_c10.json");
    let counts: Vec<usize> = json["cls_num_list"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let loss = SadeLoss::new(&SadeLossConfig { tau: 2.0 }, &counts, &Device::Cpu).unwrap();
    let k = &json["derived_constants_float32"];
    let pairs: [(&[f64], Vec<f64>, f64); 4] = [
        (loss.prior(), json_f64s(&k["prior"]), 1e-7),
        (loss.inverse_prior(), json_f64s(&k["inverse_prior"]), 1e-7),
        (
            loss.offsets(1).unwrap(),
            json_f64s(&k["expert2 additive offset log(prior + 1e-9)"]),
            1e-6,
        ),
        (
            loss.offsets(2).unwrap(),
            json_f64s(
                &k["expert3 additive offset log(prior + 1e-9) - tau * log(inverse_prior + 1e-9)"],
            ),
            2e-6,
        ),
    ];
    for (got, want, tol) in pairs {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= tol, "{g} vs official {w}");
        }
    }
    assert!(loss.offsets(0).unwrap().iter().all(|&v| v == 0.0));
    assert!(loss.offsets(3).is_none());
}

/// Ties: equal counts are ranked by class index (lower index = more frequent), so for counts
/// that do not increase with the index π̄_c = π_{C−1−c}, even inside tie groups. The official
/// code leaves the order inside a tie group to an unstable GPU sort.
#[test]
fn inverse_prior_tie_break_is_by_class_index() {
    // [6, 6, 3, 1] / 16: tied classes 0 and 1 get π₃ and π₂ respectively.
    let q = inverse_prior(&[6, 6, 3, 1]).unwrap();
    assert_eq!(q, vec![1.0 / 16.0, 3.0 / 16.0, 6.0 / 16.0, 6.0 / 16.0]);
    // Unsorted with a tie: rank order is c1(6), c3(6), c0(3), c2(1).
    let q = inverse_prior(&[3, 6, 1, 6]).unwrap();
    assert_eq!(q, vec![6.0 / 16.0, 1.0 / 16.0, 6.0 / 16.0, 3.0 / 16.0]);
    // CIFAR-100-LT IF 100 has tie groups at the tail (…, 6, 6, 6, 6, 5, 5, 5, 5).
    let json = read_json("cifar_lt_ldam_profile_counts.json");
    let counts: Vec<usize> = json["profiles"]["cifar100_lt"]["if100"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert!(
        counts.windows(2).any(|w| w[0] == w[1]),
        "the profile should have ties"
    );
    let total: usize = counts.iter().sum();
    let q = inverse_prior(&counts).unwrap();
    for (c, &v) in q.iter().enumerate() {
        assert_eq!(v, counts[99 - c] as f64 / total as f64, "class {c}");
    }
    // π̄ is a permutation of π.
    let mut a = q.clone();
    let mut b: Vec<f64> = counts.iter().map(|&n| n as f64 / total as f64).collect();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    assert_eq!(a, b);
}

/// Hand-computed: with uniform counts every offset is a constant per expert, so every expert's
/// CE equals plain CE and the loss is 3·CE; with zero logits that is 3·ln C.
#[test]
fn uniform_prior_reduces_to_three_plain_cross_entropies() {
    let loss = SadeLoss::new(&SadeLossConfig { tau: 2.0 }, &[7, 7, 7, 7], &Device::Cpu).unwrap();
    let z = Tensor::zeros((5, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 3, 0], &Device::Cpu).unwrap();
    let got = loss.forward(&z, &y).unwrap().to_scalar::<f32>().unwrap();
    assert!((got - 3.0 * 4f32.ln()).abs() < 1e-5, "{got}");
    // Hand-computed two-class case: counts (3, 1), τ = 1, one sample of class 1, zero logits.
    // Expert 1: ln 2. Expert 2: offsets ln(.75), ln(.25) → −ln(.25/(.75+.25)) = ln 4.
    // Expert 3: offsets ln(.75) − ln(.25) = ln 3, ln(.25) − ln(.75) = −ln 3 → ln(1 + 9) = ln 10.
    let loss = SadeLoss::new(&SadeLossConfig { tau: 1.0 }, &[3, 1], &Device::Cpu).unwrap();
    let z = Tensor::zeros((1, 3, 2), DType::F32, &Device::Cpu).unwrap();
    let got = loss
        .forward(&z, &Tensor::new(&[1u32], &Device::Cpu).unwrap())
        .unwrap();
    let want = 2f32.ln() + 4f32.ln() + 10f32.ln();
    assert!((got.to_scalar::<f32>().unwrap() - want).abs() < 1e-5);
}

#[test]
fn bad_inputs_give_typed_errors() {
    let dev = Device::Cpu;
    assert!(matches!(
        SadeLoss::new(&SadeLossConfig { tau: 2.0 }, &[], &dev),
        Err(SadeError::NoClasses)
    ));
    assert!(matches!(
        SadeLoss::new(&SadeLossConfig { tau: 2.0 }, &[0, 0], &dev),
        Err(SadeError::NoSamples { classes: 2 })
    ));
    assert!(matches!(
        SadeLoss::new(&SadeLossConfig { tau: f64::NAN }, &[3, 1], &dev),
        Err(SadeError::NonFinite { field: "tau", .. })
    ));
    assert!(matches!(
        SadeLoss::new(&SadeLossConfig { tau: -1.0 }, &[3, 1], &dev),
        Err(SadeError::OutOfRange { field: "tau", .. })
    ));
    // A zero count alone is allowed (prior 0, log kept finite by the 1e-9).
    let loss = SadeLoss::new(&SadeLossConfig { tau: 2.0 }, &[4, 2, 0], &dev).unwrap();
    let y = Tensor::new(&[0u32, 2], &dev).unwrap();
    let z = Tensor::zeros((2, 3, 3), DType::F32, &dev).unwrap();
    assert!(loss
        .forward(&z, &y)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .is_finite());
    for e in [1usize, 2, 4, 6] {
        let z = Tensor::zeros((2, e, 3), DType::F32, &dev).unwrap();
        let err = loss.forward(&z, &y).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "exactly 3 experts (forward, uniform, backward), got {e}"
            )),
            "{err}"
        );
    }
    let err = loss
        .forward(&z, &Tensor::new(&[0u32, 3], &dev).unwrap())
        .unwrap_err();
    assert!(
        err.to_string().contains("target 3 at batch position 1"),
        "{err}"
    );
    let err = loss
        .forward(&z, &Tensor::new(&[-2i64, 0], &dev).unwrap())
        .unwrap_err();
    assert!(
        err.to_string().contains("target -2 at batch position 0"),
        "{err}"
    );
    let err = loss
        .forward(&z, &Tensor::new(&[0u32, 1, 2], &dev).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("targets: expected [2]"), "{err}");
    let wrong_c = Tensor::zeros((2, 3, 5), DType::F32, &dev).unwrap();
    assert!(loss
        .forward(&wrong_c, &y)
        .unwrap_err()
        .to_string()
        .contains("expected [B, 3, 3]"));
    assert!(
        serde_json::from_str::<SadeLossConfig>(r#"{"tua": 2}"#).is_err(),
        "unknown field accepted"
    );
    assert_eq!(
        serde_json::from_str::<SadeLossConfig>("{}").unwrap().tau,
        2.0
    );
}

#[test]
fn presets_are_complete_and_valid() {
    let mut names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
    for p in PRESETS {
        assert!(p.name.starts_with("sade."), "{}", p.name);
        let r = p.config();
        Sade.check(&r).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        r.check_common()
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(r.model.num_experts, 3, "{}", p.name);
        assert!(r.optim.epochs > 0 && r.optim.batch_size > 0 && r.optim.lr > 0.0);
        if let LrSchedule::Steps { step1, step2, .. } = r.optim.schedule {
            assert!(step1 < step2 && step2 < r.optim.epochs);
        }
        let t = &settings(&r).test_time;
        assert_eq!(
            (t.epochs, t.batch_size, t.momentum, t.nesterov, t.min_weight),
            (5, 128, 0.9, true, 0.05)
        );
        // SADE trains with LDAM-DRW's crop and flip, no rotation, on the in-memory sets, and
        // with the official resized-crop recipes on the streamed benchmarks (docs/sade.md §4).
        let official = match r.data.dataset.as_str() {
            "imagenet-lt" | "places-lt" => AugmentKind::Imagenet,
            "inat2018" => AugmentKind::ResizedCropFlip,
            _ => AugmentKind::CropFlip,
        };
        assert_eq!(r.data.augment, official, "{}", p.name);
        let toml = r.to_toml().unwrap();
        assert_eq!(RunConfig::from_toml(&toml).unwrap(), r);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), PRESETS.len(), "duplicate preset names");
    for want in [
        "sade.cifar100-lt",
        "sade.cifar100-lt.if50",
        "sade.cifar100-lt.if10",
        "sade.imagenet-lt",
        "sade.inat2018",
        "sade.places-lt",
        "sade.fmnist-lt",
    ] {
        assert!(names.contains(&want), "missing {want}");
    }
}

fn preset(name: &str) -> RunConfig {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no preset {name}"))
        .config()
}

fn settings(c: &RunConfig) -> SadeSettings {
    Sade::settings(c).unwrap()
}

fn steps(warmup: usize, [step1, step2]: [usize; 2], gamma: f64) -> LrSchedule {
    LrSchedule::Steps {
        warmup,
        step1,
        step2,
        gamma,
    }
}

/// The official values of docs/sade.md §2 and §4.
#[test]
fn presets_hold_official_values() {
    for (name, ratio) in [
        ("sade.cifar100-lt", 100.0),
        ("sade.cifar100-lt.if50", 50.0),
        ("sade.cifar100-lt.if10", 10.0),
    ] {
        let c = preset(name);
        assert_eq!(c.data.imbalance, ratio);
        assert_eq!(
            (
                c.model.arch,
                c.model.reduce_dimension,
                c.model.blocks_per_stage.clone()
            ),
            (Arch::Resnet32, true, Some(Blocks::Uniform(5)))
        );
        assert_eq!(
            (
                c.optim.epochs,
                c.optim.batch_size,
                c.optim.lr,
                c.optim.sgd.weight_decay
            ),
            (200, 128, 0.1, 5e-4)
        );
        assert_eq!((c.optim.sgd.nesterov, c.optim.sgd.momentum), (true, 0.9));
        assert_eq!(c.optim.schedule, steps(5, [160, 180], 0.1));
        let s = settings(&c);
        assert_eq!(s.loss.tau, 2.0);
        assert_eq!(
            (
                s.test_time.lr,
                s.test_time.weight_decay,
                s.test_time.blur_probability
            ),
            (0.1, 5e-4, 0.2)
        );
    }
    let i = preset("sade.imagenet-lt");
    assert_eq!(
        (i.model.arch, i.optim.epochs, i.optim.batch_size, i.optim.lr),
        (Arch::Resnext50, 180, 64, 0.025)
    );
    let is = settings(&i);
    assert_eq!((i.optim.sgd.weight_decay, is.loss.tau), (5e-4, 2.0));
    // Cosine over all 180 epochs (T_max 180) to 0, no warm-up.
    assert_eq!(
        i.optim.schedule,
        LrSchedule::Cosine {
            warmup: 0,
            min_lr: 0.0
        }
    );
    assert_eq!(
        (
            is.test_time.lr,
            is.test_time.weight_decay,
            is.test_time.blur_probability
        ),
        (0.025, 5e-4, 0.5)
    );
    let n = preset("sade.inat2018");
    assert_eq!(
        (
            n.model.arch,
            n.model.num_classes,
            n.optim.batch_size,
            n.optim.lr
        ),
        (Arch::Resnet50, 8142, 512, 0.2)
    );
    assert_eq!(n.optim.schedule, steps(5, [60, 80], 0.1));
    let ns = settings(&n);
    assert_eq!(
        (
            ns.loss.tau,
            ns.test_time.lr,
            ns.test_time.weight_decay,
            ns.test_time.entropy_weight
        ),
        (1.0, 0.2, 2e-4, 0.01)
    );
    let p = preset("sade.places-lt");
    assert_eq!(
        (p.model.arch, p.model.reduce_dimension, p.model.num_classes),
        (Arch::Resnet152, false, 365)
    );
    assert_eq!(
        (PLACES_PRETRAINED, PLACES_BACKBONE_LR),
        ("oltr-caffe-resnet152-imagenet", 0.001)
    );
    assert_eq!(
        (p.optim.epochs, p.optim.lr, p.optim.sgd.weight_decay),
        (30, 0.01, 4e-4)
    );
    assert_eq!(p.optim.schedule, steps(0, [10, 20], 0.1));
    // train_places.py's groups: classifiers at the lr, everything else at 0.001.
    let groups: Vec<(&str, f64)> = p
        .optim
        .lr_groups
        .iter()
        .map(|g| (g.prefix.as_str(), p.optim.lr * g.scale))
        .collect();
    assert_eq!(groups.len(), 2);
    assert_eq!((groups[0].0, groups[0].1), ("backbone.linears.", 0.01));
    assert_eq!(groups[1].0, "");
    assert!((groups[1].1 - PLACES_BACKBONE_LR).abs() < 1e-15);
    // The config file round-trips the groups.
    let again = longtail_train::RunConfig::from_toml(&p.to_toml().unwrap()).unwrap();
    assert_eq!(again.optim.lr_groups, p.optim.lr_groups);
    let ps = settings(&p);
    assert_eq!(
        (ps.loss.tau, ps.test_time.lr, ps.test_time.weight_decay),
        (1.0, 0.01, 4e-4)
    );
    let ten = preset("sade.cifar10-lt");
    assert_eq!(
        (
            ten.model.reduce_dimension,
            ten.optim.lr,
            ten.model.num_classes
        ),
        (false, 0.05, 10)
    );
    let f = preset("sade.fmnist-lt");
    assert_eq!(
        (
            f.model.blocks_per_stage.clone(),
            f.model.in_channels,
            f.optim.epochs
        ),
        (Some(Blocks::Uniform(1)), 1, 48)
    );
    assert_eq!(f.optim.schedule, steps(2, [32, 40], 0.1));
}

/// The loss also runs in f64; it then matches the official code evaluated in float64 on the
/// same inputs (`*_f64ref`, constants kept at their float32 values).
#[test]
fn sade_loss_in_f64_matches_official_f64_reference() {
    let fx = load_fixture("sade_loss_c10.safetensors");
    let loss = SadeLoss::new(
        &SadeLossConfig { tau: 2.0 },
        &fixture_counts(&fx),
        &Device::Cpu,
    )
    .unwrap();
    let z = fx["expert_logits"].to_dtype(DType::F64).unwrap();
    let logits = Var::from_tensor(&z.transpose(0, 1).unwrap().contiguous().unwrap()).unwrap();
    let value = loss.forward(logits.as_tensor(), &fx["targets"]).unwrap();
    let got = value.to_scalar::<f64>().unwrap();
    let want = fx["loss_epoch1_f64ref"].to_scalar::<f64>().unwrap();
    let grad = value
        .backward()
        .unwrap()
        .get(logits.as_tensor())
        .unwrap()
        .clone();
    let g = grad
        .transpose(0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let w = fx["grad_epoch1_f64ref"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let max = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "f64: |loss diff| {:e}, max |grad diff| {max:e}",
        (got - want).abs()
    );
    assert!((got - want).abs() < 2e-6, "{got} vs f64 reference {want}");
    assert!(max < 1e-8, "gradient differs by {max}");
}
