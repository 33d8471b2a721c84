//! `iomt-agent run` and `iomt-agent validate`.

use super::{EXIT_CONFIG, EXIT_SOFTWARE};
use anyhow::Result;
use clap::Args;
use iomt_agent::config::{load_file, Config, ConfigError};
use iomt_agent::runtime::{run, RunError, RunOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run the agent: sources → durable log → normalize → group → transform → sinks, until
/// SIGTERM or Ctrl-C. SIGHUP reloads the mapping templates.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The ward configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// State directory (durable log, dead letters, outbox); overrides agent.state_dir.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Admin endpoint address; overrides agent.admin_addr (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    admin_addr: Option<SocketAddr>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    progress_secs: u64,
}

/// Check a ward configuration and the templates it names; print every problem.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The ward configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub(crate) fn print_config_errors(errors: &[ConfigError]) {
    eprintln!(
        "error: the configuration has {} problem{}:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        eprintln!("  {e}");
    }
}

pub(crate) fn load(path: &std::path::Path) -> std::result::Result<Config, ExitCode> {
    load_file(path).map_err(|errors| {
        print_config_errors(&errors);
        ExitCode::from(EXIT_CONFIG)
    })
}

pub fn validate(args: ValidateArgs) -> Result<ExitCode> {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    println!(
        "{}: OK ({} source{}, {} sink{}, templates {}{})",
        args.config.display(),
        cfg.sources.len(),
        if cfg.sources.len() == 1 { "" } else { "s" },
        cfg.sinks.len(),
        if cfg.sinks.len() == 1 { "" } else { "s" },
        cfg.mapping.device.display(),
        cfg.mapping
            .fhir
            .as_ref()
            .map(|f| format!(" + {}", f.display()))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn run_cmd(args: RunArgs) -> Result<ExitCode> {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("iomt-agent")
        .build()?;
    let opts = RunOptions {
        state_dir: args.state_dir,
        admin_addr: args.admin_addr,
        progress_every: (args.progress_secs > 0).then(|| Duration::from_secs(args.progress_secs)),
    };
    let result = rt.block_on(run(cfg, opts, shutdown_signal()));
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(RunError::Config(m)) => {
            eprintln!("error: {m}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
        Err(RunError::Other(m)) => {
            eprintln!("error: {m}");
            Ok(ExitCode::from(EXIT_SOFTWARE))
        }
    }
}
