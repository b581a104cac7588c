//! `longtail pull`: pre-fetch a checkpoint from the Hugging Face Hub into the local cache.

use anyhow::{bail, Result};
use longtail_hub::{CheckpointRef, HubOptions};

/// Arguments of `longtail pull`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `hf://owner/repo[@revision][/file.safetensors]` (file default: model.safetensors, which
    /// also fetches config.json and README.md). The cache is HF_HUB_CACHE or $HF_HOME/hub;
    /// HF_ENDPOINT picks the server.
    pub reference: String,
}

/// Run `longtail pull`.
pub fn run(args: Args) -> Result<()> {
    let CheckpointRef::Hub(hub) = CheckpointRef::parse(&args.reference)? else {
        bail!(
            "`{}` is not a Hub reference: write hf://owner/repo[@revision][/file.safetensors]",
            args.reference
        );
    };
    // A connected machine: a few retries help against transient errors.
    let opts = HubOptions {
        retries: 3,
        ..HubOptions::from_env()
    };
    let pulled = longtail_hub::pull(&hub, &opts)?;
    println!("{hub} → {}", pulled.model.display());
    for p in &pulled.extras {
        println!("  {}", p.display());
    }
    println!("cache: {}", opts.cache().display());
    Ok(())
}
