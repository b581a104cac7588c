//! The RIDE loss (docs/ride.md §3): per-expert LDAM-DRW cross-entropy plus the distribution-aware
//! diversity term, and the constants it derives from the training class counts.

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use longtail_losses::{check_range, diversity_temperatures, drw_weights, ldam_margins};

use crate::RideError;

/// Hyper-parameters of [`RideLoss`], named after the official `RIDELoss` arguments
/// (`model/loss.py` of `frank-xwang/RIDE-LongTailRecognition`; docs/ride.md §3).
///
/// [`Default`] gives the official constructor defaults, except `reweight_epoch` (see there).
/// The per-dataset values live in [`crate::presets`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RideLossConfig {
    /// `max_m`: the largest LDAM margin, given to the rarest class (default 0.5).
    pub max_margin: f64,
    /// `s`: the cosine-classifier scale the margin is expressed in (default 30). The logits are
    /// already scaled by the model; the margin is subtracted as `z_y − s·m_y`.
    pub scale: f64,
    /// `base_diversity_temperature` `T_base` (default 1.0).
    pub base_diversity_temperature: f64,
    /// `base_loss_factor`: weight of each expert's classification term (default 1.0).
    pub base_loss_factor: f64,
    /// `additional_diversity_factor` λ (default −0.2; the CIFAR configs use −0.45). Negative, so
    /// minimising the loss maximises each expert's divergence from the ensemble mean.
    /// `0.0` turns the diversity term off (see [`RideLoss`] for how this differs from official).
    pub diversity_factor: f64,
    /// `reweight_factor` r of the per-class temperatures `t_j = C·p_j·r + 1 − r` (default 0.05).
    pub reweight_factor: f64,
    /// `reweight_epoch`: DRW weights and per-class temperatures are on for 1-based epochs
    /// `> reweight_epoch`. `None` (the default) never switches them on.
    /// Differs from official: there the default `-1` (or `reweight: false`) makes `forward`
    /// crash with an `AttributeError` (docs/ride.md §3 "Crash without reweighting").
    pub reweight_epoch: Option<usize>,
    /// β of the DRW "effective number" weights `(1 − β)/(1 − β^n)` (fixed to 0.9999 in the
    /// official code).
    pub drw_beta: f64,
    /// Knowledge distillation from a finished teacher run (`[method.distill]`; docs/ride.md §4).
    /// `None` (the default, and what a config without the table reads as) trains without one.
    /// [`RideLoss`] itself ignores it: the method ([`crate::RideMethod`]) adds the term.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<crate::DistillConfig>,
}

impl Default for RideLossConfig {
    fn default() -> Self {
        Self {
            max_margin: 0.5,
            scale: 30.0,
            base_diversity_temperature: 1.0,
            base_loss_factor: 1.0,
            diversity_factor: -0.2,
            reweight_factor: 0.05,
            reweight_epoch: None,
            drw_beta: 0.9999,
            distill: None,
        }
    }
}

impl RideLossConfig {
    /// Checks that every value is finite and in range: `max_margin ≥ 0`, `scale > 0`,
    /// `base_diversity_temperature > 0`, `0 ≤ reweight_factor ≤ 1`, `0 ≤ drw_beta < 1`, and the
    /// distillation settings if any ([`crate::DistillConfig::check`]).
    pub fn check(&self) -> Result<(), RideError> {
        if let Some(d) = &self.distill {
            d.check()?;
        }
        let fields = [
            ("max_margin", self.max_margin),
            ("scale", self.scale),
            (
                "base_diversity_temperature",
                self.base_diversity_temperature,
            ),
            ("base_loss_factor", self.base_loss_factor),
            ("diversity_factor", self.diversity_factor),
            ("reweight_factor", self.reweight_factor),
            ("drw_beta", self.drw_beta),
        ];
        for (field, value) in fields {
            finite(field, value)?;
        }
        at_least("max_margin", self.max_margin, 0.0, ">= 0")?;
        positive("scale", self.scale)?;
        positive(
            "base_diversity_temperature",
            self.base_diversity_temperature,
        )?;
        unit_interval("reweight_factor", self.reweight_factor)?;
        if !(0.0..1.0).contains(&self.drw_beta) {
            return Err(RideError::OutOfRange {
                field: "drw_beta",
                value: self.drw_beta,
                expected: "in [0, 1)",
            });
        }
        Ok(())
    }
}

fn finite(field: &'static str, value: f64) -> Result<(), RideError> {
    Ok(check_range(field, value, .., "finite")?)
}

fn at_least(
    field: &'static str,
    value: f64,
    min: f64,
    expected: &'static str,
) -> Result<(), RideError> {
    Ok(check_range(field, value, min.., expected)?)
}

fn positive(field: &'static str, value: f64) -> Result<(), RideError> {
    finite(field, value)?;
    if value > 0.0 {
        Ok(())
    } else {
        Err(RideError::OutOfRange {
            field,
            value,
            expected: "> 0",
        })
    }
}

fn unit_interval(field: &'static str, value: f64) -> Result<(), RideError> {
    Ok(check_range(field, value, 0.0..=1.0, "in [0, 1]")?)
}

/// The RIDE training loss (docs/ride.md §3), for `E ≥ 1` experts.
///
/// For expert logits `z_e` (already `s·cos`), their mean `z̄`, targets `y`:
///
/// `L = Σ_e [ base_loss_factor · CE_w(z_e − s·m_y·1_y, y) + λ · T̄² · KL(softmax(z̄/T) ‖ softmax(z_e/T)) ]`
///
/// - `m` are the [`ldam_margins`]; `CE_w` is unweighted before the switch and weighted by the
///   [`drw_weights`] after it, averaged as PyTorch does: `Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}`.
/// - `T` is the scalar `T_base` before the switch and the per-class [`diversity_temperatures`]
///   (divided elementwise) after it; `T̄` is `T_base`, then the mean of the per-class `T_j`.
/// - KL is `batchmean` (sum over batch and classes, divided by `B`); `softmax(z̄/T)` is detached,
///   so gradient flows only through each expert's own log-softmax.
/// - The switch happens in [`RideLoss::begin_epoch`] for 1-based epochs `> reweight_epoch`.
///
/// Differs from official: with `λ == 0` the official code silently replaces each expert's
/// classification input by the mean logits `z̄` ("collaborative loss", RIDE issue #7). Here
/// `λ == 0` only drops the diversity term; each expert keeps its own LDAM-DRW cross-entropy.
#[derive(Clone, Debug)]
pub struct RideLoss {
    cfg: RideLossConfig,
    margins: Vec<f64>,
    drw: Vec<f64>,
    temperatures: Vec<f64>,
    temperature_mean: f64,
    /// Per-class temperatures as a `[1, 1, C]` f32 tensor on the loss's device.
    temperature_tensor: Tensor,
    reweighting: bool,
}

impl RideLoss {
    /// Builds the loss for the given training class counts (class `j` has `class_counts[j]`
    /// samples). Fails on an invalid config, no classes or a class with count 0.
    pub fn new(
        cfg: &RideLossConfig,
        class_counts: &[usize],
        device: &Device,
    ) -> Result<Self, RideError> {
        cfg.check()?;
        let margins = ldam_margins(class_counts, cfg.max_margin)?;
        let drw = drw_weights(class_counts, cfg.drw_beta)?;
        let temperatures = diversity_temperatures(
            class_counts,
            cfg.base_diversity_temperature,
            cfg.reweight_factor,
        )?;
        let c = class_counts.len();
        let temperature_mean = temperatures.iter().sum::<f64>() / c as f64;
        let t32: Vec<f32> = temperatures.iter().map(|&t| t as f32).collect();
        let temperature_tensor = Tensor::from_vec(t32, (1, 1, c), device)?;
        Ok(Self {
            cfg: cfg.clone(),
            margins,
            drw,
            temperatures,
            temperature_mean,
            temperature_tensor,
            reweighting: false,
        })
    }

    /// Called once at the start of every epoch with the trainer's **1-based** epoch, like the
    /// official `_hook_before_epoch`: DRW weights and per-class temperatures are on iff
    /// `epoch > reweight_epoch` (CIFAR: epochs 161–200).
    pub fn begin_epoch(&mut self, epoch: usize) {
        self.reweighting = self.cfg.reweight_epoch.is_some_and(|r| epoch > r);
    }

    /// The configuration this loss was built with.
    pub fn config(&self) -> &RideLossConfig {
        &self.cfg
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.margins.len()
    }

    /// LDAM margins `m_j` (before the scale `s`), fixed for the whole run.
    pub fn margins(&self) -> &[f64] {
        &self.margins
    }

    /// DRW class weights (summing to `C`), used after the switch.
    pub fn drw_weights(&self) -> &[f64] {
        &self.drw
    }

    /// Per-class diversity temperatures `T_j`, used after the switch.
    pub fn class_temperatures(&self) -> &[f64] {
        &self.temperatures
    }

    /// `T̄`, the mean of the per-class temperatures (the factor `T̄²` after the switch).
    pub fn mean_class_temperature(&self) -> f64 {
        self.temperature_mean
    }

    /// Whether DRW weights and per-class temperatures are on (set by [`Self::begin_epoch`]).
    pub fn is_reweighting(&self) -> bool {
        self.reweighting
    }

    /// The `T̄` in use now: `T_base` before the switch, [`Self::mean_class_temperature`] after.
    pub fn active_temperature_mean(&self) -> f64 {
        if self.reweighting {
            self.temperature_mean
        } else {
            self.cfg.base_diversity_temperature
        }
    }

    /// The loss for expert logits `[B, E, C]` (any float dtype) and targets `[B]` (u8, u32
    /// or i64): a scalar tensor that autograd differentiates. Wrong shapes, dtypes or labels
    /// give an error carrying a [`RideError`] message.
    pub fn forward(&self, expert_logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _e, c) = expert_logits_dims(expert_logits, self.num_classes())?;
        let labels = read_targets(targets, b, c)?;
        let weights = self.reweighting.then_some(self.drw.as_slice());
        let ce = ldam_ce_sum(
            expert_logits,
            &labels,
            &self.margins,
            self.cfg.scale,
            weights,
        )?;
        let mut loss = (ce * self.cfg.base_loss_factor)?;
        if self.cfg.diversity_factor != 0.0 {
            let kl = self.diversity_kl(expert_logits)?;
            let t_mean = self.active_temperature_mean();
            loss = (loss + (kl * (self.cfg.diversity_factor * t_mean * t_mean))?)?;
        }
        Ok(loss)
    }

    /// `Σ_e KL(softmax(z̄/T) ‖ softmax(z_e/T))`, each `batchmean`, with `z̄` detached.
    fn diversity_kl(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let b = z.dim(0)?;
        let mean = z.mean_keepdim(1)?.detach();
        let (mean_t, z_t) = if self.reweighting {
            let t = self.temperature_tensor.to_dtype(z.dtype())?;
            (mean.broadcast_div(&t)?, z.broadcast_div(&t)?)
        } else {
            let t = self.cfg.base_diversity_temperature;
            ((mean / t)?, (z / t)?)
        };
        let log_p = log_softmax_last(&mean_t)?;
        let p = log_p.exp()?;
        let log_q = log_softmax_last(&z_t)?;
        let kl = p.broadcast_mul(&log_p.broadcast_sub(&log_q)?)?.sum_all()?;
        kl / b as f64
    }
}

/// LDAM cross-entropy of a single model (the LDAM-DRW baseline, Cao et al., NeurIPS 2019):
/// `CE_w(z − s·m_y·1_y, y)` for logits `[B, C]` (already scaled by `s`), targets `[B]`,
/// margins `m` `[C]` from [`ldam_margins`] and optional DRW class weights `[C]` from
/// [`drw_weights`] (PyTorch's weighted mean `Σ w_{y_i} ℓ_i / Σ w_{y_i}`).
pub fn ldam_ce(
    logits: &Tensor,
    targets: &Tensor,
    margins: &[f64],
    scale: f64,
    class_weights: Option<&[f64]>,
) -> candle_core::Result<Tensor> {
    let dims = logits.dims();
    if dims.len() != 2 || dims[1] != margins.len() {
        return Err(wrap(RideError::Shape {
            what: "logits",
            expected: format!("[B, {}]", margins.len()),
            got: format!("{dims:?}"),
        }));
    }
    if let Some(w) = class_weights {
        if w.len() != margins.len() {
            return Err(wrap(RideError::Shape {
                what: "class weights",
                expected: format!("{} values", margins.len()),
                got: format!("{} values", w.len()),
            }));
        }
    }
    let labels = read_targets(targets, dims[0], dims[1])?;
    ldam_ce_sum(
        &logits.unsqueeze(1)?,
        &labels,
        margins,
        scale,
        class_weights,
    )
}

fn wrap(err: RideError) -> candle_core::Error {
    candle_core::Error::wrap(err)
}

/// Checks `[B, E, C]` with `C == classes`, `B, E ≥ 1`, float dtype.
fn expert_logits_dims(z: &Tensor, classes: usize) -> candle_core::Result<(usize, usize, usize)> {
    let dims = z.dims();
    let ok = dims.len() == 3 && dims[0] > 0 && dims[1] > 0 && dims[2] == classes;
    if !ok {
        return Err(wrap(RideError::Shape {
            what: "expert logits",
            expected: format!("[B, E, {classes}] with B, E >= 1"),
            got: format!("{dims:?}"),
        }));
    }
    if !z.dtype().is_float() {
        return Err(wrap(RideError::Shape {
            what: "expert logits dtype",
            expected: "a float dtype".into(),
            got: format!("{:?}", z.dtype()),
        }));
    }
    Ok((dims[0], dims[1], dims[2]))
}

/// Reads integer targets `[B]` to the host and checks every label is `< classes`.
fn read_targets(targets: &Tensor, batch: usize, classes: usize) -> candle_core::Result<Vec<usize>> {
    if targets.dims() != [batch] {
        return Err(wrap(RideError::Shape {
            what: "targets",
            expected: format!("[{batch}]"),
            got: format!("{:?}", targets.dims()),
        }));
    }
    if !matches!(targets.dtype(), DType::U8 | DType::U32 | DType::I64) {
        return Err(wrap(RideError::Shape {
            what: "targets dtype",
            expected: "u8, u32 or i64".into(),
            got: format!("{:?}", targets.dtype()),
        }));
    }
    let raw = targets.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    raw.iter()
        .enumerate()
        .map(|(index, &t)| {
            usize::try_from(t)
                .ok()
                .filter(|&t| t < classes)
                .ok_or_else(|| {
                    wrap(RideError::TargetOutOfRange {
                        index,
                        target: t,
                        classes,
                    })
                })
        })
        .collect()
}

/// `log_softmax` over the last dim with the max shift detached (a constant for the gradient).
fn log_softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// `Σ_e CE_w(z_e − s·m_y·1_y, y)` for `z` `[B, E, C]`; labels already checked.
fn ldam_ce_sum(
    z: &Tensor,
    labels: &[usize],
    margins: &[f64],
    scale: f64,
    class_weights: Option<&[f64]>,
) -> candle_core::Result<Tensor> {
    let (b, c) = (labels.len(), margins.len());
    let mut onehot = vec![0f32; b * c];
    let mut shift = vec![0f32; b * c];
    for (i, &y) in labels.iter().enumerate() {
        onehot[i * c + y] = 1.0;
        shift[i * c + y] = (scale * margins[y]) as f32;
    }
    let dev = z.device();
    let dtype = z.dtype();
    let onehot = Tensor::from_vec(onehot, (b, 1, c), dev)?.to_dtype(dtype)?;
    let shift = Tensor::from_vec(shift, (b, 1, c), dev)?.to_dtype(dtype)?;
    let log_p = log_softmax_last(&z.broadcast_sub(&shift)?)?;
    // ℓ_{i,e} = −log p_{i,e,y_i}, shape [B, E].
    let nll = log_p.broadcast_mul(&onehot)?.sum(D::Minus1)?.neg()?;
    match class_weights {
        None => nll.sum_all()? / b as f64,
        Some(w) => {
            // Weights rounded to f32 like the official float32 weight tensor.
            let per_sample: Vec<f32> = labels.iter().map(|&y| w[y] as f32).collect();
            let denom: f64 = per_sample.iter().map(|&v| v as f64).sum();
            let w = Tensor::from_vec(per_sample, (b, 1), dev)?.to_dtype(dtype)?;
            nll.broadcast_mul(&w)?.sum_all()? / denom
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_follow_quarter_power() {
        let m = ldam_margins(&[16, 1], 0.5).unwrap();
        assert!((m[0] - 0.25).abs() < 1e-12 && (m[1] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn drw_weights_sum_to_class_count() {
        let w = drw_weights(&[100, 10, 1], 0.9999).unwrap();
        assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-12);
        assert!(w[0] < w[1] && w[1] < w[2]);
        assert_eq!(drw_weights(&[5, 7], 0.0).unwrap(), vec![1.0, 1.0]);
    }

    #[test]
    fn temperatures_are_one_for_the_head() {
        // C = 2, p = (0.75, 0.25), r = 0.5: t = (1.25, 0.75) → T = (1, 0.6).
        let t = diversity_temperatures(&[3, 1], 1.0, 0.5).unwrap();
        assert!((t[0] - 1.0).abs() < 1e-12 && (t[1] - 0.6).abs() < 1e-12);
    }

    #[test]
    fn config_rejects_bad_values() {
        let bad = RideLossConfig {
            scale: 0.0,
            ..Default::default()
        };
        assert!(matches!(
            bad.check(),
            Err(RideError::OutOfRange { field: "scale", .. })
        ));
        let bad = RideLossConfig {
            diversity_factor: f64::NAN,
            ..Default::default()
        };
        assert!(matches!(
            bad.check(),
            Err(RideError::NonFinite {
                field: "diversity_factor",
                ..
            })
        ));
        let bad = RideLossConfig {
            drw_beta: 1.0,
            ..Default::default()
        };
        assert!(matches!(
            bad.check(),
            Err(RideError::OutOfRange {
                field: "drw_beta",
                ..
            })
        ));
        assert!(RideLossConfig::default().check().is_ok());
    }
}
