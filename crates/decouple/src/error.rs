//! The one error type of this crate.

use std::path::PathBuf;

/// What can go wrong when a second stage is applied to a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecoupleError {
    /// A stage name that is not one of `crt`, `lws`, `tau-norm[:τ]`, `la[:τ]`, `wb[:thresh]`, or
    /// a parameter that is not a finite number in range.
    #[error("{0}")]
    Stage(String),
    /// The path is not a folder holding a finished `longtail train` run.
    #[error("{}: {reason}", .path.display())]
    NotARun {
        /// The folder given.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The stage's own settings (epochs, batch size, lr, …) are out of range.
    #[error("{0}")]
    Options(String),
    /// A stored stage result that cannot be read back.
    #[error("{}: {reason}", .path.display())]
    Stored {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The engine failed (reading the run, its data, training, writing files).
    #[error(transparent)]
    Train(#[from] longtail_train::TrainError),
    /// A per-class constant could not be computed (empty classes).
    #[error(transparent)]
    Losses(#[from] longtail_losses::LossError),
    /// Accuracy could not be computed.
    #[error(transparent)]
    Metrics(#[from] longtail_metrics::MetricsError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl From<longtail_backbone::BackboneError> for DecoupleError {
    fn from(e: longtail_backbone::BackboneError) -> Self {
        Self::Train(e.into())
    }
}

impl From<longtail_data::DataError> for DecoupleError {
    fn from(e: longtail_data::DataError) -> Self {
        Self::Train(e.into())
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, DecoupleError>;
