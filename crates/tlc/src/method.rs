//! TLC as a longtail method: the evidential loss as the training objective, the fused
//! combination of the experts as the prediction (docs/tlc.md §2.2, §3.2).

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_train::{method_error, Method, MethodKind, Preset, RunConfig, TrainError};
use serde::{Deserialize, Serialize};

use crate::{fuse, EarlyExit, TlcLoss, TlcLossConfig};

/// TLC's settings in a run config: the loss (with the engagement rule and the prediction
/// combination) and optional early exit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlcSettings {
    /// Loss settings, including the engagement rule and the prediction combination.
    pub loss: TlcLossConfig,
    /// Early exit at inference (stop calling experts once the fused uncertainty is low).
    #[serde(default)]
    pub early_exit: Option<EarlyExit>,
}

/// TLC as the registry knows it (`[method] name = "tlc"`, settings: [`TlcSettings`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tlc;

impl Tlc {
    /// The settings of `cfg`, checked.
    pub fn settings(cfg: &RunConfig) -> Result<TlcSettings, TrainError> {
        let s: TlcSettings = cfg.method.settings()?;
        s.loss.check().map_err(|e| method_error("tlc", e))?;
        Ok(s)
    }
}

impl MethodKind for Tlc {
    fn name(&self) -> &'static str {
        "tlc"
    }

    fn summary(&self) -> &'static str {
        "TLC (Li et al., CVPR 2022): evidential experts, uncertainty fusion, early exit"
    }

    fn presets(&self) -> &'static [Preset] {
        crate::presets::PRESETS
    }

    fn check(&self, cfg: &RunConfig) -> Result<(), TrainError> {
        Self::settings(cfg).map(|_| ())
    }

    fn build(
        &self,
        cfg: &RunConfig,
        class_counts: &[usize],
        _device: &Device,
    ) -> Result<Box<dyn Method>, TrainError> {
        let loss = TlcLoss::new(Self::settings(cfg)?.loss, class_counts)
            .map_err(|e| method_error("tlc", e))?;
        Ok(Box::new(TlcMethod(loss)))
    }
}

/// TLC's evidential loss (docs/tlc.md §2.2) as a training objective; predicts with the fused
/// combination of the experts (batch-independent by default, docs/tlc.md §3.2).
pub struct TlcMethod(pub TlcLoss);

impl Method for TlcMethod {
    fn name(&self) -> &str {
        "tlc"
    }

    fn begin_epoch(&mut self, epoch: usize) -> candle_core::Result<()> {
        self.0.begin_epoch(epoch).map_err(candle_core::Error::wrap)
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        Ok(self
            .0
            .forward(&out.expert_logits, &batch.labels)
            .map_err(candle_core::Error::wrap)?
            .loss)
    }

    fn predict(&self, out: &ExpertOutput) -> candle_core::Result<Tensor> {
        let f = fuse(&out.expert_logits, self.0.config().combination)
            .map_err(candle_core::Error::wrap)?;
        f.output.to_dtype(out.logits.dtype())
    }
}
