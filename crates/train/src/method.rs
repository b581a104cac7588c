//! What a method contributes to the shared training loop.

use candle_core::{Result, Tensor};
use longtail_backbone::ExpertOutput;

/// A method's training objective and prediction rule (RIDE, SADE, TLC, the CE baseline).
///
/// The trainer owns the loop (data, optimizer, schedule, checkpoints); a method supplies its loss,
/// any per-epoch switch, and how the experts' logits combine into one prediction.
pub trait Objective {
    /// Short name for logs (`ce`, `ride`, …).
    fn name(&self) -> &str;

    /// Called before each training epoch with the **1-based** epoch, as the official trainers'
    /// `_hook_before_epoch` (e.g. DRW switches on once `epoch > reweight_epoch`).
    fn begin_epoch(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }

    /// The scalar training loss of one batch (`targets`: u32 `[B]`).
    fn loss(&self, out: &ExpertOutput, targets: &Tensor) -> Result<Tensor>;

    /// The ensemble's logits `[B, C]` used for accuracy; the mean of the experts by default.
    fn predict(&self, out: &ExpertOutput) -> Result<Tensor> {
        Ok(out.logits.clone())
    }
}

/// Plain softmax cross-entropy on the mean logits: the CE baseline (one expert in practice).
#[derive(Debug, Default, Clone, Copy)]
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn name(&self) -> &str {
        "ce"
    }

    fn loss(&self, out: &ExpertOutput, targets: &Tensor) -> Result<Tensor> {
        candle_nn::loss::cross_entropy(&out.logits, targets)
    }
}
