//! The run configuration (`--config FILE.toml`, saved as `config.toml` in every run) and the
//! registry of named presets, gathered from the method crates.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use longtail_backbone::{Arch, BackboneConfig, Blocks, Layout};
use longtail_ride::RideLossConfig;
use longtail_train::{LrSchedule, SgdConfig, TrainConfig};
use serde::{Deserialize, Serialize};

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
    /// The method and its loss settings.
    pub method: MethodConfig,
    /// The data.
    pub data: DataConfig,
    /// The network.
    pub model: BackboneConfig,
    /// Optimisation.
    pub optim: OptimConfig,
}

/// The method and its hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum MethodConfig {
    /// Softmax cross-entropy on the mean logits (the CE baseline).
    Ce,
    /// RIDE (Wang et al., ICLR 2021): LDAM-DRW experts with the diversity loss.
    Ride(RideLossConfig),
    /// SADE (Zhang et al., NeurIPS 2022): three skill-diverse experts, test-time aggregation.
    Sade(SadeSettings),
    /// TLC (Li et al., CVPR 2022): evidential experts with uncertainty fusion.
    Tlc(TlcSettings),
}

/// SADE's loss and test-time aggregation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SadeSettings {
    /// τ of the backward expert (2 on CIFAR-100-LT and ImageNet-LT, 1 on iNat and Places-LT).
    pub tau: f64,
    /// Test-time self-supervised aggregation (sade.md §2).
    pub test_time: longtail_sade::presets::TestTimeSpec,
}

/// TLC's loss, prediction combination and optional early exit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlcSettings {
    /// Loss settings, including the engagement rule and the prediction combination.
    pub loss: longtail_tlc::TlcLossConfig,
    /// Early exit at inference (stop calling experts once the fused uncertainty is low).
    #[serde(default)]
    pub early_exit: Option<longtail_tlc::EarlyExit>,
}

impl MethodConfig {
    /// The method's name as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Ce => "ce",
            MethodConfig::Ride(_) => "ride",
            MethodConfig::Sade(_) => "sade",
            MethodConfig::Tlc(_) => "tlc",
        }
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
    /// Training augmentation: `standard` (RIDE's pad-4 crop + flip + ±15° rotation),
    /// `crop-flip` (LDAM-DRW / SADE / TLC: no rotation) or `none`.
    #[serde(default = "default_augment")]
    pub augment: String,
    /// Training sampler: `shuffled`, `class-balanced` or `square-root`.
    #[serde(default = "default_sampler")]
    pub sampler: String,
}

fn default_imbalance() -> f64 {
    100.0
}
fn default_augment() -> String {
    "standard".into()
}
fn default_sampler() -> String {
    "shuffled".into()
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
}

fn one() -> usize {
    1
}

impl RunConfig {
    /// Parses a TOML config file.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).context("invalid config file")
    }

    /// The config as TOML (what `config.toml` in a run directory holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot write the config as TOML")
    }

    /// The trainer's settings.
    pub fn train_config(&self) -> Result<TrainConfig> {
        let sampler = self.data.sampler.parse().map_err(anyhow::Error::msg)?;
        Ok(TrainConfig {
            epochs: self.optim.epochs,
            batch_size: self.optim.batch_size,
            lr: self.optim.lr,
            schedule: self.optim.schedule.clone(),
            sgd: self.optim.sgd,
            seed: self.seed,
            accumulate: self.optim.accumulate,
            sampler,
            eval_batch_size: 256,
        })
    }

    /// Checks the parts that can be checked without data.
    pub fn check(&self) -> Result<()> {
        self.model.clone().check()?;
        self.train_config()?.check()?;
        match &self.method {
            MethodConfig::Ce => {}
            MethodConfig::Ride(r) => r.check()?,
            MethodConfig::Sade(s) => {
                if self.model.num_experts != 3 {
                    bail!(
                        "SADE has exactly 3 experts (got {})",
                        self.model.num_experts
                    );
                }
                if !(s.tau.is_finite() && s.tau >= 0.0) {
                    bail!("SADE's tau must be finite and >= 0 (got {})", s.tau);
                }
            }
            MethodConfig::Tlc(t) => t.loss.check()?,
        }
        if !matches!(
            self.data.augment.as_str(),
            "standard" | "crop-flip" | "none"
        ) {
            bail!(
                "unknown augmentation `{}` (expected standard, crop-flip or none)",
                self.data.augment
            );
        }
        Ok(())
    }
}

/// One named preset.
pub struct PresetInfo {
    /// `method.dataset` name.
    pub name: &'static str,
    /// What it is and where its values come from.
    pub summary: &'static str,
}

/// Every preset, in listing order: the RIDE recipes and the CE baseline derived from each.
pub fn presets() -> Vec<PresetInfo> {
    let mut v = vec![];
    for p in longtail_ride::presets::PRESETS {
        v.push(PresetInfo {
            name: p.name,
            summary: p.summary,
        });
    }
    for p in longtail_sade::presets::PRESETS {
        v.push(PresetInfo {
            name: p.name,
            summary: p.summary,
        });
    }
    for p in longtail_tlc::presets::PRESETS {
        v.push(PresetInfo {
            name: p.name,
            summary: p.summary,
        });
    }
    for p in longtail_ride::presets::PRESETS {
        let name: &'static str = Box::leak(p.name.replacen("ride.", "ce.", 1).into_boxed_str());
        v.push(PresetInfo { name, summary: "CE baseline: the RIDE recipe of the same data set with one plain expert and softmax CE" });
    }
    v
}

/// Builds the config of a preset by name.
pub fn preset(name: &str) -> Result<RunConfig> {
    let (method, dataset) = name.split_once('.').unwrap_or((name, ""));
    let known = || {
        presets()
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match method {
        "ride" | "ce" => {
            let r = longtail_ride::presets::preset(&format!("ride.{dataset}"))
                .map_err(|_| anyhow::anyhow!("unknown preset `{name}` (known: {})", known()))?;
            let mut cfg = from_ride_recipe(&r)?;
            cfg.preset = Some(name.to_string());
            if method == "ce" {
                cfg.method = MethodConfig::Ce;
                cfg.model.num_experts = 1;
                cfg.model.reduce_dimension = false;
            }
            Ok(cfg)
        }
        "sade" => {
            let r = longtail_sade::presets::preset(name)
                .map_err(|_| anyhow::anyhow!("unknown preset `{name}` (known: {})", known()))?;
            let mut cfg = from_sade_recipe(&r)?;
            cfg.preset = Some(name.to_string());
            Ok(cfg)
        }
        "tlc" => {
            // TLC's own names carry the imbalance and expert count (`tlc.cifar100-lt.if100.e3`):
            // `tlc.<dataset>` picks the first preset of that data set.
            let full = longtail_tlc::presets::PRESETS
                .iter()
                .find(|p| p.name == name || p.name.starts_with(&format!("{name}.")))
                .ok_or_else(|| anyhow::anyhow!("unknown preset `{name}` (known: {})", known()))?;
            let mut cfg = from_tlc_recipe(&(full.build)())?;
            cfg.preset = Some(full.name.to_string());
            Ok(cfg)
        }
        _ => bail!("unknown preset `{name}` (known: {})", known()),
    }
}

fn arch(name: &str) -> Result<Arch> {
    Ok(match name {
        "resnet32" => Arch::Resnet32,
        "resnet50" => Arch::Resnet50,
        "resnext50" => Arch::Resnext50,
        "resnet152" => Arch::Resnet152,
        other => bail!("preset names an architecture this build does not have: `{other}`"),
    })
}

fn data_config(dataset: &str, imbalance: Option<f64>, augment: &str) -> DataConfig {
    DataConfig {
        dataset: dataset.to_string(),
        data_dir: None,
        imbalance: imbalance.unwrap_or(100.0),
        val_fraction: None,
        augment: augment.into(),
        sampler: default_sampler(),
    }
}

fn from_sade_recipe(r: &longtail_sade::presets::Recipe) -> Result<RunConfig> {
    use longtail_sade::presets::LrSchedule as S;
    let b = &r.backbone;
    let mut model = BackboneConfig::new(
        arch(&b.arch)?,
        Layout::SharedLayer1,
        b.experts,
        r.dataset.num_classes,
    );
    model.reduce_dimension = b.reduce_dimension;
    model.blocks_per_stage = b.blocks_per_stage.map(Blocks::Uniform);
    model.in_channels = b.in_channels;
    model.scale = b.cosine_scale;
    let o = &r.optim;
    let schedule = match &o.schedule {
        S::Steps { milestones, gamma } => {
            let (step1, step2) = two_milestones(milestones)?;
            LrSchedule::Steps {
                warmup: o.warmup_epochs,
                step1,
                step2,
                gamma: *gamma,
            }
        }
        S::Cosine { eta_min, .. } => LrSchedule::Cosine {
            warmup: o.warmup_epochs,
            min_lr: *eta_min,
        },
    };
    Ok(RunConfig {
        preset: None,
        seed: 0,
        method: MethodConfig::Sade(SadeSettings {
            tau: r.loss.tau,
            test_time: r.test_time.clone(),
        }),
        data: data_config(&r.dataset.name, r.dataset.imbalance_ratio, "crop-flip"),
        model,
        optim: OptimConfig {
            epochs: o.epochs,
            batch_size: o.batch_size,
            lr: o.lr,
            sgd: SgdConfig {
                momentum: o.momentum,
                weight_decay: o.weight_decay,
                nesterov: o.nesterov,
            },
            schedule,
            accumulate: 1,
        },
    })
}

fn from_tlc_recipe(r: &longtail_tlc::presets::TlcRecipe) -> Result<RunConfig> {
    let mut model = BackboneConfig::new(
        arch(&r.backbone)?,
        Layout::PerExpertLayer1,
        r.experts,
        r.num_classes,
    );
    if model.arch == Arch::Resnet32 {
        model.blocks_per_stage = Some(Blocks::PerStage(r.stage_blocks.clone()));
        model.widths = Some(r.stage_widths.clone());
    } else {
        model.layout = Layout::SharedLayer3;
    }
    model.in_channels = r.input_shape[0];
    model.scale = r.logit_scale;
    let augment = if r.rotation_degrees > 0.0 {
        "standard"
    } else {
        "crop-flip"
    };
    Ok(RunConfig {
        preset: None,
        seed: 0,
        method: MethodConfig::Tlc(TlcSettings {
            loss: r.loss.clone(),
            early_exit: r.early_exit,
        }),
        data: data_config(&r.dataset, r.imbalance_factor, augment),
        model,
        optim: OptimConfig {
            epochs: r.epochs,
            batch_size: r.batch_size,
            lr: r.lr,
            sgd: SgdConfig {
                momentum: r.momentum,
                weight_decay: r.weight_decay,
                nesterov: r.nesterov,
            },
            schedule: LrSchedule::Piecewise {
                warmup: r.warmup_epochs,
                steps: r.lr_steps.clone(),
            },
            accumulate: 1,
        },
    })
}

fn two_milestones(milestones: &[usize]) -> Result<(usize, usize)> {
    Ok(match milestones {
        [a, b] => (*a, *b),
        [a] => (*a, usize::MAX),
        [] => (usize::MAX, usize::MAX),
        _ => bail!("preset has more than two learning-rate milestones"),
    })
}

fn from_ride_recipe(r: &longtail_ride::presets::Recipe) -> Result<RunConfig> {
    let arch = match r.backbone.arch.as_str() {
        "resnet32" => Arch::Resnet32,
        "resnet50" => Arch::Resnet50,
        "resnext50" => Arch::Resnext50,
        "resnet152" => Arch::Resnet152,
        other => bail!("preset names an unknown architecture `{other}`"),
    };
    let mut model = BackboneConfig::new(
        arch,
        Layout::SharedLayer1,
        r.backbone.experts,
        r.dataset.num_classes,
    );
    model.reduce_dimension = r.backbone.reduce_dimension;
    model.blocks_per_stage = r.backbone.blocks_per_stage.map(Blocks::Uniform);
    model.in_channels = r.backbone.in_channels;
    model.scale = r.backbone.cosine_scale;
    let o = &r.optim;
    let longtail_ride::presets::LrSchedule::Steps { milestones, gamma } = &o.schedule;
    let (step1, step2) = two_milestones(milestones)?;
    Ok(RunConfig {
        preset: None,
        seed: 0,
        method: MethodConfig::Ride(r.loss.clone()),
        data: data_config(&r.dataset.name, r.dataset.imbalance_ratio, "standard"),
        model,
        optim: OptimConfig {
            epochs: o.epochs,
            batch_size: o.batch_size,
            lr: o.lr,
            sgd: SgdConfig {
                momentum: o.momentum,
                weight_decay: o.weight_decay,
                nesterov: o.nesterov,
            },
            schedule: LrSchedule::Steps {
                warmup: o.warmup_epochs,
                step1,
                step2,
                gamma: *gamma,
            },
            accumulate: 1,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_builds_a_valid_config_that_survives_toml() {
        for p in presets() {
            let cfg = preset(p.name).unwrap();
            cfg.check().unwrap_or_else(|e| panic!("{}: {e:#}", p.name));
            let back = RunConfig::from_toml(&cfg.to_toml().unwrap()).unwrap();
            assert_eq!(back, cfg, "{}", p.name);
        }
    }

    #[test]
    fn the_cifar100_ride_preset_has_the_official_values() {
        let c = preset("ride.cifar100-lt").unwrap();
        assert_eq!(c.optim.epochs, 200);
        assert_eq!(
            c.optim.schedule,
            LrSchedule::Steps {
                warmup: 5,
                step1: 160,
                step2: 180,
                gamma: 0.01
            }
        );
        assert!(c.optim.sgd.nesterov && c.optim.sgd.weight_decay == 5e-4);
        let MethodConfig::Ride(r) = c.method else {
            panic!()
        };
        assert_eq!((r.diversity_factor, r.reweight_epoch), (-0.45, Some(160)));
        assert_eq!(c.model.num_experts, 3);
        assert!(c.model.reduce_dimension);
    }

    #[test]
    fn unknown_names_and_fields_are_errors() {
        assert!(preset("ride.mnist")
            .unwrap_err()
            .to_string()
            .contains("known:"));
        let mut t = preset("ride.fmnist-lt").unwrap().to_toml().unwrap();
        t.push_str("\nepoch = 3\n");
        assert!(RunConfig::from_toml(&t).is_err());
    }
}
