//! Command-line interface: one module per subcommand.

use clap::{Parser, Subcommand};

pub mod bench;
pub mod compare;
pub mod data;
pub mod decouple;
pub mod eval;
pub mod eval_shift;
pub mod eval_uncertainty;
pub mod export;
pub mod heads;
pub mod import;
pub mod presets;
pub mod pull;
mod recipe;
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
    /// Train several presets over several seeds and print one table (mean ± std, best marked).
    Compare(compare::Args),
    /// Train multi-expert heads on a frozen foundation trunk's cached features (ViT, CLIP, DINOv2).
    Heads(heads::Args),
    /// Second stage on a finished run: re-balance its classifier (crt, lws, tau-norm, la, wb).
    Decouple(decouple::Args),
}

/// Run the parsed command. A failure comes back as one message (see [`one_message`]).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    dispatch(cli).map_err(one_message)
}

/// An error and its causes as one message, each cause joined with `: ` unless the text so far
/// already says it.
///
/// Most error types here print their cause in their own message (`{path}: {source}`) *and*
/// return it as `source()`, so printing the chain (`{:#}`) said the OS error two or three times
/// (`/proc/x: No such file or directory (os error 2): No such file or directory (os error 2)`).
pub fn one_message(e: anyhow::Error) -> anyhow::Error {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        let part = part.trim();
        if part.is_empty() || text.contains(part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(part);
    }
    anyhow::anyhow!(text)
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
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
        Command::Heads(args) => heads::run(args),
        Command::Decouple(args) => decouple::run(args),
        Command::Compare(args) => compare::run(args),
    }
}
