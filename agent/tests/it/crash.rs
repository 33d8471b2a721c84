//! Crash test: the real agent (simulator → log → outbox) is killed with SIGKILL at random
//! moments, again and again; at the end every reading the simulator saw acknowledged is in
//! the outbox exactly once (by Observation id).
//!
//! `IOMT_CRASH_CYCLES` sets the number of kills (default 200, as the issue asks).

use crate::harness::{
    check_exactly_once, drain, free_port, next_random as next, start, write_config, Ward,
};
use std::time::Duration;

fn cycles() -> u32 {
    std::env::var("IOMT_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ward = Ward {
        per_kind: 10,
        ack_log: dir.path().join("acked.ndjson"),
        state_dir: dir.path().join("state"),
        seed: 7,
    };
    let cfg = write_config(dir.path(), "ward.toml", &ward);
    let mut rng = 0x5EED_u64;
    let n = cycles();
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let mut child = start(&cfg, free_port());
        // Between 120 ms (often before the first reading) and about 1 s (several commits and
        // deliveries in flight).
        let ms = 120 + next(&mut rng) % 900;
        std::thread::sleep(Duration::from_millis(ms));
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("cycle {i}: the agent exited by itself ({status}): {err}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let shutdown = drain(dir.path(), &ward.state_dir, &ward.ack_log);
    let report = check_exactly_once(&ward.ack_log, &ward.state_dir.join("outbox"))
        .unwrap_or_else(|e| panic!("after {n} kills: {e}"));
    eprintln!(
        "crash test: {n} SIGKILLs in {:?}, {report:?}, final shutdown {shutdown:?}",
        t0.elapsed()
    );
    assert!(
        report.acked_readings > n as usize,
        "the simulator acknowledged too few readings to mean anything: {report:?}"
    );
    assert!(
        shutdown < Duration::from_secs(5),
        "graceful shutdown took {shutdown:?}"
    );
}
