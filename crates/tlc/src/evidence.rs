//! Subjective-logic opinions from expert logits (docs/tlc.md §2.1).
//!
//! For expert `k` with logits `z_k` over `K` classes: evidence `e = exp(z)`, Dirichlet parameters
//! `α = e + 1`, strength `S = Σ_c α_c = K + Σ_c e_c`, belief `b = e / S` and uncertainty `u = K / S`,
//! so `Σ_c b_c + u = 1` (as in `lblaoke/TLC` `model/ResnetCifar.py`, `ResNet_s.forward`).

use candle_core::{DType, Tensor, D};

use crate::error::{Result, TlcError};

/// Per-expert opinions of a batch.
#[derive(Debug, Clone)]
pub struct Opinion {
    /// Belief masses `b = e / S`, `[B, E, C]`.
    pub belief: Tensor,
    /// Uncertainty mass `u = K / S`, `[B, E]`.
    pub uncertainty: Tensor,
    /// `ln S`, `[B, E]`.
    pub log_strength: Tensor,
}

/// Checks that `logits` is `[B, E, C]` with non-zero sizes and returns `(B, E, C)`.
pub fn logits_dims(logits: &Tensor) -> Result<(usize, usize, usize)> {
    match *logits.dims() {
        [b, e, c] if b > 0 && e > 0 && c > 0 => Ok((b, e, c)),
        _ => Err(TlcError::LogitsShape {
            shape: logits.dims().to_vec(),
        }),
    }
}

/// Evidence `e = exp(z)` of expert logits (any shape).
pub fn evidence(logits: &Tensor) -> Result<Tensor> {
    Ok(logits.exp()?)
}

/// Dirichlet parameters `α = exp(z) + 1` of expert logits (any shape).
pub fn dirichlet_alpha(logits: &Tensor) -> Result<Tensor> {
    Ok(logits.exp()?.affine(1.0, 1.0)?)
}

/// Beliefs and uncertainties of every expert, `logits` `[B, E, C]`.
///
/// Computed in log space, `ln S = logsumexp(z_1, …, z_K, ln K)`, `b = exp(z − ln S)`,
/// `u = exp(ln K − ln S)`: equal to the official `e / S` and `K / S` but finite for any finite
/// logit (the official form overflows `exp(z)` above 88 in `f32`). The result keeps the input's
/// dtype and its autograd graph.
pub fn opinions(logits: &Tensor) -> Result<Opinion> {
    let (b, e, c) = logits_dims(logits)?;
    let ln_k =
        Tensor::full((c as f64).ln(), (b, e, 1), logits.device())?.to_dtype(logits.dtype())?;
    let log_strength = Tensor::cat(&[logits, &ln_k], D::Minus1)?.log_sum_exp(D::Minus1)?;
    let belief = logits
        .broadcast_sub(&log_strength.unsqueeze(D::Minus1)?)?
        .exp()?;
    let uncertainty = log_strength.affine(-1.0, (c as f64).ln())?.exp()?;
    Ok(Opinion {
        belief,
        uncertainty,
        log_strength,
    })
}

/// The dtype the fusion arithmetic runs in (see [`crate::fusion::fused_uncertainty`]).
pub(crate) const FUSION_DTYPE: DType = DType::F64;
