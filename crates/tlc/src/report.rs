//! Uncertainty evaluation of a trained checkpoint (`longtail eval --uncertainty`).
//!
//! For every checkpoint: the method's accuracy (overall, many / medium / few) and, for each
//! confidence **score**, failure prediction (AUROC, FPR at 95 % TPR), calibration (ECE with 15
//! right-closed and 10 left-closed bins), selective risk (AURC) and, given an out-of-distribution
//! set, OOD AUROC, each overall and per shot group. The scores:
//! - `softmax`: the maximum softmax probability of the method's own prediction (every method);
//! - `tlc` (TLC checkpoints only): TLC's confidence `c = 1 − u / max u` with `u = w_E` the fused
//!   uncertainty of all experts (docs/tlc.md §4, [`fused_uncertainty`]).
//!
//! For TLC also: the accuracy of the official batch-normalised combination next to the per-sample
//! one (docs/tlc.md §3.2), and the early-exit curve ([`early_exit_curve`]): for each threshold
//! on the fused uncertainty, accuracy, mean experts evaluated and multiply-adds saved.
//!
//! Main items: [`evaluate_uncertainty`] → [`UncertaintyReport`]; [`score_report`] (metrics of one
//! score); [`early_exit_curve`]; the `longtail` binary draws the PNG risk–coverage curve and
//! reliability diagram from the report.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use longtail_backbone::MultiExpert;
use longtail_data::{Batcher, Dataset, SamplerKind, Transform};
use longtail_metrics::uncertainty as um;
use longtail_metrics::{classification_report, Shot};
use longtail_train::{evaluate, Method};
use serde::Serialize;

use crate::{
    fuse, fused_uncertainty, predict_early_exit, Combination, EarlyExit, ExpertForward, TlcError,
    TlcSettings,
};

type Result<T> = std::result::Result<T, TlcError>;

fn report_error(msg: impl Into<String>) -> TlcError {
    TlcError::Report(msg.into())
}

/// Fused-uncertainty thresholds of the early-exit curve (absolute, see
/// [`crate::early_exit`]): 0 never exits (every expert runs), 1 always stops after expert 0
/// (`w_1 = u_0 = K/S < 1`). With ×30 cosine logits one confident expert already gives
/// `u = K/S ≈ K·e^{-30}`, and `w` is a product over experts (the bundled TLC run has a mean `w_E`
/// around 1e-18 after one epoch), hence the logarithmic spacing down to 1e-20.
pub const DEFAULT_THRESHOLDS: [f64; 13] = [
    0.0, 1e-20, 1e-16, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 0.1, 0.5, 1.0,
];

/// The metrics of one confidence score on one set of samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoreMetrics {
    /// Samples.
    pub samples: usize,
    /// Accuracy of the prediction on these samples (micro).
    pub accuracy: f64,
    /// Failure-prediction AUROC (correct = positive); `None` when all samples are right or all
    /// wrong.
    pub failure_auroc: Option<f64>,
    /// FPR at 95 % TPR; `None` as for the AUROC.
    pub fpr_at_95_tpr: Option<f64>,
    /// ECE, 15 right-closed bins (Guo et al. 2017).
    pub ece15: f64,
    /// ECE, 10 left-closed bins (TLC's variant, issue #9).
    pub ece10: f64,
    /// Area under the risk–coverage curve (lower is better).
    pub aurc: f64,
    /// AURC minus the oracle's.
    pub excess_aurc: f64,
    /// AUROC of these in-distribution samples against every OOD sample (`None` without OOD data).
    pub ood_auroc: Option<f64>,
}

/// Every metric of one confidence score, overall and per shot group.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreReport {
    /// `tlc` or `softmax`.
    pub score: String,
    /// How the score is computed.
    pub description: String,
    /// All test samples.
    pub overall: ScoreMetrics,
    /// Samples of many-shot classes (`None` when the group has no test sample).
    pub many: Option<ScoreMetrics>,
    /// Samples of medium-shot classes.
    pub medium: Option<ScoreMetrics>,
    /// Samples of few-shot classes.
    pub few: Option<ScoreMetrics>,
    /// The reliability diagram (15 bins, all samples).
    pub reliability: Vec<um::ReliabilityBin>,
    /// Risk at each coverage `i / N` (all samples; for plots, not in the JSON).
    #[serde(skip)]
    pub risk_coverage: um::RiskCoverage,
}

/// One point of the early-exit curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExitPoint {
    /// A sample stops once its fused uncertainty falls below this.
    pub threshold: f64,
    /// Accuracy of the early-exit prediction.
    pub accuracy: f64,
    /// Many-shot mean class accuracy.
    pub many: Option<f64>,
    /// Medium-shot mean class accuracy.
    pub medium: Option<f64>,
    /// Few-shot mean class accuracy.
    pub few: Option<f64>,
    /// Mean number of experts evaluated per image, in `[1, E]`.
    pub mean_experts: f64,
    /// `samples_by_experts[k]`: images that used exactly `k + 1` experts.
    pub samples_by_experts: Vec<usize>,
    /// Mean multiply-adds per image (trunk plus the experts used).
    pub macs_per_image: f64,
    /// Fraction of the all-expert multiply-adds saved, `1 − macs / full`.
    pub macs_saved: f64,
}

/// The early-exit accuracy / compute curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EarlyExitCurve {
    /// Combination temperature η.
    pub eta: f64,
    /// Multiply-adds of the shared trunk per image.
    pub trunk_macs: u64,
    /// Multiply-adds of each expert per image (its own stages and classifier).
    pub expert_macs: Vec<u64>,
    /// Multiply-adds per image with every expert.
    pub full_macs: u64,
    /// One point per threshold, ascending.
    pub points: Vec<ExitPoint>,
}

/// TLC-only results.
#[derive(Clone, Debug, Serialize)]
pub struct TlcSummary {
    /// Combination temperature η.
    pub eta: f64,
    /// The combination the run was configured to predict with (`per_sample` or `official`).
    pub configured_combination: String,
    /// Accuracy of the per-sample combination (softmax over experts, batch-independent).
    pub per_sample_accuracy: f64,
    /// Accuracy of the official combination (softmax over the batch), test set in order.
    pub official_accuracy: f64,
    /// Batch size of the official combination (the recipe's evaluation batch).
    pub official_batch_size: usize,
    /// Mean fused uncertainty `w_E` over the test set.
    pub mean_uncertainty: f64,
    /// The early-exit curve.
    pub early_exit: EarlyExitCurve,
}

/// The OOD set that was scored.
#[derive(Clone, Debug, Serialize)]
pub struct OodInfo {
    /// Its name.
    pub dataset: String,
    /// Images.
    pub samples: usize,
}

/// Everything `longtail eval --uncertainty` reports.
#[derive(Clone, Debug, Serialize)]
pub struct UncertaintyReport {
    /// Method name.
    pub method: String,
    /// Data set name.
    pub dataset: String,
    /// Test images.
    pub samples: usize,
    /// Accuracy of the method's prediction.
    pub accuracy: f64,
    /// Many-shot mean class accuracy.
    pub many_shot_acc: Option<f64>,
    /// Medium-shot mean class accuracy.
    pub medium_shot_acc: Option<f64>,
    /// Few-shot mean class accuracy.
    pub few_shot_acc: Option<f64>,
    /// Test images per shot group (many, medium, few).
    pub group_samples: [usize; 3],
    /// One report per confidence score (`tlc` first for TLC, then `softmax`).
    pub scores: Vec<ScoreReport>,
    /// The OOD set, if one was given.
    pub ood: Option<OodInfo>,
    /// TLC-only results.
    pub tlc: Option<TlcSummary>,
}

/// What [`evaluate_uncertainty`] needs.
pub struct UncertaintyInput<'a> {
    /// The trained network.
    pub model: &'a MultiExpert,
    /// The method's prediction rule.
    pub objective: &'a dyn Method,
    /// TLC's settings when the model is a TLC run (it then gets the extra results).
    pub tlc: Option<&'a TlcSettings>,
    /// The data set's name, for the report.
    pub dataset: &'a str,
    /// The in-distribution test set.
    pub test: &'a Arc<Dataset>,
    /// An OOD set (name, images), evaluated with the same transform.
    pub ood: Option<(&'a str, &'a Arc<Dataset>)>,
    /// Evaluation transform of the in-distribution data.
    pub transform: &'a Transform,
    /// Shot group of each class.
    pub shots: &'a [Shot],
    /// Evaluation batch size (also the official TLC combination's batch).
    pub batch_size: usize,
    /// Early-exit thresholds.
    pub thresholds: &'a [f64],
    /// Device.
    pub device: &'a Device,
}

/// All metrics of one confidence score: overall and per shot group (`groups[i]` is sample `i`'s
/// group). `ood` holds the same score on OOD images, on the same scale. Confidences must lie in
/// `[0, 1]` (calibration needs it).
pub fn score_report(
    score: &str,
    description: &str,
    confidence: &[f64],
    correct: &[bool],
    groups: &[Shot],
    ood: Option<&[f64]>,
) -> Result<ScoreReport> {
    if groups.len() != confidence.len() || correct.len() != confidence.len() {
        return Err(report_error(format!(
            "score `{score}`: {} confidences, {} correctness flags and {} group labels",
            confidence.len(),
            correct.len(),
            groups.len()
        )));
    }
    // Every metric per group label: 0 = the whole set, then 1, 2, 3 = many, medium, few.
    let label = |s: &Shot| 1 + Shot::ALL.iter().position(|a| a == s).unwrap_or(0);
    let labels: Vec<usize> = groups.iter().map(label).collect();
    let whole = vec![0usize; confidence.len()];
    let err = |e: longtail_metrics::MetricsError| report_error(format!("score `{score}`: {e}"));
    let metrics = |labels: &[usize]| -> Result<Vec<(usize, ScoreMetrics)>> {
        let auroc = um::failure_auroc_by_group(confidence, correct, labels).map_err(err)?;
        let fpr = um::fpr_at_tpr_by_group(confidence, correct, labels, 0.95).map_err(err)?;
        let ece15 =
            um::ece_by_group(confidence, correct, labels, 15, um::BinEdge::Right).map_err(err)?;
        let ece10 =
            um::ece_by_group(confidence, correct, labels, 10, um::BinEdge::Left).map_err(err)?;
        let rc = um::risk_coverage_by_group(confidence, correct, labels).map_err(err)?;
        let ood = ood
            .map(|o| um::ood_auroc_by_group(confidence, labels, o))
            .transpose()
            .map_err(err)?;
        Ok((0..auroc.len())
            .map(|k| {
                let g = auroc[k].group;
                let right = (0..correct.len())
                    .filter(|&i| labels[i] == g && correct[i])
                    .count();
                let metrics = ScoreMetrics {
                    samples: auroc[k].count,
                    accuracy: right as f64 / auroc[k].count as f64,
                    failure_auroc: auroc[k].value,
                    fpr_at_95_tpr: fpr[k].value,
                    ece15: ece15[k].value.unwrap_or(f64::NAN),
                    ece10: ece10[k].value.unwrap_or(f64::NAN),
                    aurc: rc[k].1.aurc,
                    excess_aurc: rc[k].1.excess_aurc(),
                    ood_auroc: ood.as_ref().and_then(|o| o[k].value),
                };
                (g, metrics)
            })
            .collect())
    };
    let overall = metrics(&whole)?
        .pop()
        .map(|(_, m)| m)
        .ok_or_else(|| report_error(format!("score `{score}`: no samples")))?;
    let per_group = metrics(&labels)?;
    let group = |shot: Shot| -> Result<Option<ScoreMetrics>> {
        let g = label(&shot);
        Ok(per_group
            .iter()
            .find(|(k, _)| *k == g)
            .map(|(_, m)| m.clone()))
    };
    let reliability = um::reliability_bins(confidence, correct, 15, um::BinEdge::Right)?;
    Ok(ScoreReport {
        score: score.to_string(),
        description: description.to_string(),
        overall,
        many: group(Shot::Many)?,
        medium: group(Shot::Medium)?,
        few: group(Shot::Few)?,
        reliability,
        risk_coverage: um::risk_coverage(confidence, correct)?,
    })
}

/// Maximum softmax probability of every row of row-major `[N, C]` logits.
pub fn softmax_confidence(logits: &[f32], classes: usize) -> Vec<f64> {
    logits
        .chunks(classes)
        .map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            1.0 / row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>()
        })
        .collect()
}

/// Per-expert logits and the method's logits of a whole data set, in order.
pub struct Forwarded {
    /// Method logits, row-major `[N, C]`.
    pub logits: Vec<f32>,
    /// Expert logits, row-major `[N, E, C]`.
    pub expert_logits: Vec<f32>,
    /// Images N.
    pub samples: usize,
    /// Experts E.
    pub experts: usize,
    /// Classes C.
    pub classes: usize,
}

/// Runs the model in eval mode over `data` (labels are not used: any data set with the model's
/// channels works, e.g. an OOD set with another number of classes).
pub fn forward_dataset(
    model: &MultiExpert,
    objective: &dyn Method,
    data: &Arc<Dataset>,
    transform: &Transform,
    batch_size: usize,
    device: &Device,
) -> Result<Forwarded> {
    let model = model.detached()?;
    let batcher = Batcher::new(
        Arc::clone(data),
        SamplerKind::Sequential,
        transform.clone(),
        batch_size,
        0,
        0,
        device,
    )?;
    let (mut logits, mut expert_logits) = (vec![], vec![]);
    let (mut experts, mut classes) = (0, 0);
    for batch in batcher {
        let batch = batch?;
        let out = model.forward_t(&batch.images, false)?;
        (_, experts, classes) = out.expert_logits.dims3()?;
        logits.extend(flat_f32(&objective.predict(&out)?)?);
        expert_logits.extend(flat_f32(&out.expert_logits)?);
    }
    Ok(Forwarded {
        samples: data.len(),
        logits,
        expert_logits,
        experts,
        classes,
    })
}

fn flat_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

fn expert_tensor(expert_logits: &[f32], n: usize, e: usize, c: usize) -> Result<Tensor> {
    Ok(Tensor::from_slice(expert_logits, (n, e, c), &Device::Cpu)?.to_dtype(DType::F64)?)
}

/// TLC's reported uncertainty `w_E` of every sample, from row-major `[N, E, C]` expert logits.
pub fn tlc_uncertainty(expert_logits: &[f32], n: usize, e: usize, c: usize) -> Result<Vec<f64>> {
    let w = fused_uncertainty(&expert_tensor(expert_logits, n, e, c)?)?;
    Ok(w.narrow(0, e, 1)?.squeeze(0)?.to_vec1::<f64>()?)
}

/// Predictions of a TLC combination over `[N, E, C]` expert logits, combined in consecutive
/// batches of `batch` samples (only the official combination depends on the batching), in `f64`.
pub fn combined_predictions(
    expert_logits: &[f32],
    (n, e, c): (usize, usize, usize),
    combination: Combination,
    batch: usize,
) -> Result<Vec<u32>> {
    if batch == 0 {
        return Err(report_error(
            "the combination batch size must be at least 1",
        ));
    }
    let all = expert_tensor(expert_logits, n, e, c)?;
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        let f = fuse(&all.narrow(0, start, len)?, combination)?;
        out.extend(f.predictions()?);
        start += len;
    }
    Ok(out)
}

/// One batch's experts for early exit: the trunk runs once; an expert runs only on the rows
/// early exit asks for, and each (row, expert) result is kept so that the thresholds of one
/// curve share it.
struct BatchExperts<'a> {
    model: &'a MultiExpert,
    trunk: Tensor,
    classes: usize,
    /// `cache[k][row]`: expert `k`'s logits of `row`.
    cache: Vec<Vec<Option<Vec<f32>>>>,
}

impl ExpertForward for BatchExperts<'_> {
    fn forward_expert(&mut self, expert: usize, indices: &[u32]) -> Result<Tensor> {
        let cache = self
            .cache
            .get_mut(expert)
            .ok_or_else(|| TlcError::ExpertOutputShape {
                expert,
                got: vec![],
                want: vec![indices.len(), self.classes],
            })?;
        let missing: Vec<u32> = indices
            .iter()
            .copied()
            .filter(|&i| cache[i as usize].is_none())
            .collect();
        if !missing.is_empty() {
            let idx = Tensor::new(missing.as_slice(), self.trunk.device())?;
            let sub = self.trunk.index_select(&idx, 0)?;
            let out = self
                .model
                .forward_expert(&sub, expert, false)
                .map_err(candle_core::Error::wrap)?;
            let rows = out.logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (&i, row) in missing.iter().zip(rows) {
                cache[i as usize] = Some(row);
            }
        }
        let mut flat: Vec<f32> = Vec::with_capacity(indices.len() * self.classes);
        for &i in indices {
            flat.extend(cache[i as usize].as_deref().unwrap_or_default());
        }
        Ok(Tensor::from_vec(
            flat,
            (indices.len(), self.classes),
            &Device::Cpu,
        )?)
    }
}

/// The early-exit curve of a TLC model on `data`: for each threshold, every batch goes through
/// the trunk once and [`predict_early_exit`] calls each expert only for the samples still active
/// (a sample stops once its fused uncertainty `w` is below the threshold). Multiply-adds come
/// from [`MultiExpert::macs`]: an image that used `k` experts costs the trunk plus experts
/// `0..k`.
#[allow(clippy::too_many_arguments)]
pub fn early_exit_curve(
    model: &MultiExpert,
    data: &Arc<Dataset>,
    transform: &Transform,
    batch_size: usize,
    shots: &[Shot],
    thresholds: &[f64],
    eta: f64,
    device: &Device,
) -> Result<EarlyExitCurve> {
    if thresholds.is_empty() {
        return Err(report_error("early exit needs at least one threshold"));
    }
    if let Some(t) = thresholds.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
        return Err(report_error(format!(
            "early-exit threshold {t} must be finite and >= 0"
        )));
    }
    let model = &model.detached()?;
    let mut thresholds = thresholds.to_vec();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    let e = model.num_experts();
    let classes = model.config().num_classes;
    let all: Vec<usize> = (0..e).collect();
    let macs = model.macs(data.height, data.width, &all)?;
    let batcher = Batcher::new(
        Arc::clone(data),
        SamplerKind::Sequential,
        transform.clone(),
        batch_size,
        0,
        0,
        device,
    )?;
    let t = thresholds.len();
    let mut predictions: Vec<Vec<u32>> = vec![Vec::with_capacity(data.len()); t];
    let mut used: Vec<Vec<usize>> = vec![Vec::with_capacity(data.len()); t];
    let mut labels = Vec::with_capacity(data.len());
    for batch in batcher {
        let batch = batch?;
        let b = batch.indices.len();
        let mut experts = BatchExperts {
            model,
            trunk: model.forward_trunk(&batch.images, false)?,
            classes,
            cache: vec![vec![None; b]; e],
        };
        for (j, &threshold) in thresholds.iter().enumerate() {
            let out = predict_early_exit(&mut experts, b, e, EarlyExit { threshold, eta })?;
            predictions[j].extend(out.predictions);
            used[j].extend(out.experts_used);
        }
        labels.extend(batch.labels.to_vec1::<u32>()?);
    }
    let full = macs.total();
    let mut points = Vec::with_capacity(t);
    for (j, &threshold) in thresholds.iter().enumerate() {
        let report = classification_report(&predictions[j], &labels, shots)?;
        let mut by = vec![0usize; e];
        let mut total_macs = 0f64;
        for &k in &used[j] {
            by[k - 1] += 1;
            total_macs += (macs.trunk + macs.per_expert[..k].iter().sum::<u64>()) as f64;
        }
        let n = used[j].len().max(1) as f64;
        let macs_per_image = total_macs / n;
        points.push(ExitPoint {
            threshold,
            accuracy: report.accuracy,
            many: report.many,
            medium: report.medium,
            few: report.few,
            mean_experts: used[j].iter().sum::<usize>() as f64 / n,
            samples_by_experts: by,
            macs_per_image,
            macs_saved: 1.0 - macs_per_image / full as f64,
        });
    }
    Ok(EarlyExitCurve {
        eta,
        trunk_macs: macs.trunk,
        expert_macs: macs.per_expert,
        full_macs: full,
        points,
    })
}

/// Evaluates a checkpoint's uncertainty: see the module documentation.
pub fn evaluate_uncertainty(input: &UncertaintyInput) -> Result<UncertaintyReport> {
    let UncertaintyInput {
        model,
        objective,
        tlc: tlc_settings,
        dataset,
        test,
        ood,
        transform,
        shots,
        batch_size,
        thresholds,
        device,
    } = *input;
    let ev = evaluate(model, objective, test, transform, batch_size, shots, device)?;
    let (n, e, c) = (ev.labels.len(), ev.num_experts, ev.num_classes);
    let predictions = ev.predictions();
    let correct: Vec<bool> = predictions
        .iter()
        .zip(&ev.labels)
        .map(|(p, l)| p == l)
        .collect();
    let groups: Vec<Shot> = ev.labels.iter().map(|&l| shots[l as usize]).collect();
    let ood_fwd = match ood {
        Some((_, data)) => Some(forward_dataset(
            model, objective, data, transform, batch_size, device,
        )?),
        None => None,
    };
    let mut scores = Vec::new();
    let mut tlc = None;
    if let Some(settings) = tlc_settings {
        let combination = settings.loss.combination;
        let eta = settings.early_exit.map_or(combination.eta(), |x| x.eta);
        let u = tlc_uncertainty(&ev.expert_logits, n, e, c)?;
        let max_u = u.iter().cloned().fold(0.0, f64::max);
        let confidence = um::confidence_from_uncertainty(&u)?;
        // Differs from official (docs/tlc.md §4, pitfall 12): OOD uncertainties are normalised by the
        // in-distribution maximum, not their own, so ID and OOD scores share one scale.
        let ood_conf = match &ood_fwd {
            Some(f) => {
                let uo = tlc_uncertainty(&f.expert_logits, f.samples, f.experts, f.classes)?;
                Some(
                    uo.iter()
                        .map(|&v| if max_u > 0.0 { 1.0 - v / max_u } else { 1.0 })
                        .collect::<Vec<f64>>(),
                )
            }
            None => None,
        };
        scores.push(score_report(
            "tlc",
            "1 - u / max(u), u = fused uncertainty w_E of all experts (TLC Eq. 7)",
            &confidence,
            &correct,
            &groups,
            ood_conf.as_deref(),
        )?);
        let accuracy =
            |p: &[u32]| p.iter().zip(&ev.labels).filter(|(a, b)| a == b).count() as f64 / n as f64;
        let per_sample = combined_predictions(
            &ev.expert_logits,
            (n, e, c),
            Combination::PerSample { eta },
            n,
        )?;
        let official = combined_predictions(
            &ev.expert_logits,
            (n, e, c),
            Combination::Official { eta },
            batch_size,
        )?;
        let mut ts = thresholds.to_vec();
        if let Some(x) = settings.early_exit {
            ts.push(x.threshold);
        }
        tlc = Some(TlcSummary {
            eta,
            configured_combination: match combination {
                Combination::PerSample { .. } => "per_sample".into(),
                Combination::Official { .. } => "official".into(),
            },
            per_sample_accuracy: accuracy(&per_sample),
            official_accuracy: accuracy(&official),
            official_batch_size: batch_size,
            mean_uncertainty: u.iter().sum::<f64>() / n as f64,
            early_exit: early_exit_curve(
                model, test, transform, batch_size, shots, &ts, eta, device,
            )?,
        });
    }
    let confidence = softmax_confidence(&ev.logits, c);
    let ood_conf = ood_fwd
        .as_ref()
        .map(|f| softmax_confidence(&f.logits, f.classes));
    scores.push(score_report(
        "softmax",
        "maximum softmax probability of the method's prediction",
        &confidence,
        &correct,
        &groups,
        ood_conf.as_deref(),
    )?);
    let r = &ev.report;
    let count = |s: Shot| groups.iter().filter(|&&g| g == s).count();
    Ok(UncertaintyReport {
        method: objective.name().to_string(),
        dataset: dataset.to_string(),
        samples: n,
        accuracy: r.accuracy,
        many_shot_acc: r.many,
        medium_shot_acc: r.medium,
        few_shot_acc: r.few,
        group_samples: [count(Shot::Many), count(Shot::Medium), count(Shot::Few)],
        scores,
        ood: ood.map(|(name, d)| OodInfo {
            dataset: name.to_string(),
            samples: d.len(),
        }),
        tlc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn score_report_splits_by_group_and_scores_ood() {
        let c = [0.9, 0.8, 0.4, 0.8, 0.3];
        let ok = [true, true, true, false, false];
        let groups = [Shot::Many, Shot::Many, Shot::Few, Shot::Few, Shot::Many];
        let ood = [0.5, 0.1];
        let r = score_report("s", "test", &c, &ok, &groups, Some(&ood)).unwrap();
        // Overall: 4.5 of 6 correct/wrong pairs ordered (see the metrics crate's test).
        close(r.overall.failure_auroc.unwrap(), 0.75);
        close(r.overall.accuracy, 0.6);
        close(r.overall.ece15, um::ece15(&c, &ok).unwrap());
        close(r.overall.ece10, um::ece10(&c, &ok).unwrap());
        close(r.overall.aurc, um::risk_coverage(&c, &ok).unwrap().aurc);
        // ID above OOD in 8 of 10 pairs.
        close(r.overall.ood_auroc.unwrap(), 0.8);
        // Many: 0.9 ✓, 0.8 ✓, 0.3 ✗ → perfectly ranked; OOD 5 of 6 pairs.
        let many = r.many.unwrap();
        assert_eq!(many.samples, 3);
        close(many.failure_auroc.unwrap(), 1.0);
        close(many.ood_auroc.unwrap(), 5.0 / 6.0);
        // Few: 0.4 ✓ below 0.8 ✗ → 0.
        close(r.few.unwrap().failure_auroc.unwrap(), 0.0);
        assert!(r.medium.is_none());
        assert_eq!(r.reliability.len(), 15);
        assert_eq!(r.reliability.iter().map(|b| b.count).sum::<usize>(), 5);
        // A group that is all correct has no AUROC but still an ECE.
        let r = score_report("s", "", &c, &[true; 5], &groups, None).unwrap();
        assert!(r.overall.failure_auroc.is_none() && r.overall.ood_auroc.is_none());
        close(r.overall.aurc, 0.0);
        assert!(score_report("s", "", &c, &ok, &groups[..4], None).is_err());
    }

    #[test]
    fn softmax_confidence_is_the_top_probability() {
        let p = softmax_confidence(&[0.0, 3f32.ln(), 5.0, 5.0], 2);
        assert!((p[0] - 0.75).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn combinations_batch_as_documented() {
        // 3 samples, 2 experts, 3 classes.
        let z: Vec<f32> = vec![
            2.0, 0.0, 0.0, /**/ 0.0, 2.5, 0.0, //
            0.0, 1.0, 0.0, /**/ 0.0, 0.0, 4.0, //
            0.5, 0.0, 0.0, /**/ 0.0, 0.0, 0.4,
        ];
        let dims = (3, 2, 3);
        let per =
            |b| combined_predictions(&z, dims, Combination::PerSample { eta: 0.2 }, b).unwrap();
        // Per sample: the same whatever the batching.
        assert_eq!(per(1), per(3));
        assert_eq!(per(2), per(3));
        // Official with batches of one: every weight is 1, the prediction is argmax of the sum.
        let off1 = combined_predictions(&z, dims, Combination::Official { eta: 0.2 }, 1).unwrap();
        assert_eq!(off1, vec![1, 2, 0]);
        assert!(combined_predictions(&z, dims, Combination::PerSample { eta: 0.2 }, 0).is_err());
        // w_E is in (0, 1).
        let u = tlc_uncertainty(&z, 3, 2, 3).unwrap();
        assert!(u.iter().all(|&v| v > 0.0 && v < 1.0), "{u:?}");
    }
}
