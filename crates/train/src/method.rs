//! What a method contributes to the engine: its training objective and prediction rule
//! ([`Method`]), and how it is named, configured and built ([`MethodKind`]).

use candle_core::{Device, Result, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;

use crate::{RunConfig, TrainError};

/// A method's training objective and prediction rule (RIDE, SADE, TLC, the CE baseline, …).
///
/// The engine owns the loop (data, optimizer, schedule, checkpoints); a method supplies its
/// loss, any per-epoch switch, and how the experts' logits combine into one prediction.
pub trait Method {
    /// Short name for logs (`ce`, `ride`, …).
    fn name(&self) -> &str;

    /// Called before each training epoch with the **1-based** epoch, as the official trainers'
    /// `_hook_before_epoch` (e.g. DRW switches on once `epoch > reweight_epoch`).
    fn begin_epoch(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }

    /// The scalar training loss of one batch. The whole batch is given (images, labels `[B]`
    /// u32, data-set indices), so that a method may use more than the labels (distillation,
    /// mixup).
    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> Result<Tensor>;

    /// The ensemble's logits `[B, C]` used for accuracy; the mean of the experts by default.
    fn predict(&self, out: &ExpertOutput) -> Result<Tensor> {
        Ok(out.logits.clone())
    }
}

/// One named preset: a complete, typed run config.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// `method.dataset[.variant]`.
    pub name: &'static str,
    /// One line saying what it is and where its values come from.
    pub summary: &'static str,
    /// Builds the config.
    pub build: fn() -> RunConfig,
}

impl Preset {
    /// The preset's config, with [`RunConfig::preset`] set to its name.
    pub fn config(&self) -> RunConfig {
        let mut cfg = (self.build)();
        cfg.preset = Some(self.name.to_string());
        cfg
    }
}

/// A method as the registry knows it: its name, presets, settings check and constructor.
///
/// Each method crate exports one unit struct implementing this; the `longtail` binary's
/// registry lists them, and that list is the only place that names every method.
pub trait MethodKind: Sync {
    /// The name used in `[method] name = …` and on the command line.
    fn name(&self) -> &'static str;

    /// One line: the paper and what the method does.
    fn summary(&self) -> &'static str;

    /// The method's presets.
    fn presets(&self) -> &'static [Preset];

    /// Checks the method's settings in `cfg` and what the method needs of the network (e.g.
    /// SADE's three experts). The shared parts are checked by [`RunConfig::check_common`].
    fn check(&self, cfg: &RunConfig) -> std::result::Result<(), TrainError>;

    /// The training objective of `cfg` for a training set with `class_counts`.
    fn build(
        &self,
        cfg: &RunConfig,
        class_counts: &[usize],
        device: &Device,
    ) -> std::result::Result<Box<dyn Method>, TrainError>;
}

/// Wraps a method crate's error as a [`TrainError`].
pub fn method_error(method: &str, e: impl std::error::Error + Send + Sync + 'static) -> TrainError {
    TrainError::Method {
        method: method.to_string(),
        source: Box::new(e),
    }
}
