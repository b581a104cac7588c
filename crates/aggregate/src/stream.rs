//! Online aggregation: one SGD step per incoming batch, then predict that batch.

use candle_core::Tensor;

use crate::check;
use crate::combine;
use crate::config::StreamingConfig;
use crate::error::{AggregateError, Result};
use crate::learner::Learner;
use crate::objective::StabilityLoss;

/// Streaming test-time aggregation (docs/sade.md §2, "Online / streaming"): for each incoming
/// batch, one SGD step on its two augmented views, then a prediction of the same batch's clean
/// view with the updated weights. There are no epochs, so there is no early-stop rule.
///
/// The state (ω and the momentum buffer) carries over from batch to batch, for any number of
/// batches, so the weights keep adapting when the test distribution drifts. Call
/// [`reset`](Self::reset) to start from uniform weights when a known new distribution begins.
///
/// Limitation (inherent to `w = softmax(ω)`): `∂L/∂ω_e` is proportional to `w_e`, so once one
/// weight saturates near 1 the others move very slowly, and momentum keeps pushing the old way
/// for a few steps. After a long stream from one distribution, adapting to the next takes many
/// batches; with a small lr (the official 0.025) the weights rarely saturate.
///
/// Differs from official: `test_training_imagenet_online.py` crashes with a `NameError`
/// (`test_validation` was removed from that file) after its first test distribution; this type
/// has no such limit. There, ω is also re-created for each distribution; here that is `reset`.
#[derive(Clone, Debug)]
pub struct StreamingAggregator {
    config: StreamingConfig,
    learner: Learner,
    steps: usize,
    last: Option<StabilityLoss>,
}

impl StreamingAggregator {
    /// Uniform weights over `num_experts` experts. Validates `config`.
    pub fn new(num_experts: usize, config: StreamingConfig) -> Result<Self> {
        let config = config.check()?;
        if num_experts == 0 {
            return Err(AggregateError::NoExperts {
                what: "streaming aggregator".into(),
                shape: vec![0],
            });
        }
        Ok(Self {
            config,
            learner: Learner::new(num_experts, config.sgd, config.entropy_coef)?,
            steps: 0,
            last: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StreamingConfig {
        &self.config
    }

    /// The current weights `softmax(ω)`.
    pub fn weights(&self) -> Vec<f64> {
        self.learner.weights()
    }

    /// The current ω.
    pub fn omega(&self) -> &[f64] {
        &self.learner.omega
    }

    /// SGD steps taken since creation or the last [`reset`](Self::reset).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The objective of the last step, measured before that step.
    pub fn last_loss(&self) -> Option<StabilityLoss> {
        self.last
    }

    /// Back to uniform weights and no momentum.
    pub fn reset(&mut self) -> Result<()> {
        self.learner = Learner::new(
            self.learner.experts(),
            self.config.sgd,
            self.config.entropy_coef,
        )?;
        self.steps = 0;
        self.last = None;
        Ok(())
    }

    /// One SGD step on a batch's two views (`[E, B, C]` each); returns the objective before it.
    pub fn step(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<StabilityLoss> {
        let (e, _, _) = check::views(view_a, view_b)?;
        self.check_experts("view a", e, view_a)?;
        check::finite("view a", view_a)?;
        check::finite("view b", view_b)?;
        let dtype = check::compute_dtype("view a", view_a)?;
        let v = self
            .learner
            .step(&view_a.to_dtype(dtype)?, &view_b.to_dtype(dtype)?)?;
        self.steps += 1;
        self.last = Some(v);
        Ok(v)
    }

    /// Aggregated logits `Σ_e w_e v_e` of `[E, B, C]` logits with the current weights → `[B, C]`.
    pub fn predict(&self, plain: &Tensor) -> Result<Tensor> {
        let (e, _, _) = check::expert_logits("plain", plain)?;
        self.check_experts("plain", e, plain)?;
        combine::weighted_logits(plain, &self.weights())
    }

    /// [`step`](Self::step) on `view_a`/`view_b`, then [`predict`](Self::predict) on `plain`, the
    /// same samples' logits under the clean test transform (all three `[E, B, C]`, same shape).
    /// Returns `[B, C]` aggregated logits.
    pub fn step_and_predict(
        &mut self,
        view_a: &Tensor,
        view_b: &Tensor,
        plain: &Tensor,
    ) -> Result<Tensor> {
        check::views(view_a, view_b)?;
        check::expert_logits("plain", plain)?;
        if plain.dims() != view_a.dims() {
            return Err(AggregateError::ShapeMismatch {
                what: "plain".into(),
                expected: view_a.dims().to_vec(),
                got: plain.dims().to_vec(),
            });
        }
        self.step(view_a, view_b)?;
        self.predict(plain)
    }

    fn check_experts(&self, what: &str, e: usize, t: &Tensor) -> Result<()> {
        if e == self.learner.experts() {
            return Ok(());
        }
        let mut expected = t.dims().to_vec();
        expected[0] = self.learner.experts();
        Err(AggregateError::ShapeMismatch {
            what: what.into(),
            expected,
            got: t.dims().to_vec(),
        })
    }
}
