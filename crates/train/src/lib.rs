//! The training engine shared by every method: SGD with Nesterov momentum, the official
//! learning-rate schedules, the epoch loop with atomic checkpoints and resume, and evaluation.
//!
//! A method plugs in through [`Objective`]: its loss, a per-epoch hook and its prediction rule.
//! [`fit`] does the rest and writes `last.safetensors` (weights, BN statistics, momentum, run
//! metadata) and one `metrics.jsonl` line per epoch into the run directory.

#![deny(missing_docs)]

pub mod checkpoint;
mod error;
pub mod eval;
mod objective;
mod schedule;
mod sgd;
pub mod trainer;

pub use error::TrainError;
pub use eval::{evaluate, Evaluation};
pub use longtail_backbone::trainable_vars;
pub use objective::{CrossEntropy, Objective};
pub use schedule::LrSchedule;
pub use sgd::{Sgd, SgdConfig};
pub use trainer::{fit, EpochRecord, FitSummary, Progress, RunOptions, TrainConfig, TrainData};
