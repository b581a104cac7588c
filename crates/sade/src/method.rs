//! SADE as a longtail method: the three-expert loss as the training objective, the mean of the
//! experts as the plain prediction (test-time aggregation re-weights them at evaluation,
//! [`crate::shift`]).

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_train::{method_error, Method, MethodKind, Preset, RunConfig, TrainError};
use serde::{Deserialize, Serialize};

use crate::presets::TestTimeSpec;
use crate::{SadeLoss, SadeLossConfig};

/// SADE's settings in a run config: the loss and the test-time aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SadeSettings {
    /// The loss (τ of the backward expert).
    pub loss: SadeLossConfig,
    /// Test-time self-supervised aggregation (docs/sade.md §2).
    pub test_time: TestTimeSpec,
}

/// SADE as the registry knows it (`[method] name = "sade"`, settings: [`SadeSettings`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Sade;

impl Sade {
    /// The settings of `cfg`, checked.
    pub fn settings(cfg: &RunConfig) -> Result<SadeSettings, TrainError> {
        let s: SadeSettings = cfg.method.settings()?;
        s.loss.check().map_err(|e| method_error("sade", e))?;
        Ok(s)
    }
}

impl MethodKind for Sade {
    fn name(&self) -> &'static str {
        "sade"
    }

    fn summary(&self) -> &'static str {
        "SADE (Zhang et al., NeurIPS 2022): forward, uniform and backward experts, test-time aggregation"
    }

    fn presets(&self) -> &'static [Preset] {
        crate::presets::PRESETS
    }

    fn check(&self, cfg: &RunConfig) -> Result<(), TrainError> {
        Self::settings(cfg)?;
        if cfg.model.num_experts != 3 {
            return Err(TrainError::Config(format!(
                "SADE has exactly 3 experts (got {})",
                cfg.model.num_experts
            )));
        }
        Ok(())
    }

    fn build(
        &self,
        cfg: &RunConfig,
        class_counts: &[usize],
        device: &Device,
    ) -> Result<Box<dyn Method>, TrainError> {
        self.check(cfg)?;
        let loss = SadeLoss::new(&Self::settings(cfg)?.loss, class_counts, device)
            .map_err(|e| method_error("sade", e))?;
        Ok(Box::new(SadeMethod(loss)))
    }
}

/// SADE's loss (docs/sade.md §1.2) as a training objective; plain prediction is the mean of the
/// three experts' logits.
pub struct SadeMethod(pub SadeLoss);

impl Method for SadeMethod {
    fn name(&self) -> &str {
        "sade"
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        self.0.forward(&out.expert_logits, &batch.labels)
    }
}
