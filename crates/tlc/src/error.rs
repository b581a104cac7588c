//! The crate's error type.

/// Everything that can go wrong in `longtail-tlc`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlcError {
    /// A per-class constant could not be derived (longtail-losses).
    #[error(transparent)]
    Loss(#[from] longtail_losses::LossError),
    /// Expert logits are not a rank-3 `[batch, experts, classes]` tensor with non-zero sizes.
    #[error("expert logits must be [batch, experts, classes] with non-zero sizes, got {shape:?}")]
    LogitsShape {
        /// The shape that was given.
        shape: Vec<usize>,
    },
    /// The fused uncertainty `w` does not have the shape `[experts + 1, batch]`.
    #[error("fused uncertainty must be [{want_rows}, {batch}], got {shape:?}")]
    FusionShape {
        /// Expected number of rows (experts + 1).
        want_rows: usize,
        /// Expected batch size.
        batch: usize,
        /// The shape that was given.
        shape: Vec<usize>,
    },
    /// Targets are not a `[batch]` vector.
    #[error("targets must be [{batch}], got {shape:?}")]
    TargetsShape {
        /// Expected batch size.
        batch: usize,
        /// The shape that was given.
        shape: Vec<usize>,
    },
    /// A target label is not a valid class index.
    #[error("target {target} of sample {index} is out of range for {classes} classes")]
    TargetOutOfRange {
        /// Sample index in the batch.
        index: usize,
        /// The label.
        target: i64,
        /// Number of classes.
        classes: usize,
    },
    /// The per-class training counts do not match the number of classes.
    #[error("class counts have {got} entries, the logits have {classes} classes")]
    ClassCounts {
        /// Entries in the count list.
        got: usize,
        /// Classes in the logits.
        classes: usize,
    },
    /// A class has no training sample (its LDAM margin `n^(-1/4)` would be infinite).
    #[error("class {class} has no training samples")]
    EmptyClass {
        /// The class index.
        class: usize,
    },
    /// A hyper-parameter is out of its valid range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidConfig {
        /// Parameter name.
        name: &'static str,
        /// Offending value.
        value: f64,
        /// What the valid range is.
        reason: &'static str,
    },
    /// `begin_epoch` was given 0; epochs are 1-based as in the official trainer.
    #[error("epochs are 1-based, got epoch 0")]
    ZeroEpoch,
    /// The loss was called before any `begin_epoch`.
    #[error("call begin_epoch before computing the loss")]
    EpochNotStarted,
    /// An expert's forward (early exit) returned logits of the wrong shape.
    #[error("expert {expert} returned logits of shape {got:?}, expected {want:?}")]
    ExpertOutputShape {
        /// The expert index.
        expert: usize,
        /// The shape it returned.
        got: Vec<usize>,
        /// The shape that was expected.
        want: Vec<usize>,
    },
    /// A candle operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The uncertainty report cannot be computed as asked (mismatched inputs, bad thresholds).
    #[error("{0}")]
    Report(String),
    /// The engine failed (its evaluation pass, the run's settings).
    #[error(transparent)]
    Train(Box<longtail_train::TrainError>),
    /// The data pipeline failed (boxed to keep the error small).
    #[error(transparent)]
    Data(Box<longtail_data::DataError>),
    /// The network failed.
    #[error(transparent)]
    Backbone(#[from] longtail_backbone::BackboneError),
    /// A metric could not be computed.
    #[error(transparent)]
    Metrics(#[from] longtail_metrics::MetricsError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, TlcError>;

impl From<longtail_train::TrainError> for TlcError {
    fn from(e: longtail_train::TrainError) -> Self {
        TlcError::Train(Box::new(e))
    }
}

impl From<longtail_data::DataError> for TlcError {
    fn from(e: longtail_data::DataError) -> Self {
        TlcError::Data(Box::new(e))
    }
}
