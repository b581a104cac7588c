//! Early exit with synthetic expert logits.

use std::cell::RefCell;

use candle_core::{Device, Tensor};
use longtail_tlc::{fuse, fused_uncertainty, predict_early_exit, Combination, EarlyExit, TlcError};

use crate::common::{load, to_bec, values};

/// Synthetic [B, E, C] logits: the fixture's tempered draw (B = 32, E = 3, C = 10).
fn logits() -> Tensor {
    to_bec(&load("tlc_loss_c10.safetensors")["expert_logits"])
}

/// A closure that serves expert `k` for `idx` from `logits`, recording every call.
fn run(
    z: &Tensor,
    threshold: f64,
    calls: &RefCell<Vec<(usize, Vec<u32>)>>,
) -> longtail_tlc::EarlyExitOutput {
    let (b, e, _) = z.dims3().unwrap();
    let mut forward = |k: usize, idx: &[u32]| -> longtail_tlc::Result<Tensor> {
        calls.borrow_mut().push((k, idx.to_vec()));
        let ids = Tensor::new(idx, &Device::Cpu)?;
        Ok(z.narrow(1, k, 1)?
            .squeeze(1)?
            .contiguous()?
            .index_select(&ids, 0)?)
    };
    predict_early_exit(
        &mut forward,
        b,
        e,
        EarlyExit {
            threshold,
            eta: 0.2,
        },
    )
    .unwrap()
}

#[test]
fn threshold_zero_runs_every_expert_and_equals_the_per_sample_combination() {
    let z = logits();
    let calls = RefCell::new(Vec::new());
    let out = run(&z, 0.0, &calls);
    assert!(out.experts_used.iter().all(|&n| n == 3));
    let full = fuse(&z, Combination::PerSample { eta: 0.2 }).unwrap();
    assert_eq!(out.predictions, full.predictions().unwrap());
    for (a, b) in values(&out.logits).iter().zip(values(&full.output)) {
        assert!((a - b).abs() < 1e-5);
    }
    for (a, b) in out
        .uncertainty
        .iter()
        .zip(values(&full.uncertainty().unwrap()))
    {
        assert!((a - b).abs() < 1e-12 * b.max(1e-300) + 1e-300);
    }
    assert_eq!(calls.borrow().len(), 3);
}

#[test]
fn high_threshold_stops_after_the_first_expert() {
    let z = logits();
    let calls = RefCell::new(Vec::new());
    let out = run(&z, 1.5, &calls);
    assert!(out.experts_used.iter().all(|&n| n == 1));
    let first: Vec<u32> = z
        .narrow(1, 0, 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(out.predictions, first);
    assert_eq!(calls.borrow().len(), 1);
}

#[test]
fn experts_are_called_only_for_uncertain_samples() {
    let z = logits();
    let w = fused_uncertainty(&z).unwrap().to_vec2::<f64>().unwrap(); // [4, 32]
                                                                      // A threshold between the quartiles of w_1 so that some samples exit after expert 0.
    let mut w1 = w[1].clone();
    w1.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let threshold = w1[16];
    let calls = RefCell::new(Vec::new());
    let out = run(&z, threshold, &calls);
    let calls = calls.borrow();
    for (i, &used) in out.experts_used.iter().enumerate() {
        // Expected: exit after expert k at the first k with w_{k+1} < threshold.
        let want = (1..=3).find(|&k| w[k][i] < threshold).unwrap_or(3);
        assert_eq!(used, want, "sample {i}");
        // Expert k was called for sample i exactly when k < used.
        for (k, idx) in calls.iter() {
            assert_eq!(
                idx.contains(&(i as u32)),
                *k < used,
                "sample {i} expert {k}"
            );
        }
    }
    assert!(
        out.mean_experts() > 1.0 && out.mean_experts() < 3.0,
        "{}",
        out.mean_experts()
    );
    // A sample's result does not depend on the batch: rerun one sample alone.
    let i = out.experts_used.iter().position(|&n| n == 1).unwrap();
    let alone = run(
        &z.narrow(0, i, 1).unwrap(),
        threshold,
        &RefCell::new(Vec::new()),
    );
    assert_eq!(alone.predictions[0], out.predictions[i]);
    assert_eq!(alone.experts_used[0], 1);
}

#[test]
fn wrong_expert_output_is_an_error() {
    let mut forward = |_k: usize, idx: &[u32]| -> longtail_tlc::Result<Tensor> {
        Ok(Tensor::zeros(
            (idx.len() + 1, 4),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)
    };
    let err = predict_early_exit(
        &mut forward,
        3,
        2,
        EarlyExit {
            threshold: 0.1,
            eta: 0.2,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, TlcError::ExpertOutputShape { expert: 0, .. }),
        "{err}"
    );
    let err = predict_early_exit(
        &mut forward,
        3,
        2,
        EarlyExit {
            threshold: 0.1,
            eta: -1.0,
        },
    )
    .unwrap_err();
    assert!(matches!(err, TlcError::InvalidConfig { name: "eta", .. }));
}
