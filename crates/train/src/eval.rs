//! Evaluation: the ensemble and every expert on a data set, in eval mode.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use longtail_backbone::{ExpertOutput, MultiExpert};
use longtail_data::{Batcher, BatcherConfig, Dataset, SamplerKind, Shard, Shot, Transform};
use longtail_dist::Communicator;
use longtail_metrics::{argmax_rows, classification_report, ClassificationReport};

use crate::{Method, TrainError};

/// Everything one evaluation pass produced.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Accuracy of the method's prediction ([`Method::predict`]).
    pub report: ClassificationReport,
    /// Accuracy of each expert on its own.
    pub experts: Vec<ClassificationReport>,
    /// The method's logits, row-major `[N, C]`, in data-set order.
    pub logits: Vec<f32>,
    /// Every expert's logits, row-major `[N, E, C]`.
    pub expert_logits: Vec<f32>,
    /// Labels, in data-set order.
    pub labels: Vec<u32>,
    /// Number of classes C.
    pub num_classes: usize,
    /// Number of experts E.
    pub num_experts: usize,
    /// Images per second of the eval forward (data loading included).
    pub images_per_sec: f64,
}

impl Evaluation {
    /// Softmax confidence (max probability) of the method's prediction for every sample.
    pub fn confidences(&self) -> Vec<f64> {
        self.logits
            .chunks(self.num_classes)
            .map(|row| {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
                1.0 / z
            })
            .collect()
    }

    /// The predicted class of every sample.
    pub fn predictions(&self) -> Vec<u32> {
        argmax_rows(&self.logits, self.num_classes)
    }
}

/// Runs the model in eval mode (BN running statistics) over `data` in order, predicting with
/// the method's rule ([`Method::predict`]).
pub fn evaluate(
    model: &MultiExpert,
    objective: &dyn Method,
    data: &Arc<Dataset>,
    transform: &Transform,
    batch_size: usize,
    shots: &[Shot],
    device: &Device,
) -> Result<Evaluation, TrainError> {
    evaluate_with(
        model,
        &|out| objective.predict(out),
        data,
        transform,
        batch_size,
        shots,
        device,
    )
}

/// [`evaluate_with`] sharded over the ranks of `comm` (issue 19): rank r evaluates the
/// positions r, r + W, … of the set (padded by wrapping, [`Shard`]), and the logits and labels
/// are gathered, so every rank returns the [`Evaluation`] of the whole set in data-set order.
/// Eval-mode outputs do not depend on the rest of the batch, so it equals the one-rank
/// evaluation.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_on(
    comm: &Communicator,
    model: &MultiExpert,
    predict: &dyn Fn(&ExpertOutput) -> candle_core::Result<Tensor>,
    data: &Arc<Dataset>,
    transform: &Transform,
    batch_size: usize,
    shots: &[Shot],
    device: &Device,
) -> Result<Evaluation, TrainError> {
    if comm.world_size() == 1 {
        return evaluate_with(model, predict, data, transform, batch_size, shots, device);
    }
    let start = Instant::now();
    let model = model.detached()?;
    let (w, n) = (comm.world_size(), data.len());
    let batcher = Batcher::sharded(
        Arc::clone(data),
        BatcherConfig {
            sampler: SamplerKind::Sequential,
            transform: transform.clone(),
            batch_size,
            seed: 0,
            epoch: 0,
            prefetch: 2,
        },
        device,
        None,
        Shard::new(comm.rank(), w)?,
    )?;
    let (mut logits, mut expert_logits, mut labels) = (vec![], vec![], vec![]);
    for batch in batcher {
        let batch = batch?;
        let out = model.forward_t(&batch.images, false)?;
        logits.extend(to_vec(&predict(&out)?)?);
        expert_logits.extend(to_vec(&out.expert_logits)?);
        labels.extend(batch.labels.to_vec1::<u32>()?.into_iter().map(|l| l as f32));
    }
    // Rank r's k-th row is position r + k·W; positions ≥ n are padding.
    let unshard = |gathered: Vec<f32>, per: usize| -> Vec<f32> {
        let rows = gathered.len() / per / w;
        let mut out = vec![0f32; n * per];
        for r in 0..w {
            for k in 0..rows {
                let p = r + k * w;
                if p < n {
                    let from = (r * rows + k) * per;
                    out[p * per..(p + 1) * per].copy_from_slice(&gathered[from..from + per]);
                }
            }
        }
        out
    };
    let num_classes = shots.len();
    // E·C values per row (every rank has at least one row).
    let ec = expert_logits.len() / labels.len().max(1);
    let logits = unshard(comm.all_gather_f32(&logits)?, num_classes);
    let expert_logits = unshard(comm.all_gather_f32(&expert_logits)?, ec);
    let labels: Vec<u32> = unshard(comm.all_gather_f32(&labels)?, 1)
        .into_iter()
        .map(|l| l as u32)
        .collect();
    finish(
        logits,
        expert_logits,
        labels,
        ec / num_classes.max(1),
        shots,
        start,
    )
}

/// [`evaluate`] with any prediction rule (e.g. the plain mean of the experts' logits,
/// `|out| Ok(out.logits.clone())`, where no method is at hand).
pub fn evaluate_with(
    model: &MultiExpert,
    predict: &dyn Fn(&ExpertOutput) -> candle_core::Result<Tensor>,
    data: &Arc<Dataset>,
    transform: &Transform,
    batch_size: usize,
    shots: &[Shot],
    device: &Device,
) -> Result<Evaluation, TrainError> {
    let start = Instant::now();
    // Inference on detached weights: each batch's activations are freed layer by layer.
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
    let (mut logits, mut expert_logits, mut labels) = (vec![], vec![], vec![]);
    let mut num_experts = 0;
    for batch in batcher {
        let batch = batch?;
        let out = model.forward_t(&batch.images, false)?;
        num_experts = out.expert_logits.dim(1)?;
        logits.extend(to_vec(&predict(&out)?)?);
        expert_logits.extend(to_vec(&out.expert_logits)?);
        labels.extend(batch.labels.to_vec1::<u32>()?);
    }
    finish(logits, expert_logits, labels, num_experts, shots, start)
}

/// The reports of a whole set's logits.
fn finish(
    logits: Vec<f32>,
    expert_logits: Vec<f32>,
    labels: Vec<u32>,
    num_experts: usize,
    shots: &[Shot],
    start: Instant,
) -> Result<Evaluation, TrainError> {
    let num_classes = shots.len();
    let report = classification_report(&argmax_rows(&logits, num_classes), &labels, shots)?;
    let mut experts = vec![];
    for e in 0..num_experts {
        let own: Vec<f32> = expert_logits
            .chunks(num_classes)
            .skip(e)
            .step_by(num_experts)
            .flatten()
            .copied()
            .collect();
        experts.push(classification_report(
            &argmax_rows(&own, num_classes),
            &labels,
            shots,
        )?);
    }
    let images_per_sec = labels.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
    Ok(Evaluation {
        report,
        experts,
        logits,
        expert_logits,
        labels,
        num_classes,
        num_experts,
        images_per_sec,
    })
}

fn to_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}
