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

/// Loads a checkpoint written by `longtail train`.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Loaded> {
    let path: PathBuf = if path.is_dir() {
        path.join(longtail_train::trainer::LAST)
    } else {
        path.to_path_buf()
    };
    let ck = checkpoint::load(&path, device)?;
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
