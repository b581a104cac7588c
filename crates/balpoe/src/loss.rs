//! BalPoE's settings, its training loss (`BSExpertLoss`, docs/balpoe.md §2.1–§2.2) and its
//! prediction rules (docs/balpoe.md §3.1–§3.2).

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::BalPoeError;

/// The `1e-9` the official code adds to the prior inside its logarithm (docs/balpoe.md §2.1).
pub const PRIOR_EPS: f64 = 1e-9;

/// BalPoE's `[method]` settings.
///
/// Each expert `e` is trained with the bias `τ_e·log π` (docs/balpoe.md §2.1; the paper's
/// λ-expert has λ = 1 − τ). The official configs give `tau_min`, `tau_max` and the list
/// itself; here the list defaults to `E` values equally spaced from `tau_min` to `tau_max`
/// (the official `--tau_list limits`, which gives exactly the configs' lists: [0, 1, 2] on
/// CIFAR, [0, 1.25, 2.5] on ImageNet-LT, [−1, 1, 3] on iNat), so `--experts N` keeps working.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalPoeSettings {
    /// τ of the first expert (official `tau_min`).
    pub tau_min: f64,
    /// τ of the last expert (official `tau_max`).
    pub tau_max: f64,
    /// One τ per expert, overriding the even spacing (official `--tau_list "a;b;c"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau_list: Option<Vec<f64>>,
    /// Subtract the ensemble's residual bias `(1 − τ̄)·log π` from its prediction, so that it is
    /// unbiased for a uniform test prior whatever the mean τ̄ (docs/balpoe.md §2.2, §7 item 5).
    /// Off by default, as the official code: with τ̄ = 1 (CIFAR, iNat) the residual is 0 anyway;
    /// with ImageNet-LT's τ̄ = 1.25 the official prediction keeps −0.25·log π.
    #[serde(default)]
    pub correct_residual_bias: bool,
}

impl BalPoeSettings {
    /// `E` equally spaced values from `tau_min` to `tau_max` (see [`tau_limits`]).
    pub fn spaced(tau_min: f64, tau_max: f64) -> Self {
        Self {
            tau_min,
            tau_max,
            tau_list: None,
            correct_residual_bias: false,
        }
    }

    /// The τ of each of `experts` experts: `tau_list`, or [`tau_limits`]. Fails on a non-finite
    /// value, no experts, or a `tau_list` of another length.
    pub fn taus(&self, experts: usize) -> Result<Vec<f64>, BalPoeError> {
        for (field, value) in [("tau_min", self.tau_min), ("tau_max", self.tau_max)] {
            if !value.is_finite() {
                return Err(BalPoeError::NonFinite { field, value });
            }
        }
        if experts == 0 {
            return Err(BalPoeError::NoExperts);
        }
        let taus = match &self.tau_list {
            Some(list) if list.len() != experts => {
                return Err(BalPoeError::TauCount {
                    experts,
                    taus: list.len(),
                })
            }
            Some(list) => list.clone(),
            None => tau_limits(self.tau_min, self.tau_max, experts),
        };
        if let Some(&value) = taus.iter().find(|t| !t.is_finite()) {
            return Err(BalPoeError::NonFinite {
                field: "tau_list",
                value,
            });
        }
        Ok(taus)
    }
}

/// The official `limits` spacing (docs/balpoe.md §2.2, `utils/util.py` `parse_tau_list`): `E`
/// values equally spaced from `tau_min` to `tau_max`, ends included; one expert gets the
/// midpoint. `(0, 2, 7)` → 0, 1/3, 2/3, 1, 4/3, 5/3, 2 (the README's 7-expert run).
pub fn tau_limits(tau_min: f64, tau_max: f64, experts: usize) -> Vec<f64> {
    match experts {
        0 => vec![],
        1 => vec![(tau_min + tau_max) / 2.0],
        e => (0..e)
            .map(|i| tau_min + (tau_max - tau_min) * i as f64 / (e - 1) as f64)
            .collect(),
    }
}

/// The training prior `π = n / Σn` and `log(π + ε)` with the official ε = [`PRIOR_EPS`].
fn log_prior(class_counts: &[usize]) -> Result<Vec<f64>, BalPoeError> {
    let pi = longtail_losses::class_prior(class_counts).map_err(|e| match e {
        longtail_losses::LossError::EmptyClass { .. } => BalPoeError::NoSamples {
            classes: class_counts.len(),
        },
        _ => BalPoeError::NoClasses,
    })?;
    Ok(pi.iter().map(|&p| (p + PRIOR_EPS).ln()).collect())
}

/// BalPoE's training loss, the official `BSExpertLoss` (docs/balpoe.md §2.1):
///
/// `L = (1/E) · Σ_e CE(z_e + τ_e·log(π + ε), y)`
///
/// with `z_e` expert `e`'s logits (`s·cos`), `π` the training prior and `CE` the batch-mean
/// cross-entropy: each expert is a logit-adjusted (balanced-softmax-like) classifier for the
/// label distribution `∝ π^(1 − τ_e)`, and the experts are weighted equally (averaged, where
/// SADE sums). No label smoothing, re-weighting or diversity term.
#[derive(Clone, Debug)]
pub struct BalPoeLoss {
    taus: Vec<f64>,
    log_prior: Vec<f64>,
    /// `τ_e·log(π + ε)` as `[1, E, C]` f32 on the loss's device.
    biases: Tensor,
}

impl BalPoeLoss {
    /// The loss for experts with the biases `taus` (one per expert) and the training
    /// `class_counts`. Fails on no classes, all counts 0, no τ or a non-finite τ.
    pub fn new(taus: &[f64], class_counts: &[usize], device: &Device) -> Result<Self, BalPoeError> {
        if taus.is_empty() {
            return Err(BalPoeError::NoExperts);
        }
        if let Some(&value) = taus.iter().find(|t| !t.is_finite()) {
            return Err(BalPoeError::NonFinite {
                field: "tau_list",
                value,
            });
        }
        let log_prior = log_prior(class_counts)?;
        let (e, c) = (taus.len(), log_prior.len());
        let flat: Vec<f32> = taus
            .iter()
            .flat_map(|&t| log_prior.iter().map(move |&l| (t * l) as f32))
            .collect();
        Ok(Self {
            taus: taus.to_vec(),
            biases: Tensor::from_vec(flat, (1, e, c), device)?,
            log_prior,
        })
    }

    /// τ of each expert.
    pub fn taus(&self) -> &[f64] {
        &self.taus
    }

    /// The mean τ̄ of the experts: the ensemble's bias is `τ̄·log π` (docs/balpoe.md §2.2).
    pub fn mean_tau(&self) -> f64 {
        self.taus.iter().sum::<f64>() / self.taus.len() as f64
    }

    /// `log(π + ε)` of the training prior.
    pub fn log_prior(&self) -> &[f64] {
        &self.log_prior
    }

    /// Expert `e`'s additive training bias `τ_e·log(π + ε)`; `None` past the last expert.
    pub fn bias(&self, expert: usize) -> Option<Vec<f64>> {
        let t = *self.taus.get(expert)?;
        Some(self.log_prior.iter().map(|l| t * l).collect())
    }

    /// The ensemble's residual bias `(1 − τ̄)·log(π + ε)` for a uniform test prior
    /// (docs/balpoe.md §2.2, §7 item 5): zeros when τ̄ = 1.
    pub fn residual_bias(&self) -> Vec<f64> {
        let r = 1.0 - self.mean_tau();
        self.log_prior.iter().map(|l| r * l).collect()
    }

    /// The loss on expert logits `[B, E, C]` (any float dtype) and targets `[B]` (u8, u32 or
    /// i64): a scalar autograd differentiates. Wrong shapes, dtypes, expert counts or labels are
    /// errors carrying a [`BalPoeError`].
    pub fn forward(&self, expert_logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let (e, c) = (self.taus.len(), self.log_prior.len());
        let dims = expert_logits.dims();
        if dims.len() != 3 || dims[0] == 0 || dims[1] != e || dims[2] != c {
            return Err(wrap(BalPoeError::Shape {
                what: "expert logits",
                expected: format!("[B, {e}, {c}] with B >= 1"),
                got: format!("{dims:?}"),
            }));
        }
        let dtype = expert_logits.dtype();
        if !dtype.is_float() {
            return Err(wrap(BalPoeError::Shape {
                what: "expert logits dtype",
                expected: "a float dtype".into(),
                got: format!("{dtype:?}"),
            }));
        }
        let b = dims[0];
        let labels = read_targets(targets, b, c)?;
        let mut onehot = vec![0f32; b * c];
        for (i, &y) in labels.iter().enumerate() {
            onehot[i * c + y] = 1.0;
        }
        let onehot =
            Tensor::from_vec(onehot, (b, 1, c), expert_logits.device())?.to_dtype(dtype)?;
        let adjusted = expert_logits.broadcast_add(&self.biases.to_dtype(dtype)?)?;
        let log_p = log_softmax_last(&adjusted)?;
        // (1/E)·Σ_e mean_i −log p_{i,e,y_i}
        log_p.broadcast_mul(&onehot)?.sum_all()?.neg()? / (b * e) as f64
    }
}

/// The product of the experts (docs/balpoe.md §3.1): the mean of the raw expert logits
/// `s = (1/E)·Σ_e z_e`, `[B, E, C]` → `[B, C]`, with no training bias added;
/// `softmax(s)` is the renormalised geometric mean of the experts' `exp(z_e)`. With
/// `residual` (the [`BalPoeLoss::residual_bias`]), `s − residual`, which is unbiased for a
/// uniform test prior whatever τ̄.
pub fn product_of_experts(
    expert_logits: &Tensor,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let s = expert_logits.mean(1)?;
    match residual {
        Some(r) => s.broadcast_sub(&r.to_dtype(s.dtype())?),
        None => Ok(s),
    }
}

/// The known-test-prior prediction (docs/balpoe.md §3.2, official
/// `--posthoc_bias_correction`): `s + log q`, `q` the class counts of the test set being
/// evaluated over its size; `scores` is `[N, C]`. As the official code, there is no ε: a class
/// absent from the test set gets `−∞` and is never predicted (take only argmax of the result,
/// not a softmax). With τ̄ = 1 this is the Bayes rule for the label distribution `q`
/// (docs/balpoe.md §7 item 6).
pub fn with_test_prior(scores: &Tensor, test_counts: &[usize]) -> Result<Tensor, BalPoeError> {
    let c = test_counts.len();
    let dims = scores.dims();
    if dims.len() != 2 || dims[1] != c {
        return Err(BalPoeError::Shape {
            what: "scores",
            expected: format!("[N, {c}]"),
            got: format!("{dims:?}"),
        });
    }
    let total: usize = test_counts.iter().sum();
    if c == 0 {
        return Err(BalPoeError::NoClasses);
    }
    if total == 0 {
        return Err(BalPoeError::NoSamples { classes: c });
    }
    let log_q: Vec<f32> = test_counts
        .iter()
        .map(|&n| (n as f64 / total as f64).ln() as f32)
        .collect();
    let log_q = Tensor::from_vec(log_q, (1, c), scores.device())?.to_dtype(scores.dtype())?;
    Ok(scores.broadcast_add(&log_q)?)
}

fn wrap(err: BalPoeError) -> candle_core::Error {
    candle_core::Error::wrap(err)
}

/// Reads integer targets `[B]` to the host and checks every label is `< classes`.
fn read_targets(targets: &Tensor, batch: usize, classes: usize) -> candle_core::Result<Vec<usize>> {
    if targets.dims() != [batch] {
        return Err(wrap(BalPoeError::Shape {
            what: "targets",
            expected: format!("[{batch}]"),
            got: format!("{:?}", targets.dims()),
        }));
    }
    if !matches!(targets.dtype(), DType::U8 | DType::U32 | DType::I64) {
        return Err(wrap(BalPoeError::Shape {
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
                    wrap(BalPoeError::TargetOutOfRange {
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
    fn limits_spacing_gives_the_official_lists() {
        assert_eq!(tau_limits(0.0, 2.0, 3), [0.0, 1.0, 2.0]);
        assert_eq!(tau_limits(0.0, 2.5, 3), [0.0, 1.25, 2.5]);
        assert_eq!(tau_limits(-1.0, 3.0, 3), [-1.0, 1.0, 3.0]);
        assert_eq!(tau_limits(0.0, 2.0, 1), [1.0]);
        let seven = tau_limits(0.0, 2.0, 7);
        for (g, w) in seven
            .iter()
            .zip([0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 4.0 / 3.0, 5.0 / 3.0, 2.0])
        {
            assert!((g - w).abs() < 1e-12, "{seven:?}");
        }
    }

    #[test]
    fn settings_check_the_list_length_and_values() {
        let mut s = BalPoeSettings::spaced(0.0, 2.0);
        assert_eq!(s.taus(3).unwrap(), [0.0, 1.0, 2.0]);
        assert!(matches!(s.taus(0), Err(BalPoeError::NoExperts)));
        s.tau_list = Some(vec![0.0, 1.0]);
        assert!(matches!(
            s.taus(3),
            Err(BalPoeError::TauCount {
                experts: 3,
                taus: 2
            })
        ));
        s.tau_list = Some(vec![0.0, f64::NAN, 2.0]);
        assert!(matches!(s.taus(3), Err(BalPoeError::NonFinite { .. })));
        let s = BalPoeSettings::spaced(f64::INFINITY, 2.0);
        assert!(matches!(
            s.taus(3),
            Err(BalPoeError::NonFinite {
                field: "tau_min",
                ..
            })
        ));
    }
}
