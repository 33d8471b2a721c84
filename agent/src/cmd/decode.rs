//! `iomt-agent decode`: what a device protocol decoder makes of some bytes.

use super::EXIT_FAILED;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// Decode device bytes with one of the agent's protocol decoders and print the JSON bodies the
/// mapping engine will see (the `Body` of the event envelope).
///
/// Protocols: nonin8, nonin-ascii, masimo-ascii, hl7v2 (MLLP-framed or a bare message),
/// jsonl, and ble:<characteristic> where the characteristic is a 16-bit UUID (2a37) or a
/// name (heart_rate_measurement, blood_pressure_measurement, ...).
///
/// Output: a JSON array with one element per decoded frame or message: the body, or
/// {"error": "..."} for a malformed one. Exit status 0 when everything decoded, 1 when any
/// frame was malformed or the protocol is unknown.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DecodeArgs {
    /// The protocol (see above).
    #[arg(long, value_name = "NAME")]
    protocol: String,
    /// The bytes as hex (spaces, colons and 0x prefixes are ignored).
    #[arg(long, value_name = "HEX", conflicts_with = "file")]
    hex: Option<String>,
    /// Read the bytes from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let cleaned: String = s
        .replace("0x", "")
        .replace("0X", "")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != ',')
        .collect();
    if !cleaned.len().is_multiple_of(2) {
        bail!("--hex has an odd number of digits");
    }
    (0..cleaned.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&cleaned[i..i + 2], 16)
                .with_context(|| format!("--hex: '{}' is not a hex byte", &cleaned[i..i + 2]))
        })
        .collect()
}

pub fn run(args: DecodeArgs) -> Result<ExitCode> {
    let bytes = match (&args.hex, &args.file) {
        (Some(h), _) => parse_hex(h)?,
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .context("reading standard input")?;
            b
        }
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => {
            bail!("give the bytes with --hex HEX or --file FILE (- for standard input)")
        }
    };
    let results = match iomt_drivers::decode_all(&args.protocol, &bytes) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "known protocols: {}, ble:<uuid or name>",
                iomt_drivers::PROTOCOLS.join(", ")
            );
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let mut failed = false;
    let out: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(v) => v,
            Err(e) => {
                failed = true;
                json!({ "error": e.to_string() })
            }
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&out)?);
    if out.is_empty() {
        eprintln!("error: no complete frame or message in the input");
        failed = true;
    }
    Ok(if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
