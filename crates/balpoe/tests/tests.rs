//! BalPoE against the hand-computed oracle of docs/balpoe.md §7 (items 1–6): the biases, the
//! loss on fixed logits, with mixup, its gradient, the product of experts with the residual bias
//! correction, the known-test-prior rule; bad inputs as typed errors; every preset valid and the
//! official values in the CIFAR-100-LT and ImageNet-LT ones.

// The expected values are the oracle's printed digits (ln 2 among them), not the constants.
#![allow(clippy::approx_constant)]

use candle_core::{DType, Device, Tensor, Var};
use longtail_backbone::ExpertOutput;
use longtail_balpoe::{
    presets::PRESETS, product_of_experts, tau_limits, with_test_prior, BalPoe, BalPoeError,
    BalPoeLoss, BalPoeSettings,
};
use longtail_data::Batch;
use longtail_train::{LrSchedule, MethodConfig, MethodKind};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// docs/balpoe.md §7: counts [8, 4, 2, 2] → π = [0.5, 0.25, 0.125, 0.125].
const COUNTS: [usize; 4] = [8, 4, 2, 2];
const LOG_PI: [f64; 4] = [-0.693147, -1.386294, -2.079442, -2.079442];

fn close(got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() < tol, "got {got}, want {want}");
}

fn loss_of(taus: &[f64], z: &[f32], y: u32) -> Result<f64> {
    let dev = Device::Cpu;
    let loss = BalPoeLoss::new(taus, &COUNTS, &dev)?;
    let e = taus.len();
    // The same logits for every expert: [1, E, 4].
    let logits: Vec<f32> = (0..e).flat_map(|_| z.iter().copied()).collect();
    let z = Tensor::from_vec(logits, (1, e, 4), &dev)?;
    let y = Tensor::new(&[y], &dev)?;
    Ok(loss.forward(&z, &y)?.to_scalar::<f32>()? as f64)
}

/// §7 item 1: τ = 0 → 0, τ = 1 → log π, τ = 2 → 2·log π; the mean bias of τ 0/1/2 is log π.
#[test]
fn biases_are_tau_times_log_prior() -> Result {
    let loss = BalPoeLoss::new(&[0.0, 1.0, 2.0], &COUNTS, &Device::Cpu)?;
    let want = [
        [0.0; 4],
        LOG_PI,
        [-1.386294, -2.772589, -4.158883, -4.158883],
    ];
    for (e, w) in want.iter().enumerate() {
        for (g, w) in loss.bias(e).unwrap().iter().zip(w) {
            close(*g, *w, 1e-6);
        }
    }
    assert!(loss.bias(3).is_none());
    close(loss.mean_tau(), 1.0, 1e-12);
    assert!(loss.residual_bias().iter().all(|r| r.abs() < 1e-12));
    Ok(())
}

/// §7 item 2: every logit 0. Label 3: per-expert CE 1.386294, 2.079442, 3.091042, mean 2.185593;
/// label 0: 1.386294, 0.693147, 0.318454, mean 0.799298.
#[test]
fn loss_with_zero_logits_matches_the_oracle() -> Result {
    let z = [0f32; 4];
    for (y, per_expert, mean) in [
        (3, [1.386294, 2.079442, 3.091042], 2.185593),
        (0, [1.386294, 0.693147, 0.318454], 0.799298),
    ] {
        for (tau, want) in [0.0, 1.0, 2.0].iter().zip(per_expert) {
            close(loss_of(&[*tau], &z, y)?, want, 1e-5);
        }
        close(loss_of(&[0.0, 1.0, 2.0], &z, y)?, mean, 1e-5);
    }
    Ok(())
}

/// §7 item 4: logits [2, 1, 0.5, 0] for every expert, label 1: per-expert CE 1.546006,
/// 1.934960, 2.494587, mean 1.991851.
#[test]
fn loss_with_nonzero_logits_matches_the_oracle() -> Result {
    let z = [2f32, 1.0, 0.5, 0.0];
    for (tau, want) in [(0.0, 1.546006), (1.0, 1.934960), (2.0, 2.494587)] {
        close(loss_of(&[tau], &z, 1)?, want, 1e-5);
    }
    close(loss_of(&[0.0, 1.0, 2.0], &z, 1)?, 1.991851, 1e-5);
    // Batch mean: the two rows of items 2 and 4 together average their losses.
    let dev = Device::Cpu;
    let loss = BalPoeLoss::new(&[0.0, 1.0, 2.0], &COUNTS, &dev)?;
    let row0 = Tensor::zeros((1, 3, 4), DType::F32, &dev)?;
    let row1 = Tensor::new(&[2f32, 1.0, 0.5, 0.0], &dev)?
        .reshape((1, 1, 4))?
        .repeat((1, 3, 1))?;
    let z = Tensor::cat(&[row0, row1], 0)?;
    let l = loss.forward(&z, &Tensor::new(&[3u32, 1], &dev)?)?;
    close(
        l.to_scalar::<f32>()? as f64,
        (2.185593 + 1.991851) / 2.0,
        1e-5,
    );
    Ok(())
}

/// §7 item 3: mixup with λ = 0.7 between label 0 and label 3 on zero logits:
/// 0.7·0.799298 + 0.3·2.185593 = 1.215187, through the engine's generic mixup loss.
#[test]
fn mixup_loss_matches_the_oracle() -> Result {
    let dev = Device::Cpu;
    let method = BalPoe.build(&config(3, None), &COUNTS, &dev)?;
    let z = Tensor::zeros((1, 3, 4), DType::F32, &dev)?;
    let out = ExpertOutput {
        logits: z.mean(1)?,
        expert_logits: z,
        features: Tensor::zeros((1, 3, 1), DType::F32, &dev)?,
    };
    let batch = |y: u32| -> candle_core::Result<Batch> {
        Ok(Batch {
            images: Tensor::zeros((1, 1, 1, 1), DType::F32, &dev)?,
            labels: Tensor::new(&[y], &dev)?,
            indices: vec![0],
        })
    };
    let l = longtail_train::mixup::mixup_loss(&*method, &out, &batch(0)?, &batch(3)?, 0.7)?;
    close(l.to_scalar::<f32>()? as f64, 1.215187, 1e-5);
    Ok(())
}

/// The gradient of expert e's term is (softmax(z_e + b_e) − onehot(y))/(B·E): with zero logits,
/// label 3 and one expert of τ = 1, softmax(log π) = π, so ∂L/∂z = π − e₃ = [0.5, 0.25, 0.125,
/// −0.875]; with three experts each block is divided by 3.
#[test]
fn gradient_is_softmax_minus_onehot_over_experts() -> Result {
    let dev = Device::Cpu;
    let loss = BalPoeLoss::new(&[1.0], &COUNTS, &dev)?;
    let z = Var::zeros((1, 1, 4), DType::F32, &dev)?;
    let l = loss.forward(z.as_tensor(), &Tensor::new(&[3u32], &dev)?)?;
    let g = l.backward()?;
    let g: Vec<f32> = g.get(z.as_tensor()).unwrap().flatten_all()?.to_vec1()?;
    for (g, w) in g.iter().zip([0.5, 0.25, 0.125, -0.875]) {
        close(*g as f64, w, 1e-6);
    }
    let loss = BalPoeLoss::new(&[0.0, 1.0, 2.0], &COUNTS, &dev)?;
    let z = Var::zeros((1, 3, 4), DType::F32, &dev)?;
    let l = loss.forward(z.as_tensor(), &Tensor::new(&[3u32], &dev)?)?;
    let g = l.backward()?;
    let g: Vec<f32> = g.get(z.as_tensor()).unwrap().flatten_all()?.to_vec1()?;
    // Expert 1 (τ = 1) is the middle block.
    for (g, w) in g[4..8].iter().zip([0.5, 0.25, 0.125, -0.875]) {
        close(*g as f64, w / 3.0, 1e-6);
    }
    // Expert 0 (τ = 0): softmax(0) = 1/4 → [0.25, 0.25, 0.25, −0.75]/3.
    for (g, w) in g[0..4].iter().zip([0.25, 0.25, 0.25, -0.75]) {
        close(*g as f64, w / 3.0, 1e-6);
    }
    Ok(())
}

/// §3.1: the product of experts is the mean of the raw logits, no bias added; §7 item 5: with
/// τ 0/1.25/2.5 the residual (1 − τ̄)·log π = −0.25·log π moves the head-vs-tail gap of an
/// imbalance-256 prior by 0.25·ln 256 = 1.386294, and the correction takes it out.
#[test]
fn product_of_experts_and_its_bias_correction() -> Result {
    let dev = Device::Cpu;
    // Experts' logits for one image, C = 2: [1, 4], [3, 0], [2, 5] → mean [2, 3].
    let z = Tensor::new(&[[[1f32, 4.], [3., 0.], [2., 5.]]], &dev)?;
    let s: Vec<f32> = product_of_experts(&z, None)?.flatten_all()?.to_vec1()?;
    assert_eq!(s, [2.0, 3.0]);

    let loss = BalPoeLoss::new(&tau_limits(0.0, 2.5, 3), &[256, 1], &dev)?;
    close(loss.mean_tau(), 1.25, 1e-12);
    let r = loss.residual_bias();
    // π = [256/257, 1/257]: r = −0.25·ln π.
    close(r[0], -0.25 * (256f64 / 257.0).ln(), 1e-6);
    close(r[1] - r[0], 1.386294, 1e-5);
    let residual = Tensor::from_vec(r.iter().map(|&v| v as f32).collect(), (1, 2), &dev)?;
    let corrected: Vec<f32> = product_of_experts(&z, Some(&residual))?
        .flatten_all()?
        .to_vec1()?;
    close(corrected[0] as f64, 2.0 - r[0], 1e-5);
    close(corrected[1] as f64, 3.0 - r[1], 1e-5);

    // Through the method: correct_residual_bias off predicts the plain mean, on subtracts r.
    let mut cfg = config(3, None);
    let predict = |cfg: &longtail_train::RunConfig| -> Result<Vec<f32>> {
        let m = BalPoe.build(cfg, &[256, 1], &dev)?;
        let out = ExpertOutput {
            logits: z.mean(1)?,
            expert_logits: z.clone(),
            features: Tensor::zeros((1, 3, 1), DType::F32, &dev)?,
        };
        Ok(m.predict(&out)?.flatten_all()?.to_vec1()?)
    };
    cfg.method = MethodConfig::new(
        "balpoe",
        &BalPoeSettings {
            correct_residual_bias: true,
            ..BalPoeSettings::spaced(0.0, 2.5)
        },
    )?;
    assert_eq!(predict(&cfg)?, corrected);
    cfg.method = MethodConfig::new("balpoe", &BalPoeSettings::spaced(0.0, 2.5))?;
    assert_eq!(predict(&cfg)?, [2.0, 3.0]);
    Ok(())
}

/// §7 item 6: s = [2.0, 1.5, 1.0, 1.2], q ∝ [1, 2, 4, 8] → s + log q = [−0.708050, −0.514903,
/// −0.321756, 0.571391]: the prediction moves from class 0 to class 3. A class with no test
/// image gets −∞, never predicted.
#[test]
fn known_test_prior_matches_the_oracle() -> Result {
    let dev = Device::Cpu;
    let s = Tensor::new(&[[2f32, 1.5, 1.0, 1.2]], &dev)?;
    let got: Vec<f32> = with_test_prior(&s, &[1, 2, 4, 8])?
        .flatten_all()?
        .to_vec1()?;
    for (g, w) in got.iter().zip([-0.708050, -0.514903, -0.321756, 0.571391]) {
        close(*g as f64, w, 1e-5);
    }
    let best = got
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(best, 3);
    let absent: Vec<f32> = with_test_prior(&s, &[0, 1, 1, 1])?
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(absent[0], f32::NEG_INFINITY);
    assert!(matches!(
        with_test_prior(&s, &[1, 2, 3]),
        Err(BalPoeError::Shape { .. })
    ));
    assert!(matches!(
        with_test_prior(&s, &[0, 0, 0, 0]),
        Err(BalPoeError::NoSamples { classes: 4 })
    ));
    Ok(())
}

#[test]
fn bad_inputs_are_typed_errors() -> Result {
    let dev = Device::Cpu;
    assert!(matches!(
        BalPoeLoss::new(&[], &COUNTS, &dev),
        Err(BalPoeError::NoExperts)
    ));
    assert!(matches!(
        BalPoeLoss::new(&[0.0], &[], &dev),
        Err(BalPoeError::NoClasses)
    ));
    assert!(matches!(
        BalPoeLoss::new(&[0.0], &[0, 0], &dev),
        Err(BalPoeError::NoSamples { classes: 2 })
    ));
    assert!(matches!(
        BalPoeLoss::new(&[f64::NAN], &COUNTS, &dev),
        Err(BalPoeError::NonFinite { .. })
    ));
    let loss = BalPoeLoss::new(&[0.0, 1.0, 2.0], &COUNTS, &dev)?;
    let y = Tensor::new(&[1u32], &dev)?;
    let two_experts = Tensor::zeros((1, 2, 4), DType::F32, &dev)?;
    let e = loss.forward(&two_experts, &y).unwrap_err().to_string();
    assert!(e.contains("[B, 3, 4]"), "{e}");
    let z = Tensor::zeros((1, 3, 4), DType::F32, &dev)?;
    let e = loss
        .forward(&z, &Tensor::new(&[4u32], &dev)?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a class index"), "{e}");
    let e = loss
        .forward(&z, &Tensor::new(&[1f32], &dev)?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("targets dtype"), "{e}");
    // A τ list that does not match the experts is refused by the registry check.
    let mut cfg = config(3, Some(vec![0.0, 2.0]));
    let e = BalPoe.check(&cfg).unwrap_err().to_string();
    assert!(e.contains("tau_list has 2 values for 3 experts"), "{e}");
    cfg.method.settings.insert("tau_mn".into(), 0.0.into());
    assert!(BalPoe
        .check(&cfg)
        .unwrap_err()
        .to_string()
        .contains("tau_mn"));
    Ok(())
}

/// A run config of the bundled-set preset with `experts` experts and an optional τ list.
fn config(experts: usize, tau_list: Option<Vec<f64>>) -> longtail_train::RunConfig {
    let mut c = PRESETS
        .iter()
        .find(|p| p.name == "balpoe.fmnist-lt")
        .unwrap()
        .config();
    c.model.num_experts = experts;
    c.method = MethodConfig::new(
        "balpoe",
        &BalPoeSettings {
            tau_list,
            ..BalPoeSettings::spaced(0.0, 2.0)
        },
    )
    .unwrap();
    c
}

#[test]
fn every_preset_passes_check_and_survives_toml() -> Result {
    for p in PRESETS {
        let c = p.config();
        c.check_common()
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        BalPoe
            .check(&c)
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(c.method.name, "balpoe");
        assert!(c.optim.mixup_alpha.is_some(), "{}: mixup off", p.name);
        assert_eq!(c.model.num_experts, 3, "{}", p.name);
        let back = longtail_train::RunConfig::from_toml(&c.to_toml()?)?;
        assert_eq!(back, c, "{}", p.name);
    }
    Ok(())
}

/// docs/balpoe.md §4: the official standard CIFAR-100-LT and ImageNet-LT values.
#[test]
fn presets_hold_the_official_values() -> Result {
    let get = |n: &str| PRESETS.iter().find(|p| p.name == n).unwrap().config();
    let taus = |c: &longtail_train::RunConfig| BalPoe::settings(c).unwrap().1;

    let c = get("balpoe.cifar100-lt");
    assert_eq!(taus(&c), [0.0, 1.0, 2.0]);
    assert_eq!(c.optim.mixup_alpha, Some(0.4));
    assert_eq!(
        (c.optim.epochs, c.optim.batch_size, c.optim.lr),
        (200, 128, 0.1)
    );
    assert!(
        c.optim.sgd.nesterov && c.optim.sgd.momentum == 0.9 && c.optim.sgd.weight_decay == 5e-4
    );
    assert_eq!(
        c.optim.schedule,
        LrSchedule::Steps {
            warmup: 5,
            step1: 160,
            step2: 180,
            gamma: 0.1
        }
    );
    // §4 CustomLR: epoch 161 runs at 0.01, epoch 181 at 0.001, epoch 1 at 0.02.
    close(c.optim.schedule.lr(0.1, 161, 200), 0.01, 1e-12);
    close(c.optim.schedule.lr(0.1, 181, 200), 0.001, 1e-12);
    close(c.optim.schedule.lr(0.1, 1, 200), 0.02, 1e-12);
    assert!(!c.model.reduce_dimension && c.model.use_norm && c.model.scale == 30.0);
    assert_eq!(c.data.imbalance, 100.0);

    let long = get("balpoe.cifar100-lt.long");
    assert_eq!(long.optim.epochs, 400);
    assert_eq!(
        long.optim.schedule,
        LrSchedule::Steps {
            warmup: 10,
            step1: 320,
            step2: 360,
            gamma: 0.1
        }
    );
    assert_eq!(get("balpoe.cifar10-lt").optim.mixup_alpha, Some(0.8));

    let i = get("balpoe.imagenet-lt");
    assert_eq!(taus(&i), [0.0, 1.25, 2.5]);
    assert_eq!(i.optim.mixup_alpha, Some(0.3));
    assert_eq!(
        (i.optim.epochs, i.optim.batch_size, i.optim.lr),
        (180, 64, 0.025)
    );
    // §7 item 6: cosine at epoch 91 of 180 → 0.0125.
    close(i.optim.schedule.lr(0.025, 91, 180), 0.0125, 1e-9);
    assert_eq!(i.model.num_classes, 1000);
    assert!(!i.model.reduce_dimension);
    assert_eq!(get("balpoe.imagenet-lt.long").optim.epochs, 400);
    assert_eq!(taus(&get("balpoe.inat2018")), [-1.0, 1.0, 3.0]);

    // The bundled-set recipe: ride.fmnist-lt's optimisation with BalPoE's loss and mixup.
    let f = get("balpoe.fmnist-lt");
    assert_eq!(
        (f.optim.epochs, f.optim.batch_size, f.optim.lr),
        (48, 128, 0.1)
    );
    assert_eq!(
        f.optim.schedule,
        LrSchedule::Steps {
            warmup: 2,
            step1: 32,
            step2: 40,
            gamma: 0.1
        }
    );
    assert_eq!(f.optim.mixup_alpha, Some(0.8));
    assert_eq!((f.model.in_channels, f.model.num_classes), (1, 10));
    Ok(())
}
