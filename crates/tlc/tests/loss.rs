//! TlcLoss: parity with the official loss and gradient, derived constants, engagement, errors.

use candle_core::{DType, Device, Tensor, Var};
use longtail_tlc::{Combination, Engagement, Fusion, TlcError, TlcLoss, TlcLossConfig};

use crate::common::{assert_close, json, load, to_bec, values};

fn counts() -> Vec<usize> {
    let fx = load("tlc_loss_c10.safetensors");
    values(&fx["cls_num_list"])
        .iter()
        .map(|&v| v as usize)
        .collect()
}

fn official_loss(epoch: usize) -> TlcLoss {
    let mut loss = TlcLoss::new(TlcLossConfig::cifar().official(), &counts()).unwrap();
    loss.begin_epoch(epoch).unwrap();
    loss
}

/// Loss value and d loss / d logits `[E, B, C]` for fixture logits `[E, B, C]`.
fn value_and_grad(
    loss: &TlcLoss,
    logits_ebc: &Tensor,
    targets: &Tensor,
    fusion: Option<Fusion>,
) -> (f64, Tensor) {
    let var = Var::from_tensor(&to_bec(logits_ebc)).unwrap();
    let out = match fusion {
        Some(f) => loss.forward_fused(var.as_tensor(), targets, f).unwrap(),
        None => loss.forward(var.as_tensor(), targets).unwrap(),
    };
    assert_eq!(out.loss.dtype(), logits_ebc.dtype());
    let grads = out.loss.backward().unwrap();
    let g = grads.get(var.as_tensor()).unwrap();
    (values(&out.loss)[0], to_bec(g))
}

#[test]
fn derived_constants_match_the_official_ones() {
    let loss = TlcLoss::new(TlcLossConfig::cifar(), &counts()).unwrap();
    let c = &json("tlc_loss_c10.json")["derived_constants_float32"];
    let check = |got: &[f64], key: &str| {
        let want: Vec<f64> = c[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6 * b.abs().max(1.0), "{key}: {a} vs {b}");
        }
    };
    check(loss.margins(), "m_list (LDAM margin per class, before x30)");
    check(
        loss.drw_weights(),
        "per_cls_weights_enabled (DRW CE weights, used when epoch > 160)",
    );
    check(
        loss.diversity_temperatures(),
        "per_cls_weights_enabled_diversity (per-class diversity temperature T_c, used when epoch > 160)",
    );
    assert_eq!(TlcLossConfig::cifar().annealing_period(), 13200.0);
    assert_eq!(TlcLossConfig::imagenet().annealing_period(), 29000.0);
}

/// Expected: tlc_loss_c10.safetensors (official TLCLoss at 204f50b, CIFAR config, tempered
/// logits, E = 3, B = 32, C = 10, epochs 1 and 170; recipe in tlc_loss_c10.json).
#[test]
fn loss_and_gradient_match_official_at_epochs_1_and_170() {
    let fx = load("tlc_loss_c10.safetensors");
    for epoch in [1usize, 170] {
        let loss = official_loss(epoch);
        let want = values(&fx[&format!("loss_epoch{epoch}")])[0];
        let want_grad = &fx[&format!("grad_epoch{epoch}")];
        // The loss computes w and the batch-normalised x itself from the logits …
        let (got, grad) = value_and_grad(&loss, &fx["expert_logits"], &fx["targets"], None);
        assert!(
            (got - want).abs() <= 1e-4 + 1e-6 * want.abs(),
            "epoch {epoch}: {got} vs {want}"
        );
        let worst = assert_close(&format!("grad epoch {epoch}"), &grad, want_grad, 1e-5, 1e-5);
        eprintln!("epoch {epoch}: loss {got} (official {want}), max |grad diff| {worst:.2e}");
        // … or takes the model's fusion, as the official criterion does.
        let fusion = Fusion {
            w: fx["w"].clone(),
            output: fx["fused_output"].clone(),
        };
        let (got2, grad2) =
            value_and_grad(&loss, &fx["expert_logits"], &fx["targets"], Some(fusion));
        assert!(
            (got2 - want).abs() <= 1e-4 + 1e-6 * want.abs(),
            "epoch {epoch} (given fusion): {got2}"
        );
        assert_close(
            &format!("grad epoch {epoch} (given fusion)"),
            &grad2,
            want_grad,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn engagement_mask_matches_official() {
    let fx = load("tlc_loss_c10.safetensors");
    let loss = official_loss(1);
    let out = loss
        .forward(&to_bec(&fx["expert_logits"]), &fx["targets"])
        .unwrap();
    assert_eq!(out.engaged.dtype(), DType::U8);
    assert_eq!(
        out.engaged.to_vec2::<u8>().unwrap(),
        fx["engaged_mask"].to_vec2::<u8>().unwrap()
    );
    let per: Vec<u32> = out
        .engaged
        .to_dtype(DType::U32)
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(per, [32, 3, 1]);
}

/// The f64 references of the full-scale case (logits in [-30, 30]), where official f32 is NaN.
#[test]
fn full_scale_loss_matches_the_f64_reference() {
    let fx = load("tlc_loss_c10.safetensors");
    for epoch in [1usize, 170] {
        let loss = official_loss(epoch);
        let (got, grad) =
            value_and_grad(&loss, &fx["fullscale_expert_logits"], &fx["targets"], None);
        let want = values(&fx[&format!("fullscale_loss_epoch{epoch}_f64ref")])[0];
        assert!(got.is_finite());
        assert!(
            (got - want).abs() <= 2e-2,
            "fullscale epoch {epoch}: {got} vs {want}"
        );
        let engaged = loss
            .forward(&to_bec(&fx["fullscale_expert_logits"]), &fx["targets"])
            .unwrap()
            .engaged;
        assert_eq!(
            engaged.to_vec2::<u8>().unwrap(),
            fx["fullscale_engaged_mask_f64ref"].to_vec2::<u8>().unwrap()
        );
        let want_grad = &fx[&format!("fullscale_grad_epoch{epoch}_f64ref")];
        let worst = assert_close(
            &format!("fullscale grad {epoch}"),
            &grad,
            want_grad,
            2e-3,
            0.0,
        );
        eprintln!(
            "fullscale epoch {epoch}: loss {got} (f64 ref {want}), max |grad diff| {worst:.2e}"
        );
    }
}

#[test]
fn issue10_double_counting_is_masked_plus_full_mean() {
    let fx = load("tlc_loss_c10.safetensors");
    let logits = to_bec(&fx["expert_logits"]);
    let run = |engagement| {
        let mut cfg = TlcLossConfig::cifar().official();
        cfg.engagement = engagement;
        let mut l = TlcLoss::new(cfg, &counts()).unwrap();
        l.begin_epoch(170).unwrap();
        values(&l.forward(&logits, &fx["targets"]).unwrap().per_expert)
    };
    let (masked, legacy, full) = (
        run(Engagement::Masked),
        run(Engagement::MaskedPlusFullIssue10),
        run(Engagement::Full),
    );
    for k in 0..3 {
        assert!((legacy[k] - masked[k] - full[k]).abs() < 1e-4, "expert {k}");
    }
    // Expert 0 is engaged on every sample, so its masked and full means agree.
    assert!((masked[0] - full[0]).abs() < 1e-5);
    assert!(
        (masked[2] - full[2]).abs() > 1e-3,
        "expert 2 sees one sample only"
    );
}

#[test]
fn per_sample_default_differs_only_in_the_diversity_target() {
    // With the diversity coefficient at 0 the combination cannot matter.
    let fx = load("tlc_loss_c10.safetensors");
    let logits = to_bec(&fx["expert_logits"]);
    let run = |combination, div| {
        let mut cfg = TlcLossConfig::cifar();
        cfg.combination = combination;
        cfg.diversity_factor = div;
        let mut l = TlcLoss::new(cfg, &counts()).unwrap();
        l.begin_epoch(1).unwrap();
        values(&l.forward(&logits, &fx["targets"]).unwrap().loss)[0]
    };
    let (off, per) = (
        Combination::Official { eta: 0.2 },
        Combination::PerSample { eta: 0.2 },
    );
    assert!((run(off, 0.0) - run(per, 0.0)).abs() < 1e-5);
    assert!((run(off, 0.01) - run(per, 0.01)).abs() > 1e-5);
}

#[test]
fn hand_computed_single_sample_loss() {
    // B = 1, E = 1, K = 2, counts (1, 1): margins 0.5 each (×30 = 15), z = (0, 0), y = 0, epoch 1.
    // CE = −log softmax((−15, 0))_0 = ln(1 + e^15).
    // α̃ = (1, 2), S̃ = 3: KL = lnΓ(3) − lnΓ(2) − lnΓ(1) − lnΓ(2) + (2 − 1)(ψ(2) − ψ(3)) = ln 2 − 1/2.
    // Diversity: x = z (one expert) → KL(p̄ ‖ q) = 0. Coefficient 1/13200.
    let mut cfg = TlcLossConfig::cifar();
    cfg.drw_beta = 0.5;
    let mut loss = TlcLoss::new(cfg, &[1, 1]).unwrap();
    loss.begin_epoch(1).unwrap();
    let z = Tensor::new(&[[[0f64, 0.0]]], &Device::Cpu).unwrap();
    let got = values(
        &loss
            .forward(&z, &Tensor::new(&[0u32], &Device::Cpu).unwrap())
            .unwrap()
            .loss,
    )[0];
    let want = (1.0 + 15f64.exp()).ln() + (2f64.ln() - 0.5) / 13200.0;
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let dev = Device::Cpu;
    assert!(matches!(
        TlcLoss::new(TlcLossConfig::cifar(), &[5, 0]),
        Err(TlcError::EmptyClass { class: 1 })
    ));
    let mut bad = TlcLossConfig::cifar();
    bad.tau = 1.5;
    assert!(matches!(
        TlcLoss::new(bad, &[5, 5]),
        Err(TlcError::InvalidConfig { name: "tau", .. })
    ));
    let mut loss = TlcLoss::new(TlcLossConfig::cifar(), &[5, 5]).unwrap();
    let z = Tensor::zeros((2, 3, 2), DType::F32, &dev).unwrap();
    let y = Tensor::new(&[0u32, 1], &dev).unwrap();
    assert!(matches!(
        loss.forward(&z, &y),
        Err(TlcError::EpochNotStarted)
    ));
    assert!(matches!(loss.begin_epoch(0), Err(TlcError::ZeroEpoch)));
    loss.begin_epoch(3).unwrap();
    assert!(loss.forward(&z, &y).is_ok());
    let y_bad = Tensor::new(&[0u32, 2], &dev).unwrap();
    assert!(matches!(
        loss.forward(&z, &y_bad),
        Err(TlcError::TargetOutOfRange {
            index: 1,
            target: 2,
            classes: 2
        })
    ));
    let y_short = Tensor::new(&[0u32], &dev).unwrap();
    assert!(matches!(
        loss.forward(&z, &y_short),
        Err(TlcError::TargetsShape { batch: 2, .. })
    ));
    let z3 = Tensor::zeros((2, 3, 3), DType::F32, &dev).unwrap();
    assert!(matches!(
        loss.forward(&z3, &y),
        Err(TlcError::ClassCounts { got: 2, classes: 3 })
    ));
    let msg = TlcError::TargetOutOfRange {
        index: 1,
        target: 2,
        classes: 2,
    }
    .to_string();
    assert_eq!(msg, "target 2 of sample 1 is out of range for 2 classes");
}
