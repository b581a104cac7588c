//! RIDE: Routing Diverse Distribution-Aware Experts (Wang, Lian, Miao, Liu, Yu, ICLR 2021).
//!
//! RIDE trains several experts that share the early layers of a ResNet and own the last ones.
//! Each expert is trained with its own LDAM-DRW classification loss (class-dependent margins,
//! then "effective number" class weights late in training), and a *diversity* term pushes each
//! expert's tempered softmax away from the (detached) ensemble mean, with per-class temperatures
//! that are sharper for tail classes. The ensemble predicts with the mean of the expert logits.
//! This crate owns the loss and the official training recipes, as implemented in
//! `frank-xwang/RIDE-LongTailRecognition` at `ab8be5c` (see `shared/specs/ride.md`).
//!
//! Main items:
//! - [`RideLoss`] (built from a [`RideLossConfig`]): the RIDE loss on `[B, E, C]` expert logits,
//!   with [`RideLoss::begin_epoch`] switching re-weighting on after `reweight_epoch`.
//! - [`ldam_ce`] and [`ldam_margins`], [`drw_weights`], [`diversity_temperatures`]: the single-model
//!   LDAM-DRW loss and the constants derived from the class counts.
//! - [`ExpertRouter`] (stage 2, from a [`RouterConfig`]): the expert-assignment head that lets a
//!   sample skip the experts it does not need, its loss and the routed prediction.
//! - [`presets`]: the official recipes ([`presets::PRESETS`], [`presets::preset`]).
//! - [`RideError`]: what can go wrong when building any of these.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use longtail_ride::{RideLoss, RideLossConfig};
//!
//! let dev = Device::Cpu;
//! let mut loss = RideLoss::new(&RideLossConfig::default(), &[50, 20, 5], &dev)?;
//! loss.begin_epoch(1);
//! let logits = Tensor::zeros((2, 3, 3), candle_core::DType::F32, &dev)?; // [B, E, C]
//! let targets = Tensor::new(&[0u32, 2], &dev)?;
//! let value = loss.forward(&logits, &targets)?.to_scalar::<f32>()?;
//! assert!(value.is_finite());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod error;
mod loss;
pub mod presets;
mod router;

pub use error::RideError;
pub use loss::{
    diversity_temperatures, drw_weights, ldam_ce, ldam_margins, RideLoss, RideLossConfig,
};
pub use router::{ExpertRouter, Routed, RouterConfig, ROUTER_HIDDEN};
