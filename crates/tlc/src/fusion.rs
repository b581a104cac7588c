//! Uncertainty fusion across experts and the combined prediction (docs/tlc.md §3.1, §3.2).

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TlcError};
use crate::evidence::{logits_dims, opinions, FUSION_DTYPE};

/// Fused uncertainty of experts `0..k` for every `k = 0..=E` (TLC, Li et al., CVPR 2022, Eq. 7).
///
/// `w₀ = 1`, `w_{k+1} = w_k · u_k / (1 − C_k)`, with the conflict between the single-expert
/// beliefs of experts `k − 1` and `k`, `C_k = Σ_{i≠j} b_{k−1,i} b_{k,j}` and `C₀ = 0`, as in
/// `lblaoke/TLC` `model/ResnetCifar.py` (docs/tlc.md §3.1 and pitfall 6: the conflict uses the
/// previous expert's raw belief, not a fused one). `w_E` is the model's reported uncertainty.
///
/// `logits` `[B, E, C]` → `w` `[E + 1, B]`, **always `f64`**, detached.
///
/// Differs from official (numerics only, spec pitfall 14): the official code forms
/// `1 − C_k = 1 − (Σb_{k−1})(Σb_k) + Σ_i b_{k−1,i} b_{k,i}`, which rounds to 0 or below in `f32`
/// once two experts are confident (inf/NaN in `w`). Using `Σ_c b_c = 1 − u` this equals
/// `u_{k−1} + u_k − u_{k−1} u_k + Σ_i b_{k−1,i} b_{k,i}`, a sum of non-negative terms that is computed
/// here without cancellation, in `f64` because `w` is a product of `E` factors that can each be
/// `1e-13` at full-scale logits (it would underflow `f32`). No gradient flows through `w` in TLC
/// (it only enters through a hard mask and the no-grad combination), so it is detached.
pub fn fused_uncertainty(logits: &Tensor) -> Result<Tensor> {
    let (b, e, _c) = logits_dims(logits)?;
    let z = logits.detach().to_dtype(FUSION_DTYPE)?;
    let op = opinions(&z)?;
    let mut rows = Vec::with_capacity(e + 1);
    let mut w = Tensor::ones(b, FUSION_DTYPE, logits.device())?;
    rows.push(w.clone());
    for k in 0..e {
        let u_k = op.uncertainty.narrow(1, k, 1)?.squeeze(1)?;
        let factor = if k == 0 {
            u_k
        } else {
            let u_prev = op.uncertainty.narrow(1, k - 1, 1)?.squeeze(1)?;
            let b_prev = op.belief.narrow(1, k - 1, 1)?.squeeze(1)?;
            let b_k = op.belief.narrow(1, k, 1)?.squeeze(1)?;
            let agree = (b_prev * b_k)?.sum(D::Minus1)?;
            let one_minus_conflict = (((&u_prev + &u_k)? - (&u_prev * &u_k)?)? + agree)?;
            (u_k / one_minus_conflict)?
        };
        w = (w * factor)?;
        rows.push(w.clone());
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// How the expert logits are combined into one prediction (docs/tlc.md §3.2, paper Eq. 8).
///
/// In both modes expert `k` is weighted by `exp(w_k / η)`, where `w_k` is the fused uncertainty of
/// the experts *before* it: a later expert counts more where the earlier ones are unsure. The
/// modes differ only in what that weight is normalised over.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Combination {
    /// As `lblaoke/TLC` `ResNet_s.forward`: `x = Σ_k z_k · a_k`,
    /// `a_k[b] = exp(w_k[b]/η) / Σ_{b'} exp(w_k[b']/η)`, normalised over the **batch**. Expert 0
    /// always gets `1/B`, and a sample's prediction depends on the other samples in its batch
    /// (the official evaluation uses batches of 4096 on CIFAR and 512 on ImageNet, unshuffled).
    Official {
        /// Temperature η (`reweight_temperature`): 0.2 on CIFAR, 0.5 on ImageNet.
        eta: f64,
    },
    /// Batch-independent: `a_k[b] = exp(w_k[b]/η) / Σ_{j<E} exp(w_j[b]/η)`, a softmax over the
    /// experts of one sample, so `x` is a convex combination of the expert logits.
    ///
    /// Why this reading: the official rule's intent (Eq. 8, "prefix weight") is that expert `k`
    /// weighs more when the experts before it are uncertain, i.e. its weight grows with
    /// `exp(w_k/η)`. Dividing by the batch sum only sets a per-expert scale that depends on the
    /// batch; dividing per sample by the sum over experts keeps the monotone weighting in `w_k`,
    /// gives expert 0 (w₀ = 1, the largest `w`) the largest weight, makes expert `k`'s weight
    /// relative to expert 0 equal to `exp((w_k − 1)/η)` (≈ `e^{-5}` when the earlier experts are
    /// certain at η = 0.2, ≈ 1 when they know nothing), and makes every prediction a function of
    /// its own sample only. It is also what early exit needs: the weights of experts `0..=k` do not
    /// depend on experts after `k`.
    ///
    /// Differs from official: the logits are a convex combination (scale of one expert), where
    /// the official `x` is about `1/B` of that scale; this changes the diversity target
    /// `softmax(x/T)` of the loss (sharper, per-sample) as well as batch dependence.
    PerSample {
        /// Temperature η.
        eta: f64,
    },
}

impl Default for Combination {
    fn default() -> Self {
        Combination::PerSample { eta: 0.2 }
    }
}

impl Combination {
    /// The temperature η.
    pub fn eta(self) -> f64 {
        match self {
            Combination::Official { eta } | Combination::PerSample { eta } => eta,
        }
    }

    /// Checks η is finite and positive.
    pub fn check(self) -> Result<Self> {
        let eta = self.eta();
        if !(eta.is_finite() && eta > 0.0) {
            return Err(TlcError::InvalidConfig {
                name: "eta",
                value: eta,
                reason: "must be finite and > 0",
            });
        }
        Ok(self)
    }

    /// Expert weights `a` `[B, E]` (`f64`, detached) from `w` `[E + 1, B]` (or `[E, B]`: only the
    /// first `E` rows are used; `a_E` is computed but never used officially).
    pub fn weights(self, w: &Tensor, experts: usize) -> Result<Tensor> {
        self.check()?;
        let dims = w.dims();
        if dims.len() != 2 || dims[0] < experts || experts == 0 {
            return Err(TlcError::FusionShape {
                want_rows: experts + 1,
                batch: dims.get(1).copied().unwrap_or(0),
                shape: dims.to_vec(),
            });
        }
        let scaled = w
            .detach()
            .to_dtype(DType::F64)?
            .narrow(0, 0, experts)?
            .affine(1.0 / self.eta(), 0.0)?;
        let a = match self {
            // Softmax over the batch (dim 1 of [E, B]).
            Combination::Official { .. } => candle_nn::ops::softmax(&scaled, 1)?,
            // Softmax over the experts (dim 0 of [E, B]).
            Combination::PerSample { .. } => candle_nn::ops::softmax(&scaled, 0)?,
        };
        Ok(a.t()?.contiguous()?)
    }

    /// Combined logits `x = Σ_k z_k · a_k` `[B, C]` from `logits` `[B, E, C]` and `w` `[E + 1, B]`.
    ///
    /// The output has the logits' dtype; the gradient flows through the logits only (the weights
    /// are detached; in official training `x` is only used under `no_grad`).
    pub fn combine(self, logits: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (b, e, _c) = logits_dims(logits)?;
        if w.dims().len() != 2 || w.dims()[0] != e + 1 || w.dims()[1] != b {
            return Err(TlcError::FusionShape {
                want_rows: e + 1,
                batch: b,
                shape: w.dims().to_vec(),
            });
        }
        let a = self.weights(w, e)?.to_dtype(logits.dtype())?;
        Ok(logits.broadcast_mul(&a.unsqueeze(D::Minus1)?)?.sum(1)?)
    }
}

/// Fused uncertainty and combined prediction of one batch.
#[derive(Debug, Clone)]
pub struct Fusion {
    /// Fused uncertainties `w` `[E + 1, B]`, `f64` (see [`fused_uncertainty`]); `w[E]` is the
    /// model's uncertainty for each sample.
    pub w: Tensor,
    /// Combined logits `x` `[B, C]`, logits dtype; predict with `argmax`.
    pub output: Tensor,
}

impl Fusion {
    /// The reported per-sample uncertainty `w_E` `[B]` (`f64`).
    pub fn uncertainty(&self) -> Result<Tensor> {
        let rows = self.w.dim(0)?;
        Ok(self.w.narrow(0, rows - 1, 1)?.squeeze(0)?)
    }

    /// Predicted class per sample, `argmax x`.
    pub fn predictions(&self) -> Result<Vec<u32>> {
        Ok(self.output.argmax(D::Minus1)?.to_vec1::<u32>()?)
    }
}

/// Fused uncertainty and combined logits of expert `logits` `[B, E, C]`.
pub fn fuse(logits: &Tensor, combination: Combination) -> Result<Fusion> {
    let w = fused_uncertainty(logits)?;
    let output = combination.combine(logits, &w)?;
    Ok(Fusion { w, output })
}
