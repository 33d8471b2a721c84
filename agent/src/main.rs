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
    Run(cmd::run::RunArgs),
    Validate(cmd::run::ValidateArgs),
    Map(cmd::map::MapArgs),
    Dlq(cmd::ops::DlqArgs),
    Buffer(cmd::ops::BufferArgs),
    Status(cmd::status::StatusArgs),
    Config(cmd::config_cmd::ConfigArgs),
    Decode(cmd::decode::DecodeArgs),
    Identity(cmd::identity::IdentityArgs),
}

fn main() -> ExitCode {
    // Allocator settings first, before any thread exists (decision 0006).
    iomt_agent::runtime::malloc::tune_allocator();
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run_cmd(args),
        Command::Validate(args) => cmd::run::validate(args),
        Command::Map(args) => cmd::map::run(args),
        Command::Dlq(args) => cmd::ops::dlq(args),
        Command::Buffer(args) => cmd::ops::buffer(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Config(args) => cmd::config_cmd::run(args),
        Command::Decode(args) => cmd::decode::run(args),
        Command::Identity(args) => cmd::identity::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(cmd::EXIT_SOFTWARE)
        }
    }
}

/// Logs: one line per event on stderr, level from `RUST_LOG` (default `info`). No patient
/// identifiers or payloads are logged at `info`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second initialisation (tests) is harmless; ignore it.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init()
        .ok();
}
