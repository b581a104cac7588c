//! TLC: trustworthy long-tailed classification with evidential experts.
//!
//! TLC (Li, Han, Li, Fu, Zhang, "Trustworthy Long-Tailed Classification", CVPR 2022,
//! arXiv 2111.09030) trains several experts, each an evidential classifier: its logits `z` give
//! Dirichlet evidence `e = exp(z)`, beliefs `b = e/S` and an uncertainty `u = K/S`. Experts are
//! evaluated in order and their uncertainties fused (Eq. 7) into `w_k`, the uncertainty left after
//! experts `0..k`. Each expert is trained with an LDAM-margin cross-entropy (class-balanced
//! re-weighting late in training), an annealed KL pull of its non-target evidence towards the
//! uniform Dirichlet, and a diversity term that pushes it away from the combined prediction; expert
//! `k` learns only from samples whose fused uncertainty `w_k` is high ("dynamic engagement"). The
//! combined prediction weights expert `k` by `exp(w_k/η)` (Eq. 8). This crate follows the official
//! `lblaoke/TLC` at `204f50b` (docs/tlc.md) and marks where it departs. It is the whole method,
//! read top to bottom: loss, fusion, early exit, the method the engine trains, the presets and
//! the uncertainty report.
//!
//! Main items, all on plain tensors (expert logits `[B, E, C]`, targets `[B]`):
//! - [`special::lgamma`], [`special::digamma`]: differentiable `lnΓ`, `ψ` (candle has neither).
//! - [`evidence::opinions`]: beliefs and uncertainty per expert.
//! - [`fusion::fused_uncertainty`], [`fusion::Combination`], [`fusion::fuse`]: `w` `[E+1, B]` and
//!   the combined logits, official (batch-normalised) or per-sample (default).
//! - [`loss::TlcLoss`]: the training loss with `begin_epoch`; matches the official loss and its
//!   gradient (fixture `tlc_loss_c10`).
//! - [`early_exit::predict_early_exit`]: inference that stops calling experts for confident samples.
//! - [`Tlc`] (the registry entry) and [`TlcMethod`]; the settings are [`TlcSettings`].
//! - [`presets`]: official recipes as typed run configs, and a short Fashion-MNIST-LT one.
//! - [`report`]: the uncertainty report of any checkpoint (`longtail eval --uncertainty`), with
//!   TLC's own score, both combinations and the early-exit curve for TLC runs. The metrics
//!   themselves (failure AUROC, FPR@95, ECE, AURC, OOD AUROC) live in
//!   `longtail_metrics::uncertainty`.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use longtail_tlc::{fuse, Combination, TlcLoss, TlcLossConfig};
//! # fn main() -> Result<(), longtail_tlc::TlcError> {
//! let logits = Tensor::new(&[[[2.0f32, -1.0], [0.5, 0.0]], [[-1.0, 1.0], [0.0, 3.0]]], &Device::Cpu)?;
//! let fusion = fuse(&logits, Combination::default())?; // w [3, 2], output [2, 2]
//! let mut loss = TlcLoss::new(TlcLossConfig::cifar(), &[100, 10])?;
//! loss.begin_epoch(1)?;
//! let out = loss.forward(&logits, &Tensor::new(&[0u32, 1], &Device::Cpu)?)?;
//! assert!(out.loss.to_scalar::<f32>()?.is_finite());
//! assert_eq!(fusion.w.dims(), &[3, 2]);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod early_exit;
mod error;
pub mod evidence;
pub mod fusion;
pub mod loss;
mod method;
pub mod presets;
pub mod report;
pub mod special;

pub use early_exit::{predict_early_exit, EarlyExit, EarlyExitOutput, ExpertForward};
pub use error::{Result, TlcError};
pub use evidence::{opinions, Opinion};
pub use fusion::{fuse, fused_uncertainty, Combination, Fusion};
pub use loss::{Engagement, TlcLoss, TlcLossConfig, TlcLossOutput};
pub use method::{Tlc, TlcMethod, TlcSettings};
pub use presets::PRESETS;
