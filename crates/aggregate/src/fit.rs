//! Epoch-based test-time aggregation over a whole unlabeled set (the official scripts' procedure).

use candle_core::Tensor;

use crate::check;
use crate::combine;
use crate::config::AggregatorConfig;
use crate::error::{AggregateError, Result};
use crate::learner::{round2, Learner};
use crate::rng::SplitMix64;

/// Learns expert weights `w = softmax(ω)` on unlabeled data by maximising prediction stability
/// (SADE, Zhang et al., NeurIPS 2022, Sec. 4.2 "test-time self-supervised aggregation";
/// `test_training_*.py`, docs/sade.md §2).
///
/// ω starts at `1/E` for every expert (uniform weights). Each epoch visits the samples in a
/// seeded random order in batches of `batch_size`; each batch takes one SGD step (Nesterov,
/// weight decay on ω) on `−mean_i cos(softmax(Σ_e w_e v_e(x_i^a)), softmax(Σ_e w_e v_e(x_i^b)))`
/// (minus `λ·H` when `entropy_coef = λ ≠ 0`). After each epoch the weights are rounded to two
/// decimals; if any is below `stop_below` the loop stops (checked only at epoch ends, as there).
///
/// Each `fit*` call starts from uniform weights and a fresh momentum buffer, as the official
/// scripts do for each test distribution.
#[derive(Clone, Debug)]
pub struct TestTimeAggregator {
    config: AggregatorConfig,
}

/// What one epoch did (one entry of [`Fit::trace`]).
#[derive(Clone, Debug, PartialEq)]
pub struct EpochTrace {
    /// 1-based epoch number.
    pub epoch: usize,
    /// SGD steps (batches) in this epoch.
    pub steps: usize,
    /// Sample-weighted mean of the batch losses, each measured before its step.
    pub mean_loss: f64,
    /// Sample-weighted mean of the batch-mean cosine similarities (the official loss meter).
    pub mean_cosine: f64,
    /// Sample-weighted mean of the batch entropies `H`.
    pub mean_entropy: f64,
    /// `softmax(ω)` after the epoch.
    pub weights: Vec<f64>,
    /// The weights rounded to 2 decimals, which the stop rule reads.
    pub rounded_weights: Vec<f64>,
    /// Whether the early-stop rule fired after this epoch.
    pub stopped: bool,
}

/// The result of [`TestTimeAggregator::fit`] / [`TestTimeAggregator::fit_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// The learned weights `softmax(ω)`, one per expert, summing to 1.
    pub weights: Vec<f64>,
    /// The learned ω.
    pub omega: Vec<f64>,
    /// One entry per epoch run.
    pub trace: Vec<EpochTrace>,
    /// Whether training ended by the early-stop rule rather than `max_epochs`.
    pub stopped_early: bool,
}

impl Fit {
    /// Aggregated logits `Σ_e w_e v_e` of `[E, B, C]` logits (the clean, un-augmented view) → `[B, C]`.
    pub fn predict(&self, logits: &Tensor) -> Result<Tensor> {
        combine::weighted_logits(logits, &self.weights)
    }
}

impl TestTimeAggregator {
    /// Validates `config`.
    pub fn new(config: AggregatorConfig) -> Result<Self> {
        Ok(Self {
            config: config.check()?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AggregatorConfig {
        &self.config
    }

    /// Learns the weights from precomputed logits of the whole unlabeled set.
    ///
    /// `view_a`, `view_b`: `[E, N, C]` logits of two independent augmentations of the same `N`
    /// samples (same order). Batches are gathered along axis 1 on the tensors' device.
    pub fn fit(&self, view_a: &Tensor, view_b: &Tensor) -> Result<Fit> {
        let (_, n, _) = check::views(view_a, view_b)?;
        check::finite("view a", view_a)?;
        check::finite("view b", view_b)?;
        let dtype = check::compute_dtype("view a", view_a)?;
        let (a, b) = (view_a.to_dtype(dtype)?, view_b.to_dtype(dtype)?);
        self.run(n, false, |_, _, idx| {
            let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            let ids = Tensor::from_vec(ids, idx.len(), a.device())?;
            Ok((a.index_select(&ids, 1)?, b.index_select(&ids, 1)?))
        })
    }

    /// Learns the weights from logits computed on demand, e.g. by running a model on two fresh
    /// augmentations of each requested sample.
    ///
    /// `num_samples`: size `N` of the unlabeled set. `batch(indices)` returns the two views'
    /// logits `[E, indices.len(), C]` for those sample indices (in that order); its error is
    /// wrapped in [`AggregateError::Source`]. `E` and `C` must not change between batches.
    pub fn fit_with<F, E>(&self, num_samples: usize, mut batch: F) -> Result<Fit>
    where
        F: FnMut(&[usize]) -> std::result::Result<(Tensor, Tensor), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.run(num_samples, true, |epoch, index, idx| {
            batch(idx).map_err(|e| AggregateError::Source {
                epoch,
                batch: index,
                source: e.into(),
            })
        })
    }

    /// The epoch loop. `source(epoch, batch, indices)` yields one batch of views; when
    /// `check_batches` is set every batch is also checked for non-finite values.
    fn run<F>(&self, n: usize, check_batches: bool, mut source: F) -> Result<Fit>
    where
        F: FnMut(usize, usize, &[usize]) -> Result<(Tensor, Tensor)>,
    {
        if n == 0 {
            return Err(AggregateError::NoSamples);
        }
        let cfg = &self.config;
        let mut rng = SplitMix64::new(cfg.seed);
        let mut learner: Option<(Learner, usize)> = None;
        let mut trace = Vec::with_capacity(cfg.max_epochs);
        for epoch in 1..=cfg.max_epochs {
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            let (mut loss, mut cosine, mut entropy, mut steps) = (0.0, 0.0, 0.0, 0);
            for (index, idx) in order.chunks(cfg.batch_size).enumerate() {
                let (a, b) = source(epoch, index, idx)?;
                let (e, bsz, c) =
                    check::views(&a, &b).map_err(|err| in_batch(err, epoch, index))?;
                let expected = match &learner {
                    Some((l, classes)) => vec![l.experts(), idx.len(), *classes],
                    None => vec![e, idx.len(), c],
                };
                if [e, bsz, c] != expected[..] {
                    return Err(AggregateError::ShapeMismatch {
                        what: format!("view a of batch {index} in epoch {epoch}"),
                        expected,
                        got: vec![e, bsz, c],
                    });
                }
                if check_batches {
                    check::finite(&format!("view a of batch {index} in epoch {epoch}"), &a)?;
                    check::finite(&format!("view b of batch {index} in epoch {epoch}"), &b)?;
                }
                let learner = match &mut learner {
                    Some((l, _)) => l,
                    None => {
                        &mut learner
                            .insert((Learner::new(e, cfg.sgd, cfg.entropy_coef)?, c))
                            .0
                    }
                };
                let dtype = check::compute_dtype("view a", &a)?;
                let v = learner.step(&a.to_dtype(dtype)?, &b.to_dtype(dtype)?)?;
                let w = bsz as f64;
                loss += v.loss * w;
                cosine += v.cosine * w;
                entropy += v.entropy * w;
                steps += 1;
            }
            let Some((l, _)) = learner.as_ref() else {
                return Err(AggregateError::NoSamples);
            };
            let weights = l.weights();
            let rounded_weights = round2(&weights);
            let stopped = cfg
                .stop_below
                .is_some_and(|t| rounded_weights.iter().any(|&r| r < t));
            let n = n as f64;
            trace.push(EpochTrace {
                epoch,
                steps,
                mean_loss: loss / n,
                mean_cosine: cosine / n,
                mean_entropy: entropy / n,
                weights,
                rounded_weights,
                stopped,
            });
            if stopped {
                break;
            }
        }
        let Some((l, _)) = learner else {
            return Err(AggregateError::NoSamples);
        };
        Ok(Fit {
            weights: l.weights(),
            omega: l.omega.clone(),
            stopped_early: trace.last().is_some_and(|t| t.stopped),
            trace,
        })
    }
}

/// Names the batch in a shape error raised by the generic view checks.
fn in_batch(err: AggregateError, epoch: usize, index: usize) -> AggregateError {
    match err {
        AggregateError::ViewMismatch { a, b } => AggregateError::ShapeMismatch {
            what: format!("view b of batch {index} in epoch {epoch}"),
            expected: a,
            got: b,
        },
        AggregateError::Rank {
            what,
            expected,
            layout,
            got,
        } => AggregateError::Rank {
            what: format!("{what} of batch {index} in epoch {epoch}"),
            expected,
            layout,
            got,
        },
        other => other,
    }
}
