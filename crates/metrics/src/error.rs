//! The metrics crate's error type.

/// What can go wrong when computing a metric.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum MetricsError {
    /// Two inputs that must be aligned sample by sample have different lengths.
    #[error("{what} have different lengths ({left} vs {right})")]
    LengthMismatch {
        /// Which inputs.
        what: &'static str,
        /// Length of the first.
        left: usize,
        /// Length of the second.
        right: usize,
    },
    /// A metric needs at least one sample.
    #[error("no {0} to evaluate")]
    Empty(&'static str),
    /// A label or prediction is not a valid class index.
    #[error("{what} of sample {index} is class {class}, but there are {num_classes} classes")]
    ClassOutOfRange {
        /// `label` or `prediction`.
        what: &'static str,
        /// Sample index.
        index: usize,
        /// The offending class.
        class: u32,
        /// Number of classes.
        num_classes: usize,
    },
    /// A score is NaN or infinite.
    #[error("{what} of sample {index} is not finite ({value})")]
    NonFinite {
        /// Which score.
        what: &'static str,
        /// Sample index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Any other invalid argument.
    #[error("{0}")]
    Invalid(String),
}
