//! The classifier of each expert as tensors, and the pure re-balancing operations on it:
//! τ-normalisation, MaxNorm, the post-hoc logit-adjustment offsets and weight balancing's
//! class-balanced loss. Each is checked against hand-computed values (docs/baselines.md §10).

use candle_core::{DType, Tensor, D};
use candle_nn::VarMap;
use longtail_backbone::BackboneConfig;

use crate::error::{DecoupleError, Result};

/// Which classifier the network has (`longtail-backbone`'s two heads).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeadKind {
    /// `nn.Linear`: `x Wᵀ + b`, W `[C, D]` (one row per class), bias `[C]`.
    Linear,
    /// NormedLinear: `s · normalize(x) · normalize(W, dim 0)`, W `[D, C]` (one column per class),
    /// no bias (docs/ride.md §1.1).
    Cosine {
        /// The logit scale s.
        scale: f64,
    },
}

impl HeadKind {
    /// The head of a network config.
    pub fn of(cfg: &BackboneConfig) -> Self {
        if cfg.use_norm {
            HeadKind::Cosine { scale: cfg.scale }
        } else {
            HeadKind::Linear
        }
    }

    /// The axis of the weight that runs over classes (0 for Linear, 1 for Cosine).
    pub fn class_axis(self) -> usize {
        match self {
            HeadKind::Linear => 0,
            HeadKind::Cosine { .. } => 1,
        }
    }
}

/// The `VarMap` names of expert `e`'s classifier weight and bias (`backbone.linear.*` with one
/// expert, `backbone.linears.<e>.*` with several: the official state-dict keys).
pub fn classifier_names(num_experts: usize, e: usize) -> (String, String) {
    let root = if num_experts == 1 {
        "backbone.linear".to_string()
    } else {
        format!("backbone.linears.{e}")
    };
    (format!("{root}.weight"), format!("{root}.bias"))
}

/// Whether `name` is one of the classifier tensors of a network with `num_experts` experts.
pub fn is_classifier(name: &str, num_experts: usize) -> bool {
    (0..num_experts).any(|e| {
        let (w, b) = classifier_names(num_experts, e);
        name == w || name == b
    })
}

/// One expert's classifier.
#[derive(Clone, Debug)]
pub struct Head {
    /// Linear or cosine.
    pub kind: HeadKind,
    /// The weight (`[C, D]` Linear, `[D, C]` Cosine).
    pub weight: Tensor,
    /// The bias `[C]` (Linear only).
    pub bias: Option<Tensor>,
}

/// `v / max(‖v‖₂, 1e-12)` along `dim`, as PyTorch `F.normalize` (and the backbone's head).
fn l2_normalize(v: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let norm = v.sqr()?.sum_keepdim(dim)?.sqrt()?.maximum(1e-12)?;
    v.broadcast_div(&norm)
}

impl Head {
    /// Every expert's classifier as held in a run's `varmap` (the tensors share the Vars'
    /// storage: the values at the time of the call).
    pub fn read_all(varmap: &VarMap, cfg: &BackboneConfig) -> Result<Vec<Head>> {
        let kind = HeadKind::of(cfg);
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let get = |n: &str| -> Result<Tensor> {
            let var = data.get(n).ok_or_else(|| {
                DecoupleError::Options(format!("the network has no classifier tensor `{n}`"))
            })?;
            Ok(var.as_tensor().detach().copy()?)
        };
        (0..cfg.num_experts)
            .map(|e| {
                let (w, b) = classifier_names(cfg.num_experts, e);
                Ok(Head {
                    kind,
                    weight: get(&w)?,
                    bias: match kind {
                        HeadKind::Linear => Some(get(&b)?),
                        HeadKind::Cosine { .. } => None,
                    },
                })
            })
            .collect()
    }

    /// Writes this head into expert `e`'s classifier Vars of `varmap` (shapes must match).
    pub fn write_into(&self, varmap: &VarMap, num_experts: usize, e: usize) -> Result<()> {
        let (w, b) = classifier_names(num_experts, e);
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let set = |name: &str, t: &Tensor| -> Result<()> {
            let var = data.get(name).ok_or_else(|| {
                DecoupleError::Options(format!("the network has no classifier tensor `{name}`"))
            })?;
            var.set(&t.to_dtype(var.dtype())?)?;
            Ok(())
        };
        set(&w, &self.weight)?;
        if let Some(bias) = &self.bias {
            set(&b, bias)?;
        }
        Ok(())
    }

    /// Logits `[B, C]` of pooled `features` `[B, D]`: exactly the backbone's classifier.
    pub fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        match self.kind {
            HeadKind::Linear => {
                let z = features.matmul(&self.weight.t()?)?;
                match &self.bias {
                    Some(b) => z.broadcast_add(b),
                    None => Ok(z),
                }
            }
            HeadKind::Cosine { scale } => {
                let x = l2_normalize(features, 1)?;
                let w = l2_normalize(&self.weight, 0)?;
                x.matmul(&w)? * scale
            }
        }
    }

    /// The L2 norm of every class vector (rows of a Linear weight, columns of a Cosine one).
    pub fn class_norms(&self) -> Result<Vec<f64>> {
        class_norms(&self.weight, self.kind.class_axis())
    }
}

/// The L2 norm of every class vector of `weight`, classes along `class_axis` (0 or 1).
pub fn class_norms(weight: &Tensor, class_axis: usize) -> Result<Vec<f64>> {
    let other = 1 - class_axis;
    Ok(weight
        .to_dtype(DType::F64)?
        .sqr()?
        .sum(other)?
        .sqrt()?
        .to_vec1::<f64>()?)
}

/// τ-normalisation (Kang et al., ICLR 2020; official `tau_norm.py`, docs/baselines.md §6):
/// every class vector (classes along `class_axis`) divided by its norm to the power τ,
/// `w̃_c = w_c / ‖w_c‖^τ`. τ = 0 leaves the weight unchanged, τ = 1 gives unit norms.
pub fn tau_normalize(weight: &Tensor, class_axis: usize, tau: f64) -> Result<Tensor> {
    if !(tau.is_finite() && tau >= 0.0) {
        return Err(DecoupleError::Stage(format!(
            "τ must be a finite number >= 0 (got {tau})"
        )));
    }
    let other = 1 - class_axis;
    let norms = weight.sqr()?.sum_keepdim(other)?.sqrt()?;
    let scale = norms.maximum(1e-12)?.powf(tau)?;
    Ok(weight.broadcast_div(&scale)?)
}

/// MaxNorm's threshold (Alshammari et al., CVPR 2022, `utils/regularizers.py`,
/// docs/baselines.md §7): `δ = min_c ‖w_c‖ + thresh · (max_c ‖w_c‖ − min_c ‖w_c‖)` of the
/// starting norms.
pub fn max_norm_threshold(norms: &[f64], thresh: f64) -> Result<f64> {
    if norms.is_empty() || norms.iter().any(|n| !n.is_finite()) {
        return Err(DecoupleError::Options(
            "MaxNorm needs the finite norms of at least one class vector".into(),
        ));
    }
    let min = norms.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = norms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Ok(min + thresh * (max - min))
}

/// MaxNorm's projection: every class vector whose norm exceeds `delta` is rescaled to norm
/// `delta`; the others (and any bias) are left alone (docs/baselines.md §7).
pub fn max_norm_project(weight: &Tensor, class_axis: usize, delta: f64) -> Result<Tensor> {
    let other = 1 - class_axis;
    let norms = weight.sqr()?.sum_keepdim(other)?.sqrt()?;
    // factor = δ / max(‖w‖, δ): 1 below the threshold, δ/‖w‖ above it.
    let factor = (norms.maximum(delta)?.recip()? * delta)?;
    Ok(weight.broadcast_mul(&factor)?)
}

/// The post-hoc logit-adjustment offsets `−log(π_c^τ + 1e-12)` (Menon et al., ICLR 2021; official
/// `logit_adjustment/main.py`, docs/baselines.md §5): adding them to the logits predicts
/// `argmax_c z_c − log(π_c^τ + 1e-12)`.
pub fn logit_adjust_offsets(prior: &[f64], tau: f64) -> Result<Vec<f64>> {
    if !(tau.is_finite() && tau >= 0.0) {
        return Err(DecoupleError::Stage(format!(
            "τ must be a finite number >= 0 (got {tau})"
        )));
    }
    Ok(prior.iter().map(|p| -(p.powf(tau) + 1e-12).ln()).collect())
}

/// Weight balancing's stage-2 loss: the "softmax" branch of the class-balanced loss port in the
/// official `utils/class_balanced_loss.py` (docs/baselines.md §3 pitfalls, §7). With
/// `p = softmax(z)` and one-hot `t`, every sample weighted by its class's weight `w_y` (the
/// class-balanced weights, summing to C):
/// `mean over B·C of w_{y_i} · −[t_ic log p_ic + (1 − t_ic) log(1 − p_ic)]`,
/// PyTorch's `binary_cross_entropy(weight=…)` with mean reduction. Logs are clamped at
/// `log(1e-38)` where PyTorch clamps at −100, which only matters for p within 1e-38 of 0 or 1.
pub fn wb_class_balanced_loss(
    logits: &Tensor,
    labels: &Tensor,
    class_weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let c = logits.dim(D::Minus1)?;
    let onehot = candle_nn::encoding::one_hot(labels.clone(), c, 1f32, 0f32)?;
    let p = candle_nn::ops::softmax_last_dim(logits)?;
    let log_p = p.maximum(1e-38)?.log()?;
    let log_q = (1.0 - &p)?.maximum(1e-38)?.log()?;
    let bce = ((&onehot * &log_p)? + ((1.0 - &onehot)? * &log_q)?)?.neg()?;
    let w = class_weights.index_select(labels, 0)?.unsqueeze(1)?; // [B, 1]
    bce.broadcast_mul(&w)?.mean_all()
}
