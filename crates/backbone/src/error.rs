//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

/// A tensor whose shape in a weight file differs from the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// State-dict key.
    pub name: String,
    /// Shape the model expects.
    pub expected: Vec<usize>,
    /// Shape found in the weights.
    pub got: Vec<usize>,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (model {:?}, file {:?})",
            self.name, self.expected, self.got
        )
    }
}

/// Everything that can go wrong when building, initialising, loading or running a backbone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackboneError {
    /// A [`crate::BackboneConfig`] field has a value the network cannot be built with.
    #[error("invalid backbone config: {field}: {reason}")]
    Config {
        /// Field name as written in the config file.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The input tensor is not `[B, in_channels, H, W]`.
    #[error("input must be [batch, {channels}, height, width], got shape {got:?}")]
    InputShape {
        /// Channels the config expects.
        channels: usize,
        /// Shape that was passed.
        got: Vec<usize>,
    },
    /// An expert index is out of range, repeated, or the list is empty.
    #[error("bad expert selection {experts:?} for a model with {num_experts} experts")]
    ExpertIndex {
        /// Indices that were asked for.
        experts: Vec<usize>,
        /// Number of experts in the model.
        num_experts: usize,
    },
    /// A weight file does not match the model's state dict; nothing was copied.
    #[error(
        "state dict does not match the model: missing keys [{}]; unexpected keys [{}]; shape mismatches [{}]",
        .missing.join(", "),
        .unexpected.join(", "),
        .mismatched.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    StateDict {
        /// Model keys absent from the weights.
        missing: Vec<String>,
        /// Weight keys the model does not have (`num_batches_tracked` excluded).
        unexpected: Vec<String>,
        /// Keys present on both sides with different shapes.
        mismatched: Vec<ShapeMismatch>,
    },
    /// A VarMap entry whose name the initialiser does not know how to fill.
    #[error("cannot initialise parameter {name} with shape {shape:?}: unknown kind")]
    UnknownParameter {
        /// VarMap key.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A weight file could not be read.
    #[error("{}: cannot read weights: {source}", .path.display())]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: candle_core::Error,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Lets callers that work in `candle_core::Result` use `?` on this crate's functions.
impl From<BackboneError> for candle_core::Error {
    fn from(e: BackboneError) -> Self {
        match e {
            BackboneError::Tensor(inner) => inner,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, BackboneError>;
