//! `longtail data`: being written (owned by the data-crate engineer).

/// Arguments of `longtail data`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `longtail data`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`longtail data` is not built yet")
}
