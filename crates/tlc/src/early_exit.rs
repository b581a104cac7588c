//! Early exit at inference: stop calling experts for a sample once its fused uncertainty is low.
//!
//! The paper motivates dynamic engagement with compute saving at test time; the official code
//! (docs/tlc.md §3.3) always runs every expert, and its only rule is batch-relative
//! (`w_k / max_batch w_k > τ`). Here the rule is an **absolute** threshold on the fused
//! uncertainty `w_{k+1}` of experts `0..=k` (Eq. 7), so whether a sample exits depends on that
//! sample alone: after expert `k`, a sample with `w_{k+1} < threshold` calls no further expert.
//!
//! The prediction of a sample that used experts `0..=k` is the batch-independent
//! [`Combination::PerSample`](crate::fusion::Combination::PerSample) over those experts,
//! `x = Σ_{j≤k} a_j z_j` with `a_j ∝ exp(w_j/η)`. With a threshold of 0 no sample exits and the
//! result equals the full per-sample combination.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TlcError};

/// Computes one expert's logits for a subset of the batch: the model supplies this.
pub trait ExpertForward {
    /// Logits `[n, C]` of expert `expert` for the samples at `indices` (ascending positions in
    /// the batch, `n = indices.len() ≥ 1`).
    fn forward_expert(&mut self, expert: usize, indices: &[u32]) -> Result<Tensor>;
}

impl<F> ExpertForward for F
where
    F: FnMut(usize, &[u32]) -> Result<Tensor>,
{
    fn forward_expert(&mut self, expert: usize, indices: &[u32]) -> Result<Tensor> {
        self(expert, indices)
    }
}

/// Early-exit settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyExit {
    /// A sample stops once its fused uncertainty `w` falls below this (absolute, in `(0, 1]`
    /// for a useful rule; 0 never exits, above 1 always stops after expert 0).
    pub threshold: f64,
    /// Combination temperature η (0.2 CIFAR, 0.5 ImageNet).
    pub eta: f64,
}

/// Result of [`predict_early_exit`].
#[derive(Debug, Clone)]
pub struct EarlyExitOutput {
    /// Predicted class per sample.
    pub predictions: Vec<u32>,
    /// Number of experts evaluated per sample (`1..=E`).
    pub experts_used: Vec<usize>,
    /// Fused uncertainty `w` after the last expert used, per sample.
    pub uncertainty: Vec<f64>,
    /// Combined logits `[B, C]` (`f64`, CPU), the per-sample combination of the experts used.
    pub logits: Tensor,
}

impl EarlyExitOutput {
    /// Mean number of experts evaluated per sample.
    pub fn mean_experts(&self) -> f64 {
        self.experts_used.iter().sum::<usize>() as f64 / self.experts_used.len().max(1) as f64
    }
}

struct SampleState {
    w: f64,
    prev_u: f64,
    prev_b: Vec<f64>,
    numerator: Vec<f64>,
    denominator: f64,
    used: usize,
}

/// Runs up to `experts` experts over a batch of `batch` samples, calling `forward` only for the
/// samples still active, and returns per-sample predictions and the experts each one used.
pub fn predict_early_exit<F: ExpertForward + ?Sized>(
    forward: &mut F,
    batch: usize,
    experts: usize,
    cfg: EarlyExit,
) -> Result<EarlyExitOutput> {
    if !(cfg.eta.is_finite() && cfg.eta > 0.0) {
        return Err(TlcError::InvalidConfig {
            name: "eta",
            value: cfg.eta,
            reason: "must be finite and > 0",
        });
    }
    if cfg.threshold.is_nan() {
        return Err(TlcError::InvalidConfig {
            name: "threshold",
            value: cfg.threshold,
            reason: "must not be NaN",
        });
    }
    if batch == 0 || experts == 0 {
        return Err(TlcError::LogitsShape {
            shape: vec![batch, experts, 0],
        });
    }
    let mut classes = None;
    let mut states: Vec<SampleState> = (0..batch)
        .map(|_| SampleState {
            w: 1.0,
            prev_u: 1.0,
            prev_b: Vec::new(),
            numerator: Vec::new(),
            denominator: 0.0,
            used: 0,
        })
        .collect();
    let mut active: Vec<u32> = (0..batch as u32).collect();
    for k in 0..experts {
        if active.is_empty() {
            break;
        }
        let z = forward.forward_expert(k, &active)?;
        let c = *classes.get_or_insert(z.dims().get(1).copied().unwrap_or(0));
        if z.dims() != [active.len(), c] || c == 0 {
            return Err(TlcError::ExpertOutputShape {
                expert: k,
                got: z.dims().to_vec(),
                want: vec![active.len(), c.max(1)],
            });
        }
        let rows = z.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let ln_k = (c as f64).ln();
        let mut still = Vec::with_capacity(active.len());
        for (&idx, z) in active.iter().zip(&rows) {
            let s = &mut states[idx as usize];
            if s.numerator.is_empty() {
                s.numerator = vec![0.0; c];
            }
            // Weight of expert k: exp((w_k − 1)/η) ∝ exp(w_k/η), bounded since w_k ≤ w_0 = 1.
            let a = ((s.w - 1.0) / cfg.eta).exp();
            for (acc, &zc) in s.numerator.iter_mut().zip(z) {
                *acc += a * zc;
            }
            s.denominator += a;
            // Opinion of expert k in log space: ln S = logsumexp(z, ln K).
            let m = z.iter().cloned().fold(ln_k, f64::max);
            let log_s = m + (z.iter().map(|v| (v - m).exp()).sum::<f64>() + (ln_k - m).exp()).ln();
            let u = (ln_k - log_s).exp();
            let b: Vec<f64> = z.iter().map(|v| (v - log_s).exp()).collect();
            let one_minus_conflict = if k == 0 {
                1.0
            } else {
                let agree: f64 = s.prev_b.iter().zip(&b).map(|(p, q)| p * q).sum();
                s.prev_u + u - s.prev_u * u + agree
            };
            s.w *= u / one_minus_conflict;
            s.prev_u = u;
            s.prev_b = b;
            s.used = k + 1;
            let exits = s.w < cfg.threshold;
            if !exits {
                still.push(idx);
            }
        }
        active = still;
    }
    let c = classes.unwrap_or(0);
    let mut logits = Vec::with_capacity(batch * c);
    let mut predictions = Vec::with_capacity(batch);
    for s in &states {
        let row: Vec<f64> = s.numerator.iter().map(|v| v / s.denominator).collect();
        let best = row
            .iter()
            .enumerate()
            .fold((0usize, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0;
        predictions.push(best as u32);
        logits.extend(row);
    }
    Ok(EarlyExitOutput {
        predictions,
        experts_used: states.iter().map(|s| s.used).collect(),
        uncertainty: states.iter().map(|s| s.w).collect(),
        logits: Tensor::from_vec(logits, (batch, c), &Device::Cpu)?,
    })
}
