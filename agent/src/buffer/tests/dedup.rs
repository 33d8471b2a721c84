//! Source-side dedup keys: a reading resent by the device after it was stored is recognised.

use super::super::{dedup_key, Appended, StoreConfig};
use super::{db_path, open, reading, tempdir, T0};

fn keyed(source: &str, n: u64, key: &str) -> super::super::NewRecord {
    let mut r = reading(source, n);
    r.dedup_key = Some(key.to_string());
    r
}

#[test]
fn a_resend_after_commit_gets_the_existing_seq_and_stores_nothing() {
    let dir = tempdir();
    let path = db_path(&dir);
    let cfg = StoreConfig::default();
    let key = dedup_key::hl7("MSG00001");
    {
        let mut s = open(&path, &cfg);
        let out = s
            .append_batch(&[keyed("mon", 1, &key)], T0)
            .expect("append");
        assert_eq!(out, vec![Ok(Appended::New(1))]);
    }
    // The ack never reached the device; the device resends after the gateway restarted.
    let mut s = open(&path, &cfg);
    let mut resend = keyed("mon", 1, &key);
    resend.envelope = "{\"Body\":{},\"Properties\":{\"retry\":true}}".into();
    resend.receive_time_ms = T0 + 1_000;
    let out = s
        .append_batch(&[reading("mon", 2), resend], T0 + 1_000)
        .expect("append");
    assert_eq!(out, vec![Ok(Appended::New(2)), Ok(Appended::Duplicate(1))]);
    let st = s.stats().expect("stats");
    assert_eq!(st.records, 2);
    assert_eq!(st.duplicates, 1);
    assert_eq!(st.next_seq, 3);
}

#[test]
fn duplicates_inside_one_batch_are_recognised() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    let k = dedup_key::mqtt("pump-7", 11);
    let out = s
        .append_batch(&[keyed("mqtt", 1, &k), keyed("mqtt", 1, &k)], T0)
        .expect("append");
    assert_eq!(out, vec![Ok(Appended::New(1)), Ok(Appended::Duplicate(1))]);
    assert_eq!(s.stats().expect("stats").records, 1);
}

#[test]
fn same_key_from_another_source_or_with_another_payload_is_new() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    let k = dedup_key::device("SN123", "20240101120000");
    s.append_batch(&[keyed("a", 1, &k)], T0).expect("append");
    let out = s
        .append_batch(&[keyed("b", 1, &k), keyed("a", 2, &k)], T0)
        .expect("append");
    // other source: new; same source, different payload (a reused id): new and counted
    assert_eq!(out, vec![Ok(Appended::New(2)), Ok(Appended::New(3))]);
    let st = s.stats().expect("stats");
    assert_eq!(st.dedup_conflicts, 1);
    assert_eq!(st.duplicates, 0);
    // the key now points at the newest payload
    let out = s.append_batch(&[keyed("a", 2, &k)], T0).expect("append");
    assert_eq!(out, vec![Ok(Appended::Duplicate(3))]);
}

#[test]
fn keys_outlive_delivery_but_not_the_window() {
    let dir = tempdir();
    let cfg = StoreConfig {
        dedup_window_ms: 60_000,
        ..StoreConfig::default()
    };
    let mut s = open(&db_path(&dir), &cfg);
    s.register_sinks(&["a"]).expect("sinks");
    let k = dedup_key::hl7("X1");
    s.append_batch(&[keyed("mon", 1, &k)], T0).expect("append");
    s.ack("a", 1).expect("ack");
    assert_eq!(
        s.purge_delivered(T0 + 10).expect("purge").deleted_records,
        1
    );
    // delivered and purged, but the device resends within the window
    let out = s
        .append_batch(&[keyed("mon", 1, &k)], T0 + 30_000)
        .expect("append");
    assert_eq!(out, vec![Ok(Appended::Duplicate(1))]);
    // after the window the same key is a new reading
    let out = s
        .append_batch(&[keyed("mon", 1, &k)], T0 + 60_001)
        .expect("append");
    assert_eq!(out, vec![Ok(Appended::New(2))]);
    // purge forgets keys older than the window
    let report = s.purge_delivered(T0 + 200_000).expect("purge");
    assert_eq!(report.expired_dedup_keys, 1);
}
