//! RIDE: Routing Diverse Distribution-Aware Experts (Wang, Lian, Miao, Liu, Yu, ICLR 2021).
//!
//! RIDE trains several experts that share the early layers of a ResNet and own the last ones.
//! Each expert is trained with its own LDAM-DRW classification loss (class-dependent margins,
//! then "effective number" class weights late in training), and a *diversity* term pushes each
//! expert's tempered softmax away from the (detached) ensemble mean, with per-class temperatures
//! that are sharper for tail classes. The ensemble predicts with the mean of the expert logits.
//! This crate is the whole method, read top to bottom: the loss, the method the engine trains,
//! the official recipes, and stage 2 (the expert-assignment router and its training), as
//! implemented in `frank-xwang/RIDE-LongTailRecognition` at `ab8be5c` (docs/ride.md).
//!
//! Main items:
//! - [`RideLoss`] (built from a [`RideLossConfig`]): the RIDE loss on `[B, E, C]` expert logits,
//!   with [`RideLoss::begin_epoch`] switching re-weighting on after `reweight_epoch`.
//! - [`ldam_ce`] and [`ldam_margins`], [`drw_weights`], [`diversity_temperatures`]: the single-model
//!   LDAM-DRW loss and the constants derived from the class counts.
//! - [`ExpertRouter`] (stage 2, from a [`RouterConfig`]): the expert-assignment head that lets a
//!   sample skip the experts it does not need, its loss and the routed prediction.
//! - [`Ride`] (the registry entry, a `MethodKind`) and [`RideMethod`] (the engine's `Method`).
//! - [`presets`]: the official recipes as typed run configs ([`presets::PRESETS`]).
//! - [`stage2`]: training the router on a finished run ([`stage2::train_router`]), saving and
//!   loading it, and the routed evaluation ([`stage2::evaluate_routed`]).
//! - [`distill`]: the optional distillation from a finished 6-expert teacher ([`DistillConfig`],
//!   the `[method.distill]` table; [`distill_kl`]; [`Teacher`]).
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

pub mod distill;
mod error;
mod loss;
mod method;
pub mod presets;
mod router;
pub mod stage2;

pub use distill::{distill_kl, DistillConfig, Teacher};
pub use error::RideError;
pub use longtail_losses::{diversity_temperatures, drw_weights, ldam_margins};
pub use loss::{ldam_ce, RideLoss, RideLossConfig};
pub use method::{Ride, RideMethod};
pub use router::{ExpertRouter, Routed, RouterConfig, ROUTER_HIDDEN};
