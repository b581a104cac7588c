//! The training engine shared by every method: the run config, SGD with Nesterov momentum,
//! the official learning-rate schedules, the epoch loop with atomic checkpoints and resume,
//! evaluation, and the compute device.
//!
//! A method plugs in through two traits: [`Method`] (its loss on a batch, a per-epoch hook and
//! its prediction rule) and [`MethodKind`] (its name, presets, settings check and constructor).
//! [`train_run`] does the rest: loads the data a [`RunConfig`] names, builds the network, and
//! [`fit`] writes `last.safetensors` (weights, BN statistics, momentum, run metadata) and one
//! `metrics.jsonl` line per epoch into the run directory. [`mixup`] is a training option any
//! method can turn on (`[optim] mixup_alpha`).

#![deny(missing_docs)]

pub mod bench;
pub mod checkpoint;
mod config;
pub mod device;
mod error;
pub mod eval;
mod method;
pub mod mixup;
mod run;
mod schedule;
mod sgd;
pub mod trainer;

pub use config::{
    config_differences, human_bytes, DataConfig, MethodConfig, OptimConfig, RunConfig, SizeEstimate,
};
pub use error::TrainError;
pub use eval::{evaluate, evaluate_on, evaluate_with, Evaluation};
pub use longtail_backbone::trainable_vars;
pub use longtail_dist::{self as dist, Communicator};
pub use method::{method_error, Method, MethodKind, Preset};
pub use run::{
    check_fits, check_fits_in, load_data, load_run, machine_memory, metadata, per_class_csv,
    train_run, train_run_on, train_run_with, transforms, write_per_class, LoadedRun, OutMode,
    RunData, RunLock, TrunkInit, CONFIG_FILE, LOCK_FILE, PER_CLASS, RUN_FILES,
};
pub use schedule::LrSchedule;
pub use sgd::{LrGroup, Sgd, SgdConfig};
pub use trainer::{
    all_reduce_grads, check_world_size, fit, train_epoch, train_epoch_on, EpochRecord, EpochStats,
    EpochTiming, FitSummary, Progress, RunOptions, Step, SyncBatchNorm, TrainConfig, TrainData,
};
