//! A corrupt or unreadable store is moved aside and replaced; other errors move nothing; a
//! damaged row is dead-lettered instead of stalling delivery.

use std::fs;
use std::io::{Seek, SeekFrom, Write};

use super::super::{RecordBody, Store, StoreConfig, StoreError, REASON_CRC_MISMATCH};
use super::{db_path, open, reading, tempdir, T0};

/// Creates a closed store with `n` records (the WAL is checkpointed into the file on close).
fn filled_store(path: &std::path::Path, n: u64) -> String {
    let mut s = open(path, &StoreConfig::default());
    s.register_sinks(&["a"]).expect("sinks");
    let batch: Vec<_> = (1..=n).map(|i| reading("m", i)).collect();
    s.append_batch(&batch, T0).expect("append");
    s.stats().expect("stats").epoch
}

fn assert_fresh_after_quarantine(path: &std::path::Path, old_epoch: &str, old_len: u64) {
    let opened = Store::open(path, &StoreConfig::default(), T0).expect("open never fails here");
    let q = opened.quarantined.expect("the store must be quarantined");
    assert!(q.path.exists(), "quarantined file {:?} is missing", q.path);
    assert_eq!(fs::metadata(&q.path).expect("meta").len(), old_len);
    let name = q
        .path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        name.starts_with("buffer.db.corrupt-20231114T"),
        "quarantine name {name}"
    );
    assert!(!q.reason.is_empty());
    let mut store = opened.store;
    let st = store.stats().expect("stats");
    assert_eq!((st.records, st.next_seq), (0, 1));
    assert_ne!(st.epoch, old_epoch, "a fresh store has a new epoch");
    store
        .append_batch(&[reading("m", 1)], T0)
        .expect("fresh store works");
    drop(store);
    // and the next open is clean
    let again = Store::open(path, &StoreConfig::default(), T0).expect("reopen");
    assert!(again.quarantined.is_none());
}

#[test]
fn garbage_over_the_whole_file_is_quarantined() {
    let dir = tempdir();
    let path = db_path(&dir);
    let epoch = filled_store(&path, 500);
    let len = fs::metadata(&path).expect("meta").len();
    let garbage: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    fs::write(&path, &garbage).expect("write garbage");
    assert_fresh_after_quarantine(&path, &epoch, len);
}

#[test]
fn a_truncated_file_is_quarantined() {
    let dir = tempdir();
    let path = db_path(&dir);
    let epoch = filled_store(&path, 2000);
    let len = fs::metadata(&path).expect("meta").len();
    assert!(len > 8 * 4096, "test needs a multi-page file, got {len}");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    drop(f);
    assert_fresh_after_quarantine(&path, &epoch, len / 2);
}

#[test]
fn garbage_inside_the_file_with_an_intact_header_is_quarantined() {
    let dir = tempdir();
    let path = db_path(&dir);
    let epoch = filled_store(&path, 2000);
    let len = fs::metadata(&path).expect("meta").len();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    // overwrite pages 3..6 (the header page and the schema stay readable)
    f.seek(SeekFrom::Start(2 * 4096)).expect("seek");
    f.write_all(&vec![0xA5u8; 4 * 4096]).expect("write");
    drop(f);
    assert_fresh_after_quarantine(&path, &epoch, len);
}

#[test]
fn an_unknown_format_version_is_quarantined_not_overwritten() {
    let dir = tempdir();
    let path = db_path(&dir);
    let epoch = {
        let s = open(&path, &StoreConfig::default());
        s.conn
            .execute("UPDATE state SET format_version = 99", [])
            .expect("update");
        s.stats().expect("stats").epoch
    };
    let len = fs::metadata(&path).expect("meta").len();
    assert_fresh_after_quarantine(&path, &epoch, len);
}

#[test]
fn errors_that_are_not_corruption_move_nothing() {
    let dir = tempdir();
    // missing directory
    let missing = dir.path().join("no-such-dir").join("buffer.db");
    let err = Store::open(&missing, &StoreConfig::default(), T0).expect_err("must fail");
    assert!(!err.is_corruption(), "{err}");
    // locked by another open store
    let path = db_path(&dir);
    let first = open(&path, &StoreConfig::default());
    let err = Store::open(&path, &StoreConfig::default(), T0).expect_err("locked");
    assert!(!err.is_corruption(), "{err}");
    assert!(path.exists());
    let others: Vec<_> = fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert!(others.is_empty(), "nothing may be quarantined: {others:?}");
    drop(first);
}

#[test]
fn a_damaged_row_is_dead_lettered_and_delivery_continues() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["a", "b"]).expect("sinks");
    let batch: Vec<_> = (1..=3).map(|i| reading("m", i)).collect();
    s.append_batch(&batch, T0).expect("append");
    // flip the payload of seq 2 behind the store's back
    s.conn
        .execute("UPDATE q SET payload = X'00' WHERE seq = 2", [])
        .expect("damage");
    let got = s.read_pending("a", 10).expect("read");
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
    assert!(matches!(got[0].body, RecordBody::Reading(_)));
    let st = s.stats().expect("stats");
    assert_eq!((st.corrupt_records, st.dlq_records, st.records), (1, 1, 2));
    let dl = s.dlq_list(0, 10).expect("list");
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].reason, REASON_CRC_MISMATCH);
    assert_eq!(dl[0].seq, Some(2));
    // the other sink no longer sees it either, and the cursor can pass it
    let got_b = s.read_pending("b", 10).expect("read");
    assert_eq!(got_b.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
    s.ack_seqs("a", &[1, 3]).expect("ack");
    assert_eq!(s.cursor("a").expect("cursor"), 3);
    assert!(s.verify().expect("verify").problems.is_empty());
}

#[test]
fn corruption_errors_are_classified() {
    let e = StoreError::Corrupt("x".into());
    assert!(e.is_corruption());
    assert!(StoreError::Batch(std::sync::Arc::new(e)).is_corruption());
    assert!(!StoreError::UnknownSink("x".into()).is_corruption());
}

#[test]
fn a_row_with_a_wrong_column_type_is_dead_lettered_and_totals_stay_right() {
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &StoreConfig::default());
    s.register_sinks(&["a"]).expect("sinks");
    let batch: Vec<_> = (1..=3).map(|i| reading("m", i)).collect();
    s.append_batch(&batch, T0).expect("append");
    s.conn
        .execute("UPDATE q SET size = 'garbage' WHERE seq = 2", [])
        .expect("damage");
    let got = s.read_pending("a", 10).expect("read");
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
    let st = s.stats().expect("stats");
    assert_eq!((st.records, st.corrupt_records), (2, 1));
    assert_eq!(st.bytes, batch[0].stored_size() + batch[2].stored_size());
    let report = s.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
