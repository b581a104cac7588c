//! The one place that names every method and preset.
//!
//! Adding a method is one new crate (its `MethodKind`, `Method`, presets) plus one line in
//! [`METHODS`]. Preset names read `method.dataset[.variant]`; `<method>.<dataset>` also finds the
//! first preset of that method and data set (`tlc.cifar100-lt` → `tlc.cifar100-lt.if100.e3`).

use anyhow::{anyhow, bail, Context, Result};
use longtail_train::{MethodKind, RunConfig, TrainError};

/// Every method, in listing order.
pub const METHODS: &[&dyn MethodKind] = &[
    &longtail_baselines::Ce,
    &longtail_ride::Ride,
    &longtail_sade::Sade,
    &longtail_tlc::Tlc,
    &longtail_balpoe::BalPoe,
    &longtail_baselines::Focal,
    &longtail_baselines::Cb,
    &longtail_baselines::LdamDrw,
    &longtail_baselines::Bsce,
    &longtail_baselines::La,
    &longtail_baselines::Wb,
];

/// One preset as `longtail presets` lists it.
pub struct PresetEntry {
    /// `method.dataset[.variant]`.
    pub name: String,
    /// What it is and where its values come from.
    pub summary: String,
    /// Its config (with `preset` set to its name).
    pub config: RunConfig,
}

/// Every preset: each method's own, then the CE baseline of every one-stage RIDE recipe
/// (`ce.<dataset>`: the same recipe with one plain expert, [`longtail_baselines::ce_baseline_of`];
/// none for the distillation pairs `ride.<dataset>.teacher` / `.distill`).
pub fn presets() -> Vec<PresetEntry> {
    let mut all: Vec<PresetEntry> = METHODS
        .iter()
        .flat_map(|m| m.presets())
        .map(|p| PresetEntry {
            name: p.name.to_string(),
            summary: p.summary.to_string(),
            config: p.config(),
        })
        .collect();
    for p in longtail_ride::presets::PRESETS
        .iter()
        .filter(|p| !longtail_ride::presets::is_distillation_stage(p.name))
    {
        let config = longtail_baselines::ce_baseline_of(&p.config());
        all.push(PresetEntry {
            name: config.preset.clone().unwrap_or_default(),
            summary: "CE baseline: the RIDE recipe of the same data set with one plain expert and softmax CE".into(),
            config,
        });
    }
    all
}

/// The method named `name`.
pub fn method(name: &str) -> Result<&'static dyn MethodKind> {
    METHODS
        .iter()
        .copied()
        .find(|m| m.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = METHODS.iter().map(|m| m.name()).collect();
            anyhow!("unknown method `{name}` (known: {})", known.join(", "))
        })
}

/// The data set of the recipes [`preset`] derives for your own image lists.
pub const IMAGE_LIST: &str = "image-list";

/// The config of the preset `name` (exact, or the first `name.*`).
///
/// `<method>.image-list[.variant]` is derived from `<method>.imagenet-lt[.variant]`: the same
/// model and recipe (resized crops, streamed) on an image-list directory; its classifier size
/// comes from the lists when the run reads them ([`size_to_lists`]). The distillation
/// student has none (its teacher path names an ImageNet-LT run).
pub fn preset(name: &str) -> Result<RunConfig> {
    let all = presets();
    let find = |name: &str| {
        all.iter()
            .find(|p| p.name == name)
            .or_else(|| all.iter().find(|p| p.name.starts_with(&format!("{name}."))))
    };
    let derived = name
        .split('.')
        .position(|part| part == IMAGE_LIST)
        .filter(|&i| i == 1)
        .and_then(|_| find(&name.replacen(IMAGE_LIST, "imagenet-lt", 1)))
        .filter(|p| !p.name.ends_with(".distill"));
    if let Some(p) = derived {
        let mut cfg = p.config.clone();
        cfg.data.dataset = IMAGE_LIST.into();
        cfg.preset = Some(p.name.replacen("imagenet-lt", IMAGE_LIST, 1));
        return Ok(cfg);
    }
    match find(name) {
        Some(p) => Ok(p.config.clone()),
        None => bail!(
            "unknown preset `{name}` (known: {})",
            all.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Sizes the classifier of a list-reading recipe to its lists (one more than their largest
/// label, reading only the list files): an `image-list` config always, a streamed benchmark's
/// (`imagenet-lt`, `inat2018`, `places-lt`) too, so that a subset of the benchmark (a few of
/// ImageNet-LT's classes, a tree made by `longtail data --make-tree`) trains as it is, with the
/// data loader's one warning line; the full lists give the benchmark's count. Other configs, and
/// those without a data directory, are left alone.
pub fn size_to_lists(cfg: &mut RunConfig) -> Result<()> {
    let Some(dir) = &cfg.data.data_dir else {
        return Ok(());
    };
    let name: longtail_data::DatasetName = cfg.data.dataset.parse()?;
    if name == longtail_data::DatasetName::ImageList {
        cfg.model.num_classes = longtail_data::image_list_classes(dir)
            .with_context(|| format!("reading the image lists of {}", dir.display()))?;
    } else if name.is_streamed() {
        cfg.model.num_classes = longtail_data::benchmark_list_classes(name, dir, cfg.data.val_list)
            .with_context(|| format!("reading the {name} lists of {}", dir.display()))?;
    }
    Ok(())
}

/// Checks a config: the shared parts, then the method's settings.
pub fn check(cfg: &RunConfig) -> Result<()> {
    cfg.check_common()?;
    method(&cfg.method.name)?.check(cfg)?;
    Ok(())
}

/// The registry as the Hub import sees it.
pub struct Registry;

impl longtail_hub::Presets for Registry {
    fn preset(&self, name: &str) -> std::result::Result<RunConfig, TrainError> {
        preset(name).map_err(|e| TrainError::Config(e.to_string()))
    }

    fn check(&self, cfg: &RunConfig) -> std::result::Result<(), TrainError> {
        cfg.check_common()?;
        method(&cfg.method.name)
            .map_err(|e| TrainError::Config(e.to_string()))?
            .check(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longtail_train::LrSchedule;

    #[test]
    fn every_preset_builds_a_valid_config_that_survives_toml() {
        for p in presets() {
            check(&p.config).unwrap_or_else(|e| panic!("{}: {e:#}", p.name));
            let back = RunConfig::from_toml(&p.config.to_toml().unwrap()).unwrap();
            assert_eq!(back, p.config, "{}", p.name);
            assert_eq!(p.config.preset.as_deref(), Some(p.name.as_str()));
        }
    }

    #[test]
    fn every_method_is_named_once_and_has_presets() {
        for m in METHODS {
            assert_eq!(METHODS.iter().filter(|o| o.name() == m.name()).count(), 1);
            assert!(
                presets().iter().any(|p| p.config.method.name == m.name()),
                "{} has no preset",
                m.name()
            );
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
        let r: longtail_ride::RideLossConfig = c.method.settings().unwrap();
        assert_eq!((r.diversity_factor, r.reweight_epoch), (-0.45, Some(160)));
        assert_eq!(c.model.num_experts, 3);
        assert!(c.model.reduce_dimension);
    }

    #[test]
    fn the_baselines_bundled_presets_are_ce_fmnist_lt_with_another_method() {
        let ce = preset("ce.fmnist-lt").unwrap();
        for m in ["focal", "cb", "ldam-drw", "bsce", "la", "wb"] {
            let mut c = preset(&format!("{m}.fmnist-lt")).unwrap();
            assert_eq!(c.method.name, m);
            c.method = ce.method.clone();
            c.preset = ce.preset.clone();
            if m == "wb" {
                // Weight balancing's one change is its weight decay.
                assert!(c.optim.sgd.weight_decay > ce.optim.sgd.weight_decay);
                c.optim.sgd.weight_decay = ce.optim.sgd.weight_decay;
            }
            assert_eq!(c, ce, "{m}.fmnist-lt");
        }
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
        // A typo inside a method's settings is an error too (the method's own config).
        let mut c = preset("ride.fmnist-lt").unwrap();
        c.method
            .settings
            .insert("max_margn".into(), toml::Value::Float(0.5));
        assert!(check(&c).unwrap_err().to_string().contains("max_margn"));
    }
}
