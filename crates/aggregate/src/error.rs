//! The crate's one error type.

use candle_core::DType;

/// Everything that can go wrong in this crate.
///
/// Each variant names the input that failed and what was wrong with it, so a caller
/// feeding logits exported from another framework can see which tensor to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError {
    /// A tensor does not have the rank (and layout) the function documents.
    #[error("{what} must have rank {expected} ({layout}), got shape {got:?}")]
    Rank {
        /// Which input.
        what: String,
        /// The rank required.
        expected: usize,
        /// The layout required, e.g. `[E, B, C]`.
        layout: &'static str,
        /// The shape received.
        got: Vec<usize>,
    },
    /// The expert axis has length 0: there is nothing to aggregate.
    #[error("{what} has no experts (shape {shape:?})")]
    NoExperts {
        /// Which input.
        what: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The sample or class axis has length 0.
    #[error("{what} has an empty sample or class axis (shape {shape:?})")]
    Empty {
        /// Which input.
        what: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The two augmented views of the same samples have different shapes.
    #[error("view a has shape {a:?} but view b has shape {b:?}; both must be [E, B, C] for the same samples")]
    ViewMismatch {
        /// Shape of view a.
        a: Vec<usize>,
        /// Shape of view b.
        b: Vec<usize>,
    },
    /// A tensor's shape disagrees with what the other inputs (or earlier batches) fix.
    #[error("{what} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Which input.
        what: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape received.
        got: Vec<usize>,
    },
    /// A tensor holds NaN or ±inf.
    #[error("{what} contains a non-finite value (nan or inf)")]
    NonFinite {
        /// Which input (or intermediate, e.g. the gradient of ω).
        what: String,
    },
    /// Logits must be floating point.
    #[error("{what} has dtype {dtype:?}; expected f16, bf16, f32 or f64")]
    Dtype {
        /// Which input.
        what: String,
        /// The dtype received.
        dtype: DType,
    },
    /// The number of weights differs from the number of experts.
    #[error("got {got} weights for {experts} experts")]
    WeightCount {
        /// Experts in the logits.
        experts: usize,
        /// Weights given.
        got: usize,
    },
    /// A weight is negative or not finite.
    #[error("weight {index} is {value}; weights must be finite and non-negative")]
    BadWeight {
        /// Position of the weight.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// The weights do not sum to 1 (tolerance [`crate::SUM_TOLERANCE`]).
    #[error("weights sum to {sum}, not 1")]
    WeightsNotNormalized {
        /// Their sum.
        sum: f64,
    },
    /// The test prior's length differs from the number of classes.
    #[error("test prior has {got} entries for {classes} classes")]
    PriorLength {
        /// Classes in the logits.
        classes: usize,
        /// Prior entries given.
        got: usize,
    },
    /// A test-prior entry is zero, negative or not finite.
    #[error("test prior entry {index} is {value}; entries must be finite and positive")]
    BadPrior {
        /// Class index.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// The test prior does not sum to 1 (tolerance [`crate::SUM_TOLERANCE`]).
    #[error("test prior sums to {sum}, not 1")]
    PriorNotNormalized {
        /// Its sum.
        sum: f64,
    },
    /// A configuration value is out of range.
    #[error("invalid config: {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value, printed.
        value: String,
        /// What the value must satisfy.
        reason: &'static str,
    },
    /// [`crate::AggregatorConfig::preset`] got a name it does not know.
    #[error("unknown preset {name:?}; known presets: {known}")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// `fit_with` was asked to aggregate over zero samples.
    #[error("no samples to aggregate over (num_samples is 0)")]
    NoSamples,
    /// The caller's batch closure returned an error.
    #[error("batch source failed on batch {batch} of epoch {epoch}: {source}")]
    Source {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch within the epoch.
        batch: usize,
        /// The closure's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An error from candle (device mismatch, out of memory, ...).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, AggregateError>;
