//! `longtail heads`: multi-expert heads on a frozen foundation trunk's cached features (issue 20).

use anyhow::{bail, Result};

/// Arguments of `longtail heads`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The trunk: `hf://owner/name[@revision]` or a folder with config.json and model.safetensors.
    #[arg(long)]
    pub backbone: Option<String>,
}

/// Runs `longtail heads`.
pub fn run(_args: Args) -> Result<()> {
    bail!("longtail heads is not finished yet (issue 20)")
}
