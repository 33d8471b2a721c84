//! `iomt-agent identity invalidate [--device ID] [--admin-addr ADDR]`: asks the running
//! agent to drop the FHIR sinks' cached identities (all, or one device's), e.g. after a
//! monitor moved to another bed and `Device.patient` was updated.

use super::{EXIT_FAILED, EXIT_SOFTWARE};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Identity cache of the running agent's FHIR sinks.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Drop cached Device/Patient/Encounter resolutions; the next reading of each device
    /// resolves against the FHIR server again.
    Invalidate(InvalidateArgs),
}

#[derive(Debug, Args)]
struct InvalidateArgs {
    /// Only this device id (as in the messages); default: every device.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// The agent's admin endpoint (agent.admin_addr).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9464")]
    admin_addr: SocketAddr,
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn run(args: IdentityArgs) -> Result<ExitCode> {
    let IdentityCommand::Invalidate(a) = args.command;
    let target = match &a.device {
        Some(d) => format!("/identity/invalidate?device={}", encode(d)),
        None => "/identity/invalidate".to_owned(),
    };
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&a.admin_addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "POST {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            a.admin_addr
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "error: cannot reach the agent's admin endpoint at {}: {e} (is `iomt-agent run` running? its address is agent.admin_addr)",
                a.admin_addr
            );
            return Ok(ExitCode::from(EXIT_SOFTWARE));
        }
    };
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        eprintln!("error: the agent answered {status}: {}", body.trim());
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    let sinks = v["sinks"].as_array().map_or(0, Vec::len);
    if sinks == 0 {
        println!("The agent runs no FHIR sink; nothing to invalidate.");
    } else {
        println!(
            "Dropped {} cached identit{}{} in {sinks} FHIR sink{}.",
            v["invalidated"].as_u64().unwrap_or(0),
            if v["invalidated"].as_u64() == Some(1) {
                "y"
            } else {
                "ies"
            },
            a.device
                .as_deref()
                .map(|d| format!(" of device {d}"))
                .unwrap_or_default(),
            if sinks == 1 { "" } else { "s" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_query_values() {
        assert_eq!(super::encode("MON-1.a_b~"), "MON-1.a_b~");
        assert_eq!(super::encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
