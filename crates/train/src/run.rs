//! Running a [`RunConfig`] end to end (data, model, method, [`fit`]) and reading a finished run
//! back.

use longtail_dist::Communicator;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use longtail_backbone::MultiExpert;
use longtail_data::{
    load_benchmark, load_image_lists_streamed, load_splits, shot_groups, Augment, AugmentKind,
    DataSpec, DatasetName, Shot, ShotRule, Splits, StreamOptions, Transform,
};

use crate::checkpoint;
use crate::config::{human_bytes, SizeEstimate};
use crate::eval::Evaluation;
use crate::trainer::{
    check_optimizer_state, check_same_config, fit, FitSummary, Progress, RunOptions, TrainData,
    BEST, LAST, METRICS, TIMING,
};
use crate::{trainable_vars, MethodKind, RunConfig, TrainError};

/// File name of the run config in a run folder.
pub const CONFIG_FILE: &str = "config.toml";
/// File name of a run folder's lock file (holds the pid of the process that last took it).
pub const LOCK_FILE: &str = ".lock";
/// File name of the per-class test accuracy a finished run writes ([`write_per_class`]).
pub const PER_CLASS: &str = "per_class.csv";
/// The files a run writes into its folder: what `--overwrite` replaces. `router.safetensors` is
/// RIDE's stage-2 router (`longtail route`), which belongs to the run it was trained on.
pub const RUN_FILES: [&str; 7] = [
    LAST,
    BEST,
    METRICS,
    TIMING,
    CONFIG_FILE,
    PER_CLASS,
    "router.safetensors",
];

/// What [`train_run`] may do with a run folder that already holds something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutMode {
    /// Start a new run: the folder must not exist, be empty, or hold only what a run killed
    /// before its first checkpoint left.
    #[default]
    New,
    /// Continue the run in the folder from its last checkpoint, with the same config.
    Resume,
    /// Start a new run, replacing the run files ([`RUN_FILES`]) the folder holds; other files are
    /// left alone.
    Overwrite,
}

/// An advisory lock on a run folder, held as long as the value lives: one process at a time
/// trains into a folder or writes a router into it.
///
/// The lock is `std::fs::File::try_lock` (stable since Rust 1.89; the MSRV is 1.95) on
/// [`LOCK_FILE`]: `flock(LOCK_EX | LOCK_NB)` on Unix, `LockFileEx` on Windows. That is what the
/// `fs4` crate or `libc::flock` would give, without a dependency or `unsafe`. The kernel drops
/// the lock when the process ends however it ends (kill -9 included), so a crashed run never
/// leaves a stale lock behind; the file itself stays, naming the last holder.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Creates `dir` if needed and takes its lock, writing `pid <this process>, <what>` into the
    /// lock file. Fails with [`TrainError::Locked`] (naming the holder) if another process holds
    /// it, and with an I/O error naming the file if the folder cannot be written.
    pub fn acquire(dir: &Path, what: &str) -> Result<RunLock, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        // No truncation before the lock is ours: the file names the holder.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = text.lines().next().unwrap_or("").trim();
                return Err(TrainError::Locked {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "pid unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
        }
        let line = format!("pid {}, {what}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(line.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// This machine's memory (`MemTotal` of `/proc/meminfo`) in bytes; `None` where there is no
/// such file (other operating systems), and the size limits are not checked.
pub fn machine_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

/// Refuses a run whose network and batches cannot fit in this machine's memory, before anything
/// is allocated, with the estimate ([`SizeEstimate`]) in the message. Checked on the CPU only:
/// there a run that does not fit is killed by the kernel without a word, while a GPU allocation
/// that fails is an error.
pub fn check_fits(
    cfg: &RunConfig,
    height: usize,
    width: usize,
    device: &Device,
) -> Result<(), TrainError> {
    if !device.is_cpu() {
        return Ok(());
    }
    let Some(memory) = machine_memory() else {
        return Ok(());
    };
    check_fits_in(cfg, height, width, memory)
}

/// [`check_fits`] against `memory` bytes.
pub fn check_fits_in(
    cfg: &RunConfig,
    height: usize,
    width: usize,
    memory: f64,
) -> Result<(), TrainError> {
    let est = SizeEstimate::of(&cfg.model, height, width);
    let (batch, eval_batch) = (cfg.optim.batch_size, cfg.optim.eval_batch_size);
    let (train, eval) = (est.training_bytes(batch), est.evaluation_bytes(eval_batch));
    if train.max(eval) <= memory {
        return Ok(());
    }
    let m = &cfg.model;
    if eval > train {
        return Err(TrainError::TooLarge(format!(
            "evaluating this network needs about {} of memory but this machine has {} (MemTotal): an evaluation batch of {eval_batch} {height}×{width} images holds {} at a time; lower optim.eval_batch_size (it does not change the numbers)",
            human_bytes(eval),
            human_bytes(memory),
            human_bytes(eval - est.parameter_bytes()),
        )));
    }
    Err(TrainError::TooLarge(format!(
        "this run needs about {} of memory but this machine has {} (MemTotal): {} experts × {} classes is {:.3e} parameters ({} with gradients and momentum), and a batch of {batch} {height}×{width} images {} of activations; use fewer experts or classes, narrower widths or a smaller --batch-size",
        human_bytes(train),
        human_bytes(memory),
        m.num_experts,
        m.num_classes,
        est.parameters,
        human_bytes(4.0 * est.parameter_bytes()),
        human_bytes(est.activation_bytes(batch)),
    )))
}

/// Loads the data a config names.
///
/// A streamed data set ([`crate::DataConfig::streams`]) reads only its lists here: a
/// benchmark (`imagenet-lt`, `inat2018`, `places-lt`) its official lists ([`load_benchmark`]),
/// with the val list as validation set when `data.val_list`; an `image-list` directory its
/// `train` / `test` / `val` lists ([`load_image_lists_streamed`]). Crops are `data.image_size`
/// a side; a `data.val_fraction` split of the training list replaces any val list.
pub fn load_data(cfg: &RunConfig) -> Result<(DatasetName, Splits), TrainError> {
    let name: DatasetName = cfg.data.dataset.parse()?;
    let spec = DataSpec {
        name,
        data_dir: cfg.data.data_dir.clone(),
        imbalance: cfg.data.imbalance,
        val_fraction: cfg.data.val_fraction,
        seed: cfg.seed,
    };
    let Some(root) = cfg.data.data_dir.as_deref().filter(|_| cfg.data.streams()) else {
        // The in-memory sets, and a streamed one without a directory (whose error says what to pass).
        return Ok((name, load_splits(&spec)?));
    };
    let mut splits = if name.is_streamed() {
        let opts = StreamOptions {
            side: cfg.data.side(),
            val_list: cfg.data.val_list,
        };
        load_benchmark(name, root, opts)?
    } else {
        load_image_lists_streamed(root, cfg.data.side())?
    };
    if let Some(f) = cfg.data.val_fraction {
        let (train, val) = splits.train.split_validation(f, cfg.seed)?;
        splits.train = train;
        splits.val = Some(val);
    }
    Ok((name, splits))
}

/// The training and evaluation transforms of a config: its augmentation, then the data set's
/// normalisation.
///
/// On a streamed data set ([`crate::DataConfig::streams`]) the crops are `data.image_size`
/// (224) a side: training with the config's resized-crop augmentation (`none`: the evaluation
/// transform), evaluation with `Resize(round(side · 256/224))` → `CenterCrop(side)`, as the
/// official loaders (docs/ride.md §6).
pub fn transforms(cfg: &RunConfig, name: DatasetName) -> (Transform, Transform) {
    let norm = name.normalize();
    if cfg.data.streams() {
        let side = cfg.data.side();
        let train = match cfg.data.augment {
            AugmentKind::None => Augment::imagenet_eval(side),
            kind => kind.augment_sized(side),
        };
        return (
            Transform::train(train, norm.clone()),
            Transform::train(Augment::imagenet_eval(side), norm),
        );
    }
    (
        Transform::train(cfg.data.augment.augment(), norm.clone()),
        Transform::eval(norm),
    )
}

/// Per-class results of an evaluation as CSV rows: `class,name,train_count,test_count,shot,accuracy`
/// (accuracy in `[0, 1]` with 6 decimals, empty for a class without test images; names with a
/// comma or quote are quoted). Shot groups by the RIDE rule on the training counts.
pub fn per_class_csv(eval: &Evaluation, counts: &[usize], names: &[String]) -> String {
    let classes = eval.num_classes;
    let mut hit = vec![0usize; classes];
    let mut seen = vec![0usize; classes];
    for (p, &y) in eval.predictions().iter().zip(&eval.labels) {
        let y = y as usize;
        if y < classes {
            seen[y] += 1;
            hit[y] += usize::from(*p as usize == y);
        }
    }
    let shots = shot_groups(counts, ShotRule::Ride);
    let mut out = String::from("class,name,train_count,test_count,shot,accuracy\n");
    for c in 0..classes {
        let name = names.get(c).map(String::as_str).unwrap_or("");
        let name = if name.contains([',', '"', '\n']) {
            format!("\"{}\"", name.replace('"', "\"\""))
        } else {
            name.to_string()
        };
        let acc = if seen[c] > 0 {
            format!("{:.6}", hit[c] as f64 / seen[c] as f64)
        } else {
            String::new()
        };
        let shot = shots.get(c).copied().map(Shot::name).unwrap_or("");
        out.push_str(&format!(
            "{c},{name},{},{},{shot},{acc}\n",
            counts.get(c).copied().unwrap_or(0),
            seen[c]
        ));
    }
    out
}

/// Writes [`per_class_csv`] into `dir`/[`PER_CLASS`] (atomically): a thousand or more rows
/// belong in a file, not on the terminal.
pub fn write_per_class(
    dir: &Path,
    eval: &Evaluation,
    counts: &[usize],
    names: &[String],
) -> Result<PathBuf, TrainError> {
    let path = dir.join(PER_CLASS);
    checkpoint::write_atomic(&path, per_class_csv(eval, counts, names).as_bytes())?;
    Ok(path)
}

/// Pretrained weights to copy into a new run's network before its first epoch (`train
/// --pretrained`), e.g. an ImageNet ResNet trunk for Places-LT (docs/sade.md §1.1).
pub struct TrunkInit<'a> {
    /// What the weights are (a path or an `hf://` reference): recorded as `pretrained` in the
    /// checkpoints' metadata.
    pub source: String,
    /// Copies the weights into the freshly built network's variables; a mismatch is an error.
    #[allow(clippy::type_complexity)]
    pub load: Box<dyn Fn(&VarMap) -> Result<(), TrainError> + 'a>,
}

/// Metadata stored in every checkpoint of a run: enough to rebuild model and method.
pub fn metadata(cfg: &RunConfig, splits: &Splits) -> Result<BTreeMap<String, String>, TrainError> {
    Ok(BTreeMap::from([
        ("config".to_string(), cfg.to_toml()?),
        ("method".to_string(), cfg.method.name.clone()),
        ("dataset".to_string(), cfg.data.dataset.clone()),
        (
            "class_counts".to_string(),
            to_json(&splits.train.class_counts())?,
        ),
        (
            "class_names".to_string(),
            to_json(&splits.train.class_names)?,
        ),
    ]))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, TrainError> {
    serde_json::to_string(value).map_err(|e| TrainError::Checkpoint(e.to_string()))
}

/// Trains `cfg` with `method` into `out` on `device`; `mode` says what may happen to a folder
/// that already holds something.
///
/// Nothing is written before the config, the data and the size of the network are checked
/// ([`check_fits`]). Then the folder is locked ([`RunLock`], held until training ends) and its
/// contents checked against `mode`: a resumed run must have the same config (the error lists
/// each differing field) and a full optimizer state; a new run needs an empty folder. Only then
/// is `config.toml` written and [`fit`] called.
pub fn train_run(
    cfg: &RunConfig,
    method: &dyn MethodKind,
    out: &Path,
    mode: OutMode,
    progress: Progress,
    device: &Device,
) -> Result<FitSummary, TrainError> {
    train_run_with(cfg, method, out, mode, progress, device, None)
}

/// [`train_run`], starting a new run's network from `init` (after the seeded initialisation,
/// before the first epoch). A resumed run takes its weights from its checkpoint and keeps the
/// `pretrained` record of the run it continues. At the end the per-class test accuracy goes to
/// [`PER_CLASS`] in the run folder.
pub fn train_run_with(
    cfg: &RunConfig,
    method: &dyn MethodKind,
    out: &Path,
    mode: OutMode,
    progress: Progress,
    device: &Device,
    init: Option<&TrunkInit>,
) -> Result<FitSummary, TrainError> {
    train_run_on(
        cfg,
        method,
        out,
        mode,
        progress,
        device,
        init,
        &Communicator::local(),
    )
}

/// [`train_run_with`] as one rank of the data-parallel job `comm` (issue 19; see [`fit`]):
/// every rank loads the data and builds the network; rank 0 alone checks, locks and writes
/// `out` (the other ranks need no access to it) and prints, and its initial weights (`init`
/// included) are broadcast to the others.
#[allow(clippy::too_many_arguments)]
pub fn train_run_on(
    cfg: &RunConfig,
    method: &dyn MethodKind,
    out: &Path,
    mode: OutMode,
    progress: Progress,
    device: &Device,
    init: Option<&TrunkInit>,
    comm: &Communicator,
) -> Result<FitSummary, TrainError> {
    cfg.check_common()?;
    method.check(cfg)?;
    let root = comm.is_root();
    let progress = if root { progress } else { Progress::Quiet };
    if root && mode == OutMode::Resume && !out.join(LAST).is_file() {
        return Err(nothing_to_resume(out));
    }
    let (name, splits) = load_data(cfg)?;
    if let Some(warning) = name.class_count_warning(splits.train.num_classes) {
        if !matches!(progress, Progress::Quiet) {
            eprintln!("{warning}");
        }
    }
    if splits.train.num_classes != cfg.model.num_classes {
        return Err(TrainError::Config(format!(
            "the data set {} has {} classes but the model is configured for {}",
            cfg.data.dataset, splits.train.num_classes, cfg.model.num_classes
        )));
    }
    if splits.train.channels != cfg.model.in_channels {
        return Err(TrainError::Config(format!(
            "the data set {} has {}-channel images but the model expects {}",
            cfg.data.dataset, splits.train.channels, cfg.model.in_channels
        )));
    }
    check_fits(cfg, splits.train.height, splits.train.width, device)?;
    let counts = splits.train.class_counts();
    let config_text = cfg.to_toml()?;
    let mut meta = metadata(cfg, &splits)?;
    let created = root && !out.exists();
    let lock = if root {
        Some(RunLock::acquire(out, "longtail train")?)
    } else {
        None
    };
    let prepared = (|| {
        let (varmap, model) = MultiExpert::seeded(&cfg.model, cfg.seed, device)?;
        if !root {
            // Rank 0 reads and writes the folder and broadcasts the weights ([`fit`]).
        } else if mode == OutMode::Resume {
            let last = out.join(LAST);
            if let Ok(h) = checkpoint::read_header(&last) {
                if let Some(p) = h.metadata.get("pretrained") {
                    meta.insert("pretrained".into(), p.clone());
                }
            }
        } else if let Some(init) = init {
            (init.load)(&varmap)?;
            meta.insert("pretrained".into(), init.source.clone());
        }
        let objective = method.build(cfg, &counts, device)?;
        if root {
            prepare_folder(out, cfg, &config_text, mode, &varmap)?;
        }
        Ok::<_, TrainError>((varmap, model, objective))
    })();
    let (varmap, model, mut objective) = match prepared {
        Ok(p) => p,
        Err(e) => {
            if created {
                // Leave no folder behind that this call made and wrote nothing into.
                drop(lock);
                let _ = std::fs::remove_file(out.join(LOCK_FILE));
                let _ = std::fs::remove_dir(out);
            }
            return Err(e);
        }
    };
    if root {
        checkpoint::write_atomic(&out.join(CONFIG_FILE), config_text.as_bytes())?;
    }
    let (train_transform, eval_transform) = transforms(cfg, name);
    let class_names = splits.train.class_names.clone();
    let data = TrainData {
        shots: shot_groups(&counts, ShotRule::Ride),
        train: Arc::new(splits.train),
        val: splits.val.map(Arc::new),
        test: Arc::new(splits.test),
        train_transform,
        eval_transform,
    };
    let opts = RunOptions {
        out_dir: out.to_path_buf(),
        resume: mode == OutMode::Resume,
        metadata: meta,
        progress,
        device: device.clone(),
        comm: comm.clone(),
    };
    let summary = fit(
        &model,
        &varmap,
        objective.as_mut(),
        &data,
        &cfg.train_config(),
        &opts,
    );
    let summary = summary.and_then(|s| {
        if root {
            write_per_class(out, &s.test, &counts, &class_names)?;
        }
        Ok(s)
    });
    drop(lock);
    summary
}

fn nothing_to_resume(out: &Path) -> TrainError {
    TrainError::RunFolder(format!(
        "nothing to resume in {}: it holds no {LAST} (no epoch of a run finished there); drop --resume to start a new run",
        out.display()
    ))
}

/// Checks the locked folder `out` against `mode` (see [`train_run`]); with
/// [`OutMode::Overwrite`], removes the old run's files.
fn prepare_folder(
    out: &Path,
    cfg: &RunConfig,
    config_text: &str,
    mode: OutMode,
    varmap: &VarMap,
) -> Result<(), TrainError> {
    let last = out.join(LAST);
    match mode {
        OutMode::Resume => {
            if !last.is_file() {
                return Err(nothing_to_resume(out));
            }
            let header = checkpoint::read_header(&last)?;
            check_same_config(&header.metadata, Some(config_text), out)?;
            let epoch = match header.metadata.get("epoch") {
                None => 0,
                Some(e) => e.parse().map_err(|_| {
                    TrainError::Checkpoint(format!(
                        "{}: metadata `epoch` is not a number: `{e}`",
                        last.display()
                    ))
                })?,
            };
            let trainable: Vec<String> =
                trainable_vars(varmap).into_iter().map(|(n, _)| n).collect();
            let have = header.momentum_names();
            check_optimizer_state(
                &trainable,
                |n| have.contains(n),
                cfg.optim.sgd.momentum,
                epoch,
                &last,
            )
        }
        OutMode::New => {
            if last.exists() {
                let at = checkpoint::read_header(&last).ok().and_then(|h| {
                    let epoch = h.metadata.get("epoch")?.clone();
                    let total = RunConfig::from_toml(h.metadata.get("config")?)
                        .ok()?
                        .optim
                        .epochs;
                    Some(format!(" (epoch {epoch} of {total})"))
                });
                return Err(TrainError::RunFolder(format!(
                    "{} already holds a run{}: pass --resume to continue it, --overwrite to replace it, or choose another --out",
                    out.display(),
                    at.unwrap_or_default()
                )));
            }
            let foreign = foreign_entries(out)?;
            if !foreign.is_empty() {
                let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
                return Err(TrainError::RunFolder(format!(
                    "{} is not empty and holds no longtail run ({}{}): choose another --out, or pass --overwrite to train into it (its other files are kept)",
                    out.display(),
                    shown.join(", "),
                    if foreign.len() > 5 { ", …" } else { "" }
                )));
            }
            Ok(())
        }
        OutMode::Overwrite => {
            for f in RUN_FILES {
                let p = out.join(f);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(TrainError::io(p, e)),
                }
            }
            Ok(())
        }
    }
}

/// The names in `dir` that no run writes: not a [`RUN_FILES`] entry, the lock, or a hidden
/// temporary file of an atomic write (`.NAME.tmp`).
fn foreign_entries(dir: &Path) -> Result<Vec<String>, TrainError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = RUN_FILES.contains(&name.as_str())
            || name == LOCK_FILE
            || (name.starts_with('.') && name.ends_with(".tmp"));
        if !ours {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A trained model read back from a checkpoint.
pub struct LoadedRun {
    /// The run's config (from the checkpoint metadata).
    pub config: RunConfig,
    /// The network.
    pub model: MultiExpert,
    /// Its weights.
    pub varmap: VarMap,
    /// Training class counts.
    pub class_counts: Vec<usize>,
}

impl LoadedRun {
    /// The model's training data, transforms and shot groups, as the run saw them.
    pub fn data(&self) -> Result<RunData, TrainError> {
        let (name, splits) = load_data(&self.config)?;
        let (train_transform, eval_transform) = transforms(&self.config, name);
        Ok(RunData {
            name,
            splits,
            train_transform,
            eval_transform,
        })
    }
}

/// A run's data as loaded for evaluation or a second stage.
pub struct RunData {
    /// The data set.
    pub name: DatasetName,
    /// Its splits.
    pub splits: Splits,
    /// The run's training transform (augmentation + normalisation).
    pub train_transform: Transform,
    /// The evaluation transform.
    pub eval_transform: Transform,
}

/// Reads a longtail checkpoint file (one with a `config` in its metadata): its config, its
/// network with the weights loaded, and its class counts.
pub fn load_run(path: &Path, device: &Device) -> Result<LoadedRun, TrainError> {
    let ck = checkpoint::load(path, device)?;
    let text = ck.metadata.get("config").ok_or_else(|| {
        TrainError::Checkpoint(format!(
            "{} has no run config in its metadata: not a longtail checkpoint",
            path.display()
        ))
    })?;
    let config = RunConfig::from_toml(text).map_err(|e| {
        TrainError::Checkpoint(format!("the config stored in {}: {e}", path.display()))
    })?;
    let class_counts: Vec<usize> = match ck.metadata.get("class_counts") {
        Some(c) => serde_json::from_str(c).map_err(|e| {
            TrainError::Checkpoint(format!(
                "{}: bad class_counts metadata: {e}",
                path.display()
            ))
        })?,
        None => {
            return Err(TrainError::Checkpoint(format!(
                "{} has no class counts in its metadata",
                path.display()
            )))
        }
    };
    // The config decides what is allocated: check it against what the file holds first, so a
    // config edited to 100,000,000 classes is an error rather than a 19 GB allocation.
    let model_cfg = config.model.clone().check()?;
    let needed = SizeEstimate::of(&model_cfg, 1, 1).parameters;
    let held: f64 = ck.tensors.values().map(|t| t.elem_count() as f64).sum();
    if needed > held {
        return Err(TrainError::Checkpoint(format!(
            "the config stored in {} describes a network of {needed:.0} values ({} experts, {} classes, {} as float32), but the file holds {held:.0}: the config does not belong to these weights",
            path.display(),
            model_cfg.num_experts,
            model_cfg.num_classes,
            human_bytes(4.0 * needed)
        )));
    }
    let varmap = VarMap::new();
    let model = MultiExpert::new(
        &config.model,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    ck.restore_into(&varmap)?;
    Ok(LoadedRun {
        config,
        model,
        varmap,
        class_counts,
    })
}
