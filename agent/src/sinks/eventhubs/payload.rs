//! What the Event Hubs sink sends: [`OutEvent`], and the builders for the two payload modes.
//!
//! * `raw`: the device envelope's `Body` (compact JSON) with the envelope's `Properties` as
//!   application properties, so a cloud IoMT connector normalizes it as if the device had sent
//!   it to its event hub.
//! * `normalized`: the measurements in the connector's normalized-message JSON
//!   ([`Measurement::to_normalized_json`]), one event per measurement, or optionally as the
//!   connector's compressed measurement groups (semantics doc §1.8): one event per partition
//!   key, the gzip of a JSON array of measurements, content type `application/gzip` and the
//!   boolean application property `IsMeasurementGroup = true` (the connector casts it with
//!   `(bool)`, so a string "true" would throw there).
//!
//! Invariants: the builders do no I/O and never read the clock; their output depends only on
//! their arguments (gzip is written with mtime 0, so equal input gives equal bytes). Every
//! builder keeps the input order within a partition key. The record sequence
//! (`iomt-edge-seq`) and store epoch are added by the forwarder at send time, not here, so no
//! event can leave without them.

use crate::mapping::Measurement;
use serde_json::Value;
use std::io::Write;

/// Application property carrying the durable-log sequence of the record an event came from.
pub const SEQ_PROPERTY: &str = "iomt-edge-seq";
/// Application property carrying the store epoch (present when the forwarder has one).
pub const EPOCH_PROPERTY: &str = "iomt-edge-epoch";
/// Application property: position of a normalized event among its record's measurements, so
/// `(epoch, seq, index)` identifies a normalized event exactly.
pub const INDEX_PROPERTY: &str = "iomt-edge-index";
/// Application property on a measurement group: the lowest record sequence in it (the event's
/// `iomt-edge-seq` is the highest).
pub const SEQ_MIN_PROPERTY: &str = "iomt-edge-seq-min";
/// The connector's marker for a measurement-group event.
pub const MEASUREMENT_GROUP_PROPERTY: &str = "IsMeasurementGroup";
/// Content type of a compressed measurement group (the connector's `Compression.GzipContentType`).
pub const GZIP_CONTENT_TYPE: &str = "application/gzip";
/// Content type of JSON events.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A typed AMQP application-property value.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    String(String),
    Bool(bool),
    Long(i64),
    ULong(u64),
    Double(f64),
}

impl From<&str> for PropertyValue {
    fn from(s: &str) -> Self {
        PropertyValue::String(s.to_string())
    }
}

impl From<String> for PropertyValue {
    fn from(s: String) -> Self {
        PropertyValue::String(s)
    }
}

impl From<bool> for PropertyValue {
    fn from(b: bool) -> Self {
        PropertyValue::Bool(b)
    }
}

impl From<i64> for PropertyValue {
    fn from(v: i64) -> Self {
        PropertyValue::Long(v)
    }
}

impl From<u64> for PropertyValue {
    fn from(v: u64) -> Self {
        PropertyValue::ULong(v)
    }
}

/// One event to send. `partition_key` keeps a device's events in order on one partition (an
/// empty key lets Event Hubs choose a partition, with no ordering); `seq` is the durable-log
/// sequence of the record it came from (several events may share one).
#[derive(Debug, Clone, PartialEq)]
pub struct OutEvent {
    pub partition_key: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub properties: Vec<(String, PropertyValue)>,
    pub seq: u64,
}

/// How normalized events are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartitionKeyMode {
    /// The device id itself: one key per device (the agent's default).
    #[default]
    DeviceId,
    /// Upstream's normalization key: Java-style 31-hash of the lower-cased device id, absolute
    /// value modulo 256, as a decimal string (see [`upstream_partition_key`]).
    UpstreamHash,
}

impl PartitionKeyMode {
    /// The partition key for a device.
    pub fn key_for(self, device_id: &str) -> String {
        match self {
            PartitionKeyMode::DeviceId => device_id.to_string(),
            PartitionKeyMode::UpstreamHash => upstream_partition_key(device_id),
        }
    }
}

/// Upstream's partition key for normalized events: `abs(javaHash(deviceId.ToLower())) % 256`.
///
/// The hash runs over UTF-16 code units with wrapping 32-bit arithmetic. Lower-casing uses
/// Unicode rules (.NET's `ToLower()` is culture-sensitive; both agree on ASCII ids). For the one
/// hash whose absolute value does not fit (`i32::MIN`, where .NET's `Math.Abs` would throw) the
/// unsigned absolute value is used.
pub fn upstream_partition_key(device_id: &str) -> String {
    let lower = device_id.to_lowercase();
    let hash = lower
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (hash.unsigned_abs() % 256).to_string()
}

/// Why a payload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the envelope has no Body")]
    MissingBody,
    #[error("the envelope's Properties is not an object")]
    PropertiesNotObject,
    #[error("serializing the payload failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("compressing the measurement group failed: {0}")]
    Gzip(#[from] std::io::Error),
}

/// `raw` mode: one event from a device envelope (`{Body, Properties, SystemProperties}`).
///
/// The body is the compact JSON of `Body`. Each `Properties` entry becomes an application
/// property: strings as they are, other JSON values as their compact JSON text (IoT Hub
/// application properties are strings too). `SystemProperties` is not sent: Event Hubs sets
/// its own.
pub fn raw_event(
    envelope: &Value,
    partition_key: &str,
    seq: u64,
) -> Result<OutEvent, PayloadError> {
    let body = envelope.get("Body").ok_or(PayloadError::MissingBody)?;
    let mut properties = Vec::new();
    match envelope.get("Properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => serde_json::to_string(other)?,
                };
                properties.push((name.clone(), PropertyValue::String(text)));
            }
        }
        Some(_) => return Err(PayloadError::PropertiesNotObject),
    }
    Ok(OutEvent {
        partition_key: partition_key.to_string(),
        body: serde_json::to_vec(body)?,
        content_type: Some(JSON_CONTENT_TYPE.to_string()),
        properties,
        seq,
    })
}

/// `normalized` mode, one event per measurement: `(seq, measurements)` pairs are records in log
/// order; each measurement becomes one JSON event with `iomt-edge-index` = its position in the
/// record.
pub fn normalized_events(
    records: &[(u64, Vec<Measurement>)],
    keys: PartitionKeyMode,
) -> Result<Vec<OutEvent>, PayloadError> {
    let mut out = Vec::new();
    for (seq, measurements) in records {
        for (index, m) in measurements.iter().enumerate() {
            let index = u64::try_from(index).unwrap_or(u64::MAX);
            out.push(OutEvent {
                partition_key: keys.key_for(&m.device_id),
                body: serde_json::to_vec(&m.to_normalized_json())?,
                content_type: Some(JSON_CONTENT_TYPE.to_string()),
                properties: vec![(INDEX_PROPERTY.to_string(), PropertyValue::ULong(index))],
                seq: *seq,
            });
        }
    }
    Ok(out)
}

/// `normalized` mode with compression: the measurements of `records` grouped by partition key
/// (keys in order of first appearance, measurements in log order), each group cut into chunks
/// of at most `max_per_group` measurements (at least 1), each chunk one gzip event. The event's
/// `seq` is the highest record sequence in it and `iomt-edge-seq-min` the lowest.
pub fn normalized_groups(
    records: &[(u64, Vec<Measurement>)],
    keys: PartitionKeyMode,
    max_per_group: usize,
) -> Result<Vec<OutEvent>, PayloadError> {
    let max_per_group = max_per_group.max(1);
    let mut groups: Vec<(String, Vec<(u64, &Measurement)>)> = Vec::new();
    for (seq, measurements) in records {
        for m in measurements {
            let key = keys.key_for(&m.device_id);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, items)) => items.push((*seq, m)),
                None => groups.push((key, vec![(*seq, m)])),
            }
        }
    }
    let mut out = Vec::new();
    for (key, items) in groups {
        for chunk in items.chunks(max_per_group) {
            let json: Vec<Value> = chunk.iter().map(|(_, m)| m.to_normalized_json()).collect();
            let seq_min = chunk.iter().map(|(s, _)| *s).min().unwrap_or(0);
            let seq_max = chunk.iter().map(|(s, _)| *s).max().unwrap_or(0);
            out.push(OutEvent {
                partition_key: key.clone(),
                body: gzip(&serde_json::to_vec(&json)?)?,
                content_type: Some(GZIP_CONTENT_TYPE.to_string()),
                properties: vec![
                    (
                        MEASUREMENT_GROUP_PROPERTY.to_string(),
                        PropertyValue::Bool(true),
                    ),
                    (SEQ_MIN_PROPERTY.to_string(), PropertyValue::ULong(seq_min)),
                ],
                seq: seq_max,
            });
        }
    }
    Ok(out)
}

/// Gzip with a zeroed header mtime, so the output depends only on the input.
fn gzip(data: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Timestamp;
    use serde_json::json;
    use std::io::Read;

    fn measurement(device: &str, value: &str, second: u32) -> Measurement {
        let t = Timestamp::parse_rfc3339(&format!("2024-03-15T08:30:{second:02}Z")).unwrap();
        Measurement {
            type_name: "heartrate".into(),
            occurrence_time: t,
            ingestion_time: t,
            device_id: device.into(),
            patient_id: Some("p1".into()),
            encounter_id: None,
            correlation_id: None,
            properties: vec![("hr".into(), value.into())],
        }
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn upstream_key_matches_the_documented_example() {
        // semantics doc §1.8: device1 -> signed hash 1559800987 -> "155".
        assert_eq!(upstream_partition_key("device1"), "155");
        assert_eq!(upstream_partition_key("DEVICE1"), "155");
        assert_eq!(PartitionKeyMode::DeviceId.key_for("Dev-9"), "Dev-9");
        // Empty id hashes to 0.
        assert_eq!(upstream_partition_key(""), "0");
    }

    #[test]
    fn raw_event_takes_body_and_stringifies_properties() {
        let env = json!({
            "Body": {"hr": 72, "t": "2024-01-01T00:00:00Z"},
            "Properties": {"topic": "ward7/bed12", "port": 1883, "flag": true},
            "SystemProperties": {"iothub-connection-device-id": "bed12"}
        });
        let ev = raw_event(&env, "bed12", 41).unwrap();
        assert_eq!(ev.body, br#"{"hr":72,"t":"2024-01-01T00:00:00Z"}"#);
        assert_eq!(ev.partition_key, "bed12");
        assert_eq!(ev.seq, 41);
        assert_eq!(ev.content_type.as_deref(), Some(JSON_CONTENT_TYPE));
        assert_eq!(
            ev.properties,
            vec![
                ("topic".to_string(), "ward7/bed12".into()),
                ("port".to_string(), "1883".into()),
                ("flag".to_string(), "true".into()),
            ]
        );
    }

    #[test]
    fn raw_event_rejects_bad_envelopes() {
        assert!(matches!(
            raw_event(&json!({"Properties": {}}), "k", 1),
            Err(PayloadError::MissingBody)
        ));
        assert!(matches!(
            raw_event(&json!({"Body": 1, "Properties": [1]}), "k", 1),
            Err(PayloadError::PropertiesNotObject)
        ));
        let ev = raw_event(&json!({"Body": "text"}), "k", 1).unwrap();
        assert_eq!(ev.body, br#""text""#);
        assert!(ev.properties.is_empty());
    }

    #[test]
    fn normalized_events_one_per_measurement_with_index() {
        let records = vec![
            (
                7,
                vec![measurement("a", "70", 1), measurement("b", "80", 1)],
            ),
            (8, vec![measurement("a", "71", 2)]),
        ];
        let evs = normalized_events(&records, PartitionKeyMode::DeviceId).unwrap();
        assert_eq!(evs.len(), 3);
        let keys: Vec<_> = evs
            .iter()
            .map(|e| (e.partition_key.as_str(), e.seq))
            .collect();
        assert_eq!(keys, vec![("a", 7), ("b", 7), ("a", 8)]);
        assert_eq!(
            evs[1].properties,
            vec![(INDEX_PROPERTY.to_string(), PropertyValue::ULong(1))]
        );
        let body: Value = serde_json::from_slice(&evs[2].body).unwrap();
        assert_eq!(body, records[1].1[0].to_normalized_json());
        assert_eq!(body["DeviceId"], "a");
    }

    #[test]
    fn normalized_groups_gzip_per_key_in_order_and_chunked() {
        let records = vec![
            (
                3,
                vec![measurement("a", "70", 1), measurement("b", "80", 1)],
            ),
            (4, vec![measurement("a", "71", 2)]),
            (5, vec![measurement("a", "72", 3)]),
        ];
        let evs = normalized_groups(&records, PartitionKeyMode::DeviceId, 2).unwrap();
        // a: [70, 71] [72]; b: [80]
        let shape: Vec<_> = evs
            .iter()
            .map(|e| (e.partition_key.as_str(), e.seq))
            .collect();
        assert_eq!(shape, vec![("a", 4), ("a", 5), ("b", 3)]);
        let first: Value = serde_json::from_slice(&gunzip(&evs[0].body)).unwrap();
        assert_eq!(
            first,
            Value::Array(vec![
                records[0].1[0].to_normalized_json(),
                records[1].1[0].to_normalized_json()
            ])
        );
        assert_eq!(evs[0].content_type.as_deref(), Some(GZIP_CONTENT_TYPE));
        assert!(evs[0].properties.contains(&(
            MEASUREMENT_GROUP_PROPERTY.to_string(),
            PropertyValue::Bool(true)
        )));
        assert!(evs[0]
            .properties
            .contains(&(SEQ_MIN_PROPERTY.to_string(), PropertyValue::ULong(3))));
        // Deterministic bytes.
        let again = normalized_groups(&records, PartitionKeyMode::DeviceId, 2).unwrap();
        assert_eq!(again, evs);
        // max_per_group 0 is treated as 1.
        assert_eq!(
            normalized_groups(&records, PartitionKeyMode::DeviceId, 0)
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn upstream_hash_groups_several_devices_under_one_key() {
        let records = vec![(
            1,
            vec![
                measurement("device1", "1", 1),
                measurement("DEVICE1", "2", 2),
            ],
        )];
        let evs = normalized_groups(&records, PartitionKeyMode::UpstreamHash, 100).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].partition_key, "155");
    }
}
