//! SADE: Self-Supervised Aggregation of Diverse Experts (Zhang, Hooi, Hong, Feng, NeurIPS 2022;
//! earlier "TADE", arXiv 2107.09249).
//!
//! SADE trains three experts on a shared trunk, each for a different class distribution: a
//! *forward* expert with plain softmax cross-entropy (fits the long-tailed training
//! distribution), a *uniform* expert with balanced softmax (logits + log prior), and a
//! *backward* expert with an inverse softmax that targets an inversely long-tailed
//! distribution (logits + log π − τ·log π̄, where π̄ mirrors the prior by rank). At test time,
//! the expert weights are learned on the unlabeled test set by maximising prediction stability
//! between two augmented views (that part lives in the `aggregate` crate). This crate owns the
//! whole method, read top to bottom: the training loss, the method the engine trains, the
//! official recipes, the strong augmentation of the test-time views and the test-agnostic
//! evaluation protocol ([`shift`]), as implemented in `Vanint/SADE-AgnosticLT` at `cba11b8`
//! (docs/sade.md).
//!
//! Main items:
//! - [`SadeLoss`]: the summed three-expert loss on `[B, 3, C]` logits.
//! - [`inverse_prior`]: the rank-mirrored prior π̄, with a deterministic tie-break.
//! - [`Sade`] (the registry entry) and [`SadeMethod`]; its settings are [`SadeSettings`].
//! - [`presets`]: the official recipes as typed run configs, with the test-time settings.
//! - [`shift`]: evaluation under label shift, plain averaging vs test-time aggregation.
//! - [`StrongAugment`] / [`StrongViews`]: the strong augmentation of the two test-time views
//!   (crop, colour jitter, grayscale, blur, flip), deterministic per `(seed, view, sample)`.
//! - [`SadeError`]: what can go wrong when building any of these.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use longtail_sade::{SadeLoss, SadeLossConfig};
//!
//! let dev = Device::Cpu;
//! let loss = SadeLoss::new(&SadeLossConfig { tau: 2.0 }, &[50, 20, 5], &dev)?;
//! let logits = Tensor::zeros((2, 3, 3), DType::F32, &dev)?; // [B, 3 experts, C]
//! let targets = Tensor::new(&[0u32, 2], &dev)?;
//! let value = loss.forward(&logits, &targets)?.to_scalar::<f32>()?;
//! assert!(value.is_finite());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod augment;
mod error;
mod loss;
mod method;
pub mod presets;
pub mod shift;

pub use augment::{view_seed, ColorJitter, StrongAugment, StrongCrop, StrongViews};
pub use error::SadeError;
pub use loss::{inverse_prior, SadeLoss, SadeLossConfig, PRIOR_EPS};
pub use method::{Sade, SadeMethod, SadeSettings};
