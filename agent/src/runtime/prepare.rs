//! From log records to measurements: the normalize stage as the sinks run it.
//!
//! Pure (no I/O, no clock): records in, measurements and dead letters out.

use super::templates::Mappings;
use crate::buffer::{Record, RecordBody, Seq};
use crate::mapping::doc::Node;
use crate::mapping::{Measurement, Timestamp};

/// A record that cannot succeed, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    pub seq: Seq,
    pub stage: &'static str,
    pub reason: String,
    pub error: String,
}

/// One batch of log records, normalized.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Highest seq in the batch (everything up to it is handled by this batch).
    pub last_seq: Seq,
    /// Records in the batch.
    pub records: usize,
    pub measurements: Vec<Measurement>,
    /// `measurement_seq[i]` is the log seq measurement `i` came from.
    pub measurement_seq: Vec<Seq>,
    pub dead: Vec<Dead>,
    /// Readings dropped before delivery (gap records).
    pub gap_dropped: u64,
    /// Messages no template matched (not an error: upstream's DroppedEvent).
    pub unmatched: usize,
}

/// Normalizes a batch.
pub fn prepare(records: &[Record], mappings: &Mappings) -> Prepared {
    let mut p = Prepared {
        records: records.len(),
        ..Default::default()
    };
    for r in records {
        p.last_seq = p.last_seq.max(r.seq);
        let rec = match &r.body {
            RecordBody::Gap(g) => {
                p.gap_dropped += g.dropped_records;
                continue;
            }
            RecordBody::Reading(rec) => rec,
        };
        // Parsed into a borrowed node (same acceptance and errors as `serde_json::Value`),
        // normalized without a `Value` (`DeviceMapping::normalize_node`).
        let envelope = match Node::parse(&rec.envelope) {
            Ok(v) => v,
            Err(e) => {
                p.dead.push(Dead {
                    seq: r.seq,
                    stage: "normalize",
                    reason: "not_json".into(),
                    error: format!("the event envelope is not JSON: {e}"),
                });
                continue;
            }
        };
        if matches!(envelope.get("Body"), Some(Node::Null)) {
            p.dead.push(Dead {
                seq: r.seq,
                stage: "normalize",
                reason: "not_json".into(),
                error: "the message body is not JSON".into(),
            });
            continue;
        }
        let ingest = Timestamp::from_unix_millis(rec.receive_time_ms)
            .unwrap_or_else(|| Timestamp::from_unix_millis(0).expect("epoch"));
        match mappings.device.normalize_node(envelope, ingest) {
            Ok(ms) => {
                if ms.is_empty() {
                    p.unmatched += 1;
                }
                p.measurement_seq
                    .extend(std::iter::repeat_n(r.seq, ms.len()));
                p.measurements.extend(ms);
            }
            Err(errors) => {
                let reason = errors
                    .first()
                    .map_or("normalize_error", |e| e.reason.as_str())
                    .to_owned();
                let error = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                p.dead.push(Dead {
                    seq: r.seq,
                    stage: "normalize",
                    reason,
                    error,
                });
            }
        }
    }
    p
}
