//! Evaluation: the ensemble and every expert on a data set, in eval mode.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use longtail_backbone::{ExpertOutput, MultiExpert};
use longtail_data::{Batcher, Dataset, SamplerKind, Shot, Transform};
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
