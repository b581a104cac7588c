//! Opinions, fused uncertainty and combination: hand values and official fixtures.

use candle_core::{DType, Device, Tensor};
use longtail_tlc::{fuse, fused_uncertainty, opinions, Combination, TlcError};

use crate::common::{assert_close, load, to_bec, values};

#[test]
fn opinions_match_hand_values() {
    // One sample, one expert, K = 2, z = (ln 3, 0): e = (3, 1), S = 6, b = (1/2, 1/6), u = 1/3.
    let z = Tensor::new(&[[[3f64.ln(), 0.0]]], &Device::Cpu).unwrap();
    let op = opinions(&z).unwrap();
    let b = values(&op.belief);
    assert!(
        (b[0] - 0.5).abs() < 1e-12 && (b[1] - 1.0 / 6.0).abs() < 1e-12,
        "{b:?}"
    );
    assert!((values(&op.uncertainty)[0] - 1.0 / 3.0).abs() < 1e-12);
    // Huge logits stay finite (official exp(z) would overflow f32 at z > 88).
    let big = Tensor::new(&[[[200f32, -200.0, 0.0]]], &Device::Cpu).unwrap();
    let op = opinions(&big).unwrap();
    assert!(values(&op.belief).iter().all(|v| v.is_finite()));
    assert!((values(&op.belief)[0] - 1.0).abs() < 1e-6);
}

#[test]
fn fused_uncertainty_matches_hand_computation() {
    // Two experts, K = 2. Expert 0: e = (3, 1) → b0 = (1/2, 1/6), u0 = 1/3.
    // Expert 1: e = (1, 1) → b1 = (1/4, 1/4), u1 = 1/2.
    // C1 = b0[0]·b1[1] + b0[1]·b1[0] = 1/8 + 1/24 = 1/6; w2 = u0·u1/(1 − C1) = (1/6)/(5/6) = 1/5.
    let z = Tensor::new(&[[[3f64.ln(), 0.0], [0.0, 0.0]]], &Device::Cpu).unwrap();
    let w = values(&fused_uncertainty(&z).unwrap());
    let want = [1.0, 1.0 / 3.0, 0.2];
    for (a, b) in w.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "w = {w:?}");
    }
}

#[test]
fn official_fusion_reproduces_the_model_fixture() {
    // tlc_cifar_e3_c10.io.safetensors: recipe in tlc_cifar_e3_c10.json (seeded ResNet-32 TLC, eval
    // batch of 4 rows); expert_logits are [B, E, C] already.
    let io = load("tlc_cifar_e3_c10.io.safetensors");
    let logits = &io["expert_logits"];
    let fusion = fuse(logits, Combination::Official { eta: 0.2 }).unwrap();
    assert_close("w", &fusion.w, &io["w"], 1e-12, 1e-3);
    assert_close(
        "fused_output",
        &fusion.output,
        &io["fused_output"],
        1e-4,
        0.0,
    );
    assert_eq!(fusion.output.dtype(), DType::F32);
}

#[test]
fn official_fusion_reproduces_the_loss_fixture() {
    // tlc_loss_c10.safetensors: tempered logits (cos·0.2·30), B = 32; recipe in tlc_loss_c10.json.
    let fx = load("tlc_loss_c10.safetensors");
    let logits = to_bec(&fx["expert_logits"]);
    let fusion = fuse(&logits, Combination::Official { eta: 0.2 }).unwrap();
    assert_close("w", &fusion.w, &fx["w"], 1e-12, 1e-4);
    assert_close(
        "fused_output",
        &fusion.output,
        &fx["fused_output"],
        1e-5,
        0.0,
    );
    // float64 references too.
    assert_close("w f64", &fusion.w, &fx["w_f64ref"], 1e-15, 1e-5);
}

#[test]
fn fusion_stays_finite_at_full_scale_and_matches_the_f64_reference() {
    // Official f32 gives inf/NaN here (1 − C rounds to ≤ 0); the f64 reference is finite.
    let fx = load("tlc_loss_c10.safetensors");
    let logits = to_bec(&fx["fullscale_expert_logits"]);
    let fusion = fuse(&logits, Combination::Official { eta: 0.2 }).unwrap();
    assert!(values(&fusion.w).iter().all(|v| v.is_finite() && *v > 0.0));
    // The reference forms 1 − C by cancellation in f64 (relative error up to ~1e-3 where
    // 1 − C ≈ 1e-13); ours is cancellation-free.
    assert_close(
        "fullscale w",
        &fusion.w,
        &fx["fullscale_w_f64ref"],
        1e-300,
        1e-2,
    );
    assert_close(
        "fullscale x",
        &fusion.output,
        &fx["fullscale_fused_output_f64ref"],
        1e-3,
        1e-4,
    );
}

#[test]
fn per_sample_prediction_does_not_depend_on_the_batch() {
    let fx = load("tlc_loss_c10.safetensors");
    let logits = to_bec(&fx["expert_logits"]); // [32, 3, 10]
    let mode = Combination::PerSample { eta: 0.2 };
    let full = fuse(&logits, mode).unwrap();
    let alone = fuse(&logits.narrow(0, 5, 1).unwrap(), mode).unwrap();
    let half = fuse(&logits.narrow(0, 0, 16).unwrap(), mode).unwrap();
    let row = |t: &Tensor, i: usize| values(&t.narrow(0, i, 1).unwrap());
    for (a, b) in row(&full.output, 5).iter().zip(row(&alone.output, 0)) {
        assert!((a - b).abs() < 1e-6);
    }
    assert_eq!(
        full.predictions().unwrap()[..16],
        half.predictions().unwrap()[..]
    );
    // Per-sample weights sum to 1 over experts and grow with w_k.
    let a = values(&mode.weights(&full.w, 3).unwrap());
    for s in a.chunks(3) {
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(
            s[0] >= s[1] && s[1] >= s[2],
            "w is non-increasing, so are the weights: {s:?}"
        );
    }
    // The official combination does depend on the batch.
    let off = Combination::Official { eta: 0.2 };
    let o_full = fuse(&logits, off).unwrap();
    let o_alone = fuse(&logits.narrow(0, 5, 1).unwrap(), off).unwrap();
    let diff: f64 = row(&o_full.output, 5)
        .iter()
        .zip(row(&o_alone.output, 0))
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(diff > 1e-3, "official output should change with the batch");
}

#[test]
fn bad_shapes_and_eta_are_errors() {
    let z = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        fused_uncertainty(&z),
        Err(TlcError::LogitsShape { .. })
    ));
    let z = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        fuse(&z, Combination::PerSample { eta: 0.0 }),
        Err(TlcError::InvalidConfig { name: "eta", .. })
    ));
    let w = Tensor::ones((3, 2), DType::F64, &Device::Cpu).unwrap();
    assert!(matches!(
        Combination::default().combine(&z, &w),
        Err(TlcError::FusionShape { want_rows: 4, .. })
    ));
}
