//! Group commit: many concurrent appends become few transactions; each append resolves only
//! after its batch is committed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::super::{
    Appended, FullPolicy, GroupCommitConfig, GroupCommitter, NewRecord, SharedStore, StoreConfig,
    StoreError,
};
use super::{db_path, open, tempdir};

/// A reading received now: the committer stamps batches with the real clock, so the age bound
/// and the dedup window apply to real time here.
fn reading(source: &str, n: u64) -> NewRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    NewRecord {
        receive_time_ms: i64::try_from(now).expect("fits"),
        ..super::reading(source, n)
    }
}

fn shared(dir: &tempfile::TempDir, cfg: &StoreConfig) -> SharedStore {
    let mut s = open(&db_path(dir), cfg);
    s.register_sinks(&["a"]).expect("sinks");
    Arc::new(Mutex::new(s))
}

#[tokio::test]
async fn many_concurrent_appends_become_few_transactions() {
    let dir = tempdir();
    let store = shared(&dir, &StoreConfig::default());
    let commits_before = store.lock().expect("lock").commit_count();
    let gc = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig {
            max_batch_records: 256,
            max_delay: Duration::from_millis(50),
            max_queued: 4096,
        },
    )
    .expect("spawn");
    const N: u64 = 2000;
    let mut tasks = Vec::new();
    for n in 0..N {
        let gc = gc.clone();
        tasks.push(tokio::spawn(
            async move { gc.append(reading("mon", n)).await },
        ));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(Appended::New(seq)) => seqs.push(seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    let stats = gc.stats();
    assert_eq!(stats.records, N);
    assert_eq!(stats.failed_batches, 0);
    // 2000 readings in batches of at most 256: at least 8 batches, and far fewer than 2000
    assert!(
        (8..=40).contains(&stats.batches),
        "batches: {}",
        stats.batches
    );
    let s = store.lock().expect("lock");
    assert_eq!(s.commit_count() - commits_before, stats.batches);
    assert_eq!(s.stats().expect("stats").records, N);
}

#[tokio::test]
async fn an_append_resolves_only_after_its_commit() {
    let dir = tempdir();
    let store = shared(&dir, &StoreConfig::default());
    let gc = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig {
            max_delay: Duration::from_millis(5),
            ..GroupCommitConfig::default()
        },
    )
    .expect("spawn");
    // Hold the store from another thread: the commit cannot happen, so the append must not
    // resolve.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let store = Arc::clone(&store);
        move || {
            let guard = store.lock().expect("lock");
            locked_tx.send(()).expect("signal");
            release_rx.recv().expect("release");
            guard.stats().expect("stats").records
        }
    });
    locked_rx.recv().expect("locked");
    let pending = tokio::spawn({
        let gc = gc.clone();
        async move { gc.append(reading("mon", 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "acknowledged before the commit");
    release_tx.send(()).expect("release");
    let records_while_held = holder.join().expect("holder");
    assert_eq!(records_while_held, 0);
    let out = pending.await.expect("join").expect("append");
    assert_eq!(out, Appended::New(1));
    let mut s = store.lock().expect("lock");
    assert_eq!(s.read_pending("a", 10).expect("read").len(), 1);
}

#[tokio::test]
async fn full_and_duplicate_come_through_per_reading() {
    let dir = tempdir();
    let cfg = StoreConfig {
        max_bytes: 2000,
        max_age_ms: None,
        full_policy: FullPolicy::Block,
        ..StoreConfig::default()
    };
    let store = shared(&dir, &cfg);
    let gc = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig {
            max_delay: Duration::from_millis(1),
            ..GroupCommitConfig::default()
        },
    )
    .expect("spawn");
    let mut keyed: NewRecord = reading("mon", 1);
    keyed.dedup_key = Some("hl7:1".into());
    assert_eq!(
        gc.append(keyed.clone()).await.expect("append"),
        Appended::New(1)
    );
    assert_eq!(
        gc.append(keyed).await.expect("append"),
        Appended::Duplicate(1)
    );
    let mut big = reading("mon", 2);
    big.payload = vec![0; 1800];
    let full = gc.append(big).await.expect_err("must be full");
    assert!(matches!(full, StoreError::Full(_)), "{full}");
}

#[tokio::test]
async fn the_committer_stops_when_every_handle_is_dropped() {
    let dir = tempdir();
    let store = shared(&dir, &StoreConfig::default());
    let gc =
        GroupCommitter::spawn(Arc::clone(&store), GroupCommitConfig::default()).expect("spawn");
    gc.append(reading("mon", 1)).await.expect("append");
    drop(gc);
    // the thread owned one Arc; once it has exited only ours is left
    for _ in 0..100 {
        if Arc::strong_count(&store) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("commit thread still holds the store");
}
