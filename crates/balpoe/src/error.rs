//! The error type of this crate.

/// Everything that can go wrong when building the BalPoE loss or its prediction rules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalPoeError {
    /// The class-count list is empty.
    #[error("no classes: the class-count list is empty")]
    NoClasses,
    /// Every class count is 0, so there is no prior.
    #[error("the {classes} class counts are all 0: no prior to adjust by")]
    NoSamples {
        /// Number of classes.
        classes: usize,
    },
    /// No expert: an empty τ list or 0 experts.
    #[error("no experts: BalPoE needs at least one τ")]
    NoExperts,
    /// A setting is NaN or infinite.
    #[error("{field} must be finite, got {value}")]
    NonFinite {
        /// Name of the setting.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// The explicit τ list does not have one value per expert.
    #[error("tau_list has {taus} values for {experts} experts: give one τ per expert, or drop tau_list to space them from tau_min to tau_max")]
    TauCount {
        /// Experts of the network.
        experts: usize,
        /// Values in `tau_list`.
        taus: usize,
    },
    /// The logits or targets have the wrong rank, shape or dtype.
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
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
