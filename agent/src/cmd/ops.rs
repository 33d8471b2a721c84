//! `iomt-agent dlq ...` and `iomt-agent buffer stats`: the dead-letter store and the log.
//!
//! With the agent stopped these open the log directly; while it runs (the log is locked by
//! the agent) they ask its admin endpoint instead, so they work in both cases.

use super::run::load;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use iomt_agent::buffer::{Store, StoreConfig};
use iomt_agent::runtime::{now_ms, ops};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the agent keeps its state.
#[derive(Debug, Args)]
pub struct Target {
    /// The ward configuration (gives the state directory and the admin address).
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        default_value = "/etc/iomt-edge/ward.toml"
    )]
    config: PathBuf,
    /// Override the state directory.
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
}

/// Inspect and act on the dead-letter store: messages that can never succeed, kept with their
/// raw payload, the stage and the reason.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List dead letters (oldest first, without payloads).
    List {
        /// Only ids above this.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter with its payload and envelope.
    Show { id: i64 },
    /// Push dead letters back through the pipeline (e.g. after fixing a template).
    Replay {
        /// Ids to replay.
        ids: Vec<i64>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters.
    Purge {
        /// Only those older than this many seconds (default: all).
        #[arg(long, value_name = "SECS")]
        older_than_secs: Option<i64>,
    },
}

/// The durable log.
#[derive(Debug, Args)]
pub struct BufferArgs {
    #[command(subcommand)]
    action: BufferAction,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Subcommand)]
enum BufferAction {
    /// Records, bytes and the oldest age per sink.
    Stats,
}

enum Access {
    Offline(Store),
    Online(SocketAddr),
}

fn access(t: &Target) -> Result<std::result::Result<Access, ExitCode>> {
    let cfg = match load(&t.config) {
        Ok(c) => c,
        Err(code) => return Ok(Err(code)),
    };
    let state = t.state_dir.clone().unwrap_or(cfg.state_dir.clone());
    let path = state.join("log.sqlite");
    if !path.exists() {
        bail!(
            "no durable log at {} (has the agent run with this state directory?)",
            path.display()
        );
    }
    match Store::open(
        &path,
        &StoreConfig {
            quick_check_on_open: false,
            ..StoreConfig::default()
        },
        now_ms(),
    ) {
        Ok(o) => Ok(Ok(Access::Offline(o.store))),
        // Locked: the agent is running; talk to it.
        Err(e) if !e.is_corruption() => {
            eprintln!(
                "note: the log is in use ({e}); asking the running agent at {}",
                cfg.admin_addr
            );
            Ok(Ok(Access::Online(cfg.admin_addr)))
        }
        Err(e) => bail!("cannot open the log {}: {e}", path.display()),
    }
}

/// GET on the admin endpoint.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http(addr, "GET", path)
}

/// One HTTP request to the admin endpoint; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)
        .with_context(|| format!("cannot reach the agent's admin endpoint at {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn print(v: &Value) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

fn print_http((status, body): (u16, String)) -> Result<ExitCode> {
    if status != 200 {
        eprintln!("error: the agent answered {status}: {}", body.trim());
        return Ok(ExitCode::from(super::EXIT_FAILED));
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(v) => print(&v),
        Err(_) => {
            println!("{}", body.trim());
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn dlq(args: DlqArgs) -> Result<ExitCode> {
    let acc = match access(&args.target)? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    match (acc, args.action) {
        (Access::Offline(s), DlqAction::List { after, limit }) => {
            print(&ops::dlq_list(&s, after, limit)?)
        }
        (Access::Online(a), DlqAction::List { after, limit }) => print_http(http(
            a,
            "GET",
            &format!("/dlq?after={after}&limit={limit}"),
        )?),
        (Access::Offline(s), DlqAction::Show { id }) => match ops::dlq_show(&s, id)? {
            Some(v) => print(&v),
            None => {
                eprintln!("error: no dead letter {id}");
                Ok(ExitCode::from(super::EXIT_FAILED))
            }
        },
        (Access::Online(a), DlqAction::Show { id }) => {
            print_http(http(a, "GET", &format!("/dlq/{id}"))?)
        }
        (Access::Offline(mut s), DlqAction::Replay { ids, all }) => {
            let ids = if all {
                s.dlq_list(0, usize::MAX)?.iter().map(|d| d.id).collect()
            } else {
                ids
            };
            let v = ops::dlq_replay_offline(&mut s, &ids, now_ms())?;
            eprintln!("replayed into the log; the agent delivers them when it next runs");
            print(&v)
        }
        (Access::Online(a), DlqAction::Replay { ids, all }) => {
            if all {
                print_http(http(a, "POST", "/dlq/replay")?)
            } else {
                let mut last = Ok(ExitCode::SUCCESS);
                for id in ids {
                    last = print_http(http(a, "POST", &format!("/dlq/{id}/replay"))?);
                }
                last
            }
        }
        (Access::Offline(mut s), DlqAction::Purge { older_than_secs }) => print(&ops::dlq_purge(
            &mut s,
            older_than_secs.map(|x| x * 1000),
            now_ms(),
        )?),
        (Access::Online(a), DlqAction::Purge { older_than_secs }) => {
            let q = older_than_secs
                .map(|s| format!("?older_than_secs={s}"))
                .unwrap_or_default();
            print_http(http(a, "POST", &format!("/dlq/purge{q}"))?)
        }
    }
}

pub fn buffer(args: BufferArgs) -> Result<ExitCode> {
    let acc = match access(&args.target)? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    match (acc, args.action) {
        (Access::Offline(s), BufferAction::Stats) => print(&ops::buffer_stats(&s, now_ms())?),
        (Access::Online(a), BufferAction::Stats) => print_http(http(a, "GET", "/buffer/stats")?),
    }
}
