//! Command-line interface: one module per subcommand.

use clap::{Parser, Subcommand};

pub mod data;

/// Train and evaluate long-tailed multi-expert classifiers (RIDE, SADE, TLC).
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
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(args) => data::run(args),
    }
}
