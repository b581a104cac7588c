//! LDAM-DRW (Cao et al., NeurIPS 2019) on one expert: label-distribution-aware margins on the
//! cosine classifier, and deferred re-weighting from a given epoch (docs/baselines.md §4).

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_losses::{check_range, drw_weights, ldam_margins};
use longtail_train::{
    method_error, Method, MethodConfig, MethodKind, Preset, RunConfig, TrainError,
};
use serde::{Deserialize, Serialize};

use crate::{ops, recipes, BaselineError};

/// `[method]` settings of `ldam-drw`. The scale s is the cosine head's `model.scale` (30).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdamDrwSettings {
    /// The rarest class's margin (0.5 on CIFAR, 0.3 on iNaturalist in the paper).
    #[serde(default = "half")]
    pub max_margin: f64,
    /// DRW from the epoch after this 1-based epoch (160: weights on from epoch 161, which is
    /// the official `epoch // 160` with 0-based epochs); `None` trains LDAM alone.
    #[serde(default)]
    pub drw_epoch: Option<usize>,
    /// β of the DRW class weights (0.9999 in the official code).
    #[serde(default = "drw_beta")]
    pub drw_beta: f64,
}

fn half() -> f64 {
    0.5
}

fn drw_beta() -> f64 {
    0.9999
}

impl LdamDrwSettings {
    /// Checks `max_margin ≥ 0` and `drw_beta ∈ [0, 1)`.
    pub fn check(&self) -> Result<(), BaselineError> {
        check_range("max_margin", self.max_margin, 0.0.., ">= 0")?;
        check_range("drw_beta", self.drw_beta, 0.0..1.0, "in [0, 1)")?;
        Ok(())
    }
}

/// LDAM-DRW as a training objective: `CE_w(z − s·m_y·1_y, y)` on the cosine head's logits
/// `z = s·cos θ`, with `w` all ones before the DRW epoch and the effective-number weights after,
/// reduced as PyTorch's weighted mean `Σ w_{y_i} ℓ_i / Σ w_{y_i}` (docs/baselines.md §0, §4).
/// Predicts with the raw logits (no margin).
#[derive(Debug, Clone)]
pub struct LdamDrwMethod {
    scaled_margins: Tensor,
    drw: Tensor,
    drw_epoch: Option<usize>,
    reweighting: bool,
}

impl LdamDrwMethod {
    /// The objective for `settings` with cosine scale `scale` on a training set with
    /// `class_counts` (every class needs a sample).
    pub fn new(
        settings: &LdamDrwSettings,
        scale: f64,
        class_counts: &[usize],
        device: &Device,
    ) -> Result<Self, BaselineError> {
        settings.check()?;
        check_range("scale", scale, f64::MIN_POSITIVE.., "> 0")?;
        let m = ldam_margins(class_counts, settings.max_margin)?;
        let w = drw_weights(class_counts, settings.drw_beta)?;
        let f32s = |v: &[f64], k: f64| v.iter().map(|&x| (x * k) as f32).collect::<Vec<_>>();
        Ok(Self {
            scaled_margins: Tensor::from_vec(f32s(&m, scale), m.len(), device)?,
            drw: Tensor::from_vec(f32s(&w, 1.0), w.len(), device)?,
            drw_epoch: settings.drw_epoch,
            reweighting: false,
        })
    }

    /// Whether the DRW weights are on (after [`Method::begin_epoch`] past the DRW epoch).
    pub fn reweighting(&self) -> bool {
        self.reweighting
    }
}

impl Method for LdamDrwMethod {
    fn name(&self) -> &str {
        "ldam-drw"
    }

    fn begin_epoch(&mut self, epoch: usize) -> candle_core::Result<()> {
        self.reweighting = self.drw_epoch.is_some_and(|d| epoch > d);
        Ok(())
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        let z = ops::ldam_logits(&out.logits, &batch.labels, &self.scaled_margins)?;
        if self.reweighting {
            ops::weighted_ce_torch(&z, &batch.labels, &self.drw)
        } else {
            candle_nn::loss::cross_entropy(&z, &batch.labels)
        }
    }
}

/// LDAM-DRW as the registry knows it (`[method] name = "ldam-drw"`, settings
/// [`LdamDrwSettings`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct LdamDrw;

impl LdamDrw {
    fn settings(cfg: &RunConfig) -> Result<LdamDrwSettings, TrainError> {
        let s: LdamDrwSettings = cfg.method.settings()?;
        let err = |e| method_error("ldam-drw", e);
        crate::one_expert("ldam-drw", cfg).map_err(err)?;
        s.check().map_err(err)?;
        if !cfg.model.use_norm {
            return Err(err(BaselineError::NeedsCosineHead));
        }
        Ok(s)
    }
}

impl MethodKind for LdamDrw {
    fn name(&self) -> &'static str {
        "ldam-drw"
    }

    fn summary(&self) -> &'static str {
        "LDAM-DRW (Cao et al., NeurIPS 2019): n^-1/4 margins on a cosine head, deferred effective-number re-weighting; one expert"
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
        let m = LdamDrwMethod::new(&s, cfg.model.scale, class_counts, device)
            .map_err(|e| method_error("ldam-drw", e))?;
        Ok(Box::new(m))
    }
}

fn method(max_margin: f64, drw_epoch: usize) -> MethodConfig {
    MethodConfig::new(
        "ldam-drw",
        &LdamDrwSettings {
            max_margin,
            drw_epoch: Some(drw_epoch),
            drw_beta: 0.9999,
        },
    )
    .expect("ldam-drw settings serialise")
}

/// Every LDAM-DRW preset.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "ldam-drw.fmnist-lt",
        summary: "bundled Fashion-MNIST-LT, the ce.fmnist-lt recipe with LDAM (max margin 0.5, s 30) and DRW from epoch 33 (with the first lr step)",
        build: || recipes::fmnist_lt(method(0.5, 32)),
    },
    Preset {
        name: "ldam-drw.cifar10-lt",
        summary: "CIFAR-10-LT IF 100, ResNet-32 cosine head, official cifar_train.py: max margin 0.5, s 30, DRW (β 0.9999) at 160 (LDAM Table 2: 77.03)",
        build: || recipes::ldam_cifar(method(0.5, 160), 10, true),
    },
    Preset {
        name: "ldam-drw.cifar100-lt",
        summary: "CIFAR-100-LT IF 100, ResNet-32 cosine head, official cifar_train.py: max margin 0.5, s 30, DRW (β 0.9999) at 160 (LDAM Table 2: 42.04)",
        build: || recipes::ldam_cifar(method(0.5, 160), 100, true),
    },
    Preset {
        name: "ldam-drw.imagenet-lt",
        summary: "ImageNet-LT, ResNeXt-50 cosine head, Decoupling joint recipe; the paper's large-scale LDAM (max margin 0.3, DRW at 60 of 90)",
        build: imagenet_lt,
    },
];

/// No official ImageNet-LT config: the joint recipe with the cosine head, and the paper's
/// iNaturalist values (max margin 0.3, DRW at epoch 60 of 90; docs/baselines.md §4).
fn imagenet_lt() -> RunConfig {
    let mut r = recipes::imagenet_joint(method(0.3, 60));
    r.model.use_norm = true;
    r
}
