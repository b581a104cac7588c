//! Test-time self-supervised aggregation of a multi-expert ensemble's logits (SADE).
//!
//! SADE (Zhang, Hooi, Hong, Feng, "Self-Supervised Aggregation of Diverse Experts for
//! Test-Agnostic Long-Tailed Recognition", NeurIPS 2022) trains experts skilled at different
//! label distributions, then, at test time and without labels, learns how much to trust each one
//! on the test set at hand: weights `w = softmax(ω)` that make the aggregated prediction
//! `softmax(Σ_e w_e v_e(x))` most stable across two augmentations of the same image. This crate
//! is that step alone, for **any** ensemble's logits (this workspace's models, or a PyTorch /
//! ONNX ensemble exported to safetensors). It depends only on `candle-core` and `thiserror`.
//!
//! Layout: per-expert logits are **`[E, B, C]`** (experts, samples, classes) everywhere;
//! [`experts_first`] converts from `[B, E, C]`.
//!
//! Main types:
//! - [`TestTimeAggregator`] with [`AggregatorConfig`] (presets in [`PRESETS`]): the official
//!   epoch-based procedure over a whole unlabeled set, from tensors ([`TestTimeAggregator::fit`])
//!   or a closure producing batches on demand ([`TestTimeAggregator::fit_with`]); returns a
//!   [`Fit`] with the weights and a per-epoch [`EpochTrace`].
//! - [`StreamingAggregator`]: one step per incoming batch, then its prediction.
//! - Plain combiners: [`mean_logits`], [`weighted_logits`], [`prior_corrected`].
//! - [`stability_loss`]: the objective itself; [`Sgd`]: the hand-written Nesterov SGD on ω.
//! - [`AggregateError`]: every failure, typed.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use longtail_aggregate::{mean_logits, AggregatorConfig, TestTimeAggregator};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two augmented views' logits of 64 unlabeled samples from 3 experts over 10 classes.
//! let dev = Device::Cpu;
//! let view_a = Tensor::randn(0f32, 3.0, (3, 64, 10), &dev)?;
//! let view_b = Tensor::randn(0f32, 3.0, (3, 64, 10), &dev)?;
//! let agg = TestTimeAggregator::new(AggregatorConfig { batch_size: 32, ..Default::default() })?;
//! let fit = agg.fit(&view_a, &view_b)?;
//! assert_eq!(fit.weights.len(), 3);
//! assert!((fit.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
//!
//! // Predict with the clean view's logits.
//! let plain = Tensor::randn(0f32, 3.0, (3, 64, 10), &dev)?;
//! let aggregated = fit.predict(&plain)?; // [64, 10]
//! let baseline = mean_logits(&plain)?; //   [64, 10]
//! assert_eq!(aggregated.dims(), baseline.dims());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod check;
mod combine;
mod config;
mod error;
mod fit;
mod learner;
mod objective;
mod rng;
mod sgd;
mod stream;

pub use check::SUM_TOLERANCE;
pub use combine::{
    batch_first, experts_first, mean_logits, predictions, prior_corrected, weighted_logits,
};
pub use config::{AggregatorConfig, Preset, StreamingConfig, PRESETS};
pub use error::{AggregateError, Result};
pub use fit::{EpochTrace, Fit, TestTimeAggregator};
pub use objective::{stability_loss, StabilityLoss, COSINE_EPS};
pub use sgd::{Sgd, TestTimeSgd};
pub use stream::StreamingAggregator;
