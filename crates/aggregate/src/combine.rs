//! Plain (untrained) combiners of expert logits, and the layout helpers.
//!
//! Layout: every function here takes per-expert logits as **`[E, B, C]`** (experts, samples,
//! classes), the layout SADE's loss receives (`extra_info["logits"]`, docs/sade.md §1.2).
//! Models that return `[B, E, C]` (SADE's forward `logits` key, the fixtures' `expert_logits`)
//! go through [`experts_first`] first. Results are `[B, C]`, in f64 when the input is f64 and in
//! f32 otherwise.

use candle_core::{DType, Tensor, D};

use crate::check;
use crate::error::{AggregateError, Result};

/// `[B, E, C]` → `[E, B, C]` (contiguous), the layout this crate takes.
pub fn experts_first(batch_first_logits: &Tensor) -> Result<Tensor> {
    let shape = batch_first_logits.dims();
    if shape.len() != 3 {
        return Err(AggregateError::Rank {
            what: "batch-first logits".into(),
            expected: 3,
            layout: "[B, E, C]: samples, experts, classes",
            got: shape.to_vec(),
        });
    }
    Ok(batch_first_logits.transpose(0, 1)?.contiguous()?)
}

/// `[E, B, C]` → `[B, E, C]` (contiguous), the inverse of [`experts_first`].
pub fn batch_first(expert_first_logits: &Tensor) -> Result<Tensor> {
    let shape = expert_first_logits.dims();
    if shape.len() != 3 {
        return Err(AggregateError::Rank {
            what: "expert-first logits".into(),
            expected: 3,
            layout: "[E, B, C]: experts, samples, classes",
            got: shape.to_vec(),
        });
    }
    Ok(expert_first_logits.transpose(0, 1)?.contiguous()?)
}

/// The unweighted mean of the experts' logits, `[E, B, C]` → `[B, C]`.
///
/// This is SADE's (and RIDE's) plain prediction: the forward's `output` is the arithmetic mean of
/// the expert logits (docs/sade.md §1.1, pitfall 1). Logits are averaged, not probabilities.
pub fn mean_logits(logits: &Tensor) -> Result<Tensor> {
    check::expert_logits("logits", logits)?;
    check::finite("logits", logits)?;
    let dtype = check::compute_dtype("logits", logits)?;
    Ok(logits.to_dtype(dtype)?.mean(0)?)
}

/// `Σ_e w_e · v_e`: logits `[E, B, C]` mixed with fixed weights, → `[B, C]`.
///
/// This is the prediction of SADE's test-time aggregation once `w = softmax(ω)` is learned
/// (docs/sade.md §2 step 8: `argmax_c Σ_e w_e v_e,c`). The weights must be one per expert,
/// non-negative and sum to 1 within [`check::SUM_TOLERANCE`](crate::SUM_TOLERANCE).
pub fn weighted_logits(logits: &Tensor, weights: &[f64]) -> Result<Tensor> {
    let (e, _, _) = check::expert_logits("logits", logits)?;
    check::weights(e, weights)?;
    check::finite("logits", logits)?;
    mix(logits, weights)
}

/// `Σ_e w_e · v_e` without validation (callers have checked both).
pub(crate) fn mix(logits: &Tensor, weights: &[f64]) -> Result<Tensor> {
    let dtype = check::compute_dtype("logits", logits)?;
    let w = Tensor::from_slice(weights, (weights.len(), 1, 1), logits.device())?.to_dtype(dtype)?;
    Ok(logits.to_dtype(dtype)?.broadcast_mul(&w)?.sum(0)?)
}

/// Post-hoc prior correction: `logits + log π_test`, broadcast over the last (class) axis.
///
/// Apply it to logits that model the **class-balanced** posterior, i.e. that were trained for a
/// uniform prior: in SADE that is the uniform expert (expert index 1, trained with balanced
/// softmax, `CE(v₂ + log π_train, y)`, docs/sade.md §1.2), e.g.
/// `prior_corrected(&logits.get(1)?, &pi)`; or any balanced-softmax / logit-adjusted model. Then
/// `softmax(v + log π_test)` is the Bayes posterior under the test label distribution (logit
/// adjustment, Menon et al. 2021). Do not apply it to the mean of SADE's three experts: the
/// forward and backward experts already carry (opposite) priors in their raw logits.
/// This is an oracle baseline when the test prior is known, not part of SADE.
///
/// `logits` may have any rank ≥ 1 (`[C]`, `[B, C]`, `[E, B, C]`); `test_prior` has one entry per
/// class, each finite and positive, summing to 1.
pub fn prior_corrected(logits: &Tensor, test_prior: &[f64]) -> Result<Tensor> {
    let shape = logits.dims();
    let Some(&classes) = shape.last() else {
        return Err(AggregateError::Rank {
            what: "logits".into(),
            expected: 1,
            layout: "[..., C]: classes last",
            got: shape.to_vec(),
        });
    };
    if classes == 0 || logits.elem_count() == 0 {
        return Err(AggregateError::Empty {
            what: "logits".into(),
            shape: shape.to_vec(),
        });
    }
    if test_prior.len() != classes {
        return Err(AggregateError::PriorLength {
            classes,
            got: test_prior.len(),
        });
    }
    if let Some((index, &value)) = test_prior
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0))
    {
        return Err(AggregateError::BadPrior { index, value });
    }
    let sum: f64 = test_prior.iter().sum();
    if (sum - 1.0).abs() > check::SUM_TOLERANCE {
        return Err(AggregateError::PriorNotNormalized { sum });
    }
    check::finite("logits", logits)?;
    let dtype = check::compute_dtype("logits", logits)?;
    let log_prior: Vec<f64> = test_prior.iter().map(|p| p.ln()).collect();
    let log_prior = Tensor::from_vec(log_prior, classes, logits.device())?.to_dtype(dtype)?;
    Ok(logits.to_dtype(dtype)?.broadcast_add(&log_prior)?)
}

/// Index of the largest logit per row: `[B, C]` → `B` class indices.
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    let shape = logits.dims();
    if shape.len() != 2 {
        return Err(AggregateError::Rank {
            what: "logits".into(),
            expected: 2,
            layout: "[B, C]: samples, classes",
            got: shape.to_vec(),
        });
    }
    if shape[1] == 0 {
        return Err(AggregateError::Empty {
            what: "logits".into(),
            shape: shape.to_vec(),
        });
    }
    let dtype = check::compute_dtype("logits", logits)?;
    Ok(logits
        .to_dtype(dtype)?
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ebc() -> Tensor {
        // E = 2, B = 2, C = 3.
        Tensor::from_vec(
            vec![1f32, 2., 3., 4., 5., 6., -1., 0., 1., 2., 2., 2.],
            (2, 2, 3),
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn mean_and_weighted() {
        let m = mean_logits(&ebc()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m, vec![vec![0., 1., 2.], vec![3., 3.5, 4.]]);
        let w = weighted_logits(&ebc(), &[0.25, 0.75])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(w, vec![vec![-0.5, 0.5, 1.5], vec![2.5, 2.75, 3.0]]);
    }

    #[test]
    fn layouts_round_trip() {
        let bec = batch_first(&ebc()).unwrap();
        assert_eq!(bec.dims(), &[2, 2, 3]);
        // Sample 0 of expert 1 moved to [0, 1, :].
        assert_eq!(
            bec.get(0)
                .unwrap()
                .get(1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![-1., 0., 1.]
        );
        let back = experts_first(&bec).unwrap();
        assert_eq!(
            back.to_vec3::<f32>().unwrap(),
            ebc().to_vec3::<f32>().unwrap()
        );
        assert!(matches!(
            experts_first(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()),
            Err(AggregateError::Rank { .. })
        ));
    }

    #[test]
    fn prior_correction_adds_log_prior() {
        let x = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
        let y = prior_corrected(&x, &[0.5, 0.25, 0.25])
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for row in y {
            assert!((row[0] - 0.5f64.ln()).abs() < 1e-12);
            assert!((row[2] - 0.25f64.ln()).abs() < 1e-12);
        }
        assert!(matches!(
            prior_corrected(&x, &[0.5, 0.5]),
            Err(AggregateError::PriorLength { classes: 3, got: 2 })
        ));
        assert!(matches!(
            prior_corrected(&x, &[1.0, 0.0, 0.0]),
            Err(AggregateError::BadPrior { index: 1, .. })
        ));
        assert!(matches!(
            prior_corrected(&x, &[0.5, 0.3, 0.3]),
            Err(AggregateError::PriorNotNormalized { .. })
        ));
    }

    #[test]
    fn weights_are_validated() {
        let x = ebc();
        assert!(matches!(
            weighted_logits(&x, &[1.0]),
            Err(AggregateError::WeightCount { experts: 2, got: 1 })
        ));
        assert!(matches!(
            weighted_logits(&x, &[0.5, 0.49]),
            Err(AggregateError::WeightsNotNormalized { .. })
        ));
        assert!(matches!(
            weighted_logits(&x, &[1.5, -0.5]),
            Err(AggregateError::BadWeight { index: 1, .. })
        ));
        assert!(matches!(
            weighted_logits(&x, &[f64::NAN, 1.0]),
            Err(AggregateError::BadWeight { index: 0, .. })
        ));
    }

    #[test]
    fn predictions_take_argmax() {
        let m = mean_logits(&ebc()).unwrap();
        assert_eq!(predictions(&m).unwrap(), vec![2, 2]);
    }
}
