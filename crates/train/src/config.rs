//! The run configuration: everything that defines a training run (`--config FILE.toml`, saved
//! as `config.toml` in every run directory and in every checkpoint's metadata).
//!
//! The engine knows no method: a run's `[method]` table is its `name` plus that method's own
//! settings, which the method's crate parses into its typed config ([`MethodConfig::settings`]).

use std::path::PathBuf;

use longtail_backbone::BackboneConfig;
use longtail_data::{AugmentKind, SamplerKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{LrSchedule, SgdConfig, TrainConfig, TrainError};

/// Everything that defines a training run. Every CLI flag maps onto one field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The preset this config started from, for the record.
    #[serde(default)]
    pub preset: Option<String>,
    /// Seed of weights, data order and augmentation.
    #[serde(default)]
    pub seed: u64,
    /// The method and its settings.
    pub method: MethodConfig,
    /// The data.
    pub data: DataConfig,
    /// The network.
    pub model: BackboneConfig,
    /// Optimisation.
    pub optim: OptimConfig,
}

/// A method's name and its own settings (`[method]` in `config.toml`).
///
/// The settings stay a TOML table here; the method's crate reads them into its typed,
/// `deny_unknown_fields` config with [`MethodConfig::settings`], so a typo is an error there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodConfig {
    /// The method's registry name (`ce`, `ride`, `sade`, `tlc`, …).
    pub name: String,
    /// The method's own settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl MethodConfig {
    /// A method config from the method's typed settings.
    pub fn new<S: Serialize>(name: &str, settings: &S) -> Result<Self, TrainError> {
        let settings = match toml::Table::try_from(settings) {
            Ok(t) => t,
            Err(e) => {
                return Err(TrainError::Config(format!(
                    "the {name} settings cannot be written as TOML: {e}"
                )))
            }
        };
        Ok(Self {
            name: name.to_string(),
            settings,
        })
    }

    /// A method without settings (the CE baseline).
    pub fn bare(name: &str) -> Self {
        Self {
            name: name.to_string(),
            settings: toml::Table::new(),
        }
    }

    /// The settings read into the method's typed config.
    pub fn settings<S: DeserializeOwned>(&self) -> Result<S, TrainError> {
        toml::Value::Table(self.settings.clone())
            .try_into()
            .map_err(|e| {
                TrainError::Config(format!(
                    "[method] settings of {}: {}",
                    self.name,
                    e.to_string().trim()
                ))
            })
    }
}

/// Which data, and how it is fed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `fmnist-lt` (bundled), `cifar10-lt`, `cifar100-lt`, `fmnist`, `image-list`, or a streamed
    /// benchmark: `imagenet-lt`, `inat2018`, `places-lt` (official lists under `data_dir`).
    pub dataset: String,
    /// Directory of the data files (CIFAR binary, IDX); not needed for the bundled set.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Imbalance factor n_max / n_min of the long-tailed training subset.
    #[serde(default = "default_imbalance")]
    pub imbalance: f64,
    /// Fraction of each training class held out for validation (model selection); none by default.
    #[serde(default)]
    pub val_fraction: Option<f64>,
    /// Training augmentation.
    #[serde(default)]
    pub augment: AugmentKind,
    /// Training sampler.
    #[serde(default)]
    pub sampler: SamplerKind,
    /// Side of the square crops of a streamed data set (`imagenet-lt`, `inat2018`, `places-lt`):
    /// 224 when absent, as the papers; the evaluation resize keeps the 256/224 ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Read the benchmark's validation list as the validation set (SADE's model selection on
    /// ImageNet-LT and Places-LT); RIDE's loaders use none (docs/ride.md §6).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub val_list: bool,
}

impl DataConfig {
    /// The data set `name` with the default imbalance (100), no validation split, `augment`
    /// and the shuffled sampler. A streamed benchmark (`imagenet-lt`, `inat2018`, `places-lt`)
    /// gets its official augmentation instead of `augment`, which names the recipes of the
    /// in-memory sets ([`longtail_data::DatasetName::official_augment`], docs/ride.md §6).
    pub fn new(name: &str, imbalance: Option<f64>, augment: AugmentKind) -> Self {
        let augment = name
            .parse::<longtail_data::DatasetName>()
            .ok()
            .and_then(|d| d.official_augment())
            .unwrap_or(augment);
        Self {
            dataset: name.to_string(),
            data_dir: None,
            imbalance: imbalance.unwrap_or_else(default_imbalance),
            val_fraction: None,
            augment,
            sampler: SamplerKind::Shuffled,
            image_size: None,
            val_list: false,
        }
    }
}

impl DataConfig {
    /// The crop side of a streamed data set ([`DataConfig::image_size`], default 224).
    pub fn side(&self) -> usize {
        self.image_size.unwrap_or(224)
    }

    /// Whether the images are streamed from disk (decoded per batch, any number, any sizes)
    /// rather than held in memory: always for the benchmarks (`imagenet-lt`, `inat2018`,
    /// `places-lt`); for `image-list` when the training augmentation is a resized crop
    /// (`imagenet`, `resized-crop-flip`), which takes images of any size. An image list with a
    /// fixed-size recipe (the CIFAR pad-and-crop ones, `none`) is decoded into memory at the
    /// images' own size, which must then be one.
    pub fn streams(&self) -> bool {
        match self.dataset.parse::<longtail_data::DatasetName>() {
            Ok(d) if d.is_streamed() => true,
            Ok(longtail_data::DatasetName::ImageList) => self.augment.is_resized_crop(),
            _ => false,
        }
    }

    /// Checks what only the data section decides: a crop side in `1..=4096`; on a streamed
    /// benchmark, a training augmentation that fixes the size (`imagenet`, `resized-crop-flip`
    /// or `none`: the CIFAR recipes pad and crop images that all have one size).
    pub fn check(&self) -> Result<(), TrainError> {
        let side = self.side();
        if !(1..=4096).contains(&side) {
            return Err(TrainError::Config(format!(
                "data.image_size must lie in 1..=4096 (got {side})"
            )));
        }
        let streamed = self
            .dataset
            .parse::<longtail_data::DatasetName>()
            .is_ok_and(|d| d.is_streamed());
        if streamed && !(self.augment.is_resized_crop() || self.augment == AugmentKind::None) {
            return Err(TrainError::Config(format!(
                "data.augment = {:?} is a CIFAR recipe (pad + crop of equal-sized images); {} streams images of mixed sizes: use augment = \"imagenet\" (RandomResizedCrop, flip, ColorJitter) or \"resized-crop-flip\" (iNaturalist)",
                self.augment, self.dataset
            )));
        }
        Ok(())
    }
}

fn default_imbalance() -> f64 {
    100.0
}

/// SGD and schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Momentum, Nesterov, weight decay.
    #[serde(flatten)]
    pub sgd: SgdConfig,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// Gradient-accumulation micro-batches per step.
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Batch size of the evaluation passes (no effect on the numbers).
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Mixup's α, for any method: each batch is mixed with a permutation of itself by a weight
    /// λ ~ Beta(α, α) and the loss is `λ·L(y) + (1 − λ)·L(y[p])` ([`crate::mixup`],
    /// docs/balpoe.md §2.3). `None` (the default, and what a config without the key reads as)
    /// trains on the images as they are; it is not written out, so older configs and
    /// checkpoints compare equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup_alpha: Option<f64>,
    /// Data-parallel runs: normalise every train-mode batch norm with the statistics of the
    /// global batch (all ranks' images, PyTorch `SyncBatchNorm`) instead of each rank's own
    /// (the default, as the official multi-GPU runs did). No effect on one process. Written out
    /// only when set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_bn: bool,
    /// Learning rates of their own for groups of parameters ([`crate::LrGroup`], as PyTorch SGD
    /// parameter groups): the first group whose prefix a parameter's name starts with sets its
    /// multiple of `lr`. Empty (the default, not written out): one rate for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr_groups: Vec<crate::LrGroup>,
}

impl OptimConfig {
    /// `epochs` of SGD at `lr` with `sgd` and `schedule`, no accumulation, eval batch 256.
    pub fn new(
        epochs: usize,
        batch_size: usize,
        lr: f64,
        sgd: SgdConfig,
        schedule: LrSchedule,
    ) -> Self {
        Self {
            epochs,
            batch_size,
            lr,
            sgd,
            schedule,
            accumulate: 1,
            eval_batch_size: default_eval_batch(),
            mixup_alpha: None,
            sync_bn: false,
            lr_groups: vec![],
        }
    }
}

fn one() -> usize {
    1
}

fn default_eval_batch() -> usize {
    256
}

impl RunConfig {
    /// Parses a TOML config file.
    pub fn from_toml(text: &str) -> Result<Self, TrainError> {
        toml::from_str(text).map_err(|e| {
            TrainError::Config(format!("invalid config file: {}", e.to_string().trim()))
        })
    }

    /// The config as TOML (what `config.toml` in a run directory holds).
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string_pretty(self)
            .map_err(|e| TrainError::Config(format!("cannot write the config as TOML: {e}")))
    }

    /// The trainer's settings.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.optim.epochs,
            batch_size: self.optim.batch_size,
            lr: self.optim.lr,
            schedule: self.optim.schedule.clone(),
            sgd: self.optim.sgd,
            seed: self.seed,
            accumulate: self.optim.accumulate,
            sampler: self.data.sampler,
            eval_batch_size: self.optim.eval_batch_size,
            mixup_alpha: self.optim.mixup_alpha,
            sync_bn: self.optim.sync_bn,
            lr_groups: self.optim.lr_groups.clone(),
        }
    }

    /// Checks what every method shares (network, optimisation); the method's own settings are
    /// checked by its [`crate::MethodKind::check`].
    pub fn check_common(&self) -> Result<(), TrainError> {
        self.model.clone().check()?;
        if self.data.sampler == SamplerKind::Sequential {
            return Err(TrainError::Config(
                "the sequential sampler is for evaluation; train with shuffled, class-balanced or square-root".into(),
            ));
        }
        self.data.check()?;
        let sgd = self.optim.sgd;
        if !(0.0..1.0).contains(&sgd.momentum) {
            return Err(TrainError::Config(format!(
                "optim.momentum must be at least 0 and below 1 (got {})",
                sgd.momentum
            )));
        }
        if !(sgd.weight_decay >= 0.0 && sgd.weight_decay.is_finite()) {
            return Err(TrainError::Config(format!(
                "optim.weight_decay must be a finite number >= 0 (got {})",
                sgd.weight_decay
            )));
        }
        if sgd.nesterov && sgd.momentum == 0.0 {
            return Err(TrainError::Config(
                "optim.nesterov needs optim.momentum > 0".into(),
            ));
        }
        self.train_config().check()
    }
}

/// The fields in which two run configs differ, each as `optim.lr: 0.1 in the run, 0.05 asked`
/// (the TOML trees compared key by key, nested tables as dotted paths, in key order); `None`
/// when either text is not a TOML table.
pub fn config_differences(run: &str, asked: &str) -> Option<Vec<String>> {
    let run: toml::Table = toml::from_str(run).ok()?;
    let asked: toml::Table = toml::from_str(asked).ok()?;
    let mut out = Vec::new();
    diff_tables("", &run, &asked, &mut out);
    Some(out)
}

fn diff_tables(prefix: &str, run: &toml::Table, asked: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = run.keys().chain(asked.keys()).collect();
    for key in keys {
        let path = format!("{prefix}{key}");
        match (run.get(key), asked.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                diff_tables(&format!("{path}."), a, b, out)
            }
            (a, b) if a == b => {}
            (a, b) => {
                let show =
                    |v: Option<&toml::Value>| v.map_or("not set".to_string(), |v| v.to_string());
                out.push(format!("{path}: {} in the run, {} asked", show(a), show(b)));
            }
        }
    }
}

/// How big a network is, from its config alone (nothing allocated): what the size limits of
/// [`crate::train_run`] and [`crate::load_run`] are checked against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeEstimate {
    /// Values in the network's tensors, exactly as its `VarMap` holds them (weights, BN affine
    /// parameters and running statistics, classifiers).
    pub parameters: f64,
    /// Float32 values of one image's activations that a training step keeps (every conv, BN and
    /// ReLU output, the residual sums, the logits), roughly.
    pub activations_per_image: f64,
    /// Float32 values of one image's largest single activation (a conv output): a forward pass
    /// without gradients (evaluation) frees each layer's input once the layer is done, so its
    /// peak is a few of these, not the sum over layers.
    pub largest_activation: f64,
}

/// Float32 copies of each conv output a training step holds at its peak (the conv, BN and ReLU
/// outputs kept for the backward pass, less what candle frees early). Measured on
/// `ride.fmnist-lt` (batch 128, eval batch 256, 28×28, 2026-11): 3 experts peak at 292 MB and
/// 12 experts at 850 MB resident, 62 MB per expert; with 3 copies the estimate gives 65 MB.
const ACTIVATION_COPIES: f64 = 3.0;

/// Largest activations an evaluation forward holds at once, per image: a block's input (kept for
/// the residual), its conv output, the BN output and the im2col / padding buffer of the next
/// conv. An upper bound by construction, not a measurement.
const EVAL_COPIES: f64 = 4.0;

impl SizeEstimate {
    /// Estimates `model` on `height × width` images. Saturates (infinite) rather than overflows.
    pub fn of(model: &BackboneConfig, height: usize, width: usize) -> SizeEstimate {
        let arch = model.arch;
        let f = |v: usize| v as f64;
        let out = |i: usize, k: usize, s: usize, p: usize| (i + 2 * p).saturating_sub(k) / s + 1;
        let bn = |c: usize| 4.0 * f(c);
        let (mut params, mut acts) = (0.0f64, 0.0f64);
        // Stem: conv (3×3 stride 1 on CIFAR, 7×7 stride 2 + max pool on ImageNet) + BN + ReLU.
        let stem = arch.stem_width();
        let (k, s, p) = if arch.is_cifar() {
            (3, 1, 1)
        } else {
            (7, 2, 3)
        };
        let (mut h, mut w) = (out(height, k, s, p), out(width, k, s, p));
        params += f(model.in_channels) * f(stem) * f(k * k) + bn(stem);
        acts += f(stem) * f(h) * f(w);
        let mut largest = (f(model.in_channels) * f(height) * f(width)).max(f(stem) * f(h) * f(w));
        if !arch.is_cifar() {
            (h, w) = (out(h, 3, 2, 1), out(w, 3, 2, 1));
            acts += f(stem) * f(h) * f(w) / ACTIVATION_COPIES;
        }
        let planes = model.planes();
        let blocks = model.blocks();
        // One stage from `c` channels at h × w: (parameters, activations, out channels, h, w,
        // largest activation).
        let stage = |i: usize, mut c: usize, mut h: usize, mut w: usize| {
            let (mut params, mut acts, mut largest) = (0.0f64, 0.0f64, 0.0f64);
            let p = planes[i];
            for b in 0..blocks[i] {
                let s = if b == 0 && i > 0 { 2 } else { 1 };
                let (oh, ow) = (out(h, 3, s, 1), out(w, 3, s, 1));
                let px = f(oh) * f(ow);
                if arch.is_cifar() {
                    params += 9.0 * f(c) * f(p) + 9.0 * f(p) * f(p) + 2.0 * bn(p);
                    // Two conv units and the residual sum.
                    acts += 3.0 * f(p) * px;
                    largest = largest.max(f(p) * px);
                    c = p;
                } else {
                    let (width, groups) = if arch == longtail_backbone::Arch::Resnext50 {
                        (p * 4 / 64 * 32, 32)
                    } else {
                        (p, 1)
                    };
                    let o = p * 4;
                    params += f(c) * f(width)
                        + 9.0 * f(width) * f(width / groups.max(1))
                        + f(width) * f(o)
                        + 2.0 * bn(width)
                        + bn(o);
                    acts += f(width) * f(h) * f(w) + f(width) * px + 2.0 * f(o) * px;
                    largest = largest.max(f(width) * f(h) * f(w)).max(f(o) * px);
                    if s != 1 || c != o {
                        params += f(c) * f(o) + bn(o);
                        acts += f(o) * px;
                    }
                    c = o;
                }
                (h, w) = (oh, ow);
            }
            (params, acts, c, h, w, largest)
        };
        let shared = model.shared_stages();
        let mut c = stem;
        for i in 0..shared {
            let (sp, sa, nc, nh, nw, sl) = stage(i, c, h, w);
            params += sp;
            acts += sa;
            largest = largest.max(sl);
            (c, h, w) = (nc, nh, nw);
        }
        let (mut expert_params, mut expert_acts) = (0.0f64, 0.0f64);
        for i in shared..arch.num_stages() {
            let (sp, sa, nc, nh, nw, sl) = stage(i, c, h, w);
            expert_params += sp;
            expert_acts += sa;
            largest = largest.max(sl);
            (c, h, w) = (nc, nh, nw);
        }
        let classes = f(model.num_classes);
        let dim = f(model.feature_dim());
        expert_params += dim * classes + if model.use_norm { 0.0 } else { classes };
        // Pooled features and logits.
        expert_acts += (dim + classes) / ACTIVATION_COPIES;
        let experts = f(model.num_experts);
        SizeEstimate {
            parameters: params + experts * expert_params,
            activations_per_image: ACTIVATION_COPIES * (acts + experts * expert_acts),
            largest_activation: largest,
        }
    }

    /// Bytes of the float32 parameters alone (what evaluation needs besides activations).
    pub fn parameter_bytes(&self) -> f64 {
        4.0 * self.parameters
    }

    /// Bytes a training step needs at `batch` images: the parameters with their gradients,
    /// momentum buffers and accumulated gradients (4 copies), plus the batch's activations.
    pub fn training_bytes(&self, batch: usize) -> f64 {
        4.0 * self.parameter_bytes() + self.activation_bytes(batch)
    }

    /// Bytes of one training batch's activations.
    pub fn activation_bytes(&self, batch: usize) -> f64 {
        4.0 * batch as f64 * self.activations_per_image
    }

    /// Bytes an evaluation batch of `batch` images needs: the parameters and a few of the
    /// largest activation at a time ([`SizeEstimate::largest_activation`]).
    pub fn evaluation_bytes(&self, batch: usize) -> f64 {
        self.parameter_bytes() + 4.0 * EVAL_COPIES * batch as f64 * self.largest_activation
    }
}

/// `bytes` for people: `812 MB`, `24.3 GB`, `5.1 TB`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        tau: f64,
    }

    #[test]
    fn config_differences_name_each_field_both_ways() {
        let run = "seed = 1\n[optim]\nlr = 0.1\nepochs = 4\n[optim.schedule]\nkind = \"steps\"\n";
        let asked = "seed = 1\n[optim]\nepochs = 4\nlr = 0.05\n[optim.schedule]\nkind = \"cosine\"\n[data]\nval_fraction = 0.2\n";
        assert_eq!(
            config_differences(run, asked).unwrap(),
            [
                "data: not set in the run, { val_fraction = 0.2 } asked",
                "optim.lr: 0.1 in the run, 0.05 asked",
                "optim.schedule.kind: \"steps\" in the run, \"cosine\" asked",
            ]
        );
        assert_eq!(config_differences(run, run).unwrap(), Vec::<String>::new());
        assert!(config_differences("not = [toml", run).is_none());
    }

    #[test]
    fn method_settings_round_trip_and_reject_typos() {
        let m = MethodConfig::new("x", &Settings { tau: 2.0 }).unwrap();
        assert_eq!(m.settings::<Settings>().unwrap(), Settings { tau: 2.0 });
        let mut typo = m.clone();
        typo.settings.insert("tua".into(), toml::Value::Float(1.0));
        let e = typo.settings::<Settings>().unwrap_err().to_string();
        assert!(e.contains("tua"), "{e}");
    }
}
