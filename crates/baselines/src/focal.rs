//! Focal loss (Lin et al., ICCV 2017) in its two long-tail forms (docs/baselines.md §2):
//! the one-vs-all sigmoid form of the class-balanced paper, which the "Focal" rows of LT tables
//! cite, and the softmax form of the LDAM-DRW repository.

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_losses::check_range;
use longtail_train::{
    method_error, Method, MethodConfig, MethodKind, Preset, RunConfig, TrainError,
};
use serde::{Deserialize, Serialize};

use crate::{ops, recipes, BaselineError};

/// Which focal loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FocalForm {
    /// One-vs-all: `Σ_c (1 − p^t_c)^γ · (−log p^t_c)` over all C sigmoid terms, divided by B
    /// (CB Eq. 12–13, the CB and BoT code) — the form behind the cited "Focal" rows.
    #[default]
    Sigmoid,
    /// `(1 − p_y)^γ · (−log p_y)` on the softmax, averaged over the batch (LDAM-DRW `FocalLoss`).
    Softmax,
}

/// `[method]` settings of `focal`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FocalSettings {
    /// Focusing parameter γ ≥ 0 (γ = 0 is sigmoid BCE or softmax CE). Default 1, the value of
    /// the CB table's Focal row and of LDAM-DRW's `cifar_train.py`.
    #[serde(default = "one")]
    pub gamma: f64,
    /// Sigmoid (default) or softmax.
    #[serde(default)]
    pub form: FocalForm,
}

fn one() -> f64 {
    1.0
}

impl Default for FocalSettings {
    fn default() -> Self {
        Self {
            gamma: 1.0,
            form: FocalForm::Sigmoid,
        }
    }
}

impl FocalSettings {
    /// Checks γ (finite, ≥ 0) and that the sigmoid form has at least 2 classes.
    pub fn check(&self, classes: usize) -> Result<(), BaselineError> {
        check_range("gamma", self.gamma, 0.0.., ">= 0")?;
        if self.form == FocalForm::Sigmoid && classes < 2 {
            return Err(BaselineError::TooFewClasses {
                form: "sigmoid focal",
                classes,
            });
        }
        Ok(())
    }
}

/// The prior bias `−log(C − 1)` of the one-vs-all forms: every sigmoid starts at `σ = 1/C`
/// (CB §5.2, docs/baselines.md §2).
///
/// Differs from official: the CB code initialises the last layer's bias to this value and keeps
/// it out of weight decay. Here it is a fixed offset added to the logits inside the loss, so any
/// head (also the bias-free cosine head) starts at the prior; the head's own bias, if any, starts
/// at 0 and is decayed like every parameter. The offset is the same for every class, so the
/// prediction (argmax of the logits) does not change.
pub fn sigmoid_prior_bias(classes: usize) -> f64 {
    -((classes as f64 - 1.0).ln())
}

/// Focal loss as a training objective; predicts with the raw logits.
#[derive(Debug, Clone)]
pub struct FocalMethod {
    settings: FocalSettings,
    prior_bias: f64,
}

impl FocalMethod {
    /// The objective for `settings` on `classes` classes.
    pub fn new(settings: FocalSettings, classes: usize) -> Result<Self, BaselineError> {
        settings.check(classes)?;
        Ok(Self {
            prior_bias: sigmoid_prior_bias(classes),
            settings,
        })
    }
}

impl Method for FocalMethod {
    fn name(&self) -> &str {
        "focal"
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        match self.settings.form {
            FocalForm::Softmax => {
                ops::softmax_focal(&out.logits, &batch.labels, self.settings.gamma)
            }
            FocalForm::Sigmoid => ops::sigmoid_focal(
                &(&out.logits + self.prior_bias)?,
                &batch.labels,
                self.settings.gamma,
                None,
            ),
        }
    }
}

/// Focal loss as the registry knows it (`[method] name = "focal"`, settings [`FocalSettings`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Focal;

impl Focal {
    fn settings(cfg: &RunConfig) -> Result<FocalSettings, TrainError> {
        let s: FocalSettings = cfg.method.settings()?;
        crate::one_expert("focal", cfg).map_err(|e| method_error("focal", e))?;
        s.check(cfg.model.num_classes)
            .map_err(|e| method_error("focal", e))?;
        Ok(s)
    }
}

impl MethodKind for Focal {
    fn name(&self) -> &'static str {
        "focal"
    }

    fn summary(&self) -> &'static str {
        "focal loss (Lin et al., ICCV 2017), sigmoid form of Cui et al. (CVPR 2019) or softmax form, γ; one expert"
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
        _class_counts: &[usize],
        _device: &Device,
    ) -> Result<Box<dyn Method>, TrainError> {
        let s = Self::settings(cfg)?;
        let m = FocalMethod::new(s, cfg.model.num_classes).map_err(|e| method_error("focal", e))?;
        Ok(Box::new(m))
    }
}

fn method(gamma: f64) -> MethodConfig {
    MethodConfig::new(
        "focal",
        &FocalSettings {
            gamma,
            form: FocalForm::Sigmoid,
        },
    )
    .expect("focal settings serialise")
}

/// Every focal preset.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "focal.fmnist-lt",
        summary: "bundled Fashion-MNIST-LT, the ce.fmnist-lt recipe with sigmoid focal γ 1",
        build: || recipes::fmnist_lt(method(1.0)),
    },
    Preset {
        name: "focal.cifar10-lt",
        summary: "CIFAR-10-LT IF 100, ResNet-32, LDAM recipe, sigmoid focal γ 1 (CB Table 2 Focal row: 70.38)",
        build: || recipes::ldam_cifar(method(1.0), 10, false),
    },
    Preset {
        name: "focal.cifar100-lt",
        summary: "CIFAR-100-LT IF 100, ResNet-32, LDAM recipe, sigmoid focal γ 1 (CB Table 2 Focal row: 38.41)",
        build: || recipes::ldam_cifar(method(1.0), 100, false),
    },
    Preset {
        name: "focal.imagenet-lt",
        summary: "ImageNet-LT, ResNeXt-50, the Decoupling joint recipe (90 epochs, lr 0.2 cosine), sigmoid focal γ 1",
        build: || recipes::imagenet_joint(method(1.0)),
    },
];
