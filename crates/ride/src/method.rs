//! RIDE as a longtail method: the loss as the training objective (plus the optional
//! distillation term), the mean of the experts as the prediction (docs/ride.md §1.1, §3, §4).

use std::cell::OnceCell;

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_train::{method_error, Method, MethodKind, Preset, RunConfig, TrainError};

use crate::{distill_kl, DistillConfig, RideLoss, RideLossConfig, Teacher};

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
        let settings = Self::settings(cfg)?;
        let loss =
            RideLoss::new(&settings, class_counts, device).map_err(|e| method_error("ride", e))?;
        let mut method = RideMethod::new(loss);
        if let Some(config) = settings.distill.clone() {
            method.distill = Some(Distiller {
                config,
                student: cfg.clone(),
                device: device.clone(),
                teacher: OnceCell::new(),
            });
        }
        Ok(Box::new(method))
    }
}

/// RIDE's loss as a training objective, with the distillation term when the run has a teacher;
/// predicts with the mean of the experts (docs/ride.md §1.1, §3, §4).
pub struct RideMethod {
    loss: RideLoss,
    distill: Option<Distiller>,
}

/// The teacher of a distilling run, loaded when training starts.
///
/// Not at build time: `eval`, `export` and the router build the method of a finished student
/// too, and they must not need its teacher (which may have been moved or deleted since).
struct Distiller {
    config: DistillConfig,
    student: longtail_train::RunConfig,
    device: Device,
    teacher: OnceCell<Teacher>,
}

impl Distiller {
    fn teacher(&self) -> candle_core::Result<&Teacher> {
        if let Some(t) = self.teacher.get() {
            return Ok(t);
        }
        let t = Teacher::load(&self.student, &self.device).map_err(candle_core::Error::wrap)?;
        Ok(self.teacher.get_or_init(|| t))
    }
}

impl RideMethod {
    /// RIDE without distillation.
    pub fn new(loss: RideLoss) -> Self {
        Self {
            loss,
            distill: None,
        }
    }

    /// The RIDE loss.
    pub fn ride_loss(&self) -> &RideLoss {
        &self.loss
    }

    /// The teacher, once loaded (by the first [`Method::begin_epoch`] or [`Method::loss`]);
    /// `None` for a run that does not distil or before training starts.
    pub fn teacher(&self) -> Option<&Teacher> {
        self.distill.as_ref().and_then(|d| d.teacher.get())
    }

    /// `RIDE + a · T_d² · KL(softmax(t̄/T_d) ‖ softmax(z̄/T_d))`, the whole times `E` when
    /// `times_experts` (docs/ride.md §4): `ride` is the RIDE loss of the batch, `student` the
    /// student's mean logits `[B, C]`, `teacher` the teacher's. The same formula as the official
    /// `RIDELossWithDistill.forward` with `ride_loss_factor` 1.
    pub fn distilled_loss(
        ride: &Tensor,
        student: &Tensor,
        teacher: &Tensor,
        experts: usize,
        d: &DistillConfig,
    ) -> candle_core::Result<Tensor> {
        let kl = distill_kl(student, teacher, d.temperature)?;
        let total = (ride + (kl * d.weight)?)?;
        if d.times_experts {
            total * experts as f64
        } else {
            Ok(total)
        }
    }
}

impl Method for RideMethod {
    fn name(&self) -> &str {
        "ride"
    }

    /// Switches re-weighting (docs/ride.md §3); a distilling run also loads its teacher here, on
    /// the first epoch, so that a missing teacher stops training before any step.
    fn begin_epoch(&mut self, epoch: usize) -> candle_core::Result<()> {
        self.loss.begin_epoch(epoch);
        if let Some(d) = &self.distill {
            d.teacher()?;
        }
        Ok(())
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        let ride = self.loss.forward(&out.expert_logits, &batch.labels)?;
        let Some(d) = &self.distill else {
            return Ok(ride);
        };
        let teacher = d.teacher()?.logits(&batch.images)?;
        let experts = out.expert_logits.dim(1)?;
        Self::distilled_loss(&ride, &out.logits, &teacher, experts, &d.config)
    }
}
