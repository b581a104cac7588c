//! RIDE as a longtail method: the loss as the training objective, the mean of the experts as
//! the prediction (docs/ride.md §1.1, §3).

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_train::{method_error, Method, MethodKind, Preset, RunConfig, TrainError};

use crate::{RideLoss, RideLossConfig};

/// RIDE as the registry knows it (`[method] name = "ride"`, settings: [`RideLossConfig`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Ride;

impl Ride {
    fn settings(cfg: &RunConfig) -> Result<RideLossConfig, TrainError> {
        let s: RideLossConfig = cfg.method.settings()?;
        s.check().map_err(|e| method_error("ride", e))?;
        Ok(s)
    }
}

impl MethodKind for Ride {
    fn name(&self) -> &'static str {
        "ride"
    }

    fn summary(&self) -> &'static str {
        "RIDE (Wang et al., ICLR 2021): LDAM-DRW experts on a shared trunk with a diversity loss"
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
        device: &Device,
    ) -> Result<Box<dyn Method>, TrainError> {
        let loss = RideLoss::new(&Self::settings(cfg)?, class_counts, device)
            .map_err(|e| method_error("ride", e))?;
        Ok(Box::new(RideMethod(loss)))
    }
}

/// RIDE's loss as a training objective; predicts with the mean of the experts (docs/ride.md §1.1).
pub struct RideMethod(pub RideLoss);

impl Method for RideMethod {
    fn name(&self) -> &str {
        "ride"
    }

    fn begin_epoch(&mut self, epoch: usize) -> candle_core::Result<()> {
        self.0.begin_epoch(epoch);
        Ok(())
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        self.0.forward(&out.expert_logits, &batch.labels)
    }
}
