//! Reading any checkpoint as a run: longtail checkpoints (local or `hf://`) and official RIDE /
//! SADE / TLC state dicts, imported with the method's preset for their data set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use longtail_backbone::MultiExpert;
use longtail_train::{checkpoint, load_run, LoadedRun, RunConfig, TrainError};

use crate::{
    import_tensors, infer_backbone, read_checked, resolve_path, HubError, OfficialMethod, Result,
};

/// Where an import finds the run config of an official model: the registry of methods and
/// presets (which the `longtail` binary holds).
pub trait Presets {
    /// The run config of the preset `name` (`<method>.<dataset>`).
    fn preset(&self, name: &str) -> std::result::Result<RunConfig, TrainError>;
    /// Checks a run config (shared parts and the method's settings).
    fn check(&self, cfg: &RunConfig) -> std::result::Result<(), TrainError>;
}

fn not_a_run(path: &Path, reason: String) -> HubError {
    HubError::NotARun {
        path: path.to_path_buf(),
        reason,
    }
}

/// Loads a checkpoint written by `longtail train`, `export` or `import`: a file, a run or model
/// directory, or `hf://owner/repo[@revision][/file]` (through the Hub cache). A file without a
/// run config (an official state dict) is imported on the fly ([`import_official`]).
pub fn load_checkpoint(path: &Path, presets: &dyn Presets, device: &Device) -> Result<LoadedRun> {
    let path: PathBuf = resolve_path(path)?;
    let ck = checkpoint::load(&path, device)?;
    if !ck.metadata.contains_key("config") {
        return Ok(import_official(&path, &ImportOptions::default(), presets, device)?.loaded);
    }
    Ok(load_run(&path, device)?)
}

/// What [`import_official`] needs besides the file; every field can be left out.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// `ride`, `sade` or `tlc`; default: the file's `method` metadata (`ride_baseline` reads as
    /// `ride`), else `tlc` for a TLC layout (RIDE and SADE share theirs, so they must be named).
    pub method: Option<String>,
    /// Data set the model was trained on; default by input channels and class count: 3-channel
    /// 10 → `cifar10-lt`, 3-channel 100 → `cifar100-lt`, 1-channel 10 → `fmnist-lt` (anything
    /// else must be named).
    pub dataset: Option<String>,
    /// Expected class count (an error if the classifier has another).
    pub classes: Option<usize>,
}

/// An official model as one of our runs.
pub struct ImportedRun {
    /// The model, its run config and class counts.
    pub loaded: LoadedRun,
    /// Checkpoint metadata (`config`, `method`, `dataset`, `class_counts`, `source`, `format`).
    pub metadata: BTreeMap<String, String>,
}

/// Imports an official RIDE / SADE / TLC state dict (safetensors, original key names): the
/// network is read off its keys and shapes and loaded strictly (longtail-hub), and the run config
/// is the method's preset for the data set (`<method>.<dataset>`) with that network and the
/// preset's cosine scale.
///
/// Class counts are the data set's LDAM-DRW long-tail profile at the preset's imbalance
/// (`n_max` 5000 / 500 / 6000 for CIFAR-10 / CIFAR-100 / Fashion-MNIST; docs/ride.md §6), and
/// for the bundled `fmnist-lt` its own counts (1000 … 10), which the methods' priors and the
/// many/medium/few groups need; other data sets are read from their files. Differs from
/// official: the official checkpoints carry no class counts.
pub fn import_official(
    path: &Path,
    opts: &ImportOptions,
    presets: &dyn Presets,
    device: &Device,
) -> Result<ImportedRun> {
    let file = read_checked(path, device)?;
    let tensors = crate::official::strip_data_parallel(file.tensors);
    // Converted fixtures name their code base in the metadata (`ride`, `ride_baseline`, …).
    let from_metadata = file
        .metadata
        .get("method")
        .and_then(|m| m.split('_').next())
        .filter(|m| m.parse::<OfficialMethod>().is_ok())
        .map(String::from);
    let method = match opts.method.clone().or(from_metadata) {
        Some(m) => m,
        None => match infer_backbone(&tensors) {
            Ok(m) if m.num_experts > 1 && m.layout != longtail_backbone::Layout::SharedLayer1 => {
                "tlc".to_string()
            }
            _ => return Err(not_a_run(
                path,
                format!("no longtail run config; if it is an official state dict, name its code base: longtail import --from ride|sade|tlc {} --out DIR", path.display()),
            )),
        },
    };
    let official: OfficialMethod = method.parse().map_err(|e: String| not_a_run(path, e))?;
    let imported = import_tensors(path, tensors, official, opts.classes, device)?;
    let classes = imported.config.num_classes;
    let channels = imported.config.in_channels;
    let dataset = match (&opts.dataset, channels, classes) {
        (Some(d), _, _) => d.clone(),
        (None, 3, 10) => "cifar10-lt".into(),
        (None, 3, 100) => "cifar100-lt".into(),
        (None, 1, 10) => "fmnist-lt".into(),
        (None, ch, c) => {
            return Err(not_a_run(
                path,
                format!("{ch}-channel input, {c} classes; say which data set the model was trained on with --dataset"),
            ))
        }
    };
    let mut config = presets
        .preset(&format!("{method}.{dataset}"))
        .map_err(|e| {
            not_a_run(
                path,
                format!("no {method} preset for the data set {dataset}: {e}"),
            )
        })?;
    if config.model.num_classes != classes {
        return Err(not_a_run(
            path,
            format!(
                "the classifier has {classes} classes but {dataset} has {} (a checkpoint for another data set?)",
                config.model.num_classes
            ),
        ));
    }
    if config.model.in_channels != channels {
        return Err(not_a_run(
            path,
            format!(
                "the network takes {channels}-channel images but {dataset} has {}-channel ones (a checkpoint for another data set?)",
                config.model.in_channels
            ),
        ));
    }
    let scale = config.model.scale;
    let kernels = config.model.kernels;
    config.model = imported.config.clone();
    config.model.scale = scale;
    config.model.kernels = kernels;
    presets.check(&config)?;
    let n_max = match dataset.as_str() {
        "cifar10-lt" => Some(5000.0),
        "cifar100-lt" => Some(500.0),
        "fmnist" => Some(6000.0),
        _ => None,
    };
    let class_counts = match n_max {
        Some(n) => longtail_data::profile::exponential_counts(n, classes, config.data.imbalance)
            .map_err(longtail_train::TrainError::from)?,
        // The bundled set (fmnist-lt) and the data sets read from files: their real counts.
        None => longtail_train::load_data(&config)?.1.train.class_counts(),
    };
    let metadata = BTreeMap::from([
        ("config".to_string(), config.to_toml()?),
        ("method".to_string(), method.clone()),
        ("dataset".to_string(), dataset),
        (
            "class_counts".to_string(),
            serde_json::to_string(&class_counts).map_err(|e| not_a_run(path, e.to_string()))?,
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
        loaded: LoadedRun {
            config,
            model,
            varmap,
            class_counts,
        },
        metadata,
    })
}
