//! `iomt-agent status`: a human summary of a running agent, from its admin endpoint.

use super::ops::http_get;
use super::run::load;
use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// Show a running agent's state: sources, buffer depth and oldest age per sink, dead letters,
/// readiness, expiry of the configured TLS certificates, and (with device labels on) the age
/// of each device's last reading.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The ward configuration (gives the admin address).
    #[arg(long, value_name = "FILE", default_value = "/etc/iomt-edge/ward.toml")]
    config: PathBuf,
}

fn age(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}min", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

/// The "certificates" section: one line per configured TLS file, as the agent last read it
/// (`runtime/certs.rs`). Nothing is printed for an older agent whose `/status` lacks it.
fn print_certificates(status: &Value) {
    let Some(certs) = status["certificates"].as_array() else {
        return;
    };
    if certs.is_empty() {
        println!("certificates: none configured");
        return;
    }
    println!(
        "certificates (expiring = fewer than {} days left; files re-read every minute; restart after replacing one):",
        status["certificate_expiring_within_days"]
            .as_i64()
            .unwrap_or(30)
    );
    for c in certs {
        let state = c["state"].as_str().unwrap_or("?");
        let what = format!(
            "{} {}",
            c["component"].as_str().unwrap_or("?"),
            c["role"].as_str().unwrap_or("?").replace('_', " ")
        );
        let path = c["path"].as_str().unwrap_or("?");
        if state == "unreadable" {
            println!(
                "  {:<10} {what:<28} {path}: {}",
                "UNREADABLE",
                c["reason"].as_str().unwrap_or_default()
            );
            continue;
        }
        let count = c["certificates"].as_u64().unwrap_or(1);
        println!(
            "  {:<10} {what:<28} CN={} not after {} ({} days){}  {path}",
            match state {
                "ok" => "ok".to_owned(),
                s => s.to_uppercase(),
            },
            c["subject_cn"].as_str().unwrap_or("-"),
            c["not_after"].as_str().unwrap_or("?"),
            c["days_remaining"],
            if count > 1 {
                format!(", earliest of {count}")
            } else {
                String::new()
            }
        );
    }
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (code, body) = match http_get(cfg.admin_addr, "/status") {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}\nIs the agent running? (systemctl status iomt-agent)");
            return Ok(ExitCode::from(super::EXIT_FAILED));
        }
    };
    let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let stats: Value = http_get(cfg.admin_addr, "/buffer/stats")
        .ok()
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null);
    let ready = status["ready"].as_bool().unwrap_or(false);
    println!(
        "iomt-agent at {}: {}",
        cfg.admin_addr,
        if ready { "READY" } else { "NOT READY" }
    );
    for r in status["not_ready_reasons"].as_array().into_iter().flatten() {
        println!("  ! {}", r.as_str().unwrap_or_default());
    }
    println!("sources:");
    if let Some(m) = status["sources"].as_object() {
        for (name, s) in m {
            println!(
                "  {name:<16} {:<4} {}",
                if s["ok"].as_bool() == Some(true) {
                    "ok"
                } else {
                    "FAIL"
                },
                s["detail"].as_str().unwrap_or_default()
            );
        }
    }
    println!(
        "readings stored: {}, resources delivered: {}",
        status["readings_stored"], status["resources_delivered"]
    );
    println!(
        "buffer: {} records, {} bytes of {}; dead letters: {}",
        stats["records"], stats["bytes"], stats["max_bytes"], stats["dead_letters"]
    );
    for s in stats["sinks"].as_array().into_iter().flatten() {
        println!(
            "  sink {:<14} pending {:>8}  oldest {}",
            s["name"].as_str().unwrap_or_default(),
            s["pending_records"],
            age(&s["oldest_pending_age_secs"])
        );
    }
    print_certificates(&status);
    if let Ok((_, metrics)) = http_get(cfg.admin_addr, "/metrics") {
        let devices: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("iomt_device_last_reading_age_seconds{"))
            .collect();
        if !devices.is_empty() {
            println!("devices (last reading):");
            for l in devices {
                let name = l.split('"').nth(1).unwrap_or("?");
                let v: Value = l
                    .rsplit(' ')
                    .next()
                    .and_then(|x| x.parse::<f64>().ok())
                    .map(Value::from)
                    .unwrap_or(Value::Null);
                println!("  {name:<24} {}", age(&v));
            }
        }
    }
    Ok(if code == 200 && ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILED)
    })
}
