//! Balanced softmax (Ren et al., NeurIPS 2020) and the logit-adjusted loss (Menon et al., ICLR
//! 2021): cross-entropy on the logits plus the log of the training prior, so the network learns
//! the balanced posterior; prediction is the raw argmax (docs/baselines.md §5).
//!
//! Balanced softmax adds `log n_c`, the logit-adjusted loss `log(π_c^τ + 1e-12)`. Since
//! `log n = log π + log N` and a shift common to every class cancels in the softmax, balanced
//! softmax is the logit-adjusted loss with τ = 1 (oracle 6).

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_losses::{check_counts, check_range, class_prior};
use longtail_train::{
    method_error, Method, MethodConfig, MethodKind, Preset, RunConfig, TrainError,
};
use serde::{Deserialize, Serialize};

use crate::{ops, recipes, BaselineError};

/// `[method]` settings of `bsce`: none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BsceSettings {}

/// `[method]` settings of `la`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaSettings {
    /// τ ≥ 0, the power of the prior (1 in the paper's headline rows and the code's default).
    #[serde(default = "one")]
    pub tau: f64,
}

fn one() -> f64 {
    1.0
}

impl LaSettings {
    /// Checks τ (finite, ≥ 0).
    pub fn check(&self) -> Result<(), BaselineError> {
        check_range("tau", self.tau, 0.0.., ">= 0")?;
        Ok(())
    }
}

/// Balanced softmax's offsets `log n_c` (`BalancedSoftmaxLoss.py`); every class needs a sample.
pub fn balanced_softmax_offsets(class_counts: &[usize]) -> Result<Vec<f64>, BaselineError> {
    check_counts(class_counts)?;
    Ok(class_counts.iter().map(|&n| (n as f64).ln()).collect())
}

/// The logit-adjusted loss's offsets `log(π_c^τ + 1e-12)` with the training prior
/// `π_c = n_c / N`, exactly as the official `build_loss_fn` (the epsilon keeps an empty class
/// finite).
pub fn logit_adjustment_offsets(
    class_counts: &[usize],
    tau: f64,
) -> Result<Vec<f64>, BaselineError> {
    check_range("tau", tau, 0.0.., ">= 0")?;
    Ok(class_prior(class_counts)?
        .iter()
        .map(|&p| (p.powf(tau) + 1e-12).ln())
        .collect())
}

/// Cross-entropy on `z + offsets`; predicts with the raw logits. The objective of `bsce` and `la`.
#[derive(Debug, Clone)]
pub struct LogitAdjustedMethod {
    name: &'static str,
    offsets: Tensor,
}

impl LogitAdjustedMethod {
    /// Balanced softmax for a training set with `class_counts`.
    pub fn balanced_softmax(
        class_counts: &[usize],
        device: &Device,
    ) -> Result<Self, BaselineError> {
        Self::with_offsets("bsce", &balanced_softmax_offsets(class_counts)?, device)
    }

    /// The logit-adjusted loss with `tau` for a training set with `class_counts`.
    pub fn logit_adjusted(
        class_counts: &[usize],
        tau: f64,
        device: &Device,
    ) -> Result<Self, BaselineError> {
        Self::with_offsets("la", &logit_adjustment_offsets(class_counts, tau)?, device)
    }

    fn with_offsets(
        name: &'static str,
        offsets: &[f64],
        device: &Device,
    ) -> Result<Self, BaselineError> {
        let v: Vec<f32> = offsets.iter().map(|&o| o as f32).collect();
        Ok(Self {
            name,
            offsets: Tensor::from_vec(v, offsets.len(), device)?,
        })
    }

    /// The per-class offsets `[C]` added to the logits in the loss.
    pub fn offsets(&self) -> &Tensor {
        &self.offsets
    }
}

impl Method for LogitAdjustedMethod {
    fn name(&self) -> &str {
        self.name
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        ops::adjusted_ce(&out.logits, &batch.labels, &self.offsets)
    }
}

/// Balanced softmax as the registry knows it (`[method] name = "bsce"`, no settings).
#[derive(Debug, Default, Clone, Copy)]
pub struct Bsce;

impl Bsce {
    fn settings(cfg: &RunConfig) -> Result<BsceSettings, TrainError> {
        let s: BsceSettings = cfg.method.settings()?;
        crate::one_expert("bsce", cfg).map_err(|e| method_error("bsce", e))?;
        Ok(s)
    }
}

impl MethodKind for Bsce {
    fn name(&self) -> &'static str {
        "bsce"
    }

    fn summary(&self) -> &'static str {
        "balanced softmax (Ren et al., NeurIPS 2020): cross-entropy on z + log n_c; one expert"
    }

    fn presets(&self) -> &'static [Preset] {
        BSCE_PRESETS
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
        Self::settings(cfg)?;
        let m = LogitAdjustedMethod::balanced_softmax(class_counts, device)
            .map_err(|e| method_error("bsce", e))?;
        Ok(Box::new(m))
    }
}

/// The logit-adjusted loss as the registry knows it (`[method] name = "la"`, settings
/// [`LaSettings`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct La;

impl La {
    fn settings(cfg: &RunConfig) -> Result<LaSettings, TrainError> {
        let s: LaSettings = cfg.method.settings()?;
        crate::one_expert("la", cfg).map_err(|e| method_error("la", e))?;
        s.check().map_err(|e| method_error("la", e))?;
        Ok(s)
    }
}

impl MethodKind for La {
    fn name(&self) -> &'static str {
        "la"
    }

    fn summary(&self) -> &'static str {
        "logit-adjusted loss (Menon et al., ICLR 2021): cross-entropy on z + τ·log π_c; one expert"
    }

    fn presets(&self) -> &'static [Preset] {
        LA_PRESETS
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
        let m = LogitAdjustedMethod::logit_adjusted(class_counts, s.tau, device)
            .map_err(|e| method_error("la", e))?;
        Ok(Box::new(m))
    }
}

fn bsce() -> MethodConfig {
    MethodConfig::new("bsce", &BsceSettings {}).expect("bsce settings serialise")
}

fn la(tau: f64) -> MethodConfig {
    MethodConfig::new("la", &LaSettings { tau }).expect("la settings serialise")
}

/// Every balanced-softmax preset.
pub const BSCE_PRESETS: &[Preset] = &[
    Preset {
        name: "bsce.fmnist-lt",
        summary: "bundled Fashion-MNIST-LT, the ce.fmnist-lt recipe with balanced softmax",
        build: || recipes::fmnist_lt(bsce()),
    },
    Preset {
        name: "bsce.cifar10-lt",
        summary: "CIFAR-10-LT IF 100, ResNet-32, LDAM recipe as BagofTricks-LT's BSCE run (77.54); the official configs are IF 200 with AutoAugment",
        build: || recipes::ldam_cifar(bsce(), 10, false),
    },
    Preset {
        name: "bsce.cifar100-lt",
        summary: "CIFAR-100-LT IF 100, ResNet-32, LDAM recipe as BagofTricks-LT's BSCE run (42.99); the official configs are IF 200 with AutoAugment",
        build: || recipes::ldam_cifar(bsce(), 100, false),
    },
    Preset {
        name: "bsce.imagenet-lt",
        summary: "ImageNet-LT, ResNeXt-50, Decoupling joint recipe with balanced softmax (no official end-to-end config)",
        build: || recipes::imagenet_joint(bsce()),
    },
];

/// Every logit-adjusted-loss preset.
pub const LA_PRESETS: &[Preset] = &[
    Preset {
        name: "la.fmnist-lt",
        summary: "bundled Fashion-MNIST-LT, the ce.fmnist-lt recipe with the logit-adjusted loss, τ 1",
        build: || recipes::fmnist_lt(la(1.0)),
    },
    Preset {
        name: "la.cifar10-lt",
        summary: "CIFAR-10-LT IF 100, official LA schedule: 1241 epochs, Nesterov, warm-up 20, ×0.1 at 604/926/1128, τ 1 (LA Table 3: 77.67)",
        build: || la_cifar(10),
    },
    Preset {
        name: "la.cifar100-lt",
        summary: "CIFAR-100-LT IF 100, official LA schedule: 1419 epochs, Nesterov, warm-up 22, ×0.1 at 691/1059/1290, τ 1 (LA Table 3: 43.89)",
        build: || la_cifar(100),
    },
    Preset {
        name: "la.imagenet-lt",
        summary: "ImageNet-LT, ResNet-50, τ 1, the Decoupling joint optimisation (90 epochs, lr 0.2 cosine) (LA Table 3: 51.11)",
        build: la_imagenet,
    },
];

/// The official LA CIFAR recipe (docs/baselines.md §5): batch 128, Nesterov SGD lr 0.1, L2 1e-4
/// (= weight decay 2e-4), linear warm-up, three ×0.1 steps at the Keras 0-based epochs below
/// (here 1-based: index 604 is epoch 605).
///
/// Differs from official: the network is the basic-block ResNet-32 of the LDAM recipe, not the
/// Keras bottleneck ResNet-32; the last partial batch is kept, not dropped.
fn la_cifar(classes: usize) -> RunConfig {
    let (epochs, warmup, steps) = if classes == 10 {
        (1241, 20, [604, 926, 1128])
    } else {
        (1419, 22, [691, 1059, 1290])
    };
    let mut r = recipes::ldam_cifar(la(1.0), classes, false);
    r.optim.epochs = epochs;
    r.optim.sgd.nesterov = true;
    r.optim.schedule = longtail_train::LrSchedule::Piecewise {
        warmup,
        steps: vec![
            (steps[0] + 1, 0.1),
            (steps[1] + 1, 0.01),
            (steps[2] + 1, 0.001),
        ],
    };
    r
}

/// ImageNet-LT with the LA paper's ResNet-50 (90 epochs); the optimisation of the joint recipe.
fn la_imagenet() -> RunConfig {
    let mut r = recipes::imagenet_joint(la(1.0));
    r.model.arch = longtail_backbone::Arch::Resnet50;
    r
}
