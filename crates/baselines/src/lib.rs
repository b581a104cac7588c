//! Single-model long-tail baselines as longtail methods.
//!
//! - [`Ce`] / [`CrossEntropy`]: softmax cross-entropy on the mean logits, the plain baseline
//!   (`[method] name = "ce"`, no settings). Its presets are other methods' recipes with one plain
//!   expert ([`ce_baseline_of`]), so that a comparison changes only the method.
#![deny(missing_docs)]

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
