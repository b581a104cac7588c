//! Class-balanced loss (Cui et al., CVPR 2019): every sample weighted by the inverse effective
//! number of its class, `w_c ∝ (1 − β)/(1 − β^{n_c})` with `Σ_c w_c = C`, inside a softmax,
//! sigmoid or focal loss (docs/baselines.md §3).

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_losses::{check_range, drw_weights};
use longtail_train::{
    method_error, Method, MethodConfig, MethodKind, Preset, RunConfig, TrainError,
};
use serde::{Deserialize, Serialize};

use crate::focal::sigmoid_prior_bias;
use crate::{ops, recipes, BaselineError};

/// The loss the class weights multiply (CB Eq. 8, 11, 13; the official `cifar_main.py` `_tower_fn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CbLoss {
    /// `Σ_i w_{y_i} CE_i / B` (the "CB RW" rows of LDAM's table).
    Softmax,
    /// `Σ_i w_{y_i} Σ_c BCE(z_ic, 1[c = y_i]) / B`: the weight multiplies all C terms.
    Sigmoid,
    /// The sigmoid form with the focal modulator (γ) inside: the best cell of CB Table 2 at
    /// IF 100 on both CIFARs, and the "CB Focal" rows of LT tables.
    #[default]
    Focal,
}

/// `[method]` settings of `cb`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CbSettings {
    /// β of the effective number `(1 − β^n)/(1 − β)`, in [0, 1); 0 gives all weights 1.
    pub beta: f64,
    /// The weighted loss (default focal).
    #[serde(default)]
    pub loss: CbLoss,
    /// Focal γ ≥ 0 (used by the focal form only; default 1).
    #[serde(default = "one")]
    pub gamma: f64,
}

fn one() -> f64 {
    1.0
}

impl CbSettings {
    /// Checks β ∈ [0, 1), γ ≥ 0, and at least 2 classes for the one-vs-all forms.
    pub fn check(&self, classes: usize) -> Result<(), BaselineError> {
        check_range("beta", self.beta, 0.0..1.0, "in [0, 1)")?;
        check_range("gamma", self.gamma, 0.0.., ">= 0")?;
        if self.loss != CbLoss::Softmax && classes < 2 {
            return Err(BaselineError::TooFewClasses {
                form: "class-balanced sigmoid/focal",
                classes,
            });
        }
        Ok(())
    }
}

/// The class-balanced weights `(1 − β)/(1 − β^{n_c})` renormalised to sum to C (CB Eq. 4–5,
/// docs/baselines.md §3, oracle 2). A class with no sample is [`BaselineError::Setting`].
pub fn class_balanced_weights(
    class_counts: &[usize],
    beta: f64,
) -> Result<Vec<f64>, BaselineError> {
    check_range("beta", beta, 0.0..1.0, "in [0, 1)")?;
    Ok(drw_weights(class_counts, beta)?)
}

/// The class-balanced loss as a training objective; predicts with the raw logits.
#[derive(Debug, Clone)]
pub struct ClassBalancedMethod {
    settings: CbSettings,
    weights: Tensor,
    prior_bias: f64,
}

impl ClassBalancedMethod {
    /// The objective for `settings` on a training set with `class_counts`.
    pub fn new(
        settings: CbSettings,
        class_counts: &[usize],
        device: &Device,
    ) -> Result<Self, BaselineError> {
        settings.check(class_counts.len())?;
        let w = class_balanced_weights(class_counts, settings.beta)?;
        let weights = Tensor::from_vec(
            w.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            w.len(),
            device,
        )?;
        Ok(Self {
            prior_bias: sigmoid_prior_bias(class_counts.len()),
            settings,
            weights,
        })
    }

    /// The per-class weights `[C]` (f32).
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }
}

impl Method for ClassBalancedMethod {
    fn name(&self) -> &str {
        "cb"
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        let (z, y) = (&out.logits, &batch.labels);
        match self.settings.loss {
            CbLoss::Softmax => ops::weighted_ce_batch(z, y, &self.weights),
            CbLoss::Sigmoid | CbLoss::Focal => {
                let gamma = if self.settings.loss == CbLoss::Focal {
                    self.settings.gamma
                } else {
                    0.0
                };
                let w = ops::sample_weights(&self.weights, y)?;
                ops::sigmoid_focal(&(z + self.prior_bias)?, y, gamma, Some(&w))
            }
        }
    }
}

/// The class-balanced loss as the registry knows it (`[method] name = "cb"`, settings
/// [`CbSettings`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Cb;

impl Cb {
    fn settings(cfg: &RunConfig) -> Result<CbSettings, TrainError> {
        let s: CbSettings = cfg.method.settings()?;
        crate::one_expert("cb", cfg).map_err(|e| method_error("cb", e))?;
        s.check(cfg.model.num_classes)
            .map_err(|e| method_error("cb", e))?;
        Ok(s)
    }
}

impl MethodKind for Cb {
    fn name(&self) -> &'static str {
        "cb"
    }

    fn summary(&self) -> &'static str {
        "class-balanced loss (Cui et al., CVPR 2019): effective-number weights (β) on softmax, sigmoid or focal; one expert"
    }

    fn presets(&self) -> &'static [Preset] {
        PRESETS
    }

    fn check(&self, cfg: &RunConfig) -> Result<(), TrainError> {
        Self::settings(cfg).map(|_| ())
    }

    fn build(
        &self,
        cfg: &RunConfig,
        class_counts: &[usize],
        device: &Device,
    ) -> Result<Box<dyn Method>, TrainError> {
        let s = Self::settings(cfg)?;
        let m =
            ClassBalancedMethod::new(s, class_counts, device).map_err(|e| method_error("cb", e))?;
        Ok(Box::new(m))
    }
}

fn method(loss: CbLoss, beta: f64, gamma: f64) -> MethodConfig {
    MethodConfig::new("cb", &CbSettings { beta, loss, gamma }).expect("cb settings serialise")
}

/// Every class-balanced preset.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "cb.fmnist-lt",
        summary: "bundled Fashion-MNIST-LT, the ce.fmnist-lt recipe with CB focal β 0.9999, γ 1 (the CIFAR-10 IF 100 cell)",
        build: || recipes::fmnist_lt(method(CbLoss::Focal, 0.9999, 1.0)),
    },
    Preset {
        name: "cb.cifar10-lt",
        summary: "CIFAR-10-LT IF 100, ResNet-32, LDAM recipe, CB focal β 0.9999, γ 1 (CB Table 2 best: 74.57)",
        build: || recipes::ldam_cifar(method(CbLoss::Focal, 0.9999, 1.0), 10, false),
    },
    Preset {
        name: "cb.cifar100-lt",
        summary: "CIFAR-100-LT IF 100, ResNet-32, LDAM recipe, CB focal β 0.9, γ 1 (CB Table 2 best: 39.60)",
        build: || recipes::ldam_cifar(method(CbLoss::Focal, 0.9, 1.0), 100, false),
    },
    Preset {
        name: "cb.imagenet-lt",
        summary: "ImageNet-LT, ResNeXt-50, Decoupling joint recipe, CB focal β 0.999, γ 0.5 (CB's large-scale setting)",
        build: || recipes::imagenet_joint(method(CbLoss::Focal, 0.999, 0.5)),
    },
];
