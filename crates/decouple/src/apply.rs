//! [`apply`]: run a [`Stage`] on a finished run folder, store it in `RUN/stage-<name>/`, and
//! reuse the stored result when the same stage with the same settings already ran on the same
//! weights.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use longtail_backbone::{ExpertOutput, MultiExpert};
use longtail_data::{shot_groups, Batcher, Dataset, DatasetName, Shot, ShotRule, Transform};
use longtail_metrics::{argmax_rows, classification_report, ClassificationReport};
use longtail_train::{
    checkpoint, evaluate_with, load_run, train_epoch, trainer::LAST, Evaluation, RunLock, Sgd,
    SgdConfig, Step,
};
use serde::{Deserialize, Serialize};

use crate::error::{DecoupleError, Result};
use crate::head::{
    logit_adjust_offsets, max_norm_project, max_norm_threshold, tau_normalize,
    wb_class_balanced_loss, Head, HeadKind,
};
use crate::stage::{tau_grid, Recipe, Stage, DEFAULT_TAU, WB_BETA};

/// The stage's network: every tensor of the run with the re-balanced classifiers, plus
/// `stage.logit_scale` `[E, C]` (LWS) and `stage.logit_offset` `[C]` (LA) where the stage has
/// them, and the run's metadata (so `longtail_train::load_run` reads it).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The stage's logits on the test (and validation) split, before and after, with the labels:
/// what a stored result is rebuilt from without a forward pass.
pub const LOGITS_FILE: &str = "logits.safetensors";
/// The stage's summary (settings, τ, overall / many / medium / few before and after); written
/// last, so its presence with matching settings means the stage finished.
pub const RESULT_FILE: &str = "result.json";
/// Version of the stored layout; a change makes old results recompute.
const FORMAT: u32 = 1;

/// Settings of [`apply`] beyond the stage itself; every field defaults to the stage's recipe
/// ([`Stage::recipe_for`]) and the run's seed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageOptions {
    /// Epochs of a training stage.
    pub epochs: Option<usize>,
    /// Images per step of a training stage.
    pub batch_size: Option<usize>,
    /// Initial learning rate of a training stage.
    pub lr: Option<f64>,
    /// Weight decay of a training stage.
    pub weight_decay: Option<f64>,
    /// Seed of cRT's re-initialisation and the sample order and augmentation (default: the run's).
    pub seed: Option<u64>,
    /// Recompute even when a result with the same settings is stored.
    pub force: bool,
}

/// Where the τ of τ-norm or LA came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TauSource {
    /// Given in the stage name (`la:0.5`).
    Given,
    /// The best balanced accuracy on the run's validation split over 0, 0.1, …, 2.0.
    Validation,
    /// No validation split: the default 1.
    Default,
}

/// One epoch of a training stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean loss over its steps (summed over experts).
    pub loss: f64,
    /// Wall time.
    pub seconds: f64,
}

/// What [`apply`] produced (or read back).
#[derive(Clone, Debug)]
pub struct StageResult {
    /// The stage as asked.
    pub stage: Stage,
    /// τ used by τ-norm or LA.
    pub tau: Option<f64>,
    /// Where that τ came from.
    pub tau_source: Option<TauSource>,
    /// The optimisation of a training stage.
    pub recipe: Option<Recipe>,
    /// The seed used.
    pub seed: u64,
    /// The re-balanced model on the test split (prediction: the mean of the experts' adjusted
    /// logits).
    pub test: Evaluation,
    /// The re-balanced model on the run's validation split, if it has one.
    pub val: Option<Evaluation>,
    /// The run as trained, on the test split, with the same prediction rule (mean of experts).
    pub before_test: Evaluation,
    /// The run as trained, on the validation split.
    pub before_val: Option<Evaluation>,
    /// The training stage's epochs.
    pub epochs: Vec<StageEpoch>,
    /// What the stage did that a reader should know (e.g. identity on a cosine classifier).
    pub notes: Vec<String>,
    /// Wall time of the stage when it was computed.
    pub seconds: f64,
    /// Whether this result was read back from an earlier run of the same stage.
    pub reused: bool,
    /// The stage's folder, `RUN/stage-<name>`.
    pub dir: PathBuf,
}

/// overall / mean-class / many / medium / few of one evaluation, as stored in `result.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Micro top-1 (= mean per-class accuracy on a balanced test set).
    pub overall: f64,
    /// Mean per-class accuracy.
    pub mean_class: f64,
    /// Many-shot accuracy (RIDE rule: more than 100 training images).
    pub many: Option<f64>,
    /// Medium-shot accuracy (20–100).
    pub medium: Option<f64>,
    /// Few-shot accuracy (fewer than 20).
    pub few: Option<f64>,
}

impl Summary {
    /// The summary of a report.
    pub fn of(r: &ClassificationReport) -> Self {
        Self {
            overall: r.accuracy,
            mean_class: r.mean_class_accuracy,
            many: r.many,
            medium: r.medium,
            few: r.few,
        }
    }
}

/// What makes two stage results the same: the stage as asked, the recipe, the seed and the run's
/// weights (a digest of its `last.safetensors`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StageKey {
    format: u32,
    stage: Stage,
    recipe: Option<Recipe>,
    seed: u64,
    run_digest: String,
}

/// `result.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ResultFile {
    key: serde_json::Value,
    stage: String,
    tau: Option<f64>,
    tau_source: Option<TauSource>,
    notes: Vec<String>,
    seconds: f64,
    epochs: Vec<StageEpoch>,
    test: Summary,
    val: Option<Summary>,
    before_test: Summary,
    before_val: Option<Summary>,
}

/// A per-class affine map of each expert's logits, `z'_{e,c} = scale_{e,c} · z_{e,c} +
/// offset_c`: LWS's learned scales and LA's offsets, which a cosine classifier cannot hold in
/// its weights.
#[derive(Clone, Debug, Default)]
struct Affine {
    scale: Option<Vec<Vec<f32>>>,
    offset: Option<Vec<f32>>,
}

impl Affine {
    fn apply(&self, ev: Evaluation, shots: &[Shot]) -> Result<Evaluation> {
        if self.scale.is_none() && self.offset.is_none() {
            return Ok(ev);
        }
        let (e_n, c) = (ev.num_experts, ev.num_classes);
        let mut expert = ev.expert_logits;
        for (i, z) in expert.iter_mut().enumerate() {
            let (class, e) = (i % c, (i / c) % e_n);
            if let Some(s) = &self.scale {
                *z *= s[e][class];
            }
            if let Some(o) = &self.offset {
                *z += o[class];
            }
        }
        let logits = mean_over_experts(&expert, e_n, c);
        rebuild(logits, expert, ev.labels, c, e_n, ev.images_per_sec, shots)
    }
}

fn mean_over_experts(expert: &[f32], e_n: usize, c: usize) -> Vec<f32> {
    expert
        .chunks(e_n * c)
        .flat_map(|sample| {
            (0..c).map(move |k| (0..e_n).map(|e| sample[e * c + k]).sum::<f32>() / e_n as f32)
        })
        .collect()
}

/// An [`Evaluation`] from its logits and labels (the reports recomputed).
fn rebuild(
    logits: Vec<f32>,
    expert_logits: Vec<f32>,
    labels: Vec<u32>,
    num_classes: usize,
    num_experts: usize,
    images_per_sec: f64,
    shots: &[Shot],
) -> Result<Evaluation> {
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

/// FNV-1a 64 of `bytes`, as 16 hex digits: enough to notice that a run was retrained.
fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn not_a_run(path: &Path, reason: impl Into<String>) -> DecoupleError {
    DecoupleError::NotARun {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Applies `stage` to the finished run in `run_dir` on `device` and returns the re-balanced
/// model's evaluations (test, and validation where the run has a validation split), next to the
/// run's own.
///
/// Every stage keeps the trunk and the experts' stages frozen, with BatchNorm in eval mode (its
/// running statistics untouched), and works on each expert's classifier separately (a
/// multi-expert run gets E re-balanced classifiers, each trained on its own expert's features
/// with its own loss, on the same batches); the prediction is the mean of the experts' logits.
/// Differs from official: Decoupling and weight balancing leave BN in train mode during stage 2,
/// so their running statistics drift on the stage-2 batches (docs/baselines.md §6, §7).
///
/// The result goes to `run_dir/stage-<name>/` ([`Stage::folder`]): [`WEIGHTS_FILE`],
/// [`LOGITS_FILE`] and last [`RESULT_FILE`], each written atomically, under the folder's lock.
/// If that folder already holds a result of the same stage, recipe and seed on the same weights
/// (a digest of the run's `last.safetensors`), it is read back instead ([`StageResult::reused`]),
/// unless [`StageOptions::force`].
///
/// Errors: [`DecoupleError::NotARun`] for a folder without a finished run,
/// [`DecoupleError::Options`] for a bad recipe, and the engine's errors.
pub fn apply(
    run_dir: &Path,
    stage: &Stage,
    opts: &StageOptions,
    device: &Device,
) -> Result<StageResult> {
    let start = Instant::now();
    if !run_dir.is_dir() {
        return Err(not_a_run(run_dir, "no such run folder"));
    }
    let last = run_dir.join(LAST);
    if !last.is_file() {
        return Err(not_a_run(
            run_dir,
            format!("holds no {LAST}: not a finished `longtail train` run"),
        ));
    }
    let bytes = std::fs::read(&last).map_err(|e| longtail_train::TrainError::io(&last, e))?;
    let run_digest = digest(&bytes);
    drop(bytes);
    let header = checkpoint::read_header(&last)?;
    let loaded = load_run(&last, device)?;
    let cfg = loaded.config.clone();
    let epoch: usize = header
        .metadata
        .get("epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    if epoch < cfg.optim.epochs {
        return Err(not_a_run(
            run_dir,
            format!(
                "the run stopped at epoch {epoch} of {}: finish it first (`longtail train --resume`)",
                cfg.optim.epochs
            ),
        ));
    }
    let dataset: DatasetName = cfg
        .data
        .dataset
        .parse()
        .map_err(longtail_train::TrainError::from)?;
    let recipe = match stage.recipe_for(dataset) {
        Some(mut r) => {
            r.epochs = opts.epochs.unwrap_or(r.epochs);
            r.batch_size = opts.batch_size.unwrap_or(r.batch_size);
            r.lr = opts.lr.unwrap_or(r.lr);
            r.weight_decay = opts.weight_decay.unwrap_or(r.weight_decay);
            r.check()?;
            Some(r)
        }
        None => None,
    };
    let seed = opts.seed.unwrap_or(cfg.seed);
    let key = StageKey {
        format: FORMAT,
        stage: stage.clone(),
        recipe: recipe.clone(),
        seed,
        run_digest,
    };
    let key_value: serde_json::Value = serde_json::from_str(&json(&key)?)
        .map_err(|e| DecoupleError::Options(format!("cannot encode the stage settings: {e}")))?;
    let dir = run_dir.join(stage.folder());
    let shots = shot_groups(&loaded.class_counts, ShotRule::Ride);
    if !opts.force {
        if let Some(r) = read_stored(&dir, &key_value, stage, &recipe, seed, &shots)? {
            return Ok(r);
        }
    }
    let _lock = RunLock::acquire(&dir, "longtail decouple")?;

    let data = loaded.data()?;
    let (train_tf, eval_tf) = (data.train_transform, data.eval_transform);
    let train = Arc::new(data.splits.train);
    let test = Arc::new(data.splits.test);
    let val = data.splits.val.map(Arc::new);
    let model = &loaded.model;
    let ebs = cfg.optim.eval_batch_size;
    let e_n = cfg.model.num_experts;
    let kind = HeadKind::of(&cfg.model);
    let plain = |set: &Arc<Dataset>| -> Result<Evaluation> {
        Ok(evaluate_with(
            model,
            &|out| Ok(out.logits.clone()),
            set,
            &eval_tf,
            ebs,
            &shots,
            device,
        )?)
    };
    let before_test = plain(&test)?;
    let before_val = val.as_ref().map(&plain).transpose()?;

    let mut affine = Affine::default();
    let mut notes = vec![];
    let mut epochs = vec![];
    let (mut tau, mut tau_source) = (None, None);
    let cosine_note = |what: &str| {
        format!(
            "the classifier is cosine (NormedLinear): its forward divides every class vector by its norm, so {what}"
        )
    };
    match stage {
        Stage::Crt => {
            let recipe = recipe.as_ref().expect("cRT trains");
            // The network's own initialisation of a fresh classifier, seeded.
            let (fresh, _) = MultiExpert::seeded(&cfg.model, seed, device)?;
            let init = Head::read_all(&fresh, &cfg.model)?;
            let (heads, log) = train_heads(
                model,
                &train,
                &train_tf,
                recipe,
                seed,
                init,
                device,
                &|head, feats, labels| candle_nn::loss::cross_entropy(&head.logits(feats)?, labels),
                None,
            )?;
            for (e, h) in heads.iter().enumerate() {
                h.write_into(&loaded.varmap, e_n, e)?;
            }
            epochs = log;
        }
        Stage::WeightBalancing { thresh } => {
            let recipe = recipe.as_ref().expect("WB trains");
            let init = Head::read_all(&loaded.varmap, &cfg.model)?;
            let deltas = init
                .iter()
                .map(|h| max_norm_threshold(&h.class_norms()?, *thresh))
                .collect::<Result<Vec<_>>>()?;
            let w = longtail_losses::drw_weights(&loaded.class_counts, WB_BETA)?;
            let w = Tensor::from_vec(
                w.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                w.len(),
                device,
            )?;
            let (heads, log) = train_heads(
                model,
                &train,
                &train_tf,
                recipe,
                seed,
                init,
                device,
                &|head, feats, labels| wb_class_balanced_loss(&head.logits(feats)?, labels, &w),
                Some(&deltas),
            )?;
            for (e, h) in heads.iter().enumerate() {
                h.write_into(&loaded.varmap, e_n, e)?;
            }
            if matches!(kind, HeadKind::Cosine { .. }) {
                notes.push(cosine_note(
                    "MaxNorm changes no logit; the stage is the class-balanced fine-tuning alone",
                ));
            }
            notes.push(format!(
                "MaxNorm after every step (δ per expert: {}); the official demo projects once per epoch",
                deltas
                    .iter()
                    .map(|d| format!("{d:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            epochs = log;
        }
        Stage::Lws => {
            let recipe = recipe.as_ref().expect("LWS trains");
            let (scales, log) = train_scales(model, &train, &train_tf, recipe, seed, e_n, device)?;
            affine.scale = Some(scales);
            epochs = log;
        }
        Stage::TauNorm { tau: asked } => {
            let heads = Head::read_all(&loaded.varmap, &cfg.model)?;
            if matches!(kind, HeadKind::Cosine { .. }) {
                notes.push(cosine_note(
                    "τ-normalisation changes no logit: the result is the run itself",
                ));
                tau = Some(asked.unwrap_or(DEFAULT_TAU));
                tau_source = Some(if asked.is_some() {
                    TauSource::Given
                } else {
                    TauSource::Default
                });
            } else {
                let (t, source) = match (asked, &val) {
                    (Some(t), _) => (*t, TauSource::Given),
                    (None, Some(v)) => (
                        choose_tau_norm(model, &heads, v, &eval_tf, ebs, &shots, device)?,
                        TauSource::Validation,
                    ),
                    (None, None) => (DEFAULT_TAU, TauSource::Default),
                };
                for (e, h) in heads.iter().enumerate() {
                    tau_norm_head(h, t)?.write_into(&loaded.varmap, e_n, e)?;
                }
                notes.push("the bias is dropped (set to 0), as the official tau_norm.py".into());
                tau = Some(t);
                tau_source = Some(source);
            }
        }
        Stage::LogitAdjust { tau: asked } => {
            let prior = longtail_losses::class_prior(&loaded.class_counts)?;
            let (t, source) = match (asked, &before_val) {
                (Some(t), _) => (*t, TauSource::Given),
                (None, Some(v)) => (choose_la_tau(&prior, v, &shots)?, TauSource::Validation),
                (None, None) => (DEFAULT_TAU, TauSource::Default),
            };
            let offsets = logit_adjust_offsets(&prior, t)?;
            affine.offset = Some(offsets.iter().map(|&o| o as f32).collect());
            tau = Some(t);
            tau_source = Some(source);
        }
    }

    let test_ev = affine.apply(plain(&test)?, &shots)?;
    let val_ev = match &val {
        Some(v) => Some(affine.apply(plain(v)?, &shots)?),
        None => None,
    };
    let result = StageResult {
        stage: stage.clone(),
        tau,
        tau_source,
        recipe,
        seed,
        test: test_ev,
        val: val_ev,
        before_test,
        before_val,
        epochs,
        notes,
        seconds: start.elapsed().as_secs_f64(),
        reused: false,
        dir: dir.clone(),
    };
    store(
        &dir,
        &key_value,
        &result,
        &loaded.varmap,
        &affine,
        &header.metadata,
    )?;
    Ok(result)
}

fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| DecoupleError::Options(format!("cannot encode the stage settings: {e}")))
}

/// A head whose class vectors are τ-normalised and whose bias is zero.
fn tau_norm_head(h: &Head, tau: f64) -> Result<Head> {
    Ok(Head {
        kind: h.kind,
        weight: tau_normalize(&h.weight, h.kind.class_axis(), tau)?,
        bias: h.bias.as_ref().map(|b| b.zeros_like()).transpose()?,
    })
}

/// Better of two candidate τ: higher balanced accuracy, then nearer [`DEFAULT_TAU`].
fn better(acc: f64, tau: f64, best: Option<(f64, f64)>) -> bool {
    match best {
        None => true,
        Some((ba, bt)) => {
            acc > ba + 1e-12
                || ((acc - ba).abs() <= 1e-12
                    && (tau - DEFAULT_TAU).abs() < (bt - DEFAULT_TAU).abs())
        }
    }
}

/// τ of τ-norm with the best mean per-class accuracy on `val` over [`tau_grid`]: the features
/// are computed once, then every τ's logits from them.
fn choose_tau_norm(
    model: &MultiExpert,
    heads: &[Head],
    val: &Arc<Dataset>,
    transform: &Transform,
    batch_size: usize,
    shots: &[Shot],
    device: &Device,
) -> Result<f64> {
    let feats: RefCell<Vec<Tensor>> = RefCell::new(vec![]);
    let ev = evaluate_with(
        model,
        &|out| {
            feats.borrow_mut().push(out.features.detach());
            Ok(out.logits.clone())
        },
        val,
        transform,
        batch_size,
        shots,
        device,
    )?;
    let feats = Tensor::cat(&feats.into_inner(), 0)?; // [N, E, D]
    let mut best: Option<(f64, f64)> = None;
    for tau in tau_grid() {
        let mut sum: Option<Tensor> = None;
        for (e, h) in heads.iter().enumerate() {
            let z = tau_norm_head(h, tau)?.logits(&feats.i((.., e, ..))?.contiguous()?)?;
            sum = Some(match sum {
                Some(s) => (s + z)?,
                None => z,
            });
        }
        let logits = (sum.expect("at least one expert") / heads.len() as f64)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let acc = classification_report(&argmax_rows(&logits, ev.num_classes), &ev.labels, shots)?
            .mean_class_accuracy;
        if better(acc, tau, best) {
            best = Some((acc, tau));
        }
    }
    Ok(best.expect("a non-empty grid").1)
}

/// τ of post-hoc LA with the best mean per-class accuracy on the validation logits.
fn choose_la_tau(prior: &[f64], val: &Evaluation, shots: &[Shot]) -> Result<f64> {
    let mut best: Option<(f64, f64)> = None;
    for tau in tau_grid() {
        let o = logit_adjust_offsets(prior, tau)?;
        let adjusted: Vec<f32> = val
            .logits
            .iter()
            .enumerate()
            .map(|(i, z)| z + o[i % val.num_classes] as f32)
            .collect();
        let acc =
            classification_report(&argmax_rows(&adjusted, val.num_classes), &val.labels, shots)?
                .mean_class_accuracy;
        if better(acc, tau, best) {
            best = Some((acc, tau));
        }
    }
    Ok(best.expect("a non-empty grid").1)
}

type HeadLoss<'a> = dyn Fn(&Head, &Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a;

/// Trains one classifier per expert from `init` on the frozen network's pooled features
/// (detached; BN in eval mode), with `loss(head, features [B, D], labels)` per expert summed
/// over experts (the experts share no parameter, so each gets exactly its own gradient). With
/// `max_norm`, every expert's class vectors are projected onto its δ after every step.
#[allow(clippy::too_many_arguments)]
fn train_heads(
    model: &MultiExpert,
    train: &Arc<Dataset>,
    transform: &Transform,
    recipe: &Recipe,
    seed: u64,
    init: Vec<Head>,
    device: &Device,
    loss: &HeadLoss<'_>,
    max_norm: Option<&[f64]>,
) -> Result<(Vec<Head>, Vec<StageEpoch>)> {
    let mut params = vec![];
    let mut vars = vec![];
    let mut heads = vec![];
    for (e, h) in init.iter().enumerate() {
        let w = Var::from_tensor(&h.weight)?;
        let b = h.bias.as_ref().map(Var::from_tensor).transpose()?;
        params.push((format!("expert{e}.weight"), w.clone()));
        if let Some(b) = &b {
            params.push((format!("expert{e}.bias"), b.clone()));
        }
        heads.push(Head {
            kind: h.kind,
            weight: w.as_tensor().clone(),
            bias: b.as_ref().map(|b| b.as_tensor().clone()),
        });
        vars.push(w);
    }
    let log = train_loop(
        model,
        train,
        transform,
        recipe,
        seed,
        params,
        device,
        |out, labels| {
            let mut total: Option<Tensor> = None;
            for (e, h) in heads.iter().enumerate() {
                let l = loss(h, &out.features.i((.., e, ..))?.contiguous()?, labels)?;
                total = Some(match total {
                    Some(t) => (t + l)?,
                    None => l,
                });
            }
            Ok(total.expect("at least one expert"))
        },
        || {
            if let Some(deltas) = max_norm {
                for ((w, h), &d) in vars.iter().zip(&heads).zip(deltas) {
                    w.set(&max_norm_project(w.as_tensor(), h.kind.class_axis(), d)?)?;
                }
            }
            Ok(())
        },
    )?;
    let heads = heads
        .into_iter()
        .map(|h| {
            Ok(Head {
                kind: h.kind,
                weight: h.weight.detach().copy()?,
                bias: h.bias.map(|b| b.detach().copy()).transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((heads, log))
}

/// LWS: one scale per class and expert, initialised to 1, on the frozen logits:
/// `f_e ⊙ z_e`, cross-entropy per expert summed over experts. Returns the scales `[E][C]`.
fn train_scales(
    model: &MultiExpert,
    train: &Arc<Dataset>,
    transform: &Transform,
    recipe: &Recipe,
    seed: u64,
    num_experts: usize,
    device: &Device,
) -> Result<(Vec<Vec<f32>>, Vec<StageEpoch>)> {
    let c = model.config().num_classes;
    let scales = (0..num_experts)
        .map(|_| Var::ones(c, DType::F32, device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let params = scales
        .iter()
        .enumerate()
        .map(|(e, v)| (format!("expert{e}.scale"), v.clone()))
        .collect();
    let log = train_loop(
        model,
        train,
        transform,
        recipe,
        seed,
        params,
        device,
        |out, labels| {
            let mut total: Option<Tensor> = None;
            for (e, f) in scales.iter().enumerate() {
                let z = out
                    .expert_logits
                    .i((.., e, ..))?
                    .broadcast_mul(f.as_tensor())?;
                let l = candle_nn::loss::cross_entropy(&z, labels)?;
                total = Some(match total {
                    Some(t) => (t + l)?,
                    None => l,
                });
            }
            Ok(total.expect("at least one expert"))
        },
        || Ok(()),
    )?;
    let scales = scales
        .iter()
        .map(|v| Ok(v.as_tensor().to_vec1::<f32>()?))
        .collect::<Result<Vec<_>>>()?;
    Ok((scales, log))
}

/// The stage's epochs over the engine's loop ([`train_epoch`]): the recipe's sampler over
/// `train` with the run's training augmentation, the frozen network in eval mode (outputs
/// detached), SGD over `params` with the per-epoch cosine; `after_step` runs after every
/// optimizer step.
#[allow(clippy::too_many_arguments)]
fn train_loop(
    model: &MultiExpert,
    train: &Arc<Dataset>,
    transform: &Transform,
    recipe: &Recipe,
    seed: u64,
    params: Vec<(String, Var)>,
    device: &Device,
    mut loss: impl FnMut(&ExpertOutput, &Tensor) -> candle_core::Result<Tensor>,
    mut after_step: impl FnMut() -> Result<()>,
) -> Result<Vec<StageEpoch>> {
    let sgd = SgdConfig {
        momentum: recipe.momentum,
        weight_decay: recipe.weight_decay,
        nesterov: false,
    };
    let mut opt = Sgd::new(params, sgd)?;
    let mut log = vec![];
    for epoch in 1..=recipe.epochs {
        let lr = recipe.lr_at(epoch);
        opt.set_lr(lr);
        let batcher = Batcher::new(
            Arc::clone(train),
            recipe.sampler,
            transform.clone(),
            recipe.batch_size,
            seed,
            epoch as u64,
            device,
        )?;
        let mut failed: Option<DecoupleError> = None;
        let stats = train_epoch(
            batcher,
            &mut opt,
            1,
            epoch,
            |batch| {
                let out = model.forward_t(&batch.images, false)?;
                let out = ExpertOutput {
                    expert_logits: out.expert_logits.detach(),
                    logits: out.logits.detach(),
                    features: out.features.detach(),
                };
                Ok(Step {
                    loss: loss(&out, &batch.labels)?,
                    correct: 0,
                })
            },
            |_, _, _| {
                // Called after each batch's optimizer step (accumulate = 1).
                if failed.is_none() {
                    if let Err(e) = after_step() {
                        failed = Some(e);
                    }
                }
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
        log.push(StageEpoch {
            epoch,
            lr,
            loss: stats.step_loss_sum / stats.steps.max(1) as f64,
            seconds: stats.seconds,
        });
    }
    Ok(log)
}

fn split_tensors(prefix: &str, ev: &Evaluation) -> Result<Vec<(String, Tensor)>> {
    let n = ev.labels.len();
    let (e, c) = (ev.num_experts, ev.num_classes);
    Ok(vec![
        (
            format!("{prefix}.logits"),
            Tensor::from_slice(&ev.logits, (n, c), &Device::Cpu)?,
        ),
        (
            format!("{prefix}.expert_logits"),
            Tensor::from_slice(&ev.expert_logits, (n, e, c), &Device::Cpu)?,
        ),
        (
            format!("{prefix}.labels"),
            Tensor::from_slice(&ev.labels, n, &Device::Cpu)?,
        ),
    ])
}

fn store(
    dir: &Path,
    key: &serde_json::Value,
    r: &StageResult,
    varmap: &candle_nn::VarMap,
    affine: &Affine,
    run_meta: &BTreeMap<String, String>,
) -> Result<()> {
    // The network with its re-balanced classifiers, and the logit map.
    let mut tensors: Vec<(String, Tensor)> = {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    };
    if let Some(s) = &affine.scale {
        let (e, c) = (s.len(), s[0].len());
        let flat: Vec<f32> = s.iter().flatten().copied().collect();
        tensors.push((
            "stage.logit_scale".into(),
            Tensor::from_vec(flat, (e, c), &Device::Cpu)?,
        ));
    }
    if let Some(o) = &affine.offset {
        tensors.push((
            "stage.logit_offset".into(),
            Tensor::from_slice(o, o.len(), &Device::Cpu)?,
        ));
    }
    let mut meta: BTreeMap<String, String> = run_meta
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "config" | "method" | "dataset" | "class_counts" | "class_names" | "epoch"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("format".into(), checkpoint::FORMAT.into());
    meta.insert("stage".into(), r.stage.to_string());
    meta.insert("stage_key".into(), key.to_string());
    let bytes = checkpoint::to_bytes(tensors.iter().map(|(k, v)| (k.as_str(), v)), &meta)?;
    checkpoint::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;

    let mut logits = split_tensors("test", &r.test)?;
    logits.extend(split_tensors("before_test", &r.before_test)?);
    if let (Some(v), Some(bv)) = (&r.val, &r.before_val) {
        logits.extend(split_tensors("val", v)?);
        logits.extend(split_tensors("before_val", bv)?);
    }
    let lmeta = BTreeMap::from([
        (
            "test_images_per_sec".to_string(),
            r.test.images_per_sec.to_string(),
        ),
        ("stage_key".to_string(), key.to_string()),
    ]);
    let bytes = checkpoint::to_bytes(logits.iter().map(|(k, v)| (k.as_str(), v)), &lmeta)?;
    checkpoint::write_atomic(&dir.join(LOGITS_FILE), &bytes)?;

    let file = ResultFile {
        key: key.clone(),
        stage: r.stage.to_string(),
        tau: r.tau,
        tau_source: r.tau_source,
        notes: r.notes.clone(),
        seconds: r.seconds,
        epochs: r.epochs.clone(),
        test: Summary::of(&r.test.report),
        val: r.val.as_ref().map(|v| Summary::of(&v.report)),
        before_test: Summary::of(&r.before_test.report),
        before_val: r.before_val.as_ref().map(|v| Summary::of(&v.report)),
    };
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| DecoupleError::Options(format!("cannot encode result.json: {e}")))?;
    checkpoint::write_atomic(&dir.join(RESULT_FILE), format!("{text}\n").as_bytes())?;
    Ok(())
}

/// The stored result in `dir` if its key equals `key`; `None` if there is none or it was made
/// with other settings or weights.
fn read_stored(
    dir: &Path,
    key: &serde_json::Value,
    stage: &Stage,
    recipe: &Option<Recipe>,
    seed: u64,
    shots: &[Shot],
) -> Result<Option<StageResult>> {
    let path = dir.join(RESULT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(longtail_train::TrainError::io(&path, e).into()),
    };
    let stored: ResultFile = match serde_json::from_str(&text) {
        Ok(s) => s,
        // An older or damaged summary: recompute.
        Err(_) => return Ok(None),
    };
    if &stored.key != key {
        return Ok(None);
    }
    let lpath = dir.join(LOGITS_FILE);
    if !lpath.is_file() {
        return Ok(None);
    }
    let ck = checkpoint::load(&lpath, &Device::Cpu)?;
    let stored_err = |reason: String| DecoupleError::Stored {
        path: lpath.clone(),
        reason,
    };
    let ips: f64 = ck
        .metadata
        .get("test_images_per_sec")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let split = |prefix: &str| -> Result<Option<Evaluation>> {
        let get = |name: &str| ck.tensors.get(&format!("{prefix}.{name}"));
        let (Some(l), Some(el), Some(lab)) = (get("logits"), get("expert_logits"), get("labels"))
        else {
            return Ok(None);
        };
        let dims = el.dims().to_vec();
        if dims.len() != 3 || dims[2] != shots.len() {
            return Err(stored_err(format!(
                "`{prefix}.expert_logits` has shape {dims:?}, not [N, E, {}]",
                shots.len()
            )));
        }
        Ok(Some(rebuild(
            l.flatten_all()?.to_vec1::<f32>()?,
            el.flatten_all()?.to_vec1::<f32>()?,
            lab.to_vec1::<u32>()?,
            dims[2],
            dims[1],
            ips,
            shots,
        )?))
    };
    let (Some(test), Some(before_test)) = (split("test")?, split("before_test")?) else {
        return Err(stored_err("the test logits are missing".into()));
    };
    Ok(Some(StageResult {
        stage: stage.clone(),
        tau: stored.tau,
        tau_source: stored.tau_source,
        recipe: recipe.clone(),
        seed,
        test,
        val: split("val")?,
        before_test,
        before_val: split("before_val")?,
        epochs: stored.epochs,
        notes: stored.notes,
        seconds: stored.seconds,
        reused: true,
        dir: dir.to_path_buf(),
    }))
}
