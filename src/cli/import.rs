//! `longtail import`: an official RIDE / SADE / TLC state dict (converted to safetensors with its
//! original key names) → our checkpoint folder, ready for `longtail eval --checkpoint DIR`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use longtail::hub::{import_official, ImportOptions};
use longtail::registry::Registry;
use longtail_hub::CardOptions;

/// Arguments of `longtail import`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which official code base the state dict comes from.
    #[arg(long = "from", value_parser = ["ride", "sade", "tlc"])]
    pub from: String,
    /// The state dict as safetensors (`module.` prefixes are stripped).
    pub file: PathBuf,
    /// Output folder (must not exist or be empty; written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Expected number of classes (an error if the classifier has another).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Data set the model was trained on (default: for 3-channel input cifar10-lt with 10 classes,
    /// cifar100-lt with 100; for 1-channel input with 10 classes fmnist-lt; else required).
    #[arg(long)]
    pub dataset: Option<String>,
}

/// Run `longtail import`.
pub fn run(args: Args) -> Result<()> {
    let opts = ImportOptions {
        method: Some(args.from),
        dataset: args.dataset,
        classes: args.classes,
    };
    let imported = import_official(&args.file, &opts, &Registry, &Device::Cpu)?;
    let tensors: BTreeMap<String, candle_core::Tensor> = {
        let data = imported.loaded.varmap.data().lock().expect("varmap lock");
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    };
    longtail_hub::export::write_model_dir(
        &args.out,
        &tensors,
        &imported.metadata,
        None,
        &CardOptions::default(),
    )?;
    let m = &imported.loaded.config.model;
    println!(
        "imported {} as {} ({}, {} experts, {} classes, preset {}) → {}",
        args.file.display(),
        imported.loaded.config.method.name,
        serde_json::to_value(m.arch)?.as_str().unwrap_or("?"),
        m.num_experts,
        m.num_classes,
        imported.loaded.config.preset.as_deref().unwrap_or("-"),
        args.out.display()
    );
    Ok(())
}
