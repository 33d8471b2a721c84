//! Tests of the durable log: behaviour per feature, a model-based property test, corruption and
//! crash (SIGKILL) recovery. The power-cut harness shares `crash_harness.rs` with the
//! `buffer_crash` example (see `tests/powercut.sh`).

use std::path::{Path, PathBuf};

use super::{NewRecord, Store, StoreConfig};

mod basic;
mod bounds;
mod corruption;
pub(crate) mod crash_harness;
mod dedup;
mod dlq;
mod group_commit;
mod model;
mod sigkill;

/// A fixed "now" for tests that do not care about time.
pub(super) const T0: i64 = 1_700_000_000_000;

pub(super) fn reading(source: &str, n: u64) -> NewRecord {
    NewRecord {
        source: source.to_string(),
        dedup_key: None,
        receive_time_ms: T0,
        device_time_ms: Some(T0 - 5),
        payload: format!("MSH|^~\\&|MON|{n}|").into_bytes(),
        envelope: format!(r#"{{"Body":{{"n":{n}}},"Properties":{{}},"SystemProperties":{{}}}}"#),
    }
}

pub(super) fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("buffer.db")
}

pub(super) fn open(path: &Path, config: &StoreConfig) -> Store {
    let opened = Store::open(path, config, T0).expect("open");
    assert!(opened.quarantined.is_none(), "unexpected quarantine");
    opened.store
}

pub(super) fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
