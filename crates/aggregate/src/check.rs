//! Input validation shared by every entry point.

use candle_core::{DType, Tensor};

use crate::error::{AggregateError, Result};

/// Absolute tolerance when checking that weights or a prior sum to 1.
///
/// Loose enough for weights written out in f32 (or printed with 5+ decimals), tight enough to
/// catch weights rounded to 2 decimals that no longer sum to 1 (e.g. `[0.40, 0.35, 0.24]`).
pub const SUM_TOLERANCE: f64 = 1e-4;

/// The dtype computations run in: f64 stays f64, every other float type runs in f32.
pub(crate) fn compute_dtype(what: &str, t: &Tensor) -> Result<DType> {
    match t.dtype() {
        DType::F64 => Ok(DType::F64),
        DType::F32 | DType::F16 | DType::BF16 => Ok(DType::F32),
        dtype => Err(AggregateError::Dtype {
            what: what.into(),
            dtype,
        }),
    }
}

/// Checks that `t` is float `[E, B, C]` with `E, B, C > 0` and returns `(E, B, C)`.
pub(crate) fn expert_logits(what: &str, t: &Tensor) -> Result<(usize, usize, usize)> {
    let shape = t.dims().to_vec();
    if shape.len() != 3 {
        return Err(AggregateError::Rank {
            what: what.into(),
            expected: 3,
            layout: "[E, B, C]: experts, samples, classes",
            got: shape,
        });
    }
    if shape[0] == 0 {
        return Err(AggregateError::NoExperts {
            what: what.into(),
            shape,
        });
    }
    if shape[1] == 0 || shape[2] == 0 {
        return Err(AggregateError::Empty {
            what: what.into(),
            shape,
        });
    }
    compute_dtype(what, t)?;
    Ok((shape[0], shape[1], shape[2]))
}

/// Checks two views: both valid `[E, B, C]` and of the same shape.
pub(crate) fn views(a: &Tensor, b: &Tensor) -> Result<(usize, usize, usize)> {
    let dims = expert_logits("view a", a)?;
    expert_logits("view b", b)?;
    if a.dims() != b.dims() {
        return Err(AggregateError::ViewMismatch {
            a: a.dims().to_vec(),
            b: b.dims().to_vec(),
        });
    }
    Ok(dims)
}

/// Fails if `t` holds any NaN or ±inf (one reduction, one scalar copied to the host).
pub(crate) fn finite(what: &str, t: &Tensor) -> Result<()> {
    // x·0 is 0 for finite x and NaN for NaN/±inf, so the sum is finite iff every entry is.
    let probe = t
        .to_dtype(compute_dtype(what, t)?)?
        .affine(0.0, 0.0)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    if probe.is_finite() {
        Ok(())
    } else {
        Err(AggregateError::NonFinite { what: what.into() })
    }
}

/// Checks mixing weights: one per expert, finite, non-negative, summing to 1.
pub(crate) fn weights(experts: usize, w: &[f64]) -> Result<()> {
    if w.len() != experts {
        return Err(AggregateError::WeightCount {
            experts,
            got: w.len(),
        });
    }
    if let Some((index, &value)) = w
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
    {
        return Err(AggregateError::BadWeight { index, value });
    }
    let sum: f64 = w.iter().sum();
    if (sum - 1.0).abs() > SUM_TOLERANCE {
        return Err(AggregateError::WeightsNotNormalized { sum });
    }
    Ok(())
}
