//! The error type of this crate.

/// Everything that can go wrong when building a SADE loss or resolving a preset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SadeError {
    /// The class-count list is empty.
    #[error("no classes: the class-count list is empty")]
    NoClasses,
    /// Every class count is 0, so there is no prior.
    #[error("all {classes} class counts are 0: the prior is undefined")]
    NoSamples {
        /// Number of classes.
        classes: usize,
    },
    /// A configuration value is NaN or infinite.
    #[error("{field} must be finite, got {value}")]
    NonFinite {
        /// Name of the offending field.
        field: &'static str,
        /// The value that was given.
        value: f64,
    },
    /// A configuration value is finite but outside its valid range.
    #[error("{field} must be {expected}, got {value}")]
    OutOfRange {
        /// Name of the offending field.
        field: &'static str,
        /// The value that was given.
        value: f64,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// SADE has exactly three experts (forward, uniform, backward).
    #[error("sade needs exactly 3 experts (forward, uniform, backward), got {got}")]
    ExpertCount {
        /// The number of experts given.
        got: usize,
    },
    /// The logits or targets given to the loss have the wrong rank, shape or dtype.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// Which input is wrong.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A target label is not a valid class index.
    #[error(
        "target {target} at batch position {index} is not a class index (only {classes} classes)"
    )]
    TargetOutOfRange {
        /// Position of the label in the batch.
        index: usize,
        /// The label as given.
        target: i64,
        /// Number of classes.
        classes: usize,
    },
    /// A strong-augmentation setting, or the image shape it is given, is unusable.
    #[error("strong augmentation: {field} {value} is unusable: {reason}")]
    Augment {
        /// Name of the offending setting.
        field: &'static str,
        /// The value that was given.
        value: String,
        /// What it must be.
        reason: String,
    },
    /// An image buffer does not have `height · width · channels` bytes.
    #[error("image of {got} bytes does not match its shape {height}x{width}x{channels}")]
    ImageSize {
        /// Bytes given.
        got: usize,
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
        /// Channels.
        channels: usize,
    },
    /// A sample index is outside the data set.
    #[error("sample index {index} is outside the data set of {len} images")]
    SampleIndex {
        /// The index asked for.
        index: usize,
        /// Images in the data set.
        len: usize,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The label-shift protocol cannot run as asked (an unbalanced or empty test set, a test-time
    /// setting out of range).
    #[error("{0}")]
    Shift(String),
    /// Test-time aggregation failed.
    #[error(transparent)]
    Aggregate(#[from] longtail_aggregate::AggregateError),
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

impl From<longtail_train::TrainError> for SadeError {
    fn from(e: longtail_train::TrainError) -> Self {
        SadeError::Train(Box::new(e))
    }
}

impl From<longtail_data::DataError> for SadeError {
    fn from(e: longtail_data::DataError) -> Self {
        SadeError::Data(Box::new(e))
    }
}
