//! The glue between each method's loss and the shared trainer: one [`Objective`] per method.

use anyhow::Result;
use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_ride::RideLoss;
use longtail_train::{CrossEntropy, Objective};

use crate::config::MethodConfig;

/// RIDE's loss as a training objective; predicts with the mean of the experts (ride.md §1.1).
pub struct RideObjective(pub RideLoss);

impl Objective for RideObjective {
    fn name(&self) -> &str {
        "ride"
    }
    fn begin_epoch(&mut self, epoch: usize) -> candle_core::Result<()> {
        self.0.begin_epoch(epoch);
        Ok(())
    }
    fn loss(&self, out: &ExpertOutput, targets: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(&out.expert_logits, targets)
    }
}

/// Builds the objective of `method` for a training set with `class_counts`.
pub fn objective(
    method: &MethodConfig,
    class_counts: &[usize],
    device: &Device,
) -> Result<Box<dyn Objective>> {
    Ok(match method {
        MethodConfig::Ce => Box::new(CrossEntropy),
        MethodConfig::Ride(cfg) => {
            Box::new(RideObjective(RideLoss::new(cfg, class_counts, device)?))
        }
    })
}
