//! `longtail export`: a run → a folder for the Hub (model.safetensors, config.json, README.md).

use std::path::PathBuf;

use anyhow::Result;
use longtail_hub::{export_run, CardOptions};

/// Arguments of `longtail export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory (its last.safetensors and metrics.jsonl) or a checkpoint file.
    pub run: PathBuf,
    /// Output folder (must not exist or be empty; written atomically).
    #[arg(long)]
    pub to: PathBuf,
    /// License id for the model card (apache-2.0, mit, …).
    #[arg(long, default_value = "apache-2.0")]
    pub license: String,
    /// `owner/repo` the folder will be uploaded to, for the card's loading instructions.
    #[arg(long)]
    pub repo: Option<String>,
}

/// Run `longtail export`.
pub fn run(args: Args) -> Result<()> {
    let opts = CardOptions {
        license: args.license,
        repo_id: args.repo,
    };
    let r = export_run(&args.run, &args.to, &opts)?;
    println!(
        "exported {} → {} ({} tensors, {} optimizer entries left out)",
        r.source.display(),
        r.out.display(),
        r.tensors,
        r.dropped
    );
    match &r.results {
        Some(res) => println!(
            "model card results: epoch {}, overall {:.2}%",
            res.epoch,
            100.0 * res.overall
        ),
        None => {
            println!("no metrics.jsonl line for this checkpoint: the card has no results table")
        }
    }
    Ok(())
}
