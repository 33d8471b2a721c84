//! Fills a state directory's durable log with N simulated readings, as if the agent had been
//! offline: for the backlog benchmarks in `bench/runtime.sh` (drain rate, cold start).
//!
//! `cargo run --release -p iomt-agent --example prefill -- STATE_DIR N [DEVICES]`

use iomt_agent::buffer::{NewRecord, Store, StoreConfig};
use iomt_agent::config::SimulatorConfig;
use iomt_agent::mapping::Timestamp;
use iomt_agent::sources::envelope::envelope;
use iomt_agent::sources::simulator::devices;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("usage: prefill STATE_DIR N [DEVICES]");
        std::process::exit(2);
    };
    let per_kind = args
        .get(3)
        .and_then(|d| d.parse::<u32>().ok())
        .unwrap_or(200)
        / 4;
    let cfg = SimulatorConfig {
        heart_rate_monitors: per_kind,
        pulse_oximeters: per_kind,
        bp_cuffs: per_kind,
        thermometers: per_kind,
        interval: Duration::from_secs(1),
        seed: 3,
        max_readings: 0,
        device_prefix: "bench".into(),
        ack_log: None,
    };
    std::fs::create_dir_all(dir).expect("state dir");
    let store_cfg = StoreConfig {
        max_bytes: 16 << 30,
        max_age_ms: None,
        ..StoreConfig::default()
    };
    let mut store = Store::open(std::path::Path::new(dir).join("log.sqlite"), &store_cfg, 0)
        .expect("open")
        .store;
    store.register_sinks(&["outbox"]).expect("sinks");
    let mut devs = devices(&cfg);
    let t0 = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    let mut written = 0u64;
    let mut second = 0i64;
    let mut batch = Vec::with_capacity(4096);
    while written < n {
        for d in devs.iter_mut() {
            if written == n {
                break;
            }
            let t = Timestamp::from_unix_millis(t0 + second * 1000).expect("time");
            let body = d.reading(t);
            let env = envelope(body.clone(), serde_json::Map::new(), &d.device_id, t);
            batch.push(NewRecord {
                source: "sim".into(),
                dedup_key: None,
                receive_time_ms: t0 + second * 1000,
                device_time_ms: None,
                payload: serde_json::to_vec(&body).expect("json"),
                envelope: env.to_string(),
            });
            written += 1;
            if batch.len() == 4096 {
                store.append_batch(&batch, t0).expect("append");
                batch.clear();
            }
        }
        second += 1;
    }
    if !batch.is_empty() {
        store.append_batch(&batch, t0).expect("append");
    }
    eprintln!(
        "prefilled {written} readings from {} devices into {dir}",
        devs.len()
    );
}
