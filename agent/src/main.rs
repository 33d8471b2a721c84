//! `iomt-agent`: the iomt-edge command-line entry point.
//!
//! This file only parses arguments, dispatches to a command in `cmd/`, and turns the outcome
//! into an exit code. Exit codes are part of the interface (systemd relies on them):
//! - 0: success;
//! - 1: a command ran but something it processed failed (a message did not map, ...);
//! - 2: a mapping template failed to load;
//! - 78 (`EX_CONFIG`): the configuration is invalid (systemd does not restart on it);
//! - 70 (`EX_SOFTWARE`): any other error.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// iomt-edge: bedside medical-device data into FHIR, at the ward gateway.
#[derive(Debug, Parser)]
#[command(name = "iomt-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Map(cmd::map::MapArgs),
    Decode(cmd::decode::DecodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Map(args) => cmd::map::run(args),
        Command::Decode(args) => cmd::decode::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(cmd::EXIT_SOFTWARE)
        }
    }
}
