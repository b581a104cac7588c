//! Multi-expert ResNet backbones for long-tailed recognition (RIDE, SADE, TLC).
//!
//! One idea: the network that turns images into per-expert logits and features, built so that
//! its parameters carry the official PyTorch state-dict names and reproduce the official
//! forward passes (checked against `fixtures/official`).
//!
//! Main types:
//! - [`BackboneConfig`] (serde, validated by [`BackboneConfig::check`]): architecture
//!   ([`Arch`]: CIFAR ResNet-32, ResNet-50, ResNeXt-50), which stages are shared ([`Layout`]),
//!   experts, classes, widths, cosine classifier;
//! - [`MultiExpert`]: `new(&cfg, vb)`, `forward_t(xs, train)` → [`ExpertOutput`],
//!   `forward_experts`, and `forward_trunk` + `forward_expert` for early exit; `macs` counts
//!   multiply-accumulates ([`MacCount`]);
//! - [`load_weights`] / [`load_weights_file`]: strict copy of an official state dict into a
//!   `VarMap`; [`init_weights`]: seeded initialisation (candle's CPU RNG cannot be seeded);
//!   [`trainable_vars`]: every Var except BN running statistics;
//! - [`ops`]: the single switch between convolution / batch-norm implementations.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use longtail_backbone::{BackboneConfig, Blocks, MultiExpert};
//!
//! // RIDE layout, 3 experts, 10 classes, ResNet-8 depth for a quick example.
//! let cfg = BackboneConfig { blocks_per_stage: Some(Blocks::Uniform(1)), ..BackboneConfig::ride_cifar(3, 10) };
//! let (_varmap, net) = MultiExpert::seeded(&cfg, 7, &Device::Cpu)?;
//! let xs = Tensor::zeros((2, 3, 16, 16), candle_core::DType::F32, &Device::Cpu)?;
//! // Inference on detached weights: no autograd graph is kept (candle has no `no_grad`).
//! let out = net.detached()?.forward_t(&xs, false)?;
//! assert_eq!(out.expert_logits.dims(), &[2, 3, 10]);
//! assert_eq!(out.features.dims(), &[2, 3, 48]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

use candle_core::Tensor;

mod config;
mod error;
mod layers;
mod model;
pub mod ops;
mod weights;

pub use config::{Arch, BackboneConfig, Blocks, Layout};
pub use error::{BackboneError, Result, ShapeMismatch};
pub use model::{BranchOutput, MacCount, MultiExpert};
pub use ops::Kernels;
pub use weights::{
    init_weights, is_trainable, load_weights, load_weights_file, num_trainable_params,
    trainable_vars, LoadReport, DATA_PARALLEL_PREFIX,
};

/// What a multi-expert forward pass returns.
#[derive(Debug, Clone)]
pub struct ExpertOutput {
    /// Per-expert logits `[B, E, C]` (already multiplied by the cosine scale s).
    pub expert_logits: Tensor,
    /// Mean of the expert logits `[B, C]`: the ensemble's output in RIDE and SADE.
    pub logits: Tensor,
    /// Per-expert pooled features that feed each classifier `[B, E, D]`.
    pub features: Tensor,
}
