//! Crash and power-cut harness for the durable log (`iomt_agent::buffer`).
//!
//! Usage:
//!   buffer_crash writer <db> <log> <seed>          run the random writer until killed
//!   buffer_crash writer-lying <db> <log> <seed>    negative control: logs `A` before the commit
//!   buffer_crash check <db> <log> <carried-file>   check a store after a crash or power cut
//!   buffer_crash sigkill <dir> <kills> <seed> [max_run_ms]   SIGKILL campaign, no root needed
//!
//! `tests/powercut.sh` drives `writer` and `check` on an ext4 loop device. The protocol and the
//! checks are described in `agent/src/buffer/tests/crash_harness.rs`, which this example shares
//! with the unit tests.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The harness refers to `crate::buffer`; here that is the library's module.
mod buffer {
    pub use iomt_agent::buffer::*;
}

#[path = "../src/buffer/tests/crash_harness.rs"]
mod crash_harness;

use crash_harness::{check, parse_log, sigkill_campaign, writer, writer_with, Carried};

fn usage() -> ExitCode {
    eprintln!(
        "usage: buffer_crash writer|writer-lying <db> <log> <seed>\n       \
         buffer_crash check <db> <log> <carried-file>\n       \
         buffer_crash sigkill <dir> <kills> <seed> [max_run_ms]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [mode @ ("writer" | "writer-lying"), db, log, seed] => {
            let Ok(seed) = seed.parse() else {
                return usage();
            };
            let lie = *mode == "writer-lying";
            let result = if lie {
                writer_with(Path::new(db), Path::new(log), seed, true)
            } else {
                writer(Path::new(db), Path::new(log), seed)
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("writer: {e}");
                    ExitCode::from(3)
                }
            }
        }
        ["check", db, log, carried_file] => {
            run_check(Path::new(db), Path::new(log), Path::new(carried_file))
        }
        ["sigkill", dir, kills, seed, rest @ ..] => {
            let (Ok(kills), Ok(seed)) = (kills.parse(), seed.parse()) else {
                return usage();
            };
            let max_run_ms = rest.first().and_then(|m| m.parse().ok()).unwrap_or(930);
            run_sigkill(Path::new(dir), kills, seed, max_run_ms)
        }
        _ => usage(),
    }
}

fn run_check(db: &Path, log: &Path, carried_file: &Path) -> ExitCode {
    let before = std::fs::read_to_string(carried_file)
        .ok()
        .and_then(|t| Carried::from_text(&t))
        .unwrap_or(Carried {
            next_seq: 1,
            cursor: 0,
        });
    let progress = parse_log(&std::fs::read_to_string(log).unwrap_or_default());
    match check(db, &progress, before) {
        Ok(c) => {
            if let Err(e) = std::fs::write(carried_file, c.carried.to_text()) {
                eprintln!("writing {}: {e}", carried_file.display());
                return ExitCode::from(4);
            }
            println!(
                "OK open_ms={} next_seq={} cursor={} records={} committed_this_run={}",
                c.open_ms,
                c.carried.next_seq,
                c.carried.cursor,
                c.records,
                progress
                    .committed
                    .map_or(0, |a| (a + 1).saturating_sub(before.next_seq))
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAIL {e}");
            ExitCode::from(1)
        }
    }
}

fn run_sigkill(dir: &Path, kills: u64, seed: u64, max_run_ms: u64) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("current_exe: {e}");
            return ExitCode::from(4);
        }
    };
    let db: PathBuf = dir.join("sigkill.db");
    let result = sigkill_campaign(&db, dir, kills, seed, max_run_ms, |log, s| {
        Command::new(&exe)
            .arg("writer")
            .arg(&db)
            .arg(log)
            .arg(s.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
    });
    match result {
        Ok(c) => {
            let mut open = c.open_ms.clone();
            open.sort_unstable();
            let p50 = open.get(open.len() / 2).copied().unwrap_or(0);
            let max = open.last().copied().unwrap_or(0);
            println!(
                "OK {} kills, {} readings committed, recovery open p50 {p50} ms, max {max} ms",
                c.kills, c.total_committed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAIL {e}");
            ExitCode::from(1)
        }
    }
}
