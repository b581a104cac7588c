//! The loss formulas of the baselines as plain tensor functions of logits `[B, C]` and labels
//! `[B]` (u32), so that each can be checked on fixed logits (docs/baselines.md §10).

use candle_core::{DType, Result, Tensor, D};

/// `1[c = y_i]` as a `[B, C]` tensor of the logits' dtype.
pub fn one_hot(labels: &Tensor, classes: usize, dtype: DType) -> Result<Tensor> {
    let range = Tensor::arange(0u32, classes as u32, labels.device())?.unsqueeze(0)?;
    labels.unsqueeze(1)?.broadcast_eq(&range)?.to_dtype(dtype)
}

/// Per-sample cross-entropy `−log softmax(z_i)_{y_i}`, `[B]`.
pub fn per_sample_ce(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// `w_{y_i}` for each sample, `[B]`, from per-class weights `[C]`.
pub fn sample_weights(class_weights: &Tensor, labels: &Tensor) -> Result<Tensor> {
    class_weights.index_select(labels, 0)
}

/// Cross-entropy of the logits shifted by a per-class offset `[C]`: `CE(z + o, y)`, averaged
/// over the batch. Balanced softmax has `o = log n`, the logit-adjusted loss
/// `o = log(π^τ + 1e-12)` (docs/baselines.md §5).
pub fn adjusted_ce(logits: &Tensor, labels: &Tensor, offsets: &Tensor) -> Result<Tensor> {
    let shifted = logits.broadcast_add(&offsets.to_dtype(logits.dtype())?.unsqueeze(0)?)?;
    per_sample_ce(&shifted, labels)?.mean_all()
}

/// Class-weighted CE with PyTorch's weighted mean `Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}`
/// (`F.cross_entropy(weight=w)`, LDAM-DRW; docs/baselines.md §0 "Reduction pitfall", oracle 11).
pub fn weighted_ce_torch(
    logits: &Tensor,
    labels: &Tensor,
    class_weights: &Tensor,
) -> Result<Tensor> {
    let w = sample_weights(&class_weights.to_dtype(logits.dtype())?, labels)?;
    let l = per_sample_ce(logits, labels)?;
    (l * &w)?.sum_all()?.broadcast_div(&w.sum_all()?)
}

/// Class-weighted CE divided by the batch size, `Σ_i w_{y_i} ℓ_i / B`: the TensorFlow
/// reduction of the official class-balanced code (CB Eq. 8; docs/baselines.md §0, §3).
pub fn weighted_ce_batch(
    logits: &Tensor,
    labels: &Tensor,
    class_weights: &Tensor,
) -> Result<Tensor> {
    let w = sample_weights(&class_weights.to_dtype(logits.dtype())?, labels)?;
    (per_sample_ce(logits, labels)? * w)?.mean_all()
}

/// `softplus(x) = log(1 + eˣ)`, computed as `max(x, 0) + log(1 + e^{−|x|})` so it never overflows.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Softmax focal loss as the LDAM-DRW repository's `FocalLoss` (docs/baselines.md §2):
/// `ℓ_i = −log p_{y_i}`, `p = e^{−ℓ_i}`, loss `= mean_i (1 − p)^γ ℓ_i`. `γ = 0` is plain CE.
///
/// `1 − p` is floored at `1e-30` before the power, so that a sample already learnt
/// (`p = 1` in float) gives a finite gradient for any `γ` (its term is 0 either way).
pub fn softmax_focal(logits: &Tensor, labels: &Tensor, gamma: f64) -> Result<Tensor> {
    let ce = per_sample_ce(logits, labels)?;
    if gamma == 0.0 {
        return ce.mean_all();
    }
    let one_minus_p = (ce.neg()?.exp()?.neg()? + 1.0)?.clamp(1e-30, 1.0)?;
    let modulator = (one_minus_p.log()? * gamma)?.exp()?;
    (modulator * ce)?.mean_all()
}

/// Sigmoid (one-vs-all) focal loss of the class-balanced paper (Cui et al., CVPR 2019, Eq. 12–13;
/// docs/baselines.md §2, §3), summed over the `C` binary terms of each sample, each sample's
/// terms times its weight `w_i` (all ones when `None`), divided by the number of positives `B`:
///
/// `FL = Σ_i w_i Σ_c (1 − p^t_{ic})^γ · (−log p^t_{ic}) / B`, `p^t = σ(z)` for the true class and
/// `1 − σ(z)` otherwise. With `s = ±z` (+ for the true class), `−log p^t = softplus(−s)` and
/// `(1 − p^t)^γ = exp(−γ · softplus(s))`: the official code's stable modulator
/// `exp(−γ y z − γ log(1 + e^{−z}))`. `γ = 0` is the sigmoid (binary cross-entropy) form.
pub fn sigmoid_focal(
    logits: &Tensor,
    labels: &Tensor,
    gamma: f64,
    sample_weights: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    let y = one_hot(labels, c, logits.dtype())?;
    // s = z for the true class, −z otherwise.
    let s = (logits * ((y * 2.0)? - 1.0)?)?;
    let mut terms = softplus(&s.neg()?)?;
    if gamma != 0.0 {
        terms = ((softplus(&s)? * (-gamma))?.exp()? * terms)?;
    }
    let per_sample = terms.sum(1)?;
    let per_sample = match sample_weights {
        Some(w) => (per_sample * w.to_dtype(logits.dtype())?)?,
        None => per_sample,
    };
    per_sample.sum_all()? / b as f64
}

/// LDAM's margined logits (Cao et al., NeurIPS 2019, Eq. 12; docs/baselines.md §4):
/// `z − s·m_y` on the target logit only, where `z = s·cos θ` is the cosine head's output and
/// `scaled_margins` is `s·m` per class `[C]`.
pub fn ldam_logits(logits: &Tensor, labels: &Tensor, scaled_margins: &Tensor) -> Result<Tensor> {
    let (_, c) = logits.dims2()?;
    let y = one_hot(labels, c, logits.dtype())?;
    let m = scaled_margins.to_dtype(logits.dtype())?.unsqueeze(0)?;
    logits - y.broadcast_mul(&m)?
}
