//! Running a config end to end: data, model, objective, trainer; and loading a trained run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use longtail_backbone::MultiExpert;
use longtail_data::{
    load_splits, shot_groups, Augment, DataSpec, DatasetName, ShotRule, Splits, Transform,
};
use longtail_train::{checkpoint, fit, FitSummary, Progress, RunOptions, TrainData};

use crate::config::RunConfig;
use crate::methods;

/// Loads the data a config names.
pub fn load_data(cfg: &RunConfig) -> Result<(DatasetName, Splits)> {
    let name: DatasetName = cfg.data.dataset.parse()?;
    let spec = DataSpec {
        name,
        data_dir: cfg.data.data_dir.clone(),
        imbalance: cfg.data.imbalance,
        val_fraction: cfg.data.val_fraction,
        seed: cfg.seed,
    };
    Ok((name, load_splits(&spec)?))
}

/// The transforms of a config: RIDE's CIFAR recipe (pad-4 crop, flip, ±15° rotation) or none.
pub fn transforms(cfg: &RunConfig, name: DatasetName) -> (Transform, Transform) {
    let norm = name.normalize();
    let aug = if cfg.data.augment == "none" {
        Augment::none()
    } else {
        Augment::cifar()
    };
    (Transform::train(aug, norm.clone()), Transform::eval(norm))
}

/// Metadata stored in every checkpoint of a run: enough to rebuild model and method.
pub fn metadata(cfg: &RunConfig, splits: &Splits) -> Result<BTreeMap<String, String>> {
    Ok(BTreeMap::from([
        ("config".to_string(), cfg.to_toml()?),
        ("method".to_string(), cfg.method.name().to_string()),
        ("dataset".to_string(), cfg.data.dataset.clone()),
        (
            "class_counts".to_string(),
            serde_json::to_string(&splits.train.class_counts())?,
        ),
        (
            "class_names".to_string(),
            serde_json::to_string(&splits.train.class_names)?,
        ),
    ]))
}

/// Trains `cfg` into `out` (resuming when asked) on the CPU and returns the trainer's summary.
pub fn train(cfg: &RunConfig, out: &Path, resume: bool, progress: Progress) -> Result<FitSummary> {
    train_on(cfg, out, resume, progress, &Device::Cpu)
}

/// [`train`] on `device` (see [`crate::device::device`] for `--device`).
pub fn train_on(
    cfg: &RunConfig,
    out: &Path,
    resume: bool,
    progress: Progress,
    device: &Device,
) -> Result<FitSummary> {
    cfg.check()?;
    let (name, splits) = load_data(cfg)?;
    if splits.train.num_classes != cfg.model.num_classes {
        bail!(
            "the data set {} has {} classes but the model is configured for {}",
            cfg.data.dataset,
            splits.train.num_classes,
            cfg.model.num_classes
        );
    }
    if splits.train.channels != cfg.model.in_channels {
        bail!(
            "the data set {} has {}-channel images but the model expects {}",
            cfg.data.dataset,
            splits.train.channels,
            cfg.model.in_channels
        );
    }
    let device = device.clone();
    let counts = splits.train.class_counts();
    let (varmap, model) = MultiExpert::seeded(&cfg.model, cfg.seed, &device)?;
    let mut objective = methods::objective(&cfg.method, &counts, &device)?;
    let (train_transform, eval_transform) = transforms(cfg, name);
    let meta = metadata(cfg, &splits)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the run directory {}", out.display()))?;
    let config_path = out.join("config.toml");
    if !resume && out.join(longtail_train::trainer::LAST).exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    checkpoint::write_atomic(&config_path, cfg.to_toml()?.as_bytes())?;
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
        resume,
        metadata: meta,
        progress,
        device,
    };
    Ok(fit(
        &model,
        &varmap,
        objective.as_mut(),
        &data,
        &cfg.train_config()?,
        &opts,
    )?)
}

/// A trained model read back from a checkpoint.
pub struct Loaded {
    /// The run's config (from the checkpoint metadata).
    pub config: RunConfig,
    /// The network.
    pub model: MultiExpert,
    /// Its weights.
    pub varmap: VarMap,
    /// Training class counts.
    pub class_counts: Vec<usize>,
}

/// Loads a checkpoint written by `longtail train`, `export` or `import`: a file, a run or model
/// directory, or `hf://owner/repo[@revision][/file]` (through the Hub cache, longtail-hub). A
/// file without a run config (an official state dict) is imported on the fly ([`import_official`]).
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Loaded> {
    let path: PathBuf = longtail_hub::resolve_path(path)?;
    let ck = checkpoint::load(&path, device)?;
    if !ck.metadata.contains_key("config") {
        return Ok(import_official(&path, &ImportOptions::default(), device)?.loaded);
    }
    let text = ck.metadata.get("config").with_context(|| {
        format!(
            "{} has no run config in its metadata: not a longtail checkpoint",
            path.display()
        )
    })?;
    let config = RunConfig::from_toml(text)
        .with_context(|| format!("the config stored in {}", path.display()))?;
    let class_counts: Vec<usize> = match ck.metadata.get("class_counts") {
        Some(c) => serde_json::from_str(c).context("bad class_counts metadata")?,
        None => bail!("{} has no class counts in its metadata", path.display()),
    };
    let varmap = VarMap::new();
    let model = MultiExpert::new(
        &config.model,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    ck.restore_into(&varmap)?;
    Ok(Loaded {
        config,
        model,
        varmap,
        class_counts,
    })
}

/// What [`import_official`] needs besides the file; every field can be left out.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// `ride`, `sade` or `tlc`; default: the file's `method` metadata (`ride_baseline` reads as
    /// `ride`), else `tlc` for a TLC layout (RIDE and SADE share theirs, so they must be named).
    pub method: Option<String>,
    /// Data set the model was trained on; default by class count: 10 → `cifar10-lt`,
    /// 100 → `cifar100-lt`.
    pub dataset: Option<String>,
    /// Expected class count (an error if the classifier has another).
    pub classes: Option<usize>,
}

/// An official model as one of our runs.
pub struct ImportedRun {
    /// The model, its run config and class counts.
    pub loaded: Loaded,
    /// Checkpoint metadata (`config`, `method`, `dataset`, `class_counts`, `source`, `format`).
    pub metadata: BTreeMap<String, String>,
}

/// Imports an official RIDE / SADE / TLC state dict (safetensors, original key names): the
/// network is read off its keys and shapes and loaded strictly (longtail-hub), and the run config
/// is the method's preset for the data set (`<method>.<dataset>`) with that network and the
/// preset's cosine scale.
///
/// Class counts are the data set's LDAM-DRW long-tail profile at the preset's imbalance
/// (`n_max` 5000 / 500 / 6000 for CIFAR-10 / CIFAR-100 / Fashion-MNIST; spec ride.md §6), which
/// the methods' priors and the many/medium/few groups need; other data sets are read from
/// their files. Differs from official: the official checkpoints carry no class counts.
pub fn import_official(path: &Path, opts: &ImportOptions, device: &Device) -> Result<ImportedRun> {
    let file = longtail_hub::read_checked(path, device)?;
    let tensors = longtail_hub::official::strip_data_parallel(file.tensors);
    // Converted fixtures name their code base in the metadata (`ride`, `ride_baseline`, …).
    let from_metadata = file
        .metadata
        .get("method")
        .and_then(|m| m.split('_').next())
        .filter(|m| m.parse::<longtail_hub::OfficialMethod>().is_ok())
        .map(String::from);
    let method = match opts.method.clone().or(from_metadata) {
        Some(m) => m,
        None => match longtail_hub::infer_backbone(&tensors) {
            Ok(m) if m.num_experts > 1 && m.layout != longtail_backbone::Layout::SharedLayer1 => {
                "tlc".to_string()
            }
            _ => bail!(
                "{} has no longtail run config; if it is an official state dict, name its code base: longtail import --from ride|sade|tlc {} --out DIR",
                path.display(),
                path.display()
            ),
        },
    };
    let official: longtail_hub::OfficialMethod = method.parse().map_err(anyhow::Error::msg)?;
    let imported = longtail_hub::import_tensors(path, tensors, official, opts.classes, device)?;
    let classes = imported.config.num_classes;
    let dataset = match (&opts.dataset, classes) {
        (Some(d), _) => d.clone(),
        (None, 10) => "cifar10-lt".into(),
        (None, 100) => "cifar100-lt".into(),
        (None, c) => bail!(
            "{}: {c} classes; say which data set the model was trained on with --dataset",
            path.display()
        ),
    };
    let mut config = crate::config::preset(&format!("{method}.{dataset}"))
        .with_context(|| format!("no {method} preset for the data set {dataset}"))?;
    if config.model.num_classes != classes {
        bail!(
            "{}: the classifier has {classes} classes but {dataset} has {} (a checkpoint for another data set?)",
            path.display(),
            config.model.num_classes
        );
    }
    let scale = config.model.scale;
    let kernels = config.model.kernels;
    config.model = imported.config.clone();
    config.model.scale = scale;
    config.model.kernels = kernels;
    config.check()?;
    let n_max = match dataset.as_str() {
        "cifar10-lt" => Some(5000.0),
        "cifar100-lt" => Some(500.0),
        "fmnist-lt" | "fmnist" => Some(6000.0),
        _ => None,
    };
    let class_counts = match n_max {
        Some(n) => longtail_data::profile::exponential_counts(n, classes, config.data.imbalance)?,
        None => load_data(&config)?.1.train.class_counts(),
    };
    let metadata = BTreeMap::from([
        ("config".to_string(), config.to_toml()?),
        ("method".to_string(), method.clone()),
        ("dataset".to_string(), dataset),
        (
            "class_counts".to_string(),
            serde_json::to_string(&class_counts)?,
        ),
        ("format".to_string(), checkpoint::FORMAT.to_string()),
        (
            "source".to_string(),
            format!(
                "imported from the official {method} state dict `{}`",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
        ),
    ]);
    // The imported network uses the preset's scale: rebuild if it differs from the default 30.
    let (varmap, model) = if config.model.scale == imported.config.scale {
        (imported.varmap, imported.model)
    } else {
        let varmap = VarMap::new();
        let model = MultiExpert::new(
            &config.model,
            VarBuilder::from_varmap(&varmap, DType::F32, device),
        )?;
        let data = imported.varmap.data().lock().expect("varmap lock").clone();
        let tensors = data
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        longtail_backbone::load_weights(&varmap, &tensors)?;
        (varmap, model)
    };
    Ok(ImportedRun {
        loaded: Loaded {
            config,
            model,
            varmap,
            class_counts,
        },
        metadata,
    })
}
