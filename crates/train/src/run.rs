//! Running a [`RunConfig`] end to end (data, model, method, [`fit`]) and reading a finished run
//! back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use longtail_backbone::MultiExpert;
use longtail_data::{load_splits, shot_groups, DataSpec, DatasetName, ShotRule, Splits, Transform};

use crate::checkpoint;
use crate::trainer::{fit, FitSummary, Progress, RunOptions, TrainData, LAST};
use crate::{MethodKind, RunConfig, TrainError};

/// Loads the data a config names.
pub fn load_data(cfg: &RunConfig) -> Result<(DatasetName, Splits), TrainError> {
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

/// The training and evaluation transforms of a config: its augmentation, then the data set's
/// normalisation.
pub fn transforms(cfg: &RunConfig, name: DatasetName) -> (Transform, Transform) {
    let norm = name.normalize();
    (
        Transform::train(cfg.data.augment.augment(), norm.clone()),
        Transform::eval(norm),
    )
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

/// Trains `cfg` with `method` into `out` (resuming when asked) on `device`.
///
/// Checks the config and the data against the network before anything is written; refuses an
/// `out` that holds a run unless `resume`.
pub fn train_run(
    cfg: &RunConfig,
    method: &dyn MethodKind,
    out: &Path,
    resume: bool,
    progress: Progress,
    device: &Device,
) -> Result<FitSummary, TrainError> {
    cfg.check_common()?;
    method.check(cfg)?;
    let (name, splits) = load_data(cfg)?;
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
    let counts = splits.train.class_counts();
    let (varmap, model) = MultiExpert::seeded(&cfg.model, cfg.seed, device)?;
    let mut objective = method.build(cfg, &counts, device)?;
    let (train_transform, eval_transform) = transforms(cfg, name);
    let meta = metadata(cfg, &splits)?;
    if !resume && out.join(LAST).exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    checkpoint::write_atomic(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
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
        device: device.clone(),
    };
    fit(
        &model,
        &varmap,
        objective.as_mut(),
        &data,
        &cfg.train_config(),
        &opts,
    )
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
