//! The dead-letter table: list, show, replay, purge, eviction, and dead-lettering from a sink.

use super::super::{DlqPurge, NewDeadLetter, StoreConfig, StoreError};
use super::{db_path, open, reading, tempdir, T0};

fn letter(n: u8, time_ms: i64) -> NewDeadLetter {
    NewDeadLetter {
        seq: None,
        sink: None,
        source: "mllp".into(),
        stage: "decode".into(),
        reason: "hl7_parse".into(),
        error: format!("segment {n} malformed"),
        time_ms,
        payload: vec![n; 3],
        envelope: None,
    }
}

#[test]
fn list_show_replay_purge() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    let a = s.dead_letter(letter(1, T0)).expect("dl");
    let b = s.dead_letter(letter(2, T0 + 10)).expect("dl");
    let c = s.dead_letter(letter(3, T0 + 20)).expect("dl");
    assert!(a < b && b < c);
    assert_eq!(s.dlq_count().expect("count"), 3);

    let list = s.dlq_list(0, 10).expect("list");
    assert_eq!(list.iter().map(|d| d.id).collect::<Vec<_>>(), vec![a, b, c]);
    assert_eq!(list[1].payload_len, 3);
    assert_eq!(list[1].error, "segment 2 malformed");
    assert_eq!(s.dlq_list(a, 1).expect("list")[0].id, b);

    let shown = s.dlq_show(b).expect("show").expect("exists");
    assert_eq!(shown.entry, letter(2, T0 + 10));

    let replayed = s.dlq_replay(b).expect("replay").expect("exists");
    assert_eq!(replayed.entry, letter(2, T0 + 10));
    assert!(s.dlq_show(b).expect("show").is_none());
    assert!(s.dlq_replay(b).expect("replay").is_none());
    assert_eq!(s.dlq_count().expect("count"), 2);

    assert_eq!(s.dlq_purge(DlqPurge::OlderThan(T0 + 5)).expect("purge"), 1);
    assert_eq!(s.dlq_list(0, 10).expect("list")[0].id, c);
    assert_eq!(s.dlq_purge(DlqPurge::All).expect("purge"), 1);
    let st = s.stats().expect("stats");
    assert_eq!((st.dlq_records, st.dead_lettered), (0, 3));
    // ids are not reused
    let d = s.dead_letter(letter(4, T0)).expect("dl");
    assert!(d > c);
    assert!(s.verify().expect("verify").problems.is_empty());
}

#[test]
fn beyond_the_cap_the_oldest_are_evicted_and_counted() {
    let dir = tempdir();
    let cfg = StoreConfig {
        dlq_max_records: 3,
        ..StoreConfig::default()
    };
    let mut s = open(&db_path(&dir), &cfg);
    let ids: Vec<_> = (0..5)
        .map(|n| s.dead_letter(letter(n, T0)).expect("dl"))
        .collect();
    let kept: Vec<_> = s
        .dlq_list(0, 10)
        .expect("list")
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(kept, ids[2..].to_vec());
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.dlq_records, st.dlq_evicted, st.dead_lettered),
        (3, 2, 5)
    );
}

#[test]
fn a_sink_dead_lettering_a_record_acknowledges_it_for_that_sink_only() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["fhir", "hub"]).expect("sinks");
    let batch: Vec<_> = (1..=3).map(|n| reading("mon", n)).collect();
    s.append_batch(&batch, T0).expect("append");
    s.ack("fhir", 1).expect("ack");
    let id = s
        .dead_letter_record(
            "fhir",
            2,
            "send",
            "http_422",
            "unprocessable entity",
            T0 + 7,
        )
        .expect("dead-letter");
    assert_eq!(s.cursor("fhir").expect("cursor"), 2);
    let shown = s.dlq_show(id).expect("show").expect("exists");
    assert_eq!(shown.entry.seq, Some(2));
    assert_eq!(shown.entry.sink.as_deref(), Some("fhir"));
    assert_eq!(shown.entry.payload, batch[1].payload);
    assert_eq!(
        shown.entry.envelope.as_deref(),
        Some(batch[1].envelope.as_str())
    );
    assert_eq!(
        (shown.entry.stage.as_str(), shown.entry.reason.as_str()),
        ("send", "http_422")
    );
    assert_eq!(shown.entry.time_ms, T0 + 7);
    // the other sink still gets it
    let hub: Vec<_> = s
        .read_pending("hub", 10)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(hub, vec![1, 2, 3]);
    assert_eq!(s.purge_delivered(T0).expect("purge").deleted_records, 0);
    s.ack("hub", 2).expect("ack");
    assert_eq!(s.purge_delivered(T0).expect("purge").deleted_records, 2);
    assert!(matches!(
        s.dead_letter_record("fhir", 2, "send", "x", "y", T0),
        Err(StoreError::NoSuchRecord(2))
    ));
}
