//! The TLC training loss (docs/tlc.md §2.2 and §3.3).

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TlcError};
use crate::evidence::logits_dims;
use crate::fusion::{fuse, Combination, Fusion};
use crate::special::{digamma, lgamma};

/// How each expert's per-sample losses are reduced, i.e. dynamic expert engagement (docs/tlc.md §3.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engagement {
    /// `L_k = Σ_b m_kb l_kb / Σ_b m_kb` with `m_kb = w_k[b] / max_b' w_k[b'] > τ`: expert `k`
    /// learns only from samples the experts before it are unsure about. This is `lblaoke/TLC`
    /// HEAD `204f50b` (2024-01-25), the fix of issue #10, and what the parity fixture was made with.
    #[default]
    Masked,
    /// Masked mean **plus** the full-batch mean, `L_k = masked + mean_b l_kb`: the double counting
    /// of engaged samples that the official code had from 2022-03-25 to 2024-01-24 (issue #10,
    /// "a typo"). Only for reproducing results obtained with that code.
    MaskedPlusFullIssue10,
    /// No engagement, `L_k = mean_b l_kb`: the first release `9379e9e`.
    Full,
}

/// Hyper-parameters of [`TlcLoss`], defaults from `lblaoke/TLC` `model/loss.py` and the CIFAR configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlcLossConfig {
    /// Largest LDAM margin (tail class), `max_m` = 0.5.
    pub max_margin: f64,
    /// Scale the margin is multiplied by (LDAM `s`, hard-coded 30 officially).
    pub margin_scale: f64,
    /// Last epoch without re-weighting; DRW weights, per-class diversity temperatures and `T̄²`
    /// switch on when the 1-based epoch exceeds it (160 CIFAR, 80 ImageNet).
    pub reweight_epoch: usize,
    /// `reweight_factor` f: 0.05 CIFAR, 0.02 ImageNet. Used in the diversity temperature and `T`.
    pub reweight_factor: f64,
    /// `annealing` = 500: the KL coefficient is `epoch / T`, `T = (reweight_epoch + annealing) / f`.
    pub annealing: f64,
    /// Engagement threshold τ = 0.54 on `w_k / max_batch w_k`.
    pub tau: f64,
    /// β of the class-balanced ("effective number") DRW weights, 0.9999.
    pub drw_beta: f64,
    /// Coefficient of the (subtracted) diversity term, hard-coded 0.01 officially.
    pub diversity_factor: f64,
    /// How expert losses are reduced over the batch.
    pub engagement: Engagement,
    /// Combination used for the diversity target `softmax(x / T)` when [`TlcLoss::forward`]
    /// computes the fusion itself. Use the same combination as the model's prediction.
    pub combination: Combination,
}

impl Default for TlcLossConfig {
    fn default() -> Self {
        Self::cifar()
    }
}

impl TlcLossConfig {
    /// CIFAR-10/100-LT settings: reweight_epoch 160, f = 0.05, η = 0.2 (so `T` = 13200).
    pub fn cifar() -> Self {
        Self {
            max_margin: 0.5,
            margin_scale: 30.0,
            reweight_epoch: 160,
            reweight_factor: 0.05,
            annealing: 500.0,
            tau: 0.54,
            drw_beta: 0.9999,
            diversity_factor: 0.01,
            engagement: Engagement::Masked,
            combination: Combination::PerSample { eta: 0.2 },
        }
    }

    /// ImageNet-LT settings: reweight_epoch 80, f = 0.02, η = 0.5 (so `T` = 29000).
    pub fn imagenet() -> Self {
        Self {
            reweight_epoch: 80,
            reweight_factor: 0.02,
            combination: Combination::PerSample { eta: 0.5 },
            ..Self::cifar()
        }
    }

    /// The official settings with the official batch-normalised combination for the diversity
    /// target (what the parity fixture was produced with).
    pub fn official(mut self) -> Self {
        self.combination = Combination::Official {
            eta: self.combination.eta(),
        };
        self
    }

    /// KL annealing denominator `T = (reweight_epoch + annealing) / reweight_factor`.
    pub fn annealing_period(&self) -> f64 {
        (self.reweight_epoch as f64 + self.annealing) / self.reweight_factor
    }

    /// Checks every value is in range.
    pub fn check(&self) -> Result<()> {
        let bad = |name, value, reason| {
            Err(TlcError::InvalidConfig {
                name,
                value,
                reason,
            })
        };
        if !(self.max_margin.is_finite() && self.max_margin >= 0.0) {
            return bad("max_margin", self.max_margin, "must be finite and >= 0");
        }
        if !(self.margin_scale.is_finite() && self.margin_scale >= 0.0) {
            return bad("margin_scale", self.margin_scale, "must be finite and >= 0");
        }
        if !(self.reweight_factor.is_finite()
            && self.reweight_factor > 0.0
            && self.reweight_factor <= 1.0)
        {
            return bad("reweight_factor", self.reweight_factor, "must be in (0, 1]");
        }
        if !(self.annealing.is_finite() && self.annealing >= 0.0) {
            return bad("annealing", self.annealing, "must be finite and >= 0");
        }
        if self.annealing_period() <= 0.0 {
            return bad(
                "annealing",
                self.annealing,
                "reweight_epoch + annealing must be > 0",
            );
        }
        if !(self.tau.is_finite() && (0.0..1.0).contains(&self.tau)) {
            return bad("tau", self.tau, "must be in [0, 1)");
        }
        if !(self.drw_beta.is_finite() && self.drw_beta > 0.0 && self.drw_beta < 1.0) {
            return bad("drw_beta", self.drw_beta, "must be in (0, 1)");
        }
        if !self.diversity_factor.is_finite() {
            return bad("diversity_factor", self.diversity_factor, "must be finite");
        }
        self.combination.check()?;
        Ok(())
    }
}

/// What [`TlcLoss`] returns for one batch.
#[derive(Debug, Clone)]
pub struct TlcLossOutput {
    /// Total loss `Σ_k L_k`, a scalar in the logits' dtype, differentiable w.r.t. the logits.
    pub loss: Tensor,
    /// Per-expert losses `L_k` `[E]` (same graph as `loss`).
    pub per_expert: Tensor,
    /// Engagement mask `[E, B]` (u8): 1 where expert `k` learns from sample `b`.
    pub engaged: Tensor,
    /// The fusion the loss used (`w` for the mask, `output` for the diversity target).
    pub fusion: Fusion,
}

/// TLC's per-expert evidential loss with dynamic engagement (`lblaoke/TLC` `model/loss.py`
/// `TLCLoss`, HEAD `204f50b`; docs/tlc.md §2.2, §3.3).
///
/// For expert `k`, sample with label `y`, logits `z` (already ×30):
/// `l = −ω_y log softmax(z − 30·m ⊙ onehot_y)_y` (LDAM-margin CE, DRW weights `ω` after
/// `reweight_epoch`) `+ (epoch / T) · KL(Dir(α̃) ‖ Dir(1))` with `α̃ = 1 + (1 − onehot_y) ⊙ exp(z)`
/// (target class removed, un-margined logits) `− 0.01 · T̄² · KL(softmax(x/T_c) ‖ softmax(z/T_c))`
/// with `x` the detached combined output. `L_k` averages `l` over engaged samples and the loss is
/// `Σ_k L_k` (a sum over experts, not a mean).
///
/// Differs from official (numerics only): everything is evaluated in `f64` and the result cast
/// back to the logits' dtype (gradients flow back through the cast). Official `f32` gives NaN at
/// full-scale logits (spec pitfall 14); on the tempered fixture `f64` agrees with official `f32`
/// to 3e-7 (loss) and 1.1e-6 (gradient). If no sample of a batch is engaged for an expert (only
/// possible when `w_k` underflows to 0), its `L_k` is 0 instead of NaN.
#[derive(Debug, Clone)]
pub struct TlcLoss {
    cfg: TlcLossConfig,
    class_counts: Vec<usize>,
    margins: Vec<f64>,
    drw_weights: Vec<f64>,
    diversity_temperature: Vec<f64>,
    epoch: Option<usize>,
}

impl TlcLoss {
    /// Builds the loss for a training set with `class_counts[c]` images of class `c`.
    pub fn new(cfg: TlcLossConfig, class_counts: &[usize]) -> Result<Self> {
        cfg.check()?;
        if class_counts.is_empty() {
            return Err(TlcError::ClassCounts { got: 0, classes: 0 });
        }
        if let Some(class) = class_counts.iter().position(|&n| n == 0) {
            return Err(TlcError::EmptyClass { class });
        }
        // The same per-class constants as RIDE's (docs/tlc.md §2.2), with T_base = 1.
        let margins = longtail_losses::ldam_margins(class_counts, cfg.max_margin)?;
        let drw_weights = longtail_losses::drw_weights(class_counts, cfg.drw_beta)?;
        let diversity_temperature =
            longtail_losses::diversity_temperatures(class_counts, 1.0, cfg.reweight_factor)?;
        Ok(Self {
            cfg,
            class_counts: class_counts.to_vec(),
            margins,
            drw_weights,
            diversity_temperature,
            epoch: None,
        })
    }

    /// Sets the 1-based training epoch (the official `_hook_before_epoch`, called once per epoch).
    pub fn begin_epoch(&mut self, epoch: usize) -> Result<()> {
        if epoch == 0 {
            return Err(TlcError::ZeroEpoch);
        }
        self.epoch = Some(epoch);
        Ok(())
    }

    /// The current epoch, if [`begin_epoch`](Self::begin_epoch) was called.
    pub fn epoch(&self) -> Option<usize> {
        self.epoch
    }

    /// The configuration.
    pub fn config(&self) -> &TlcLossConfig {
        &self.cfg
    }

    /// The class counts the loss was built with.
    pub fn class_counts(&self) -> &[usize] {
        &self.class_counts
    }

    /// LDAM margins `m_c` (before the ×30 scale).
    pub fn margins(&self) -> &[f64] {
        &self.margins
    }

    /// Class-balanced DRW weights (used when the epoch exceeds `reweight_epoch`).
    pub fn drw_weights(&self) -> &[f64] {
        &self.drw_weights
    }

    /// Per-class diversity temperatures `T_c` (used when the epoch exceeds `reweight_epoch`).
    pub fn diversity_temperatures(&self) -> &[f64] {
        &self.diversity_temperature
    }

    /// Whether re-weighting (DRW, per-class temperature) is on at the current epoch.
    pub fn reweighting(&self) -> Result<bool> {
        let epoch = self.epoch.ok_or(TlcError::EpochNotStarted)?;
        Ok(epoch > self.cfg.reweight_epoch)
    }

    /// KL coefficient `epoch / T` at the current epoch.
    pub fn kl_coefficient(&self) -> Result<f64> {
        let epoch = self.epoch.ok_or(TlcError::EpochNotStarted)?;
        Ok(epoch as f64 / self.cfg.annealing_period())
    }

    /// Loss of expert `logits` `[B, E, C]` for `targets` `[B]` (u32/i64/…), computing the fusion
    /// (`w` and the combined output) from the detached logits with the configured combination.
    pub fn forward(&self, logits: &Tensor, targets: &Tensor) -> Result<TlcLossOutput> {
        logits_dims(logits)?;
        let fusion = fuse(&logits.detach(), self.cfg.combination)?;
        self.forward_fused(logits, targets, fusion)
    }

    /// Loss with a fusion the model already computed (`w` `[E + 1, B]`, `output` `[B, C]`), like
    /// the official `criterion(x, y, extra_info={'w': …})`. Both are used detached.
    pub fn forward_fused(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        fusion: Fusion,
    ) -> Result<TlcLossOutput> {
        let (b, e, c) = logits_dims(logits)?;
        if c != self.class_counts.len() {
            return Err(TlcError::ClassCounts {
                got: self.class_counts.len(),
                classes: c,
            });
        }
        if fusion.w.dims() != [e + 1, b] {
            return Err(TlcError::FusionShape {
                want_rows: e + 1,
                batch: b,
                shape: fusion.w.dims().to_vec(),
            });
        }
        if fusion.output.dims() != [b, c] {
            return Err(TlcError::LogitsShape {
                shape: fusion.output.dims().to_vec(),
            });
        }
        let targets = target_vec(targets, b, c)?;
        let reweight = self.reweighting()?;
        let kl_coef = self.kl_coefficient()?;
        let dev = logits.device();
        let f64_ = DType::F64;

        // Per-sample constants, built on the host.
        let mut onehot = vec![0f64; b * c];
        let mut margin = vec![0f64; b];
        let mut ce_weight = vec![1f64; b];
        for (i, &y) in targets.iter().enumerate() {
            onehot[i * c + y] = 1.0;
            margin[i] = self.cfg.margin_scale * self.margins[y];
            if reweight {
                ce_weight[i] = self.drw_weights[y];
            }
        }
        let onehot = Tensor::from_vec(onehot, (b, 1, c), dev)?;
        let margin = Tensor::from_vec(margin, (b, 1, 1), dev)?;
        let ce_weight = Tensor::from_vec(ce_weight, (b, 1), dev)?;
        let (temps, t_mean) = if reweight {
            let mean = self.diversity_temperature.iter().sum::<f64>() / c as f64;
            (self.diversity_temperature.clone(), mean)
        } else {
            (vec![1.0; c], 1.0)
        };
        let temps = Tensor::from_vec(temps, (1, 1, c), dev)?;

        let z = logits.to_dtype(f64_)?; // [B, E, C], keeps the graph

        // (a) LDAM-margin weighted CE: only the target logit is shifted by 30·m_y.
        let z_margin = z.broadcast_sub(&onehot.broadcast_mul(&margin)?)?;
        let logp = candle_nn::ops::log_softmax(&z_margin, D::Minus1)?;
        let nll = logp.broadcast_mul(&onehot)?.sum(D::Minus1)?.neg()?; // [B, E]
        let ce = nll.broadcast_mul(&ce_weight)?;

        // (b) KL(Dir(α̃) ‖ Dir(1)), α̃ = 1 + (1 − y) ⊙ exp(z).
        let not_y = onehot.affine(-1.0, 1.0)?;
        let alpha = z.exp()?.broadcast_mul(&not_y)?.affine(1.0, 1.0)?; // [B, E, C]
        let strength = alpha.sum_keepdim(D::Minus1)?; // [B, E, 1]
        let ln_gamma_k = ln_gamma_int(c);
        let kl = ((lgamma(&strength)?
            .squeeze(D::Minus1)?
            .affine(1.0, -ln_gamma_k)?
            - lgamma(&alpha)?.sum(D::Minus1)?)?
            + (alpha.affine(1.0, -1.0)?
                * digamma(&alpha)?.broadcast_sub(&digamma(&strength)?)?)?
            .sum(D::Minus1)?)?; // [B, E]

        // (c) Diversity: KL(p̄ ‖ q_k), p̄ = softmax(x/T) (x detached), log q_k = log_softmax(z/T).
        let x = fusion.output.detach().to_dtype(f64_)?.unsqueeze(1)?; // [B, 1, C]
        let log_p = candle_nn::ops::log_softmax(&x.broadcast_div(&temps)?, D::Minus1)?;
        let p = log_p.exp()?;
        let log_q = candle_nn::ops::log_softmax(&z.broadcast_div(&temps)?, D::Minus1)?;
        let diversity = p
            .broadcast_mul(&log_q.broadcast_sub(&log_p)?.neg()?)?
            .sum(D::Minus1)?; // [B, E]

        let per_sample = ((ce + kl.affine(kl_coef, 0.0)?)?
            - diversity.affine(self.cfg.diversity_factor * t_mean * t_mean, 0.0)?)?; // [B, E]

        // Engagement: m_kb = w_k[b] / max_b w_k[b] > τ.
        let w = fusion.w.detach().to_dtype(f64_)?.to_vec2::<f64>()?;
        let mut mask = vec![0f64; b * e];
        let mut counts = vec![0f64; e];
        for k in 0..e {
            let max = w[k].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            for i in 0..b {
                if max > 0.0 && w[k][i] / max > self.cfg.tau {
                    mask[i * e + k] = 1.0;
                    counts[k] += 1.0;
                }
            }
        }
        let engaged = Tensor::from_vec(mask.clone(), (b, e), dev)?
            .t()?
            .to_dtype(DType::U8)?;
        let mask = Tensor::from_vec(mask, (b, e), dev)?;
        let inv_counts: Vec<f64> = counts
            .iter()
            .map(|&n| if n > 0.0 { 1.0 / n } else { 0.0 })
            .collect();
        let inv_counts = Tensor::from_vec(inv_counts, e, dev)?;
        let masked_mean = (per_sample.clone() * &mask)?.sum(0)?.mul(&inv_counts)?; // [E]
        let full_mean = per_sample.mean(0)?;
        let per_expert = match self.cfg.engagement {
            Engagement::Masked => masked_mean,
            Engagement::MaskedPlusFullIssue10 => (masked_mean + full_mean)?,
            Engagement::Full => full_mean,
        };
        let loss = per_expert.sum_all()?.to_dtype(logits.dtype())?;
        Ok(TlcLossOutput {
            loss,
            per_expert: per_expert.to_dtype(logits.dtype())?,
            engaged,
            fusion,
        })
    }
}

/// `ln Γ(n) = ln((n − 1)!)` for a positive integer.
fn ln_gamma_int(n: usize) -> f64 {
    (1..n).map(|k| (k as f64).ln()).sum()
}

/// Reads `targets` `[B]` (any integer or float dtype) and checks every label is a class index.
fn target_vec(targets: &Tensor, batch: usize, classes: usize) -> Result<Vec<usize>> {
    if targets.dims() != [batch] {
        return Err(TlcError::TargetsShape {
            batch,
            shape: targets.dims().to_vec(),
        });
    }
    let raw = targets.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    raw.iter()
        .enumerate()
        .map(|(index, &t)| {
            if t < 0 || t as usize >= classes {
                Err(TlcError::TargetOutOfRange {
                    index,
                    target: t,
                    classes,
                })
            } else {
                Ok(t as usize)
            }
        })
        .collect()
}
