//! Multi-expert ResNet backbones for long-tailed recognition.

use candle_core::Tensor;

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
