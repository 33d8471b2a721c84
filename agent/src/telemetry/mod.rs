//! Telemetry: counters and gauges in Prometheus text format, emitted only through the
//! internal events in [`events`].
//!
//! Rule (from vector's instrumentation spec): no code outside `events.rs` touches a metric by
//! name. Each event logs once (PHI-safe: never a patient id or a payload at info level) and
//! updates its metrics, so tests can assert on metrics and logs and names stay consistent.
//! Label values are bounded: source and sink names, stages, reason codes; device ids only when
//! `agent.metrics_device_labels` is on; patient ids never.

pub mod events;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

type Key = (&'static str, Vec<(&'static str, String)>);

/// The metric registry.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
    gauges: Mutex<BTreeMap<Key, f64>>,
    /// Whether per-device labels are allowed (off by default: cardinality, and device ids can
    /// be identifying in small wards).
    pub device_labels: bool,
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "iomt_source_received_total",
        "counter",
        "Readings received from devices and stored durably, per source.",
    ),
    (
        "iomt_source_duplicates_total",
        "counter",
        "Readings a device sent again after they were stored (recognised by their dedup key).",
    ),
    (
        "iomt_source_dropped_total",
        "counter",
        "Readings a source could not store (log full and the device cannot be paused), per reason.",
    ),
    (
        "iomt_stage_received_total",
        "counter",
        "Items entering a pipeline stage.",
    ),
    (
        "iomt_stage_emitted_total",
        "counter",
        "Items a pipeline stage produced.",
    ),
    (
        "iomt_stage_failed_total",
        "counter",
        "Items a pipeline stage rejected, per reason.",
    ),
    (
        "iomt_sink_delivered_total",
        "counter",
        "FHIR resources written (new or changed), per sink.",
    ),
    (
        "iomt_sink_unchanged_total",
        "counter",
        "Deliveries that changed nothing downstream (replays), per sink.",
    ),
    (
        "iomt_sink_retried_total",
        "counter",
        "Delivery attempts that failed transiently and will be retried, per sink.",
    ),
    (
        "iomt_sink_dead_lettered_total",
        "counter",
        "Log records a sink dead-lettered, per reason.",
    ),
    (
        "iomt_sink_record_retries_total",
        "counter",
        "Rounds in which the server failed on single records (held and retried on their own while the rest flowed), per sink and reason.",
    ),
    (
        "iomt_sink_failing",
        "gauge",
        "1 while a sink's deliveries are failing.",
    ),
    (
        "iomt_buffer_pending_records",
        "gauge",
        "Records in the durable log not yet delivered by the sink.",
    ),
    (
        "iomt_buffer_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest record the sink has not delivered.",
    ),
    ("iomt_buffer_records", "gauge", "Rows in the durable log."),
    (
        "iomt_buffer_bytes",
        "gauge",
        "Bytes counted against the log's max_bytes.",
    ),
    (
        "iomt_buffer_dropped_records_total",
        "counter",
        "Readings dropped by the drop_oldest policy (each leaves a gap record).",
    ),
    (
        "iomt_dlq_records",
        "gauge",
        "Entries in the dead-letter store.",
    ),
    (
        "iomt_store_quarantined",
        "gauge",
        "1 if a corrupted store was moved aside at start.",
    ),
    (
        "iomt_templates_reloads_total",
        "counter",
        "Template reloads, per result.",
    ),
    (
        "iomt_device_last_reading_age_seconds",
        "gauge",
        "Seconds since a device's last reading (only with metrics_device_labels).",
    ),
    ("iomt_up", "gauge", "1 while the agent runs."),
    (
        "iomt_ble_connects_total",
        "counter",
        "BLE devices connected and subscribed, per source.",
    ),
    (
        "iomt_ble_connect_failures_total",
        "counter",
        "BLE connects (or set-ups after connecting) that failed and are retried, per source.",
    ),
    (
        "iomt_ble_link_losses_total",
        "counter",
        "BLE links lost while connected (reconnected with back-off), per source.",
    ),
    (
        "iomt_ble_unavailable_total",
        "counter",
        "Times BlueZ, its D-Bus bus or the adapter could not be used, per source.",
    ),
    (
        "iomt_source_messages_in_total",
        "counter",
        "Messages or frames a device source read from its transport, before the durable commit.",
    ),
    (
        "iomt_source_connected",
        "gauge",
        "1 while a device source's broker connection, port or listener is up.",
    ),
    (
        "iomt_source_connect_failures_total",
        "counter",
        "Failed or lost connections (broker, serial port) of a device source.",
    ),
    (
        "iomt_source_decode_failed_total",
        "counter",
        "Input a device source could not decode, dead-lettered, per reason.",
    ),
    (
        "iomt_source_demo_total",
        "counter",
        "Messages flagged as demo-mode data by the device (stored, flagged).",
    ),
    (
        "iomt_source_hl7_acks_total",
        "counter",
        "HL7 acknowledgements sent, per MSA-1 code.",
    ),
    (
        "iomt_fhir_requests_total",
        "counter",
        "FHIR sink HTTP requests, per sink, operation and status.",
    ),
    (
        "iomt_fhir_tokens_total",
        "counter",
        "Access tokens a FHIR sink obtained.",
    ),
    (
        "iomt_fhir_identity_cache_total",
        "counter",
        "Identity resolutions served from the cache (hit) or the server (miss).",
    ),
    (
        "iomt_fhir_identity_invalidations_total",
        "counter",
        "Identity cache invalidations, per scope (all or device).",
    ),
    (
        "iomt_fhir_conflicts_total",
        "counter",
        "Versioned FHIR writes that conflicted (409/412) and were re-merged.",
    ),
    (
        "iomt_fhir_contention_total",
        "counter",
        "Creates that overwrote another writer's concurrent create (then merged).",
    ),
    (
        "iomt_fhir_resources_saved_total",
        "counter",
        "Observations created, updated or unchanged, per sink.",
    ),
    (
        "iomt_fhir_server_ok",
        "gauge",
        "1 when the FHIR sink's startup check passed.",
    ),
    (
        "iomt_fhir_server_check_failures_total",
        "counter",
        "Failed FHIR startup checks (server, token or certificate).",
    ),
    (
        "iomt_fhir_bundles_refused_total",
        "counter",
        "Batch Bundles the FHIR server refused (the sink then uses single requests).",
    ),
    (
        "iomt_tls_certificate_expiry_seconds",
        "gauge",
        "Seconds until the not-after of a configured TLS certificate file (earliest in a bundle; negative once expired), per role and sink or source.",
    ),
    (
        "iomt_normalize_unmatched_total",
        "counter",
        "Messages that no device mapping template matched (not an error, no Observation made), per sink.",
    ),
    (
        "iomt_eventhubs_client_rebuilds_total",
        "counter",
        "Event Hubs clients dropped and rebuilt after a send timeout or a connection error, per sink.",
    ),
];

impl Metrics {
    /// A registry.
    pub fn new(device_labels: bool) -> Self {
        Metrics {
            device_labels,
            ..Default::default()
        }
    }

    /// Adds to a counter.
    pub(crate) fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry(key).or_default() += n;
    }

    /// Sets a gauge.
    pub(crate) fn set(&self, name: &'static str, labels: &[(&'static str, &str)], v: f64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, v);
    }

    /// Removes every gauge series of a metric (before setting a fresh set).
    pub(crate) fn clear_gauge(&self, name: &'static str) {
        self.gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| k.0 != name);
    }

    /// A counter's value (for tests and the status line).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.iter()
            .filter(|(k, _)| {
                k.0 == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| k.1.iter().any(|(a, b)| a == lk && b == lv))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let g = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        g.iter()
            .find(|(k, _)| {
                k.0 == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| k.1.iter().any(|(a, b)| a == lk && b == lv))
            })
            .map(|(_, v)| *v)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let gauges = self
            .gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let series: Vec<(String, String)> = if *kind == "counter" {
                counters
                    .iter()
                    .filter(|(k, _)| k.0 == *name)
                    .map(|(k, v)| (labels(&k.1), v.to_string()))
                    .collect()
            } else {
                gauges
                    .iter()
                    .filter(|(k, _)| k.0 == *name)
                    .map(|(k, v)| (labels(&k.1), fmt_f64(*v)))
                    .collect()
            };
            writeln!(out, "# HELP {name} {help}").ok();
            writeln!(out, "# TYPE {name} {kind}").ok();
            for (l, v) in series {
                writeln!(out, "{name}{l} {v}").ok();
            }
        }
        out
    }
}

fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn labels(l: &[(&'static str, String)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new(false);
        m.add("iomt_source_received_total", &[("source", "sim")], 3);
        m.add("iomt_source_received_total", &[("source", "sim")], 2);
        m.set("iomt_buffer_records", &[], 7.0);
        m.set(
            "iomt_buffer_oldest_pending_age_seconds",
            &[("sink", "out\"box")],
            1.5,
        );
        let t = m.render();
        assert!(t.contains("# TYPE iomt_source_received_total counter\niomt_source_received_total{source=\"sim\"} 5\n"), "{t}");
        assert!(t.contains("iomt_buffer_records 7\n"), "{t}");
        assert!(
            t.contains("iomt_buffer_oldest_pending_age_seconds{sink=\"out\\\"box\"} 1.5\n"),
            "{t}"
        );
        assert_eq!(
            m.counter("iomt_source_received_total", &[("source", "sim")]),
            5
        );
    }
}
