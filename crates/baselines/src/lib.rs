//! Single-model long-tail baselines as longtail methods, each trained on one expert with the
//! recipe of its paper (docs/baselines.md).
//!
//! - [`Ce`] / [`CrossEntropy`]: softmax cross-entropy on the mean logits, the plain baseline
//!   (`[method] name = "ce"`, no settings). Its presets are other methods' recipes with one plain
//!   expert ([`ce_baseline_of`]), so that a comparison changes only the method.
//! - [`Focal`] (`focal`, [`FocalSettings`]): focal loss, sigmoid or softmax form (§2).
//! - [`Cb`] (`cb`, [`CbSettings`]): class-balanced loss with effective-number weights (§3).
//! - [`LdamDrw`] (`ldam-drw`, [`LdamDrwSettings`]): LDAM margins and deferred re-weighting (§4).
//! - [`Bsce`] (`bsce`) and [`La`] (`la`, [`LaSettings`]): balanced softmax and the
//!   logit-adjusted loss (§5).
//! - [`Wb`] (`wb`): weight balancing's first stage, CE with a tuned weight decay (§7).
//!
//! The loss formulas are plain tensor functions in [`ops`]; every method's presets are
//! `<method>.fmnist-lt` (the `ce.fmnist-lt` recipe, so only the method changes),
//! `<method>.cifar10-lt`, `<method>.cifar100-lt` and `<method>.imagenet-lt`.
#![deny(missing_docs)]

mod cb;
mod error;
mod focal;
mod ldam_drw;
mod logit_adjust;
pub mod ops;
pub mod recipes;
mod wb;

pub use cb::{class_balanced_weights, Cb, CbLoss, CbSettings, ClassBalancedMethod};
pub use error::BaselineError;
pub use focal::{sigmoid_prior_bias, Focal, FocalForm, FocalMethod, FocalSettings};
pub use ldam_drw::{LdamDrw, LdamDrwMethod, LdamDrwSettings};
pub use logit_adjust::{
    balanced_softmax_offsets, logit_adjustment_offsets, Bsce, BsceSettings, La, LaSettings,
    LogitAdjustedMethod,
};
pub use wb::{Wb, WbSettings, WbStage1};

/// Every preset of the methods of this crate, per method: focal, cb, ldam-drw, bsce, la, wb.
pub const PRESETS: &[&[Preset]] = &[
    focal::PRESETS,
    cb::PRESETS,
    ldam_drw::PRESETS,
    logit_adjust::BSCE_PRESETS,
    logit_adjust::LA_PRESETS,
    wb::PRESETS,
];

/// Fails unless `cfg` trains one expert: the baselines are single-model methods.
fn one_expert(method: &'static str, cfg: &RunConfig) -> std::result::Result<(), BaselineError> {
    match cfg.model.num_experts {
        1 => Ok(()),
        got => Err(BaselineError::Experts { method, got }),
    }
}

use candle_core::{Device, Result, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_train::{Method, MethodConfig, MethodKind, Preset, RunConfig, TrainError};

/// Plain softmax cross-entropy on the mean logits: the CE baseline (one expert in practice).
#[derive(Debug, Default, Clone, Copy)]
pub struct CrossEntropy;

impl Method for CrossEntropy {
    fn name(&self) -> &str {
        "ce"
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> Result<Tensor> {
        candle_nn::loss::cross_entropy(&out.logits, &batch.labels)
    }
}

/// The CE baseline as the registry knows it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ce;

impl MethodKind for Ce {
    fn name(&self) -> &'static str {
        "ce"
    }

    fn summary(&self) -> &'static str {
        "softmax cross-entropy on one plain expert: the baseline every method is compared with"
    }

    /// None of its own: the registry derives `ce.<dataset>` from another method's recipes with
    /// [`ce_baseline_of`].
    fn presets(&self) -> &'static [Preset] {
        &[]
    }

    fn check(&self, cfg: &RunConfig) -> std::result::Result<(), TrainError> {
        if !cfg.method.settings.is_empty() {
            return Err(TrainError::Config(format!(
                "the CE baseline has no settings (got {})",
                cfg.method
                    .settings
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if cfg.model.num_experts != 1 {
            return Err(TrainError::Config(format!(
                "the CE baseline has one expert (got {})",
                cfg.model.num_experts
            )));
        }
        Ok(())
    }

    fn build(
        &self,
        cfg: &RunConfig,
        _class_counts: &[usize],
        _device: &Device,
    ) -> std::result::Result<Box<dyn Method>, TrainError> {
        self.check(cfg)?;
        Ok(Box::new(CrossEntropy))
    }
}

/// The CE baseline of a recipe: the same data, network family and optimisation with one plain
/// expert (no reduced expert widths) and softmax cross-entropy.
pub fn ce_baseline_of(cfg: &RunConfig) -> RunConfig {
    let mut ce = cfg.clone();
    ce.method = MethodConfig::bare("ce");
    ce.model.num_experts = 1;
    ce.model.reduce_dimension = false;
    ce.preset = cfg
        .preset
        .as_ref()
        .map(|p| format!("ce.{}", p.split_once('.').map_or(p.as_str(), |(_, d)| d)));
    ce
}
