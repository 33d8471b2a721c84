//! Group commit: the async front of the log for sources.
//!
//! Sources call [`GroupCommitter::append`] once per reading. A dedicated std thread (rusqlite is
//! blocking) collects readings until it has `max_batch_records` of them or `max_delay` has passed
//! since the first one of the batch, then commits them with one [`Store::append_batch`] (one
//! transaction, one fsync). Each `append` future resolves only after the batch containing its
//! reading has committed, so a source that acknowledges its device after `append` returns `Ok`
//! never acknowledges a reading that is not on disk.
//!
//! Invariants:
//! - a reading is acknowledged (`Ok`) only after its commit; any error of the commit is given to
//!   every reading of that batch ([`StoreError::Batch`]) and none of them is stored;
//! - at most `max_queued` readings wait for a commit; further `append` calls wait for room
//!   (backpressure to the sources);
//! - the store mutex is held only while a batch is committed, so sinks can read and acknowledge
//!   between commits;
//! - this is the only layer that reads the clock (`SystemTime` for `now_ms`, `Instant` for the
//!   batching deadline).
//!
//! Dropping a pending `append` future does not withdraw its reading: it is still committed (the
//! device, not having been acknowledged, resends it, and the dedup key recognises it). The thread
//! ends when every `GroupCommitter` clone is dropped, after committing what it holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::store::{Appended, NewRecord, Store, StoreError, UnixMillis};

/// The store shared between the committer thread and the sinks.
pub type SharedStore = Arc<Mutex<Store>>;

/// Group-commit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Commit when this many readings are waiting (default 256).
    pub max_batch_records: usize,
    /// Commit at the latest this long after the first reading of a batch arrived (default
    /// 100 ms; the design allows 100–250 ms). This is the added acknowledgement latency.
    pub max_delay: Duration,
    /// Most readings waiting for a commit before `append` waits for room (default 4096).
    pub max_queued: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_batch_records: 256,
            max_delay: Duration::from_millis(100),
            max_queued: 4096,
        }
    }
}

/// Counters of the committer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitterStats {
    /// Batches committed (each one transaction).
    pub batches: u64,
    /// Readings in those batches.
    pub records: u64,
    /// Batches whose commit failed.
    pub failed_batches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    records: AtomicU64,
    failed_batches: AtomicU64,
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

struct Pending {
    record: NewRecord,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

/// Handle for appending through group commit. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Pending>,
    room: Arc<Semaphore>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("source", &self.record.source)
            .finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Starts the commit thread (named `buffer-commit`).
    pub fn spawn(store: SharedStore, config: GroupCommitConfig) -> Result<Self, StoreError> {
        if config.max_batch_records == 0 || config.max_queued == 0 {
            return Err(StoreError::Config(
                "max_batch_records and max_queued must be positive".into(),
            ));
        }
        let (tx, rx) = mpsc::channel::<Pending>();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let cfg = config.clone();
        std::thread::Builder::new()
            .name("buffer-commit".into())
            .spawn(move || run(&store, &cfg, &rx, &thread_counters))
            .map_err(|source| StoreError::Io {
                context: "spawning the commit thread for",
                path: std::path::PathBuf::from("buffer"),
                source,
            })?;
        Ok(Self {
            tx,
            room: Arc::new(Semaphore::new(
                config.max_queued.min(Semaphore::MAX_PERMITS),
            )),
            counters,
        })
    }

    /// Appends one reading; resolves after the batch containing it has committed durably.
    /// [`StoreError::Full`] is the backpressure signal: do not acknowledge the device.
    pub async fn append(&self, record: NewRecord) -> Result<Appended, StoreError> {
        let permit = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::CommitterStopped)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                record,
                reply,
                _permit: permit,
            })
            .map_err(|_| StoreError::CommitterStopped)?;
        answer.await.map_err(|_| StoreError::CommitterStopped)?
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitterStats {
        CommitterStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            records: self.counters.records.load(Ordering::Relaxed),
            failed_batches: self.counters.failed_batches.load(Ordering::Relaxed),
        }
    }
}

fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn run(
    store: &SharedStore,
    config: &GroupCommitConfig,
    rx: &mpsc::Receiver<Pending>,
    counters: &Counters,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(config.max_batch_records);
    loop {
        let Ok(first) = rx.recv() else {
            return;
        };
        let deadline = Instant::now() + config.max_delay;
        batch.push(first);
        let mut disconnected = false;
        while batch.len() < config.max_batch_records {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(p) => batch.push(p),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        commit_batch(store, &mut batch, counters);
        if disconnected {
            return;
        }
    }
}

fn commit_batch(store: &SharedStore, batch: &mut Vec<Pending>, counters: &Counters) {
    let pending: Vec<Pending> = std::mem::take(batch);
    let records: Vec<NewRecord> = pending.iter().map(|p| p.record.clone()).collect();
    let result = {
        // A panic elsewhere while holding the lock cannot leave a half-written transaction
        // (it rolls back on drop), so a poisoned store is still consistent.
        let mut guard = store.lock().unwrap_or_else(PoisonError::into_inner);
        guard.append_batch(&records, now_ms())
    };
    match result {
        Ok(outcomes) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters
                .records
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            for (p, outcome) in pending.into_iter().zip(outcomes) {
                // A dropped receiver means the caller stopped waiting; nothing to do.
                let _sent = p.reply.send(outcome.map_err(StoreError::Full));
            }
        }
        Err(e) => {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            let shared = Arc::new(e);
            for p in pending {
                let _sent = p.reply.send(Err(StoreError::Batch(Arc::clone(&shared))));
            }
        }
    }
}
