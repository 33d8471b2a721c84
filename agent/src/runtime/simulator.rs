//! The simulator source task: ticks aligned to whole multiples of the interval (so a restart
//! never gives one device two readings in the same second), one reading per device per tick,
//! each stored durably before it counts as received.

use super::{now_ms, Shared};
use crate::buffer::{dedup_key, NewRecord, StoreError};
use crate::config::SimulatorConfig;
use crate::mapping::Timestamp;
use crate::sources::envelope::envelope;
use crate::sources::simulator::devices;
use crate::telemetry::events;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Readings held in memory while the log is full (the simulator, like a serial device,
/// cannot be paused); beyond this the oldest is dropped and counted.
const MAX_HELD: usize = 10_000;

/// Runs until the stop signal.
pub async fn run(
    name: String,
    cfg: SimulatorConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut devs = devices(&cfg);
    let interval_ms = cfg.interval.as_millis().max(1) as i64;
    let mut held: VecDeque<(NewRecord, Value)> = VecDeque::new();
    let mut total: u64 = 0;
    let mut ack_log = cfg.ack_log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| tracing::error!(path = %p.display(), error = %e, "Cannot open the simulator's ack log."))
            .ok()
    });
    let mut slot = now_ms().div_euclid(interval_ms) + 1;
    set_health(
        &shared,
        &name,
        true,
        format!("{} simulated devices", devs.len()),
    );
    loop {
        let wait = slot * interval_ms - now_ms();
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        let t_ms = slot * interval_ms;
        slot = (now_ms().div_euclid(interval_ms) + 1).max(slot + 1);
        let t = Timestamp::from_unix_millis(t_ms)
            .unwrap_or_else(|| Timestamp::from_unix_millis(0).expect("epoch"));
        for d in devs.iter_mut() {
            if cfg.max_readings > 0 && total >= cfg.max_readings {
                break;
            }
            total += 1;
            let body = d.reading(t);
            let payload = serde_json::to_vec(&body).unwrap_or_default();
            let mut props = Map::new();
            props.insert("source".into(), Value::String(name.clone()));
            props.insert("protocol".into(), Value::String("simulator".into()));
            let env = envelope(
                body.clone(),
                props,
                &d.device_id,
                Timestamp::from_unix_millis(now_ms()).unwrap_or(t),
            );
            let rec = NewRecord {
                source: name.clone(),
                dedup_key: Some(dedup_key::device(&d.device_id, &t.format_o())),
                receive_time_ms: now_ms(),
                device_time_ms: Some(t_ms),
                payload,
                envelope: env.to_string(),
            };
            held.push_back((rec, body));
            if held.len() > MAX_HELD {
                held.pop_front();
                events::reading_dropped(&shared.metrics, &name, "buffer_full");
            }
        }
        // Store what is held, in order and concurrently (one group commit for the whole tick,
        // not one per reading); what the log refuses (full) is held again, in order.
        let batch: Vec<(NewRecord, Value)> = held.drain(..).collect();
        let results = crate::sources::ingest::store_many(
            &shared,
            batch.iter().map(|(r, _)| r.clone()).collect(),
        )
        .await;
        let mut refused = VecDeque::new();
        let mut problem = None;
        for ((rec, body), r) in batch.into_iter().zip(results) {
            match r {
                // `store_many` counted it (reading_stored) and woke the sinks.
                Ok(_) => {
                    if let Some(f) = ack_log.as_mut() {
                        // One write per line, so a kill never leaves half a line behind.
                        let line = format!("{body}\n");
                        if let Err(e) = f.write_all(line.as_bytes()) {
                            tracing::warn!(error = %e, "Cannot write the simulator's ack log.");
                        }
                    }
                }
                Err(e) => {
                    problem.get_or_insert_with(|| match &e {
                        StoreError::Full(full) => format!("log full ({full})"),
                        other => format!("cannot store readings: {other}"),
                    });
                    refused.push_back((rec, body));
                }
            }
        }
        held = refused;
        if let Some(p) = problem {
            set_health(
                &shared,
                &name,
                false,
                format!("{p}; holding {} readings", held.len()),
            );
        }
        if held.is_empty() {
            set_health(
                &shared,
                &name,
                true,
                format!("{} simulated devices", devs.len()),
            );
        }
        shared.appended.notify_waiters();
        if cfg.max_readings > 0 && total >= cfg.max_readings && held.is_empty() {
            set_health(&shared, &name, true, format!("finished: {total} readings"));
            return;
        }
    }
}

fn set_health(shared: &Shared, name: &str, ok: bool, detail: String) {
    shared
        .sources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_owned(), (ok, detail));
}
