//! [`BaselineError`]: what can be wrong with a baseline's settings or its network.

use longtail_losses::LossError;

/// A baseline's settings, class counts or network do not fit the method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaselineError {
    /// A setting is out of range (γ < 0, β outside [0, 1), τ < 0, …) or a class has no
    /// training sample where the method needs one (class-balanced weights, LDAM margins,
    /// balanced softmax).
    #[error(transparent)]
    Setting(#[from] LossError),
    /// The baselines are single-model methods.
    #[error("{method} trains one expert (got model.num_experts = {got})")]
    Experts {
        /// The method's name.
        method: &'static str,
        /// The configured number of experts.
        got: usize,
    },
    /// A one-vs-all (sigmoid) loss needs a negative class next to each positive.
    #[error("the {form} form needs at least 2 classes (got {classes})")]
    TooFewClasses {
        /// The loss form.
        form: &'static str,
        /// The configured number of classes.
        classes: usize,
    },
    /// LDAM's margin is on cos θ, so the network needs the cosine classifier.
    #[error("ldam-drw needs the cosine classifier (model.use_norm = true): its margin is subtracted from s·cos θ")]
    NeedsCosineHead,
    /// Weight balancing's first stage is defined by its (tuned) weight decay.
    #[error("wb (weight balancing, stage 1) needs optim.weight_decay > 0 (got {got})")]
    NoWeightDecay {
        /// The configured weight decay.
        got: f64,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
