//! Append, read, acknowledge, purge and reopen: the seq and cursor invariants.

use super::super::{Appended, RecordBody, StoreConfig, StoreError};
use super::{db_path, open, reading, tempdir, T0};

#[test]
fn append_then_read_returns_every_field_in_order() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["fhir"]).expect("sinks");
    let mut batch = vec![reading("mon", 1), reading("mon", 2), reading("pump", 3)];
    batch[1].dedup_key = Some("hl7:42".into());
    batch[2].device_time_ms = None;
    let out = s.append_batch(&batch, T0).expect("append");
    assert_eq!(
        out,
        vec![
            Ok(Appended::New(1)),
            Ok(Appended::New(2)),
            Ok(Appended::New(3))
        ]
    );
    let got = s.read_pending("fhir", 10).expect("read");
    assert_eq!(got.len(), 3);
    for (i, rec) in got.iter().enumerate() {
        assert_eq!(rec.seq, i as u64 + 1);
        assert_eq!(rec.body, RecordBody::Reading(batch[i].clone()));
    }
    assert_eq!(s.read_pending("fhir", 2).expect("read").len(), 2);
}

#[test]
fn one_batch_is_one_commit() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    let before = s.commit_count();
    let batch: Vec<_> = (0..256).map(|n| reading("mon", n)).collect();
    s.append_batch(&batch, T0).expect("append");
    assert_eq!(s.commit_count(), before + 1);
}

#[test]
fn seqs_are_not_reused_after_a_full_drain_and_reopen() {
    let dir = tempdir();
    let path = db_path(&dir);
    let cfg = StoreConfig::default();
    {
        let mut s = open(&path, &cfg);
        s.register_sinks(&["a"]).expect("sinks");
        s.append_batch(&[reading("m", 1), reading("m", 2), reading("m", 3)], T0)
            .expect("append");
        s.ack("a", 3).expect("ack");
        let report = s.purge_delivered(T0).expect("purge");
        assert_eq!(report.deleted_records, 3);
        let st = s.stats().expect("stats");
        assert_eq!((st.records, st.bytes), (0, 0));
        assert_eq!(st.next_seq, 4);
    }
    let mut s = open(&path, &cfg);
    let out = s.append_batch(&[reading("m", 4)], T0).expect("append");
    assert_eq!(out, vec![Ok(Appended::New(4))]);
    assert_eq!(s.cursor("a").expect("cursor"), 3);
    let got = s.read_pending("a", 10).expect("read");
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4]);
    assert!(s.verify().expect("verify").problems.is_empty());
}

#[test]
fn cursors_survive_reopen_and_reading_resumes_after_them() {
    let dir = tempdir();
    let path = db_path(&dir);
    let cfg = StoreConfig::default();
    {
        let mut s = open(&path, &cfg);
        s.register_sinks(&["a", "b"]).expect("sinks");
        let batch: Vec<_> = (1..=10).map(|n| reading("m", n)).collect();
        s.append_batch(&batch, T0).expect("append");
        s.ack("a", 7).expect("ack");
        s.ack("b", 2).expect("ack");
        // dropped without purge: the "crash" of the model test
    }
    let mut s = open(&path, &cfg);
    let a: Vec<_> = s
        .read_pending("a", 100)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    let b: Vec<_> = s
        .read_pending("b", 100)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(a, vec![8, 9, 10]);
    assert_eq!(b, (3..=10).collect::<Vec<_>>());
    // Only rows both sinks passed leave the log.
    let report = s.purge_delivered(T0).expect("purge");
    assert_eq!(report.deleted_records, 2);
    assert_eq!(s.stats().expect("stats").records, 8);
}

#[test]
fn out_of_order_acks_advance_the_cursor_only_over_contiguous_rows() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["a"]).expect("sinks");
    let batch: Vec<_> = (1..=6).map(|n| reading("m", n)).collect();
    s.append_batch(&batch, T0).expect("append");
    s.ack_seqs("a", &[2, 3, 5]).expect("ack");
    assert_eq!(s.cursor("a").expect("cursor"), 0);
    let pending: Vec<_> = s
        .read_pending("a", 10)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(pending, vec![1, 4, 6]);
    s.ack_seqs("a", &[1]).expect("ack");
    assert_eq!(s.cursor("a").expect("cursor"), 3);
    s.ack_seqs("a", &[4, 6]).expect("ack");
    assert_eq!(s.cursor("a").expect("cursor"), 6);
    assert!(s.read_pending("a", 10).expect("read").is_empty());
    // acking below the cursor again is harmless
    s.ack_seqs("a", &[1, 2]).expect("ack");
    s.ack("a", 3).expect("ack");
    assert_eq!(s.cursor("a").expect("cursor"), 6);
}

#[test]
fn read_pending_after_skips_in_flight_records() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["a"]).expect("sinks");
    let batch: Vec<_> = (1..=5).map(|n| reading("m", n)).collect();
    s.append_batch(&batch, T0).expect("append");
    let next: Vec<_> = s
        .read_pending_after("a", 2, 10)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(next, vec![3, 4, 5]);
}

#[test]
fn bad_acks_are_errors() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["a"]).expect("sinks");
    s.append_batch(&[reading("m", 1)], T0).expect("append");
    assert!(matches!(
        s.ack("a", 2),
        Err(StoreError::AckBeyondEnd {
            seq: 2,
            next_seq: 2,
            ..
        })
    ));
    assert!(matches!(
        s.ack_seqs("a", &[9]),
        Err(StoreError::AckBeyondEnd { .. })
    ));
    assert!(matches!(s.ack("nope", 1), Err(StoreError::UnknownSink(_))));
    assert!(matches!(
        s.read_pending("nope", 1),
        Err(StoreError::UnknownSink(_))
    ));
    assert_eq!(s.cursor("a").expect("cursor"), 0);
}

#[test]
fn without_sinks_nothing_is_purged_and_removing_a_sink_releases_its_records() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.append_batch(&[reading("m", 1), reading("m", 2)], T0)
        .expect("append");
    assert_eq!(s.purge_delivered(T0).expect("purge").deleted_records, 0);
    s.register_sinks(&["a", "b"]).expect("sinks");
    s.ack("a", 2).expect("ack");
    assert_eq!(s.purge_delivered(T0).expect("purge").deleted_records, 0);
    s.register_sinks(&["a"]).expect("sinks");
    assert_eq!(s.sinks().expect("sinks"), vec!["a".to_string()]);
    assert_eq!(s.purge_delivered(T0).expect("purge").deleted_records, 2);
    // a newly added sink starts at 0 and sees what is still stored
    s.append_batch(&[reading("m", 3)], T0).expect("append");
    s.register_sinks(&["a", "c"]).expect("sinks");
    let c: Vec<_> = s
        .read_pending("c", 10)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(c, vec![3]);
}

#[test]
fn stats_report_per_sink_backlog() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["a", "b"]).expect("sinks");
    let mut batch: Vec<_> = (1..=4).map(|n| reading("m", n)).collect();
    for (i, r) in batch.iter_mut().enumerate() {
        r.receive_time_ms = T0 + i as i64;
    }
    s.append_batch(&batch, T0).expect("append");
    s.ack("a", 3).expect("ack");
    let st = s.stats().expect("stats");
    assert_eq!(st.records, 4);
    assert_eq!(st.bytes, batch.iter().map(|r| r.stored_size()).sum::<u64>());
    assert_eq!(st.oldest_receive_ms, Some(T0));
    assert_eq!(st.epoch.len(), 32);
    let a = &st.sinks[0];
    assert_eq!((a.name.as_str(), a.cursor, a.pending_records), ("a", 3, 1));
    assert_eq!(a.oldest_pending_receive_ms, Some(T0 + 3));
    let b = &st.sinks[1];
    assert_eq!((b.name.as_str(), b.cursor, b.pending_records), ("b", 0, 4));
}

#[test]
fn purge_vacuums_and_the_file_shrinks() {
    let dir = tempdir();
    let path = db_path(&dir);
    let cfg = StoreConfig {
        vacuum_free_pages: 16,
        ..StoreConfig::default()
    };
    let mut s = open(&path, &cfg);
    s.register_sinks(&["a"]).expect("sinks");
    let mut big = reading("m", 0);
    big.payload = vec![7u8; 4000];
    let batch = vec![big; 256];
    s.append_batch(&batch, T0).expect("append");
    s.ack("a", 256).expect("ack");
    let report = s.purge_delivered(T0).expect("purge");
    assert_eq!(report.deleted_records, 256);
    let page_size: i64 = s
        .conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    let page_size = page_size as u64;
    // 256 x 4000 payload bytes: at least 800 KB of pages went back to the file system
    assert!(
        report.vacuumed_pages * page_size >= 800 * 1024,
        "{report:?} at {page_size} bytes a page"
    );
    // the pages are gone from the database once the WAL is checkpointed
    s.conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    let len = std::fs::metadata(&path).expect("meta").len();
    assert!(len < 200 * 1024, "file still {len} bytes");
    let second = s.append_batch(&[reading("m", 1)], T0).expect("append");
    assert_eq!(second, vec![Ok(Appended::New(257))]);
}

#[test]
fn a_store_with_the_backlog_index_of_an_earlier_build_loses_it_at_open() {
    let dir = tempdir();
    let path = db_path(&dir);
    {
        let mut s = open(&path, &StoreConfig::default());
        s.register_sinks(&["a"]).expect("sinks");
        s.append_batch(&[reading("m", 1), reading("m", 2)], T0)
            .expect("append");
    }
    // What a store written by an earlier build looks like.
    let index_count = |path: &std::path::Path| -> i64 {
        let c = rusqlite::Connection::open(path).expect("raw open");
        c.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'q_seq_receive'",
            [],
            |r| r.get(0),
        )
        .expect("query")
    };
    {
        let c = rusqlite::Connection::open(&path).expect("raw open");
        c.execute_batch("CREATE INDEX q_seq_receive ON q (seq, receive_ms);")
            .expect("create");
    }
    assert_eq!(index_count(&path), 1);
    let s = open(&path, &StoreConfig::default());
    let st = s.stats().expect("stats");
    assert_eq!(st.sinks[0].pending_records, 2);
    drop(s);
    assert_eq!(index_count(&path), 0);
}

#[test]
fn a_new_store_gets_the_larger_page_size_and_an_old_one_keeps_its_own() {
    let dir = tempdir();
    let page_size = |s: &crate::buffer::Store| -> i64 {
        s.conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size")
    };
    let s = open(&db_path(&dir), &StoreConfig::default());
    assert_eq!(page_size(&s), crate::buffer::store::NEW_STORE_PAGE_SIZE);
    drop(s);
    // A store created with SQLite's default page size by an earlier build.
    let old = dir.path().join("old.db");
    {
        let mut s = open(&old, &StoreConfig::default());
        s.register_sinks(&["a"]).expect("sinks");
        s.append_batch(&[reading("m", 1)], T0).expect("append");
    }
    {
        let c = rusqlite::Connection::open(&old).expect("raw open");
        c.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA page_size = 4096; VACUUM;")
            .expect("rewrite at 4096");
    }
    let mut s = open(&old, &StoreConfig::default());
    assert_eq!(page_size(&s), 4096, "an existing store keeps its page size");
    assert_eq!(s.read_pending("a", 10).expect("read").len(), 1);
    s.append_batch(&[reading("m", 2)], T0).expect("append");
    assert!(s.verify().expect("verify").problems.is_empty());
}

/// The backlog as a full scan would count it.
fn scanned_backlog(s: &crate::buffer::Store, sink: &str) -> (u64, Option<i64>) {
    let cursor = s.cursor(sink).expect("cursor") as i64;
    let mut stmt = s
        .conn
        .prepare(
            "SELECT receive_ms FROM q
             WHERE seq > ?1
               AND NOT EXISTS (SELECT 1 FROM sink_acks a WHERE a.sink = ?2 AND a.seq = q.seq)
             ORDER BY seq",
        )
        .expect("prepare");
    let times: Vec<i64> = stmt
        .query_map(rusqlite::params![cursor, sink], |r| r.get(0))
        .expect("scan")
        .collect::<Result<_, _>>()
        .expect("rows");
    (times.len() as u64, times.first().copied())
}

#[test]
fn backlog_stats_match_a_scan_with_acks_holes_and_purges() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["a", "b", "c"]).expect("sinks");
    let mut batch: Vec<_> = (1..=20).map(|n| reading("m", n)).collect();
    for (i, r) in batch.iter_mut().enumerate() {
        r.receive_time_ms = T0 + 100 - i as i64; // not monotonic in seq
    }
    s.append_batch(&batch, T0).expect("append");
    let check = |s: &crate::buffer::Store, when: &str| {
        let st = s.stats().expect("stats");
        for k in &st.sinks {
            let (n, oldest) = scanned_backlog(s, &k.name);
            assert_eq!(
                (k.pending_records, k.oldest_pending_receive_ms),
                (n, oldest),
                "sink {} {when}",
                k.name
            );
        }
    };
    check(&s, "fresh");
    s.ack("a", 5).expect("ack");
    s.ack_seqs("b", &[2, 3, 7, 9, 19]).expect("ack");
    check(&s, "after acks");
    s.ack("c", 4).expect("ack");
    s.purge_delivered(T0).expect("purge");
    check(&s, "after purge");
    // a damaged row leaves a hole in the range of seqs
    s.conn
        .execute("UPDATE q SET payload = X'00' WHERE seq = 12", [])
        .expect("damage");
    s.read_pending("c", 100).expect("read");
    let st = s.stats().expect("stats");
    assert_eq!(st.corrupt_records, 1);
    check(&s, "with a hole");
    s.ack_seqs("b", &[13, 15]).expect("ack");
    check(&s, "with a hole and acks");
    s.ack("c", 20).expect("ack");
    s.ack("b", 20).expect("ack");
    s.ack("a", 20).expect("ack");
    check(&s, "all delivered");
    s.purge_delivered(T0).expect("purge");
    s.append_batch(&[reading("m", 21)], T0).expect("append");
    check(&s, "after the hole was purged");
    assert_eq!(s.stats().expect("stats").sinks[0].pending_records, 1);
}
