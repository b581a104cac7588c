//! The epoch loop shared by every method.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use longtail_backbone::ops::{set_sync_batch_norm, RankSum};
use longtail_backbone::MultiExpert;
use longtail_data::{Batcher, BatcherConfig, Dataset, SamplerKind, Shard, Shot, Transform};
use longtail_dist::Communicator;
use serde::Serialize;

use crate::checkpoint::{self, MOMENTUM_PREFIX};
use crate::config::config_differences;
use crate::eval::{evaluate_on, Evaluation};
use crate::{LrSchedule, Method, Sgd, SgdConfig, TrainError};
use longtail_backbone::trainable_vars;

/// File name of the checkpoint written after every epoch.
pub const LAST: &str = "last.safetensors";
/// File name of the checkpoint with the best validation accuracy (only with a validation split).
pub const BEST: &str = "best.safetensors";
/// File name of the per-epoch metrics (JSON lines): deterministic values only, so identical
/// runs write identical bytes.
pub const METRICS: &str = "metrics.jsonl";
/// File name of the per-epoch wall times (JSON lines of [`EpochTiming`]), kept apart from
/// [`METRICS`] because they differ from one run to the next.
pub const TIMING: &str = "timing.jsonl";

/// Optimisation settings of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Number of epochs.
    pub epochs: usize,
    /// Images per optimizer step (per micro-batch when `accumulate > 1`).
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Per-epoch schedule of the learning rate.
    pub schedule: LrSchedule,
    /// Momentum, Nesterov and weight decay.
    pub sgd: SgdConfig,
    /// Seed of data order and augmentation (the weights are seeded by the caller).
    pub seed: u64,
    /// Micro-batches whose gradients are averaged into one step (1 = none). BN still sees each
    /// micro-batch alone, so results differ slightly from one large batch.
    pub accumulate: usize,
    /// Training-sample order.
    pub sampler: SamplerKind,
    /// Batch size of evaluation passes.
    pub eval_batch_size: usize,
    /// Mixup's α ([`crate::mixup`]); `None` trains without mixup.
    pub mixup_alpha: Option<f64>,
    /// Synchronised batch norm over the ranks of a data-parallel run
    /// ([`longtail_backbone::ops::set_sync_batch_norm`]); ignored on one rank.
    pub sync_bn: bool,
    /// Per-group learning-rate multiples ([`crate::LrGroup`]); empty: one rate for all.
    pub lr_groups: Vec<crate::LrGroup>,
}

impl TrainConfig {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), TrainError> {
        if self.epochs == 0
            || self.batch_size == 0
            || self.accumulate == 0
            || self.eval_batch_size == 0
        {
            return Err(TrainError::Config(
                "epochs, batch size, accumulate and eval batch size must be positive".into(),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(TrainError::Config(format!(
                "the learning rate must be positive (got {})",
                self.lr
            )));
        }
        if let Some(alpha) = self.mixup_alpha {
            crate::mixup::check_alpha(alpha)?;
        }
        self.schedule.check(self.epochs)
    }
}

/// The data of a run.
#[derive(Clone, Debug)]
pub struct TrainData {
    /// Training split.
    pub train: Arc<Dataset>,
    /// Optional validation split (carved from training data); the best checkpoint is chosen on it.
    pub val: Option<Arc<Dataset>>,
    /// Test split, reported every epoch, never used for selection.
    pub test: Arc<Dataset>,
    /// Training transform (augmentation + normalisation).
    pub train_transform: Transform,
    /// Evaluation transform.
    pub eval_transform: Transform,
    /// Shot group of every class (from the training counts).
    pub shots: Vec<Shot>,
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on a terminal, one line per epoch otherwise.
    Auto,
    /// One line per epoch on stderr.
    Lines,
    /// Nothing.
    Quiet,
}

/// Where and how a run is written.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Run directory (checkpoints, metrics).
    pub out_dir: PathBuf,
    /// Continue the run in `out_dir` from its last checkpoint.
    pub resume: bool,
    /// Metadata stored in every checkpoint (run config, method, class names, …). A `config` entry
    /// must match on resume.
    pub metadata: BTreeMap<String, String>,
    /// Progress display.
    pub progress: Progress,
    /// Device of the tensors.
    pub device: Device,
    /// The ranks training together ([`Communicator::local`] for one process). See [`fit`] for
    /// what each rank does.
    pub comm: Communicator,
}

/// One line of `metrics.jsonl` (keys as RIDE's logs).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy of the method's prediction (on augmented images, train-mode BN). With
    /// mixup, the official λ-weighted accuracy on the mixed images, `λ·acc(y) + (1 − λ)·acc(y[p])`
    /// ([`crate::mixup::mixup_hits`]).
    pub accuracy: f64,
    /// Accuracy on the validation split, when there is one.
    pub val_accuracy: Option<f64>,
    /// Test accuracy (micro top-1).
    pub test_accuracy: f64,
    /// Test many-shot accuracy (mean per-class).
    pub many_shot_acc: Option<f64>,
    /// Test medium-shot accuracy.
    pub medium_shot_acc: Option<f64>,
    /// Test few-shot accuracy.
    pub few_shot_acc: Option<f64>,
    /// Learning rate of the epoch.
    pub lr: f64,
}

/// One line of `timing.jsonl`: how long an epoch took (not reproducible, so not in
/// `metrics.jsonl`).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct EpochTiming {
    /// 1-based epoch.
    pub epoch: usize,
    /// Wall time of the epoch (training and evaluation).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct FitSummary {
    /// Every epoch's record, from the first epoch of the run (resumed ones included).
    pub history: Vec<EpochRecord>,
    /// The final model's evaluation on the test split.
    pub test: Evaluation,
    /// The epoch the run resumed after (0 for a fresh run).
    pub resumed_from: usize,
    /// Wall times of the epochs this call trained (none when it resumed a finished run).
    pub timing: Vec<EpochTiming>,
}

/// Trains `model` (whose weights live in `varmap`) with `objective`, writing a checkpoint after
/// every epoch; returns the history and the final test evaluation.
///
/// A run resumed from epoch k's checkpoint replays epochs k+1… exactly as an uninterrupted run:
/// data order and augmentation depend only on (seed, epoch, sample), the method's state only on
/// the epoch, and the checkpoint holds the weights, BN statistics and momentum buffers.
///
/// **Data-parallel** (`opts.comm` with W > 1 ranks, issue 19): rank 0 alone reads and writes
/// the run folder (resume, checkpoints with `world_size = W` in their metadata, metrics) and
/// prints; it broadcasts the weights, BN statistics and momentum buffers it starts from, so
/// every rank starts identical. Each rank trains on its [`Shard`] of every epoch's order
/// (PyTorch `DistributedSampler`: padded by wrapping, rank r takes positions r, r + W, …) with
/// `batch_size` images per step, so a step sees W·`batch_size` images; the gradients are
/// averaged over the ranks after each backward pass and before the optimizer step (candle's
/// backward exposes no per-parameter hook, so there is no bucketed overlap with the backward
/// pass), and every rank applies the same step. Batch norm is per rank (each rank normalises
/// with its own batch's statistics and keeps its own running statistics, as the official
/// `DataParallel` runs); the checkpoint holds rank 0's running statistics. The epoch's loss,
/// accuracy and image count are summed over the ranks; evaluation is sharded over the ranks
/// and gathered, so every rank gets the same [`Evaluation`]. A run must be resumed with the
/// world size it was trained with.
pub fn fit(
    model: &MultiExpert,
    varmap: &VarMap,
    objective: &mut dyn Method,
    data: &TrainData,
    cfg: &TrainConfig,
    opts: &RunOptions,
) -> Result<FitSummary, TrainError> {
    cfg.check()?;
    let comm = &opts.comm;
    let root = comm.is_root();
    let out = &opts.out_dir;
    if root {
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    }
    let last = out.join(LAST);
    let mut opt = Sgd::new(trainable_vars(varmap), cfg.sgd)?;
    opt.set_lr_groups(&cfg.lr_groups)?;
    let mut history: Vec<EpochRecord> = vec![];
    let mut best_val = f64::NEG_INFINITY;
    let mut start_epoch = 1;
    if !root {
        // Rank 0 owns the folder; the state comes from it below.
    } else if opts.resume && !last.exists() {
        return Err(TrainError::RunFolder(format!(
            "nothing to resume in {}: it holds no {LAST}; drop --resume to start a new run",
            out.display()
        )));
    }
    if !root {
    } else if last.exists() {
        if !opts.resume {
            return Err(TrainError::RunFolder(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                out.display()
            )));
        }
        let ck = checkpoint::load(&last, &opts.device)?;
        check_world_size(&ck.metadata, comm.world_size(), &last)?;
        check_same_config(
            &ck.metadata,
            opts.metadata.get("config").map(String::as_str),
            out,
        )?;
        let trainable: Vec<String> = opt.params().iter().map(|(n, _)| n.clone()).collect();
        check_optimizer_state(
            &trainable,
            |n| ck.momentum.contains_key(n),
            cfg.sgd.momentum,
            ck.epoch()?,
            &last,
        )?;
        ck.restore_into(varmap)?;
        opt.load_state(ck.momentum.clone())?;
        start_epoch = ck.epoch()? + 1;
        if let Some(b) = ck
            .metadata
            .get("best_val_accuracy")
            .and_then(|s| s.parse().ok())
        {
            best_val = b;
        }
        history = read_history(&out.join(METRICS))?
            .into_iter()
            .filter(|r| r.epoch < start_epoch)
            .collect();
        rewrite_history(&out.join(METRICS), &history)?;
        let timing: Vec<EpochTiming> = read_lines(&out.join(TIMING))?
            .into_iter()
            .filter(|t: &EpochTiming| t.epoch < start_epoch)
            .collect();
        rewrite_lines(&out.join(TIMING), &timing)?;
    } else {
        // A run killed before its first checkpoint: start over cleanly.
        for f in [METRICS, TIMING] {
            if out.join(f).exists() {
                std::fs::remove_file(out.join(f)).map_err(|e| TrainError::io(out.join(f), e))?;
            }
        }
    }
    if comm.world_size() > 1 {
        // Every rank starts from rank 0's epoch, best validation accuracy and state.
        let mut head = [
            start_epoch as f64,
            best_val,
            f64::from(u8::from(!opt.state().is_empty())),
        ];
        comm.broadcast_f64(&mut head, 0)?;
        start_epoch = head[0] as usize;
        best_val = head[1];
        broadcast_state(comm, varmap, &mut opt, head[2] != 0.0)?;
    }
    let _sync_bn = (cfg.sync_bn && comm.world_size() > 1).then(|| SyncBatchNorm::enable(comm));
    let resumed_from = start_epoch - 1;
    let evaluate = |model: &MultiExpert, objective: &dyn Method, set: &Arc<Dataset>| {
        evaluate_on(
            comm,
            model,
            &|out| objective.predict(out),
            set,
            &data.eval_transform,
            cfg.eval_batch_size,
            &data.shots,
            &opts.device,
        )
    };
    if resumed_from >= cfg.epochs {
        let test = evaluate(model, objective, &data.test)?;
        return Ok(FitSummary {
            history,
            test,
            resumed_from,
            timing: vec![],
        });
    }
    let mut progress = EpochProgress::new(if root { opts.progress } else { Progress::Quiet });
    let shard = Shard::new(comm.rank(), comm.world_size())?;
    let mut last_test = None;
    let mut timing = vec![];
    for epoch in start_epoch..=cfg.epochs {
        let t0 = Instant::now();
        objective.begin_epoch(epoch)?;
        let lr = cfg.schedule.lr(cfg.lr, epoch, cfg.epochs);
        opt.set_lr(lr);
        let batcher = Batcher::sharded(
            Arc::clone(&data.train),
            BatcherConfig {
                sampler: cfg.sampler,
                transform: data.train_transform.clone(),
                batch_size: cfg.batch_size,
                seed: cfg.seed,
                epoch: epoch as u64,
                prefetch: 2,
            },
            &opts.device,
            None,
            shard,
        )?;
        progress.start(epoch, cfg.epochs, batcher.num_batches());
        // Mixup's draw is seeded by the batch's position in the epoch (docs/balpoe.md §2.3).
        let mut batch_index = 0u64;
        let stats = train_epoch_on(
            comm,
            batcher,
            &mut opt,
            cfg.accumulate,
            epoch,
            |batch| {
                let index = batch_index;
                batch_index += 1;
                if let Some(alpha) = cfg.mixup_alpha {
                    // One forward on the mixed images; the method's loss on y and on y[p].
                    let draw = crate::mixup::MixupDraw::draw(
                        alpha,
                        batch.indices.len(),
                        cfg.seed,
                        epoch as u64,
                        index,
                    )?;
                    let (own, other) = draw.mix(batch)?;
                    let out = model.forward_t(&own.images, true)?;
                    let loss =
                        crate::mixup::mixup_loss(&*objective, &out, &own, &other, draw.lambda)?;
                    let correct = crate::mixup::mixup_hits(
                        &objective.predict(&out)?,
                        &own.labels,
                        &other.labels,
                        draw.lambda,
                    )?;
                    return Ok(Step { loss, correct });
                }
                // Without mixup: the batch as it is.
                let out = model.forward_t(&batch.images, true)?;
                let loss = objective.loss(&out, batch)?;
                // Counted on the device: one scalar comes back, not the whole [B, C] prediction.
                let hits = objective
                    .predict(&out)?
                    .argmax(candle_core::D::Minus1)?
                    .eq(&batch.labels.to_dtype(candle_core::DType::U32)?)?
                    .to_dtype(candle_core::DType::U32)?
                    .sum_all()?
                    .to_scalar::<u32>()?;
                Ok(Step {
                    loss,
                    correct: hits as usize,
                })
            },
            |seen, secs, loss| progress.tick(seen, secs, loss),
        );
        progress.finish();
        let stats = stats?;
        // Summed over the ranks (padding duplicates included, as DistributedSampler counts them).
        let mut sums = [stats.loss_sum, stats.correct as f64, stats.seen as f64];
        comm.all_reduce_f64(&mut sums)?;
        let (loss_sum, correct, seen, train_secs) =
            (sums[0], sums[1] as usize, sums[2] as usize, stats.seconds);
        let val = match &data.val {
            Some(v) => Some(evaluate(model, objective, v)?),
            None => None,
        };
        let test = evaluate(model, objective, &data.test)?;
        let record = EpochRecord {
            epoch,
            loss: loss_sum / seen.max(1) as f64,
            accuracy: correct as f64 / seen.max(1) as f64,
            val_accuracy: val.as_ref().map(|v| v.report.accuracy),
            test_accuracy: test.report.accuracy,
            many_shot_acc: test.report.many,
            medium_shot_acc: test.report.medium,
            few_shot_acc: test.report.few,
            lr,
        };
        let time = EpochTiming {
            epoch,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_sec: seen as f64 / train_secs.max(1e-9),
        };
        let mut meta = opts.metadata.clone();
        meta.insert("epoch".into(), epoch.to_string());
        if comm.world_size() > 1 {
            meta.insert(WORLD_SIZE.into(), comm.world_size().to_string());
        }
        let improved = record.val_accuracy.is_some_and(|v| v > best_val);
        if improved {
            best_val = record.val_accuracy.unwrap_or(best_val);
        }
        if best_val.is_finite() {
            meta.insert("best_val_accuracy".into(), best_val.to_string());
        }
        if root {
            checkpoint::save(&last, varmap, Some(opt.state()), &meta)?;
            if improved {
                checkpoint::save(&out.join(BEST), varmap, None, &meta)?;
            }
            append_line(&out.join(METRICS), &record)?;
            append_line(&out.join(TIMING), &time)?;
        }
        progress.epoch_line(&record, &time);
        history.push(record);
        timing.push(time);
        last_test = Some(test);
    }
    let test = last_test.expect("at least one epoch ran");
    Ok(FitSummary {
        history,
        test,
        resumed_from,
        timing,
    })
}

/// One step's result for [`train_epoch`].
pub struct Step {
    /// The scalar loss of the batch (its gradient is taken).
    pub loss: Tensor,
    /// How many of the batch's images the prediction got right (0 where not measured).
    pub correct: usize,
}

/// What one pass of [`train_epoch`] measured.
#[derive(Clone, Debug)]
pub struct EpochStats {
    /// Σ over steps of (loss × images in the step).
    pub loss_sum: f64,
    /// Σ over steps of the loss (for a per-step mean).
    pub step_loss_sum: f64,
    /// Correct predictions ([`Step::correct`] summed).
    pub correct: usize,
    /// Images seen.
    pub seen: usize,
    /// Optimizer micro-steps (batches).
    pub steps: usize,
    /// Wall time of the pass.
    pub seconds: f64,
}

/// One epoch of SGD over `batcher`: the loop every training stage shares (stage 1 in [`fit`],
/// RIDE's router in stage 2).
///
/// `step` computes a batch's loss; its gradient is accumulated over `accumulate` micro-batches
/// (the loss divided by `accumulate`) and applied by `opt`. A non-finite loss stops with
/// [`TrainError::NonFiniteLoss`] before any update from it. `tick(seen, seconds, mean loss)` is
/// called after every batch (progress display).
pub fn train_epoch(
    batcher: Batcher,
    opt: &mut Sgd,
    accumulate: usize,
    epoch: usize,
    step: impl FnMut(&longtail_data::Batch) -> Result<Step, TrainError>,
    tick: impl FnMut(usize, f64, f64),
) -> Result<EpochStats, TrainError> {
    train_epoch_on(
        &Communicator::local(),
        batcher,
        opt,
        accumulate,
        epoch,
        step,
        tick,
    )
}

/// [`train_epoch`] as one rank of `comm`: the accumulated gradients are averaged over the ranks
/// ([`all_reduce_grads`]) before each optimizer step. Every rank's `batcher` must yield the same
/// number of batches (a [`Shard`] of the epoch does). The returned statistics are this rank's.
pub fn train_epoch_on(
    comm: &Communicator,
    batcher: Batcher,
    opt: &mut Sgd,
    accumulate: usize,
    epoch: usize,
    mut step: impl FnMut(&longtail_data::Batch) -> Result<Step, TrainError>,
    mut tick: impl FnMut(usize, f64, f64),
) -> Result<EpochStats, TrainError> {
    let steps = batcher.num_batches();
    let (mut loss_sum, mut step_loss_sum, mut correct, mut seen) = (0.0f64, 0.0f64, 0usize, 0usize);
    let mut pending: Vec<Option<Tensor>> = vec![None; opt.params().len()];
    let mut in_step = 0;
    let start = Instant::now();
    for (index, batch) in batcher.enumerate() {
        let batch = batch?;
        let Step {
            loss,
            correct: hits,
        } = step(&batch)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                epoch,
                step: index,
                value,
            });
        }
        let n = batch.indices.len();
        loss_sum += value as f64 * n as f64;
        step_loss_sum += value as f64;
        seen += n;
        correct += hits;
        let scaled = if accumulate > 1 {
            (loss / accumulate as f64)?
        } else {
            loss
        };
        let grads = scaled.backward()?;
        for (slot, (_, var)) in pending.iter_mut().zip(opt.params()) {
            if let Some(g) = grads.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                });
            }
        }
        in_step += 1;
        if in_step == accumulate || index + 1 == steps {
            let grads = std::mem::replace(&mut pending, vec![None; opt.params().len()]);
            let grads = all_reduce_grads(comm, opt.params(), grads)?;
            opt.step_with(&grads)?;
            in_step = 0;
        }
        tick(seen, start.elapsed().as_secs_f64(), loss_sum / seen as f64);
    }
    Ok(EpochStats {
        loss_sum,
        step_loss_sum,
        correct,
        seen,
        steps,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Synchronised batch norm over the ranks of `comm` while it lives: every train-mode
/// [`longtail_backbone::ops::BatchNorm2d`] forward on this thread uses the global batch's
/// statistics ([`longtail_backbone::ops::set_sync_batch_norm`]); dropping it restores the
/// previous setting. [`fit`] holds one for the run when [`TrainConfig::sync_bn`] is set.
pub struct SyncBatchNorm {
    previous: Option<Rc<dyn RankSum>>,
}

impl SyncBatchNorm {
    /// Turns synchronised batch norm on over `comm`'s ranks.
    pub fn enable(comm: &Communicator) -> Self {
        Self {
            previous: set_sync_batch_norm(Some(Rc::new(RanksOf(comm.clone())))),
        }
    }
}

impl Drop for SyncBatchNorm {
    fn drop(&mut self) {
        set_sync_batch_norm(self.previous.take());
    }
}

/// The differentiable cross-rank sum of a communicator.
struct RanksOf(Communicator);

impl RankSum for RanksOf {
    fn sum_over_ranks(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        self.0
            .all_reduce_sum_autograd(t)
            .map_err(candle_core::Error::wrap)
    }
}

/// Checkpoint metadata key of the number of ranks a data-parallel run was trained on (absent
/// for one rank).
pub const WORLD_SIZE: &str = "world_size";

/// Refuses to resume from `last` (metadata `meta`) on `world` ranks when it was trained on
/// another number: the shards, the per-rank batch norm and the effective batch would all
/// differ, so the run would not continue as it started.
pub fn check_world_size(
    meta: &BTreeMap<String, String>,
    world: usize,
    last: &Path,
) -> Result<(), TrainError> {
    let trained: usize = match meta.get(WORLD_SIZE) {
        None => 1,
        Some(w) => w.parse().map_err(|_| {
            TrainError::Checkpoint(format!(
                "{}: metadata `{WORLD_SIZE}` is not a number: `{w}`",
                last.display()
            ))
        })?,
    };
    if trained == world {
        return Ok(());
    }
    let how = |w: usize| {
        if w == 1 {
            "one process (no --distributed)".to_string()
        } else {
            format!("{w} ranks (mpirun -np {w} … --distributed)")
        }
    };
    Err(TrainError::RunFolder(format!(
        "{} was trained on {} but this resume runs on {}: resume it on {}, or start a new run",
        last.display(),
        how(trained),
        how(world),
        how(trained)
    )))
}

/// The data-parallel gradient: each parameter's gradient averaged over the ranks of `comm`
/// (a parameter without a gradient on some rank counts as zero there, as in PyTorch DDP with
/// unused parameters; one without a gradient on every rank stays without). One rank: `grads`
/// unchanged.
pub fn all_reduce_grads(
    comm: &Communicator,
    params: &[(String, candle_core::Var)],
    grads: Vec<Option<Tensor>>,
) -> Result<Vec<Option<Tensor>>, TrainError> {
    if comm.world_size() == 1 {
        return Ok(grads);
    }
    let mut present: Vec<f64> = grads
        .iter()
        .map(|g| f64::from(u8::from(g.is_some())))
        .collect();
    comm.all_reduce_f64(&mut present)?;
    let mut dense = vec![];
    let mut slots = vec![];
    for (i, (g, (_, var))) in grads.iter().zip(params).enumerate() {
        if present[i] > 0.0 {
            dense.push(match g {
                Some(g) => g.clone(),
                None => var.as_tensor().zeros_like()?,
            });
            slots.push(i);
        }
    }
    let mut out = vec![None; grads.len()];
    for (i, g) in slots.into_iter().zip(comm.all_reduce_mean(&dense)?) {
        out[i] = Some(g);
    }
    Ok(out)
}

/// Makes every rank's weights, BN statistics (every var of `varmap`) and, when `momentum`,
/// SGD momentum buffers equal to rank 0's.
fn broadcast_state(
    comm: &Communicator,
    varmap: &VarMap,
    opt: &mut Sgd,
    momentum: bool,
) -> Result<(), TrainError> {
    // In name order: a VarMap is a HashMap, whose iteration order differs from process to
    // process, and every rank must pack the same tensors in the same order.
    let vars: Vec<(String, candle_core::Var)> = {
        let data = varmap.data().lock().expect("varmap lock");
        let mut vars: Vec<_> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    };
    let tensors: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    for ((_, var), value) in vars.iter().zip(comm.broadcast(&tensors, 0)?) {
        var.set(&value)?;
    }
    if momentum {
        let names: Vec<String> = opt.params().iter().map(|(n, _)| n.clone()).collect();
        let mine: Vec<Tensor> = opt
            .params()
            .iter()
            .map(|(n, v)| match opt.state().get(n) {
                Some(m) => Ok(m.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        let theirs = comm.broadcast(&mine, 0)?;
        opt.load_state(names.into_iter().zip(theirs).collect())?;
    }
    Ok(())
}

/// Refuses to resume the run in `out` (checkpoint metadata `run`) with the config `asked`: the
/// error lists each field that differs (`optim.lr: 0.1 in the run, 0.05 asked`).
pub(crate) fn check_same_config(
    run: &BTreeMap<String, String>,
    asked: Option<&str>,
    out: &Path,
) -> Result<(), TrainError> {
    let (Some(a), Some(b)) = (run.get("config"), asked) else {
        return Ok(());
    };
    if a == b {
        return Ok(());
    }
    let fields = match config_differences(a, b) {
        Some(d) if d.is_empty() => return Ok(()),
        Some(d) => d.join("; "),
        None => "see its config.toml".into(),
    };
    Err(TrainError::RunFolder(format!(
        "{} was trained with another config; resume with the same settings or choose another --out: {fields}",
        out.display()
    )))
}

/// Refuses to resume from the checkpoint `last` when it lacks the momentum buffer of a trainable
/// parameter (`has`) while SGD uses momentum: the run would go on from zero momentum and end
/// elsewhere than the uninterrupted one.
pub(crate) fn check_optimizer_state(
    trainable: &[String],
    has: impl Fn(&str) -> bool,
    momentum: f64,
    epoch: usize,
    last: &Path,
) -> Result<(), TrainError> {
    if momentum == 0.0 || epoch == 0 {
        return Ok(());
    }
    let missing: Vec<&str> = trainable
        .iter()
        .map(String::as_str)
        .filter(|n| !has(n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = missing.iter().take(3).copied().collect();
    Err(TrainError::Checkpoint(format!(
        "{} lacks the optimizer state: no momentum buffer ({MOMENTUM_PREFIX}NAME) for {} of the {} trainable parameters ({}{}), so resuming with momentum {momentum} would not continue the run; resume from a checkpoint `longtail train` wrote (exported and imported models carry no optimizer state), or start a new run",
        last.display(),
        missing.len(),
        trainable.len(),
        shown.join(", "),
        if missing.len() > shown.len() { ", …" } else { "" }
    )))
}

fn append_line<T: Serialize>(path: &Path, r: &T) -> Result<(), TrainError> {
    let line = serde_json::to_string(r).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| TrainError::io(path, e))
}

/// Reads `metrics.jsonl`; a missing file is an empty history.
pub fn read_history(path: &Path) -> Result<Vec<EpochRecord>, TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    // A line cut short by a crash is dropped; every complete line must parse.
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let complete = if text.ends_with('\n') {
        lines.len()
    } else {
        lines.len().saturating_sub(1)
    };
    lines[..complete]
        .iter()
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
        })
        .collect()
}

/// Reads `timing.jsonl`-style lines of `T`: a missing file is empty, and a line that does not
/// parse (cut short by a crash) is dropped.
fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, TrainError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(TrainError::io(path, e)),
    }
}

fn rewrite_history(path: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    rewrite_lines(path, history)
}

fn rewrite_lines<T: Serialize>(path: &Path, history: &[T]) -> Result<(), TrainError> {
    let mut text = String::new();
    for r in history {
        text.push_str(
            &serde_json::to_string(r).map_err(|e| TrainError::Checkpoint(e.to_string()))?,
        );
        text.push('\n');
    }
    checkpoint::write_atomic(path, text.as_bytes())
}

/// Progress display: an indicatif bar on a terminal, else one line per epoch.
struct EpochProgress {
    mode: Progress,
    bar: Option<indicatif::ProgressBar>,
}

impl EpochProgress {
    fn new(mode: Progress) -> Self {
        let mode = match mode {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Auto,
            Progress::Auto => Progress::Lines,
            m => m,
        };
        Self { mode, bar: None }
    }

    fn start(&mut self, epoch: usize, epochs: usize, steps: usize) {
        if self.mode == Progress::Auto {
            let bar = indicatif::ProgressBar::new(steps as u64);
            let style = indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{epoch}/{epochs}"));
            self.bar = Some(bar);
        }
    }

    fn tick(&self, seen: usize, secs: f64, loss: f64) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(format!(
                "loss {loss:.4} {:.0} img/s",
                seen as f64 / secs.max(1e-9)
            ));
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn epoch_line(&self, r: &EpochRecord, t: &EpochTiming) {
        if self.mode == Progress::Quiet {
            return;
        }
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v));
        eprintln!(
            "epoch {:>3}  loss {:.4}  train {:.1}%  {}test {:.1}% (many {} / medium {} / few {})  lr {:.2e}  {:.0} img/s  {:.1}s",
            r.epoch,
            r.loss,
            100.0 * r.accuracy,
            r.val_accuracy.map_or(String::new(), |v| format!("val {:.1}%  ", 100.0 * v)),
            100.0 * r.test_accuracy,
            pct(r.many_shot_acc),
            pct(r.medium_shot_acc),
            pct(r.few_shot_acc),
            r.lr,
            t.images_per_sec,
            t.seconds
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run rewrites `metrics.jsonl` from the parsed history, so parsing must give back
    /// the very f64 that was written: 59.890590286254884 came back one ulp off from serde_json's
    /// default float parser (a 2-rank resume test caught it), hence its `float_roundtrip` feature.
    #[test]
    fn history_survives_a_rewrite_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS);
        let losses = [
            59.890590286254884,
            0.1 + 0.2,
            1.0 / 3.0,
            2.2250738585072014e-308,
            1e23,
        ];
        let history: Vec<EpochRecord> = losses
            .iter()
            .enumerate()
            .map(|(i, &loss)| EpochRecord {
                epoch: i + 1,
                loss,
                accuracy: loss / 7.0,
                val_accuracy: None,
                test_accuracy: 2.0 / 3.0,
                many_shot_acc: Some(1.0 / 7.0),
                medium_shot_acc: None,
                few_shot_acc: Some(0.0),
                lr: 0.1 * 0.1,
            })
            .collect();
        rewrite_history(&path, &history).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        let back = read_history(&path).unwrap();
        for (a, b) in history.iter().zip(&back) {
            assert_eq!(
                a.loss.to_bits(),
                b.loss.to_bits(),
                "{} read back as {}",
                a.loss,
                b.loss
            );
            assert_eq!(a.accuracy.to_bits(), b.accuracy.to_bits());
        }
        rewrite_history(&path, &back).unwrap();
        assert_eq!(first, std::fs::read_to_string(&path).unwrap());
    }
}
