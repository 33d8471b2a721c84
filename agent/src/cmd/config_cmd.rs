//! `iomt-agent config example`: a fully commented ward configuration.

use anyhow::Result;
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// The commented example, as shipped (`examples/ward.example.toml`).
pub const EXAMPLE: &str = include_str!("../../../examples/ward.example.toml");

/// Ward configuration helpers.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print a fully commented example configuration (redirect it to ward.toml and edit).
    Example,
}

pub fn run(args: ConfigArgs) -> Result<ExitCode> {
    match args.action {
        ConfigAction::Example => {
            print!("{EXAMPLE}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
