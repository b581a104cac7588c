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
    /// `fmnist-lt` (bundled), `cifar10-lt`, `cifar100-lt`, `fmnist`.
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
}

impl DataConfig {
    /// The data set `name` with the default imbalance (100), no validation split, `augment`
    /// and the shuffled sampler.
    pub fn new(name: &str, imbalance: Option<f64>, augment: AugmentKind) -> Self {
        Self {
            dataset: name.to_string(),
            data_dir: None,
            imbalance: imbalance.unwrap_or_else(default_imbalance),
            val_fraction: None,
            augment,
            sampler: SamplerKind::Shuffled,
        }
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
        self.train_config().check()
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
    fn method_settings_round_trip_and_reject_typos() {
        let m = MethodConfig::new("x", &Settings { tau: 2.0 }).unwrap();
        assert_eq!(m.settings::<Settings>().unwrap(), Settings { tau: 2.0 });
        let mut typo = m.clone();
        typo.settings.insert("tua".into(), toml::Value::Float(1.0));
        let e = typo.settings::<Settings>().unwrap_err().to_string();
        assert!(e.contains("tua"), "{e}");
    }
}
