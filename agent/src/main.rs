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
    limit_malloc_arenas();
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

/// One malloc arena for the whole process (glibc only), unless `MALLOC_ARENA_MAX` is set.
///
/// glibc gives threads their own arenas (up to 8 per core) and memory freed in one arena is not
/// reused by another, so the agent's handful of threads (tokio workers, the blocking pool, the
/// group committer) each kept a few MB: 27-29 MB RSS for 200 devices at 1 Hz against 21-22 MB
/// with one arena; a backlog drain runs 7-10 % slower and peaks 40 % lower. Numbers in `docs/decisions/0006-one-malloc-arena.md`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called first thing in
        // main, before any other thread exists, and takes no pointers.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

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
