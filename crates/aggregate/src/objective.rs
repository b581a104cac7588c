//! The self-supervised objective: prediction stability of the aggregated ensemble across two views.

use candle_core::{Tensor, D};

use crate::check;
use crate::error::Result;

/// The `eps` of `nn.CosineSimilarity(dim=1, eps=1e-6)` in the official scripts.
///
/// Each norm is clamped from below by `eps` before dividing (PyTorch ≥ 1.12 semantics). For
/// softmax vectors the norm is at least `1/√C`, so the clamp never binds in practice.
pub const COSINE_EPS: f64 = 1e-6;

/// The value of the objective on one batch (see [`stability_loss`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StabilityLoss {
    /// The minimised loss, `−mean_i cos(p_a,i, p_b,i) − λ·H`.
    pub loss: f64,
    /// The batch-mean cosine similarity `mean_i cos(p_a,i, p_b,i)`, in `[0, 1]`.
    pub cosine: f64,
    /// `H = −mean_{i,c}[p_a log p_a] − mean_{i,c}[p_b log p_b]` (reported even when λ = 0).
    pub entropy: f64,
}

/// SADE's test-time objective on one batch, for fixed weights (docs/sade.md §2 steps 3–5).
///
/// `z = Σ_e w_e v_e` (aggregation on **logits**), `p = softmax_c(z)` for each view, then
/// `loss = −mean_i cos(p_a,i, p_b,i) − λ·H`, with
/// `H = −mean_{i,c}[p_a log p_a] − mean_{i,c}[p_b log p_b]` (both means over `B·C` elements).
/// `λ = 0` is the CIFAR / ImageNet-LT / Places-LT objective; `λ = 0.01` is the iNaturalist
/// variant (`test_training_inat.py`), which *maximises* entropy.
///
/// `view_a`, `view_b`: `[E, B, C]` logits of two augmentations of the same samples;
/// `weights`: one per expert, non-negative, summing to 1.
pub fn stability_loss(
    view_a: &Tensor,
    view_b: &Tensor,
    weights: &[f64],
    entropy_coef: f64,
) -> Result<StabilityLoss> {
    let (e, _, _) = check::views(view_a, view_b)?;
    check::weights(e, weights)?;
    check::finite("view a", view_a)?;
    check::finite("view b", view_b)?;
    let dtype = check::compute_dtype("view a", view_a)?;
    let w = Tensor::from_slice(weights, e, view_a.device())?.to_dtype(dtype)?;
    let terms = terms(
        &view_a.to_dtype(dtype)?,
        &view_b.to_dtype(dtype)?,
        &w,
        entropy_coef,
    )?;
    terms.values()
}

/// The objective as tensors, so autograd can differentiate `loss` with respect to `w`.
pub(crate) struct Terms {
    pub(crate) loss: Tensor,
    pub(crate) cosine: Tensor,
    pub(crate) entropy: Tensor,
}

impl Terms {
    pub(crate) fn values(&self) -> Result<StabilityLoss> {
        let scalar = |t: &Tensor| -> Result<f64> {
            Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
        };
        Ok(StabilityLoss {
            loss: scalar(&self.loss)?,
            cosine: scalar(&self.cosine)?,
            entropy: scalar(&self.entropy)?,
        })
    }
}

/// `log softmax` over the last axis, shifted by the (detached) row maximum for stability.
fn log_softmax(z: &Tensor) -> Result<Tensor> {
    let max = z.max_keepdim(D::Minus1)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Computes the objective. Inputs are already validated and in one float dtype;
/// `w` is `[E]` (possibly `softmax(ω)` of a `Var`).
///
/// Differs from official: `p log p` uses `p · log_softmax(z)` rather than `p · log(softmax(z))`.
/// The value is the same wherever the official one is finite (there is still no eps); where a
/// probability underflows to 0 the official gives `0 · log 0 = NaN`, this gives 0.
pub(crate) fn terms(
    view_a: &Tensor,
    view_b: &Tensor,
    w: &Tensor,
    entropy_coef: f64,
) -> Result<Terms> {
    let e = w.dim(0)?;
    let w = w.reshape((e, 1, 1))?;
    let za = view_a.broadcast_mul(&w)?.sum(0)?;
    let zb = view_b.broadcast_mul(&w)?.sum(0)?;
    let (lpa, lpb) = (log_softmax(&za)?, log_softmax(&zb)?);
    let (pa, pb) = (lpa.exp()?, lpb.exp()?);

    let dot = (&pa * &pb)?.sum(D::Minus1)?;
    let na = pa.sqr()?.sum(D::Minus1)?.sqrt()?.maximum(COSINE_EPS)?;
    let nb = pb.sqr()?.sum(D::Minus1)?.sqrt()?.maximum(COSINE_EPS)?;
    let cosine = (dot / (na * nb)?)?.mean_all()?;

    let entropy = ((&pa * &lpa)?.mean_all()? + (&pb * &lpb)?.mean_all()?)?.neg()?;
    let loss = if entropy_coef == 0.0 {
        cosine.neg()?
    } else {
        (cosine.neg()? - (&entropy * entropy_coef)?)?
    };
    Ok(Terms {
        loss,
        cosine,
        entropy,
    })
}
