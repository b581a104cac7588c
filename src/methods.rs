//! The glue between each method's loss and the shared trainer: one [`Objective`] per method.

use anyhow::Result;
use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_ride::RideLoss;
use longtail_sade::SadeLoss;
use longtail_tlc::{fuse, TlcLoss};
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

/// SADE's loss (sade.md §1.2); plain prediction is the mean of the three experts' logits
/// (test-time aggregation re-weights them at evaluation, see `longtail eval --test-dist`).
pub struct SadeObjective(pub SadeLoss);

impl Objective for SadeObjective {
    fn name(&self) -> &str {
        "sade"
    }
    fn loss(&self, out: &ExpertOutput, targets: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(&out.expert_logits, targets)
    }
}

/// TLC's evidential loss (tlc.md §2.2); predicts with the fused combination of the experts
/// (batch-independent by default, tlc.md §3.2).
pub struct TlcObjective(pub TlcLoss);

impl Objective for TlcObjective {
    fn name(&self) -> &str {
        "tlc"
    }
    fn begin_epoch(&mut self, epoch: usize) -> candle_core::Result<()> {
        self.0.begin_epoch(epoch).map_err(candle_core::Error::wrap)
    }
    fn loss(&self, out: &ExpertOutput, targets: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self
            .0
            .forward(&out.expert_logits, targets)
            .map_err(candle_core::Error::wrap)?
            .loss)
    }
    fn predict(&self, out: &ExpertOutput) -> candle_core::Result<Tensor> {
        let f = fuse(&out.expert_logits, self.0.config().combination)
            .map_err(candle_core::Error::wrap)?;
        f.output.to_dtype(out.logits.dtype())
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
        MethodConfig::Sade(s) => {
            Box::new(SadeObjective(SadeLoss::new(class_counts, s.tau, device)?))
        }
        MethodConfig::Tlc(t) => Box::new(TlcObjective(TlcLoss::new(t.loss.clone(), class_counts)?)),
    })
}
