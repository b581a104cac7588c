//! The SADE skill-diverse expert loss (docs/sade.md §1.2): `DiverseExpertLoss` of
//! `Vanint/SADE-AgnosticLT` `model/loss.py`.

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::SadeError;

/// The `1e-9` the official code adds inside every `log` of a prior (docs/sade.md pitfall 3).
pub const PRIOR_EPS: f64 = 1e-9;

/// Hyper-parameters of [`SadeLoss`] as they appear in a recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SadeLossConfig {
    /// τ (the paper's λ) of the backward expert: 2 on CIFAR-100-LT and ImageNet-LT, 1 on iNat
    /// and Places-LT (default 2, the official constructor default).
    pub tau: f64,
}

impl Default for SadeLossConfig {
    fn default() -> Self {
        Self { tau: 2.0 }
    }
}

impl SadeLossConfig {
    /// Checks that `tau` is finite and `≥ 0`.
    pub fn check(&self) -> Result<(), SadeError> {
        check_tau(self.tau)
    }
}

fn check_tau(tau: f64) -> Result<(), SadeError> {
    if !tau.is_finite() {
        return Err(SadeError::NonFinite {
            field: "tau",
            value: tau,
        });
    }
    if tau < 0.0 {
        return Err(SadeError::OutOfRange {
            field: "tau",
            value: tau,
            expected: ">= 0",
        });
    }
    Ok(())
}

fn prior(class_counts: &[usize]) -> Result<Vec<f64>, SadeError> {
    longtail_losses::class_prior(class_counts).map_err(|e| match e {
        longtail_losses::LossError::EmptyClass { .. } => SadeError::NoSamples {
            classes: class_counts.len(),
        },
        _ => SadeError::NoClasses,
    })
}

/// The inverted prior π̄ of SADE's backward expert: the class prior mirrored **by rank**
/// (docs/sade.md §1.2), not `1/π`. Rank the classes from most to least frequent; the class at
/// rank `k` receives the prior of the class at rank `C − 1 − k`, so the most frequent class gets
/// the smallest prior and the rarest class the largest. π̄ is a permutation of π.
///
/// Tie-break: classes with equal counts are ranked by class index, lower index first (as if
/// more frequent), which is the CIFAR-LT convention where the label order is the frequency
/// order. For counts that do not increase with the class index (every CIFAR-LT profile) this
/// gives exactly `π̄_c = π_{C−1−c}`.
/// Differs from official: the official code ranks with `torch.sort` on the GPU, which is not
/// stable, so the order inside a group of equal counts (CIFAR-100-LT's tail, e.g. …6, 6, 5, 5)
/// is unspecified there; a stable ascending sort would reverse it inside each tie group.
pub fn inverse_prior(class_counts: &[usize]) -> Result<Vec<f64>, SadeError> {
    let pi = prior(class_counts)?;
    let c = pi.len();
    let mut order: Vec<usize> = (0..c).collect();
    // Most frequent first; `sort_by` is stable, so equal counts keep ascending class index.
    order.sort_by(|&a, &b| class_counts[b].cmp(&class_counts[a]));
    let mut mirrored = vec![0.0; c];
    for (rank, &class) in order.iter().enumerate() {
        mirrored[class] = pi[order[c - 1 - rank]];
    }
    Ok(mirrored)
}

/// The SADE training loss for the three skill-diverse experts (docs/sade.md §1.2):
///
/// `L = CE(v₁, y) + CE(v₂ + log(π + ε), y) + CE(v₃ + log(π + ε) − τ·log(π̄ + ε), y)`
///
/// with `v_e` the expert logits (`s·cos`), `π = n / Σn` the training prior, `π̄` the
/// [`inverse_prior`], `ε` = [`PRIOR_EPS`], and `CE` the batch-mean cross-entropy. The three
/// terms are summed. Expert 1 fits the long-tailed training distribution, expert 2 is the
/// balanced softmax (uniform), expert 3 the inverse softmax (inversely long-tailed). At
/// inference the raw logits are used, without the offsets.
///
/// A class with count 0 gets prior 0; the `ε` keeps its logarithm finite, as in the official code.
#[derive(Clone, Debug)]
pub struct SadeLoss {
    tau: f64,
    prior: Vec<f64>,
    inverse_prior: Vec<f64>,
    offsets: [Vec<f64>; 3],
    /// The three offsets as a `[1, 3, C]` f32 tensor on the loss's device.
    offset_tensor: Tensor,
}

impl SadeLoss {
    /// Builds the loss for `cfg` and the training class counts. Fails on no classes, all
    /// counts 0, or a non-finite or negative τ.
    pub fn new(
        cfg: &SadeLossConfig,
        class_counts: &[usize],
        device: &Device,
    ) -> Result<Self, SadeError> {
        let tau = cfg.tau;
        check_tau(tau)?;
        let prior = prior(class_counts)?;
        let inverse_prior = inverse_prior(class_counts)?;
        let c = prior.len();
        // Offsets computed like the official float32 code: log(π + ε) of the f32 prior.
        let log_prior: Vec<f64> = prior
            .iter()
            .map(|&p| ((p as f32) as f64 + PRIOR_EPS).ln())
            .collect();
        let backward: Vec<f64> = log_prior
            .iter()
            .zip(&inverse_prior)
            .map(|(lp, &q)| lp - tau * ((q as f32) as f64 + PRIOR_EPS).ln())
            .collect();
        let offsets = [vec![0.0; c], log_prior, backward];
        let flat: Vec<f32> = offsets.iter().flatten().map(|&v| v as f32).collect();
        let offset_tensor = Tensor::from_vec(flat, (1, 3, c), device)?;
        Ok(Self {
            tau,
            prior,
            inverse_prior,
            offsets,
            offset_tensor,
        })
    }

    /// τ of the backward expert.
    pub fn tau(&self) -> f64 {
        self.tau
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.prior.len()
    }

    /// The training prior `π = n / Σn`.
    pub fn prior(&self) -> &[f64] {
        &self.prior
    }

    /// The rank-mirrored prior π̄ (see [`inverse_prior`]).
    pub fn inverse_prior(&self) -> &[f64] {
        &self.inverse_prior
    }

    /// The additive logit offset of expert `e` (0, 1, 2): zeros, `log(π + ε)` and
    /// `log(π + ε) − τ·log(π̄ + ε)`. `None` for `e > 2`.
    pub fn offsets(&self, expert: usize) -> Option<&[f64]> {
        self.offsets.get(expert).map(Vec::as_slice)
    }

    /// The loss for expert logits `[B, 3, C]` (any float dtype, experts in the order forward,
    /// uniform, backward) and targets `[B]` (u8, u32 or i64): a scalar that autograd
    /// differentiates. Any other expert count, wrong shapes, dtypes or labels give an error
    /// carrying a [`SadeError`] message.
    pub fn forward(&self, expert_logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let c = self.num_classes();
        let dims = expert_logits.dims();
        if dims.len() != 3 || dims[0] == 0 || dims[2] != c {
            return Err(wrap(SadeError::Shape {
                what: "expert logits",
                expected: format!("[B, 3, {c}] with B >= 1"),
                got: format!("{dims:?}"),
            }));
        }
        if dims[1] != 3 {
            return Err(wrap(SadeError::ExpertCount { got: dims[1] }));
        }
        if !expert_logits.dtype().is_float() {
            return Err(wrap(SadeError::Shape {
                what: "expert logits dtype",
                expected: "a float dtype".into(),
                got: format!("{:?}", expert_logits.dtype()),
            }));
        }
        let b = dims[0];
        let labels = read_targets(targets, b, c)?;
        let mut onehot = vec![0f32; b * c];
        for (i, &y) in labels.iter().enumerate() {
            onehot[i * c + y] = 1.0;
        }
        let dtype = expert_logits.dtype();
        let onehot =
            Tensor::from_vec(onehot, (b, 1, c), expert_logits.device())?.to_dtype(dtype)?;
        let adjusted = expert_logits.broadcast_add(&self.offset_tensor.to_dtype(dtype)?)?;
        let log_p = log_softmax_last(&adjusted)?;
        // Σ_e mean_i −log p_{i,e,y_i}.
        let nll = log_p.broadcast_mul(&onehot)?.sum_all()?.neg()?;
        nll / b as f64
    }
}

fn wrap(err: SadeError) -> candle_core::Error {
    candle_core::Error::wrap(err)
}

/// Reads integer targets `[B]` to the host and checks every label is `< classes`.
fn read_targets(targets: &Tensor, batch: usize, classes: usize) -> candle_core::Result<Vec<usize>> {
    if targets.dims() != [batch] {
        return Err(wrap(SadeError::Shape {
            what: "targets",
            expected: format!("[{batch}]"),
            got: format!("{:?}", targets.dims()),
        }));
    }
    if !matches!(targets.dtype(), DType::U8 | DType::U32 | DType::I64) {
        return Err(wrap(SadeError::Shape {
            what: "targets dtype",
            expected: "u8, u32 or i64".into(),
            got: format!("{:?}", targets.dtype()),
        }));
    }
    let raw = targets.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    raw.iter()
        .enumerate()
        .map(|(index, &target)| {
            usize::try_from(target)
                .ok()
                .filter(|&t| t < classes)
                .ok_or_else(|| {
                    wrap(SadeError::TargetOutOfRange {
                        index,
                        target,
                        classes,
                    })
                })
        })
        .collect()
}

/// `log_softmax` over the last dim with the max shift detached (a constant for the gradient).
fn log_softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_prior_mirrors_by_rank_not_reciprocal() {
        // π = (0.5, 0.3, 0.2) → π̄ = (0.2, 0.3, 0.5), not ∝ (2, 3.33, 5).
        let q = inverse_prior(&[5, 3, 2]).unwrap();
        assert_eq!(q, vec![0.2, 0.3, 0.5]);
        // Unsorted counts: ranks decide, not indices.
        let q = inverse_prior(&[3, 5, 2]).unwrap();
        assert_eq!(q, vec![0.3, 0.2, 0.5]);
    }

    #[test]
    fn tau_is_checked() {
        assert!(matches!(
            check_tau(f64::NAN),
            Err(SadeError::NonFinite { field: "tau", .. })
        ));
        assert!(matches!(
            check_tau(-1.0),
            Err(SadeError::OutOfRange { field: "tau", .. })
        ));
        assert!(SadeLossConfig::default().check().is_ok());
    }
}
