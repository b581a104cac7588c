//! The error type of this crate.

/// Everything that can go wrong when building a RIDE loss or resolving a preset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RideError {
    /// Another per-class constant could not be derived (longtail-losses).
    #[error(transparent)]
    Loss(longtail_losses::LossError),
    /// The class-count list is empty.
    #[error("no classes: the class-count list is empty")]
    NoClasses,
    /// A class has no training sample, so its LDAM margin and DRW weight are infinite.
    #[error("class {class} has no training sample (count 0)")]
    EmptyClass {
        /// Index of the empty class.
        class: usize,
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
    /// The logits or targets given to a loss have the wrong rank, shape or dtype.
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
    /// Stage 2 cannot run as asked (a single-expert model, an empty recipe, no training data).
    #[error("{0}")]
    Stage2(String),
    /// A router file cannot be used with this model.
    #[error("{} {reason}", .path.display())]
    RouterFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it, as a predicate (`is not a router file`).
        reason: String,
    },
    /// The distillation teacher named in `[method.distill] teacher` does not exist (no such file,
    /// or a folder without `last.safetensors`).
    #[error("distillation teacher {} not found: train it first (longtail train --preset <data set's ride .teacher preset> --out {}), or name a finished run with --teacher", .path.display(), .path.display())]
    TeacherMissing {
        /// The teacher path as configured.
        path: std::path::PathBuf,
    },
    /// The teacher's run does not fit the student (class count, input channels, data set).
    #[error("distillation teacher {}: its {what} is {teacher}, the student's is {student}", .path.display())]
    TeacherMismatch {
        /// The teacher's checkpoint file.
        path: std::path::PathBuf,
        /// What differs.
        what: &'static str,
        /// The teacher's value.
        teacher: String,
        /// The student's value.
        student: String,
    },
    /// The teacher's run stopped before its last epoch.
    #[error("distillation teacher {} stopped at epoch {epoch} of {epochs}: finish it first (longtail train --resume with its --out)", .path.display())]
    TeacherUnfinished {
        /// The teacher's checkpoint file.
        path: std::path::PathBuf,
        /// The epoch of its checkpoint.
        epoch: usize,
        /// The epochs of its recipe.
        epochs: usize,
    },
    /// Distillation was asked of a run whose method is not RIDE.
    #[error("distillation (a teacher) is a RIDE setting, but the method here is {method}")]
    NotRide {
        /// The run's method.
        method: String,
    },
    /// A teacher was asked for a RIDE run that does not distil.
    #[error("the RIDE run has no [method.distill] table: nothing to distil")]
    NotDistilling,
    /// The engine failed (data, checkpoint, evaluation); boxed to keep the error small.
    #[error(transparent)]
    Train(Box<longtail_train::TrainError>),
    /// The data pipeline failed; boxed to keep the error small.
    #[error(transparent)]
    Data(Box<longtail_data::DataError>),
    /// The network failed.
    #[error(transparent)]
    Backbone(#[from] longtail_backbone::BackboneError),
    /// A metric could not be computed.
    #[error(transparent)]
    Metrics(#[from] longtail_metrics::MetricsError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl From<longtail_losses::LossError> for RideError {
    fn from(e: longtail_losses::LossError) -> Self {
        use longtail_losses::LossError as L;
        match e {
            L::NoClasses => RideError::NoClasses,
            L::EmptyClass { class } => RideError::EmptyClass { class },
            L::NonFinite { field, value } => RideError::NonFinite { field, value },
            L::OutOfRange {
                field,
                value,
                expected,
            } => RideError::OutOfRange {
                field,
                value,
                expected,
            },
            other => RideError::Loss(other),
        }
    }
}

impl From<longtail_train::TrainError> for RideError {
    fn from(e: longtail_train::TrainError) -> Self {
        RideError::Train(Box::new(e))
    }
}

impl From<longtail_data::DataError> for RideError {
    fn from(e: longtail_data::DataError) -> Self {
        RideError::Data(Box::new(e))
    }
}
