//! Operator actions on the log, shared by the admin endpoint (agent running) and the CLI
//! (agent stopped): buffer statistics and the dead-letter store. Each returns JSON.

use crate::buffer::{DeadLetter, DlqPurge, NewRecord, Store, StoreError, UnixMillis};
use serde_json::{json, Value};

/// `iomt-agent buffer stats`: records, bytes, oldest age per sink.
pub fn buffer_stats(store: &Store, now_ms: UnixMillis) -> Result<Value, StoreError> {
    let s = store.stats()?;
    let age = |t: Option<i64>| t.map(|t| ((now_ms - t).max(0) as f64) / 1000.0);
    Ok(json!({
        "path": store.path().display().to_string(),
        "epoch": s.epoch,
        "records": s.records,
        "bytes": s.bytes,
        "max_bytes": store.config().max_bytes,
        "oldest_age_secs": age(s.oldest_receive_ms),
        "next_seq": s.next_seq,
        "dead_letters": s.dlq_records,
        "dropped_records": s.dropped_records,
        "duplicates": s.duplicates,
        "corrupt_records": s.corrupt_records,
        "sinks": s.sinks.iter().map(|k| json!({
            "name": k.name,
            "cursor": k.cursor,
            "pending_records": k.pending_records,
            "oldest_pending_age_secs": age(k.oldest_pending_receive_ms),
        })).collect::<Vec<_>>(),
    }))
}

fn letter_json(d: &DeadLetter, with_payload: bool) -> Value {
    let e = &d.entry;
    let mut v = json!({
        "id": d.id,
        "seq": e.seq,
        "sink": e.sink,
        "source": e.source,
        "stage": e.stage,
        "reason": e.reason,
        "error": e.error,
        "time_ms": e.time_ms,
        "payload_len": e.payload.len(),
    });
    if with_payload {
        v["payload"] = match std::str::from_utf8(&e.payload) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => {
                json!({ "hex": e.payload.iter().map(|b| format!("{b:02x}")).collect::<String>() })
            }
        };
        v["envelope"] = e
            .envelope
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
    }
    v
}

/// `iomt-agent dlq list`.
pub fn dlq_list(store: &Store, after_id: i64, limit: usize) -> Result<Value, StoreError> {
    let list = store.dlq_list(after_id, limit)?;
    Ok(Value::Array(
        list.iter()
            .map(|d| {
                json!({
                    "id": d.id, "seq": d.seq, "sink": d.sink, "source": d.source, "stage": d.stage,
                    "reason": d.reason, "error": d.error, "time_ms": d.time_ms, "payload_len": d.payload_len,
                })
            })
            .collect(),
    ))
}

/// `iomt-agent dlq show ID`.
pub fn dlq_show(store: &Store, id: i64) -> Result<Option<Value>, StoreError> {
    Ok(store.dlq_show(id)?.map(|d| letter_json(&d, true)))
}

/// A dead letter turned back into a log record, or why it cannot be.
pub fn replay_record(d: &DeadLetter, now_ms: UnixMillis) -> Result<NewRecord, String> {
    let e = &d.entry;
    let Some(envelope) = e.envelope.clone() else {
        return Err(format!("dead letter {} has no event envelope (it failed at stage {}): it cannot be replayed; fix the device or driver and resend", d.id, e.stage));
    };
    Ok(NewRecord {
        source: e.source.clone(),
        dedup_key: None,
        receive_time_ms: now_ms,
        device_time_ms: None,
        payload: e.payload.clone(),
        envelope,
    })
}

/// `iomt-agent dlq purge`.
pub fn dlq_purge(
    store: &mut Store,
    older_than_ms: Option<i64>,
    now_ms: UnixMillis,
) -> Result<Value, StoreError> {
    let which = match older_than_ms {
        Some(ms) => DlqPurge::OlderThan(now_ms - ms),
        None => DlqPurge::All,
    };
    let n = store.dlq_purge(which)?;
    Ok(json!({ "purged": n }))
}

/// Replays dead letters straight into a stopped agent's log (the CLI path). Returns the ids
/// replayed and the ones that could not be.
pub fn dlq_replay_offline(
    store: &mut Store,
    ids: &[i64],
    now_ms: UnixMillis,
) -> Result<Value, StoreError> {
    let mut replayed = Vec::new();
    let mut refused = Vec::new();
    for &id in ids {
        let Some(d) = store.dlq_show(id)? else {
            refused.push(json!({"id": id, "error": "no such dead letter"}));
            continue;
        };
        match replay_record(&d, now_ms) {
            Ok(rec) => {
                let r = store.append_batch(&[rec], now_ms)?;
                match r.into_iter().next() {
                    Some(Ok(a)) => {
                        store.dlq_replay(id)?;
                        replayed.push(json!({"id": id, "seq": a.seq()}));
                    }
                    Some(Err(full)) => {
                        refused.push(json!({"id": id, "error": format!("the log is full: {full}")}))
                    }
                    None => refused.push(json!({"id": id, "error": "not stored"})),
                }
            }
            Err(e) => refused.push(json!({"id": id, "error": e})),
        }
    }
    Ok(json!({ "replayed": replayed, "refused": refused }))
}
