//! The Event Hubs sink's delivery: turns a batch of log records into events
//! (`sinks::eventhubs::payload`) and sends them with the sink's long-lived forwarder, which
//! runs on its own single-threaded runtime ([`PinnedForwarder`]: fe2o3-amqp 0.16.2 loses
//! dispositions on a multi-threaded one, see its module documentation).
//!
//! Invariants:
//! * `deliver` returns `Ok` only when every event of the batch was accepted by Event Hubs or
//!   rejected for good; only then does the worker acknowledge the batch in the log. Any other
//!   failure returns `Err` (nothing is acknowledged, the worker backs off and sends the batch
//!   again: events already accepted may arrive twice, marked by the same `iomt-edge-epoch` and
//!   `iomt-edge-seq`).
//! * A record with an event rejected for good (too large, ...) is dead-lettered with stage
//!   `deliver` and reason `eventhubs_rejected`; the other records flow.
//! * `raw` mode does not depend on the mapping templates: normalize failures are not dead
//!   letters there (the cloud connector normalizes); a record whose envelope cannot be sent is.
//! * The forwarder (and its AMQP connection) lives as long as the worker; the forwarder
//!   itself drops and rebuilds its client after a timeout or a connection error; every
//!   rebuild is counted (`iomt_eventhubs_client_rebuilds_total`).

use super::outbox_sink::Delivered;
use super::prepare::{Dead, Prepared};
use crate::buffer::{Record, RecordBody, Seq, SharedStore};
use crate::config::{resolve_secret, EventHubsAuthConfig, EventHubsPayload, EventHubsSinkConfig};
use crate::mapping::Measurement;
use crate::sinks::eventhubs::{
    normalized_events, normalized_groups, raw_event, Auth, EventHubsConfig, OutEvent,
    PartitionKeyMode, PinnedForwarder, PropertyValue, Secret,
};
use crate::telemetry::{events, Metrics};
use std::path::Path;
use std::time::Duration;

/// Application property carrying the store epoch (the log's 32-hex-digit random id) as a
/// string; with `iomt-edge-seq` it identifies a record for ever.
pub const EPOCH_PROPERTY: &str = "iomt-edge-epoch";

/// Reason of the dead letters for events Event Hubs rejected for good.
pub const REJECTED_REASON: &str = "eventhubs_rejected";

/// The forwarder settings for a configured sink: secrets resolved (`env` and
/// `credentials_dir` are passed in so this stays testable), checked without a network.
/// An `Err` is a configuration problem (the agent exits 78).
pub fn settings(
    cfg: &EventHubsSinkConfig,
    env: &dyn Fn(&str) -> Option<String>,
    credentials_dir: Option<&Path>,
) -> Result<EventHubsConfig, String> {
    let auth = match &cfg.auth {
        EventHubsAuthConfig::ConnectionString(r) => Auth::ConnectionString(Secret::new(
            resolve_secret(r, env, credentials_dir)
                .map_err(|e| format!("the connection string: {e}"))?,
        )),
        EventHubsAuthConfig::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => Auth::ClientSecret {
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            secret: Secret::new(
                resolve_secret(secret, env, credentials_dir)
                    .map_err(|e| format!("the client secret: {e}"))?,
            ),
        },
        EventHubsAuthConfig::ManagedIdentity { client_id } => Auth::ManagedIdentity {
            client_id: client_id.clone(),
        },
    };
    let mut c = EventHubsConfig::new(auth);
    c.namespace = cfg.namespace.clone();
    c.hub = cfg.hub.clone();
    c.custom_endpoint = cfg.custom_endpoint.clone();
    c.transport = cfg.transport;
    c.send_timeout = cfg.send_timeout;
    c.open_timeout = cfg.send_timeout;
    c.max_batch_events = cfg.max_batch_events;
    if let Some(l) = cfg.linger {
        c.linger = l;
    }
    // The epoch goes out as a string property (the store's epoch is not a number).
    c.store_epoch = None;
    c.validate()?;
    Ok(c)
}

/// The sink's state across batches.
pub struct EventHubsDelivery {
    name: String,
    forwarder: PinnedForwarder,
    payload: EventHubsPayload,
    gzip_groups: bool,
    max_per_group: usize,
    linger: Option<Duration>,
    /// The store's epoch, read once (it does not change while the store is open).
    epoch: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for EventHubsDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHubsDelivery")
            .field("payload", &self.payload)
            .field("gzip_groups", &self.gzip_groups)
            .finish_non_exhaustive()
    }
}

impl EventHubsDelivery {
    /// Builds the forwarder for sink `name` and starts its thread (no network I/O: it
    /// connects on the first send).
    pub fn open(name: &str, cfg: &EventHubsSinkConfig) -> Result<Self, String> {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        let settings = settings(cfg, &|k| std::env::var(k).ok(), creds.as_deref())?;
        let forwarder = PinnedForwarder::start(name, settings).map_err(|e| e.to_string())?;
        Ok(EventHubsDelivery {
            name: name.to_string(),
            forwarder,
            payload: cfg.payload,
            gzip_groups: cfg.gzip_groups,
            max_per_group: cfg.max_batch_events,
            linger: cfg.linger,
            epoch: std::sync::OnceLock::new(),
        })
    }

    /// The store's epoch (read from the log on first use).
    pub async fn store_epoch(&self, store: &SharedStore) -> Result<String, String> {
        if let Some(e) = self.epoch.get() {
            return Ok(e.clone());
        }
        let store = store.clone();
        let stats = tokio::task::spawn_blocking(move || super::worker::lock(&store).stats())
            .await
            .map_err(|e| format!("reading the store epoch: {e}"))?
            .map_err(|e| format!("reading the store epoch: {e}"))?;
        Ok(self.epoch.get_or_init(|| stats.epoch).clone())
    }

    /// Whether events carry the device's own message (`raw`) rather than measurements.
    pub fn is_raw(&self) -> bool {
        matches!(self.payload, EventHubsPayload::Raw)
    }

    /// The sink's own group window, when configured.
    pub fn linger(&self) -> Option<Duration> {
        self.linger
    }

    /// Sends a batch. `prepared` is the normalize stage's result for `records`; in raw mode its
    /// dead letters are cleared (they do not concern this sink). Client rebuilds during the
    /// call are counted in `metrics`. See the module invariants.
    pub async fn deliver(
        &self,
        records: &[Record],
        prepared: &mut Prepared,
        epoch: &str,
        metrics: &Metrics,
    ) -> Result<Delivered, String> {
        let mut d = Delivered::default();
        let mut events = match self.payload {
            EventHubsPayload::Raw => {
                prepared.dead.clear();
                let (events, dead) = raw_events(records);
                d.dead.extend(dead);
                events
            }
            EventHubsPayload::Normalized => {
                let grouped = by_record(&prepared.measurements, &prepared.measurement_seq);
                let built = if self.gzip_groups {
                    normalized_groups(&grouped, PartitionKeyMode::DeviceId, self.max_per_group)
                } else {
                    normalized_events(&grouped, PartitionKeyMode::DeviceId)
                };
                // Serialization of measurements cannot fail on valid data; if it does, nothing
                // is acknowledged and the batch is retried (and the failure is visible).
                built.map_err(|e| format!("building the events: {e}"))?
            }
        };
        for e in &mut events {
            e.properties.push((
                EPOCH_PROPERTY.to_string(),
                PropertyValue::String(epoch.to_string()),
            ));
        }
        if events.is_empty() {
            return Ok(d);
        }
        let report = match self.forwarder.send(events).await {
            Ok(report) => report,
            Err(e) => {
                events::eventhubs_client_rebuilt(metrics, &self.name, e.partial.rebuilds);
                return Err(e.to_string());
            }
        };
        events::eventhubs_client_rebuilt(metrics, &self.name, report.rebuilds);
        d.written = report.delivered.len();
        for r in report.rejected {
            d.dead.push(Dead {
                seq: r.seq,
                stage: "deliver",
                reason: REJECTED_REASON.to_string(),
                error: format!("{}: {}", r.condition, r.reason),
            });
        }
        Ok(d)
    }
}

/// The partition key of a raw envelope: the IoT Hub device id the source set, else the body's
/// `deviceId`, else none (Event Hubs picks a partition).
pub fn raw_partition_key(envelope: &serde_json::Value) -> String {
    envelope
        .pointer("/SystemProperties/iothub-connection-device-id")
        .and_then(serde_json::Value::as_str)
        .or_else(|| {
            envelope
                .pointer("/Body/deviceId")
                .and_then(serde_json::Value::as_str)
        })
        .unwrap_or_default()
        .to_string()
}

/// Raw events for the reading records (gaps skipped), and dead letters for the envelopes that
/// cannot be sent.
fn raw_events(records: &[Record]) -> (Vec<OutEvent>, Vec<Dead>) {
    let mut events = Vec::with_capacity(records.len());
    let mut dead = Vec::new();
    for r in records {
        let RecordBody::Reading(rec) = &r.body else {
            continue;
        };
        let built = serde_json::from_str::<serde_json::Value>(&rec.envelope)
            .map_err(|e| format!("the event envelope is not JSON: {e}"))
            .and_then(|env| {
                raw_event(&env, &raw_partition_key(&env), r.seq).map_err(|e| e.to_string())
            });
        match built {
            Ok(e) => events.push(e),
            Err(error) => dead.push(Dead {
                seq: r.seq,
                stage: "deliver",
                reason: "eventhubs_payload".into(),
                error,
            }),
        }
    }
    (events, dead)
}

/// `(seq, measurements)` per record, in log order, from the prepared parallel vectors.
fn by_record(measurements: &[Measurement], seqs: &[Seq]) -> Vec<(u64, Vec<Measurement>)> {
    let mut out: Vec<(u64, Vec<Measurement>)> = Vec::new();
    for (m, &seq) in measurements.iter().zip(seqs) {
        match out.last_mut() {
            Some((s, list)) if *s == seq => list.push(m.clone()),
            _ => out.push((seq, vec![m.clone()])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{Gap, GapReason, NewRecord};
    use crate::config::SecretRef;
    use serde_json::json;

    fn reading(seq: Seq, envelope: &str) -> Record {
        Record {
            seq,
            body: RecordBody::Reading(NewRecord {
                source: "sim".into(),
                dedup_key: None,
                receive_time_ms: 0,
                device_time_ms: None,
                payload: vec![],
                envelope: envelope.into(),
            }),
        }
    }

    fn sink_config(auth: EventHubsAuthConfig) -> EventHubsSinkConfig {
        EventHubsSinkConfig {
            namespace: Some("ward7.servicebus.windows.net".into()),
            custom_endpoint: None,
            hub: Some("vitals".into()),
            auth,
            transport: crate::sinks::eventhubs::Transport::Tcp,
            payload: EventHubsPayload::Raw,
            gzip_groups: false,
            max_batch_events: 8,
            linger: None,
            send_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn partition_key_prefers_the_system_property_then_the_body() {
        let both = json!({"Body": {"deviceId": "b"}, "SystemProperties": {"iothub-connection-device-id": "a"}});
        assert_eq!(raw_partition_key(&both), "a");
        assert_eq!(raw_partition_key(&json!({"Body": {"deviceId": "b"}})), "b");
        assert_eq!(raw_partition_key(&json!({"Body": 3})), "");
    }

    #[test]
    fn raw_events_skip_gaps_and_dead_letter_unsendable_envelopes() {
        let records = vec![
            reading(
                1,
                r#"{"Body":{"deviceId":"d1","hr":60},"Properties":{"topic":"t"},"SystemProperties":{"iothub-connection-device-id":"d1"}}"#,
            ),
            Record {
                seq: 2,
                body: RecordBody::Gap(Gap {
                    first_seq: 1,
                    last_seq: 1,
                    dropped_records: 4,
                    dropped_bytes: 100,
                    reason: GapReason::MaxBytes,
                    time_ms: 0,
                }),
            },
            reading(3, "not json"),
            reading(4, r#"{"Properties":{}}"#),
        ];
        let (events, dead) = raw_events(&records);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].seq, 1);
        assert_eq!(events[0].partition_key, "d1");
        assert_eq!(events[0].body, br#"{"deviceId":"d1","hr":60}"#.to_vec());
        let dead: Vec<(Seq, &str)> = dead.iter().map(|d| (d.seq, d.stage)).collect();
        assert_eq!(dead, vec![(3, "deliver"), (4, "deliver")]);
    }

    #[test]
    fn a_missing_secret_is_a_configuration_error() {
        let cfg = sink_config(EventHubsAuthConfig::ConnectionString(SecretRef::Env(
            "NOT_SET".into(),
        )));
        let err = settings(&cfg, &|_| None, None).unwrap_err();
        assert!(err.contains("NOT_SET"), "{err}");
        let cs =
            "Endpoint=sb://ward7.servicebus.windows.net/;SharedAccessKeyName=s;SharedAccessKey=k";
        let ok = settings(&cfg, &|_| Some(cs.to_string()), None).unwrap();
        assert_eq!(ok.hub.as_deref(), Some("vitals"));
        assert_eq!(ok.max_batch_events, 8);
        let err = settings(&cfg, &|_| Some("nonsense".into()), None).unwrap_err();
        assert!(err.contains("Endpoint="), "{err}");
        assert!(!err.contains("nonsense"));
    }
}
