//! Command-line interface: one module per subcommand.

use clap::{Parser, Subcommand};

pub mod bench;
pub mod data;
pub mod eval;
pub mod eval_shift;
pub mod eval_uncertainty;
pub mod export;
pub mod import;
pub mod presets;
pub mod pull;
pub mod route;
pub mod train;

/// Train and evaluate long-tailed multi-expert classifiers (RIDE, SADE, TLC, and the CE baseline).
#[derive(Parser, Debug)]
#[command(name = "longtail", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a data set's long-tail statistics (the bundled Fashion-MNIST-LT by default).
    Data(data::Args),
    /// Train a model (RIDE on the bundled Fashion-MNIST-LT by default).
    Train(train::Args),
    /// Evaluate a checkpoint: overall, many/medium/few, each expert, each class.
    Eval(eval::Args),
    /// List the named presets, or print one as TOML.
    Presets(presets::Args),
    /// Fetch a checkpoint from the Hugging Face Hub into the local cache (hf://owner/repo).
    Pull(pull::Args),
    /// Write a run as a Hub-ready folder: model.safetensors, config.json, README.md model card.
    Export(export::Args),
    /// Convert an official RIDE / SADE / TLC state dict (safetensors) into a checkpoint folder.
    Import(import::Args),
    /// RIDE stage 2: learn the router that lets an image skip experts it does not need.
    Route(route::Args),
    /// Measure training speed on this CPU: our kernels vs candle's stock ops (`bench train`).
    Bench(bench::Args),
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(args) => data::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Presets(args) => presets::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Export(args) => export::run(args),
        Command::Import(args) => import::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Route(args) => route::run(args),
    }
}
