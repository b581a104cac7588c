//! Second stages on any finished longtail run: re-balance the classifier of a trained model,
//! the trunk left as it is.
//!
//! - [`Stage`]: which one, parsed from `crt`, `lws`, `tau-norm[:τ]`, `la[:τ]`, `wb[:thresh]`:
//!   classifier re-training, learnable weight scaling and τ-normalisation (Kang et al.,
//!   *Decoupling Representation and Classifier for Long-Tailed Recognition*, ICLR 2020),
//!   post-hoc logit adjustment (Menon et al., ICLR 2021) and weight balancing's second stage
//!   (Alshammari et al., CVPR 2022); docs/baselines.md §5–§7 and §12.
//! - [`apply`]: runs a stage on a run folder with the engine's loop and evaluation, writes
//!   `RUN/stage-<name>/` (network, logits, `result.json`), and returns the stored result when
//!   the same stage already ran on the same weights.
//! - [`head`]: the pure operations (τ-normalisation, MaxNorm, the LA offsets, weight balancing's
//!   class-balanced loss), checked against hand-computed values.
//!
//! ```no_run
//! use candle_core::Device;
//! use longtail_decouple::{apply, Stage, StageOptions};
//!
//! let stage: Stage = "tau-norm".parse()?;
//! let r = apply("runs/ce-fm".as_ref(), &stage, &StageOptions::default(), &Device::Cpu)?;
//! println!("{:.2} → {:.2}", r.before_test.report.accuracy, r.test.report.accuracy);
//! # Ok::<(), longtail_decouple::DecoupleError>(())
//! ```

#![deny(missing_docs)]

mod apply;
mod error;
pub mod head;
mod stage;

pub use apply::{
    apply, StageEpoch, StageOptions, StageResult, Summary, TauSource, LOGITS_FILE, RESULT_FILE,
    WEIGHTS_FILE,
};
pub use error::{DecoupleError, Result};
pub use stage::{tau_grid, Recipe, Stage, DEFAULT_TAU, TAU_GRID_STEPS, WB_BETA, WB_THRESH};
