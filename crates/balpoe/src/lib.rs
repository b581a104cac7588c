//! BalPoE: Balanced Product of Calibrated Experts (Sanchez Aimar, Jonnarth, Felsberg, Kuhlmann,
//! CVPR 2023), as implemented in `emasa/BalPoE-CalibratedLT` at `ca607ae` (docs/balpoe.md).
//!
//! Each of `E` experts on a shared trunk is trained with a logit-adjusted cross-entropy whose
//! bias is `τ_e·log π` (π the training prior): τ = 0 fits the long-tailed training
//! distribution, τ = 1 the uniform one (balanced softmax), τ = 2 the inverse one. The experts'
//! raw logits are averaged — a product of experts — which carries the mean bias `τ̄·log π` and
//! so is unbiased for a uniform test set when τ̄ = 1; adding `log q` targets a known test prior
//! `q`. Mixup (the engine's `[optim] mixup_alpha`, `longtail_train::mixup`) calibrates the
//! experts and is on in every official recipe.
//!
//! Main items:
//! - [`BalPoeLoss`]: the loss `(1/E)·Σ_e CE(z_e + τ_e·log(π + ε), y)`, with the biases,
//!   τ̄ and the residual bias `(1 − τ̄)·log π`.
//! - [`product_of_experts`] and [`with_test_prior`]: the balanced and the known-prior
//!   predictions.
//! - [`BalPoeSettings`] (the `[method]` table; [`tau_limits`] spaces the τ) and [`BalPoe`]
//!   (the registry entry, a `MethodKind`) with [`BalPoeMethod`] (the engine's `Method`).
//! - [`presets`]: the official recipes as typed run configs ([`presets::PRESETS`]).
//! - [`BalPoeError`]: what can go wrong.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use longtail_balpoe::BalPoeLoss;
//!
//! let dev = Device::Cpu;
//! // docs/balpoe.md §7 item 2: counts [8, 4, 2, 2], τ 0/1/2, every logit 0, label 3.
//! let loss = BalPoeLoss::new(&[0.0, 1.0, 2.0], &[8, 4, 2, 2], &dev)?;
//! let z = Tensor::zeros((1, 3, 4), DType::F32, &dev)?; // [B, E, C]
//! let y = Tensor::new(&[3u32], &dev)?;
//! let l = loss.forward(&z, &y)?.to_scalar::<f32>()?;
//! assert!((l - 2.185593).abs() < 1e-5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod error;
mod loss;
mod method;
pub mod presets;

pub use error::BalPoeError;
pub use loss::{
    product_of_experts, tau_limits, with_test_prior, BalPoeLoss, BalPoeSettings, PRIOR_EPS,
};
pub use method::{BalPoe, BalPoeMethod};
