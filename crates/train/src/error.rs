//! The training crate's error type.

use std::path::PathBuf;

/// What can go wrong while training or evaluating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// An invalid training setting.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("the loss is {value} at epoch {epoch}, step {step}: training stopped (the last good checkpoint, if any, is kept; try a lower learning rate)")]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based step within the epoch.
        step: usize,
        /// The loss value.
        value: f32,
    },
    /// The run folder cannot be used as asked: it holds a run (and neither `--resume` nor
    /// `--overwrite` was given), another run (on resume), something else, or nothing to resume.
    #[error("{0}")]
    RunFolder(String),
    /// Another process holds the run folder's lock.
    #[error("{} is in use by another longtail process ({holder}): wait for it to finish or choose another --out", .dir.display())]
    Locked {
        /// The run folder.
        dir: std::path::PathBuf,
        /// Who holds it, from the lock file (`pid 1234, longtail train`).
        holder: String,
    },
    /// The network (or a batch of it) cannot fit in this machine's memory.
    #[error("{0}")]
    TooLarge(String),
    /// A checkpoint could not be used.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] longtail_data::DataError),
    /// The network failed (bad input shape, bad expert selection, …).
    #[error(transparent)]
    Backbone(#[from] longtail_backbone::BackboneError),
    /// A metric could not be computed.
    #[error(transparent)]
    Metrics(#[from] longtail_metrics::MetricsError),
    /// A method's own code failed (its settings, its loss); `source` is the method crate's error.
    #[error("{method}: {source}")]
    Method {
        /// The method's name.
        method: String,
        /// The method crate's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The compute device cannot be used as asked.
    #[error("{0}")]
    Device(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// A collective of data-parallel training failed (issue 19).
    #[error(transparent)]
    Dist(#[from] longtail_dist::DistError),
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
