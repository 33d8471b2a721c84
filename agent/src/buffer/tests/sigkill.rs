//! SIGKILL crash test (buffer-store.md §2.3, CI variant): a child process writes to one store
//! that persists across kills; it is killed at random moments and the store is checked after
//! each kill with `crash_harness::check`.
//!
//! The child is this same test binary, re-run with `--exact` on this same test and told through
//! environment variables that it is the writer (so no ignored helper test is needed).

use std::process::{Command, Stdio};

use super::crash_harness::{sigkill_campaign, writer};
use super::tempdir;

const ENV_DB: &str = "IOMT_BUFFER_CRASH_DB";
const ENV_LOG: &str = "IOMT_BUFFER_CRASH_LOG";
const ENV_SEED: &str = "IOMT_BUFFER_CRASH_SEED";
const SELF: &str = "buffer::tests::sigkill::sigkill_never_loses_acknowledged_data";

/// In the child process: be the writer until killed.
fn run_as_child() -> bool {
    let (Ok(db), Ok(log), Ok(seed)) = (
        std::env::var(ENV_DB),
        std::env::var(ENV_LOG),
        std::env::var(ENV_SEED),
    ) else {
        return false;
    };
    let seed = seed.parse().expect("seed");
    let err = writer(db.as_ref(), log.as_ref(), seed).expect_err("the writer only stops on error");
    panic!("writer failed: {err}");
}

#[test]
fn sigkill_never_loses_acknowledged_data() {
    if run_as_child() {
        return;
    }
    let dir = tempdir();
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe().expect("test binary path");
    let campaign = sigkill_campaign(&db, dir.path(), 15, 0x5EED, 400, |log, seed| {
        Command::new(&exe)
            .args([SELF, "--exact", "--nocapture", "--test-threads=1"])
            .env(ENV_DB, &db)
            .env(ENV_LOG, log)
            .env(ENV_SEED, seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(campaign.kills, 15);
    assert!(
        campaign.total_committed > 0,
        "the writer never committed anything: the test proved nothing"
    );
}

#[test]
fn the_check_detects_lost_appends_lost_acks_and_wrong_cursors() {
    use super::crash_harness::{check, parse_log, Carried, Progress};
    let dir = tempdir();
    let db = dir.path().join("c.db");
    let log = dir.path().join("c.log");
    // A short honest run, stopped by an error-free kill: simulate with a few protocol lines.
    {
        let mut s = super::super::Store::open(&db, &super::crash_harness::config(), 0)
            .expect("open")
            .store;
        s.register_sinks(&[super::crash_harness::SINK])
            .expect("sinks");
        let recs: Vec<_> = (1..=3)
            .map(|seq| super::super::NewRecord {
                source: "crash".into(),
                dedup_key: None,
                receive_time_ms: super::crash_harness::T0 + seq,
                device_time_ms: None,
                payload: super::crash_harness::payload_for(seq as u64),
                envelope: format!("{{\"Body\":{{\"seq\":{seq}}}}}"),
            })
            .collect();
        s.append_batch(&recs, 0).expect("append");
        s.ack(super::crash_harness::SINK, 1).expect("ack");
    }
    std::fs::write(&log, "@ a 3\n@ A 3\n@ I 1\n@ D 1\n@ a 4").expect("log");
    let honest = parse_log(&std::fs::read_to_string(&log).expect("read"));
    assert_eq!(honest.attempted, Some(3), "a cut line is ignored");
    let before = Carried {
        next_seq: 1,
        cursor: 0,
    };
    let ok = check(&db, &honest, before).expect("honest run passes");
    assert_eq!(
        ok.carried,
        Carried {
            next_seq: 4,
            cursor: 1
        }
    );
    assert_eq!(ok.records, 3);
    assert_eq!(Carried::from_text(&ok.carried.to_text()), Some(ok.carried));
    // claims the store cannot satisfy
    let lost_append = Progress {
        attempted: Some(5),
        committed: Some(5),
        ..honest
    };
    assert!(check(&db, &lost_append, before).is_err());
    let lost_ack = Progress {
        ack_attempted: Some(2),
        ack_committed: Some(2),
        ..honest
    };
    assert!(check(&db, &lost_ack, before).is_err());
    let backwards = Carried {
        next_seq: 9,
        cursor: 0,
    };
    assert!(check(&db, &honest, backwards).is_err());
    let phantom = Progress {
        attempted: Some(2),
        committed: Some(2),
        ..honest
    };
    assert!(check(&db, &phantom, before).is_err());
}
