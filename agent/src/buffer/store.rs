//! The synchronous core of the durable log: one SQLite connection, one writer.
//!
//! Every public method that changes the log runs in exactly one SQLite transaction and returns
//! only after it has committed with `synchronous=FULL` (one fsync of the WAL). The on-disk layout,
//! the invariants and the recovery rules are described in the module documentation of
//! [`crate::buffer`]; this file implements them. The core never reads the clock: every operation
//! that needs "now" takes it as a parameter (`now_ms`, milliseconds since the Unix epoch).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::crc::{crc32, Crc32};

/// A sequence number. Assigned at append, strictly increasing, never reused (see the format doc).
pub type Seq = u64;

/// Milliseconds since the Unix epoch (UTC).
pub type UnixMillis = i64;

/// Version of the table layout written by this code (`state.format_version`).
pub const FORMAT_VERSION: i64 = 1;

/// Bytes counted per row on top of its variable-length fields (an estimate of SQLite's per-row
/// cost, so that many tiny records cannot exceed the byte bound unnoticed).
pub const ROW_OVERHEAD_BYTES: u64 = 64;

/// SQLite page size of a store created by this build (bytes). Larger pages than SQLite's 4096
/// mean fewer b-tree pages, WAL frames and page-cache lookups per appended batch (measured:
/// `docs/BENCHMARKS.md`, "Durable log"). An existing store keeps the page size it was created
/// with; both read the same.
pub const NEW_STORE_PAGE_SIZE: i64 = 8192;

const KIND_READING: i64 = 0;
const KIND_GAP: i64 = 1;

/// What to do when an append would exceed `max_bytes` or the oldest record is older than
/// `max_age_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the append ([`Full`]); the source must not acknowledge the device (backpressure).
    #[default]
    Block,
    /// Delete the oldest records to make room and write a [`Gap`] record saying so.
    DropOldest,
}

/// Configuration of one store. Units are in the field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Bound on the logical size of the stored records (payload + envelope + source + dedup key +
    /// [`ROW_OVERHEAD_BYTES`] per row). The file on disk is larger (SQLite pages, WAL).
    pub max_bytes: u64,
    /// Bound on the age of the oldest stored record, by its gateway receive time. `None`: no bound.
    pub max_age_ms: Option<i64>,
    /// Policy when a bound is reached.
    pub full_policy: FullPolicy,
    /// How long a dedup key is remembered after the record's receive time.
    pub dedup_window_ms: i64,
    /// Most dead letters kept; beyond it the oldest are evicted and counted (`dlq_evicted`).
    pub dlq_max_records: u64,
    /// SQLite page cache size in KiB.
    pub cache_size_kib: u32,
    /// WAL file size kept after a checkpoint (`PRAGMA journal_size_limit`).
    pub journal_size_limit_bytes: u64,
    /// `purge_delivered` runs `PRAGMA incremental_vacuum` once this many pages are free.
    pub vacuum_free_pages: u32,
    /// Run `PRAGMA quick_check` when opening; a failure quarantines the store.
    pub quick_check_on_open: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_age_ms: Some(72 * 3600 * 1000),
            full_policy: FullPolicy::Block,
            dedup_window_ms: 3600 * 1000,
            dlq_max_records: 10_000,
            cache_size_kib: 8 * 1024,
            journal_size_limit_bytes: 8 * 1024 * 1024,
            vacuum_free_pages: 2048,
            quick_check_on_open: true,
        }
    }
}

/// One reading handed over by a source, as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Name of the configured source that received it.
    pub source: String,
    /// Source-side identity of the reading (see [`dedup_key`](super::dedup_key)); `None`: no dedup.
    pub dedup_key: Option<String>,
    /// Gateway receive time.
    pub receive_time_ms: UnixMillis,
    /// Device timestamp, if the device sent one.
    pub device_time_ms: Option<UnixMillis>,
    /// The raw bytes as received from the device.
    pub payload: Vec<u8>,
    /// The event envelope JSON (`Body`/`Properties`/`SystemProperties`), as text.
    pub envelope: String,
}

impl NewRecord {
    /// Bytes this record counts against `max_bytes`.
    pub fn stored_size(&self) -> u64 {
        ROW_OVERHEAD_BYTES
            + self.payload.len() as u64
            + self.envelope.len() as u64
            + self.source.len() as u64
            + self.dedup_key.as_ref().map_or(0, |k| k.len() as u64)
    }
}

/// Why records were dropped under [`FullPolicy::DropOldest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// Dropped to stay under `max_bytes`.
    MaxBytes,
    /// Dropped because older than `max_age_ms`.
    MaxAge,
}

/// A visible marker that records were dropped. Stored as a record of its own, with its own seq,
/// so every sink reads it in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// First and last seq of the dropped range (some seqs in it may already have been purged).
    pub first_seq: Seq,
    /// Last seq of the dropped range.
    pub last_seq: Seq,
    /// Readings dropped (earlier gap records dropped with them are not counted).
    pub dropped_records: u64,
    /// Bytes dropped (as counted against `max_bytes`).
    pub dropped_bytes: u64,
    /// Which bound caused it.
    pub reason: GapReason,
    /// When the drop happened.
    pub time_ms: UnixMillis,
}

/// What a record in the log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// A reading from a source.
    Reading(NewRecord),
    /// A drop marker.
    Gap(Gap),
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number; `(store_epoch, seq)` identifies it for ever.
    pub seq: Seq,
    /// The content.
    pub body: RecordBody,
}

/// Outcome of one accepted append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this new seq.
    New(Seq),
    /// Same source, dedup key and payload as a reading already stored under this seq (within the
    /// dedup window); nothing was written. The source may acknowledge the device.
    Duplicate(Seq),
}

impl Appended {
    /// The seq either way.
    pub fn seq(self) -> Seq {
        match self {
            Appended::New(s) | Appended::Duplicate(s) => s,
        }
    }
}

/// Which bound refused an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// Stored bytes plus this record would exceed `max_bytes`.
    MaxBytes,
    /// The oldest stored record is older than `max_age_ms` (policy `block`).
    MaxAge,
    /// The record alone is larger than `max_bytes`; it can never be stored.
    RecordTooLarge,
}

/// An append refused by a bound: the backpressure signal. The source must not acknowledge the
/// device; nothing of the record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer full ({reason:?}): {stored_bytes} of {max_bytes} bytes stored")]
pub struct Full {
    /// The bound that refused it.
    pub reason: FullReason,
    /// Bytes stored when refused.
    pub stored_bytes: u64,
    /// The configured bound.
    pub max_bytes: u64,
}

/// Per-record result of [`Store::append_batch`].
pub type AppendResult = Result<Appended, Full>;

/// A store that could not be read and was moved aside by [`Store::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where the database file now is.
    pub path: PathBuf,
    /// Where its WAL file now is, if it had one.
    pub wal_path: Option<PathBuf>,
    /// Why it was quarantined.
    pub reason: String,
}

/// Result of [`Store::open`].
#[derive(Debug)]
pub struct Opened {
    /// The open store (fresh if the old one was quarantined).
    pub store: Store,
    /// Set when the existing file was corrupt or unreadable and moved aside.
    pub quarantined: Option<Quarantined>,
}

/// Per-sink statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStats {
    /// Sink name.
    pub name: String,
    /// Every seq at or below this is delivered or dead-lettered by the sink.
    pub cursor: Seq,
    /// Records after the cursor that this sink has not yet acknowledged.
    pub pending_records: u64,
    /// Receive time of the first of those (the lowest seq: the record the sink is at).
    pub oldest_pending_receive_ms: Option<UnixMillis>,
}

/// A snapshot of the log's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    /// Random id of this store, created with it; `(epoch, seq)` is globally unique.
    pub epoch: String,
    /// The next seq to be assigned (the high-water mark).
    pub next_seq: Seq,
    /// Rows in the log (including delivered rows not yet purged).
    pub records: u64,
    /// Their size as counted against `max_bytes`.
    pub bytes: u64,
    /// Receive time of the oldest row.
    pub oldest_receive_ms: Option<UnixMillis>,
    /// Readings dropped by `drop_oldest`, since the store was created.
    pub dropped_records: u64,
    /// Gap records written, since the store was created.
    pub gap_records: u64,
    /// Appends answered with [`Appended::Duplicate`], since the store was created.
    pub duplicates: u64,
    /// Appends whose dedup key matched a stored reading with a different payload (stored as new).
    pub dedup_conflicts: u64,
    /// Rows whose checksum or fields were bad when read; moved to the dead-letter table.
    pub corrupt_records: u64,
    /// Dead letters now stored.
    pub dlq_records: u64,
    /// Dead letters ever written.
    pub dead_lettered: u64,
    /// Dead letters evicted by `dlq_max_records`.
    pub dlq_evicted: u64,
    /// Per registered sink.
    pub sinks: Vec<SinkStats>,
}

/// What [`Store::purge_delivered`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeReport {
    /// Rows deleted because every sink had passed them.
    pub deleted_records: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Expired dedup keys forgotten.
    pub expired_dedup_keys: u64,
    /// Pages returned to the file system by incremental vacuum.
    pub vacuumed_pages: u64,
}

/// Result of [`Store::verify`]: a full scan that recounts and re-checksums everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Rows counted.
    pub records: u64,
    /// Bytes counted.
    pub bytes: u64,
    /// Seqs of rows whose checksum or fields are bad.
    pub bad_rows: Vec<Seq>,
    /// Invariant violations found (empty when healthy).
    pub problems: Vec<String>,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An SQLite error (I/O error, disk full, busy, …).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file-system operation around the database failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The append was refused by a bound (backpressure).
    #[error(transparent)]
    Full(#[from] Full),
    /// The sink is not registered.
    #[error("unknown sink {0:?}")]
    UnknownSink(String),
    /// A sink acknowledged a seq that was never assigned.
    #[error("sink {sink:?} acknowledged seq {seq} but the next seq to be assigned is {next_seq}")]
    AckBeyondEnd {
        /// The sink.
        sink: String,
        /// The seq acknowledged.
        seq: Seq,
        /// The high-water mark.
        next_seq: Seq,
    },
    /// No record with that seq is stored (already purged, dropped, or never assigned).
    #[error("no record with seq {0} in the log")]
    NoSuchRecord(Seq),
    /// The database content violates the format (found after open; reopen to quarantine).
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The configuration cannot work.
    #[error("invalid buffer config: {0}")]
    Config(String),
    /// The group commit containing this record failed with the shared error.
    #[error("group commit failed: {0}")]
    Batch(Arc<StoreError>),
    /// The group-commit thread is gone.
    #[error("group committer has stopped")]
    CommitterStopped,
}

impl StoreError {
    /// True when the error means the file is damaged: the owner should drop the store and
    /// [`Store::open`] it again, which quarantines it.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => is_corruption_code(e),
            StoreError::Corrupt(_) => true,
            StoreError::Batch(inner) => inner.is_corruption(),
            _ => false,
        }
    }
}

fn is_corruption_code(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// The log. One writer: wrap it in a mutex to share it (see
/// [`GroupCommitter`](super::GroupCommitter)).
#[derive(Debug)]
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) config: StoreConfig,
    path: PathBuf,
    commits: u64,
}

/// The `state` row, read and written inside each write transaction.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) epoch: String,
    pub(crate) next_seq: i64,
    pub(crate) records: i64,
    pub(crate) bytes: i64,
    pub(crate) dropped_records: i64,
    pub(crate) gap_records: i64,
    pub(crate) duplicates: i64,
    pub(crate) dedup_conflicts: i64,
    pub(crate) corrupt_records: i64,
    pub(crate) dead_lettered: i64,
    pub(crate) dlq_records: i64,
    pub(crate) dlq_evicted: i64,
}

impl State {
    pub(crate) fn load(conn: &Connection) -> Result<State, StoreError> {
        let mut stmt = conn.prepare_cached(
            "SELECT epoch, next_seq, records, bytes, dropped_records, gap_records, duplicates,
                    dedup_conflicts, corrupt_records, dead_lettered, dlq_records, dlq_evicted
             FROM state WHERE id = 1",
        )?;
        let state = stmt
            .query_row([], |r| {
                Ok(State {
                    epoch: r.get(0)?,
                    next_seq: r.get(1)?,
                    records: r.get(2)?,
                    bytes: r.get(3)?,
                    dropped_records: r.get(4)?,
                    gap_records: r.get(5)?,
                    duplicates: r.get(6)?,
                    dedup_conflicts: r.get(7)?,
                    corrupt_records: r.get(8)?,
                    dead_lettered: r.get(9)?,
                    dlq_records: r.get(10)?,
                    dlq_evicted: r.get(11)?,
                })
            })
            .optional()?;
        state.ok_or_else(|| StoreError::Corrupt("the state row is missing".into()))
    }

    pub(crate) fn save(&self, conn: &Connection) -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(
            "UPDATE state SET next_seq = ?1, records = ?2, bytes = ?3, dropped_records = ?4,
                    gap_records = ?5, duplicates = ?6, dedup_conflicts = ?7, corrupt_records = ?8,
                    dead_lettered = ?9, dlq_records = ?10, dlq_evicted = ?11
             WHERE id = 1",
        )?;
        stmt.execute(params![
            self.next_seq,
            self.records,
            self.bytes,
            self.dropped_records,
            self.gap_records,
            self.duplicates,
            self.dedup_conflicts,
            self.corrupt_records,
            self.dead_lettered,
            self.dlq_records,
            self.dlq_evicted
        ])?;
        Ok(())
    }
}

const SCHEMA: &str = "
CREATE TABLE state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    format_version  INTEGER NOT NULL,
    epoch           TEXT    NOT NULL,
    created_ms      INTEGER NOT NULL,
    next_seq        INTEGER NOT NULL,
    records         INTEGER NOT NULL,
    bytes           INTEGER NOT NULL,
    dropped_records INTEGER NOT NULL,
    gap_records     INTEGER NOT NULL,
    duplicates      INTEGER NOT NULL,
    dedup_conflicts INTEGER NOT NULL,
    corrupt_records INTEGER NOT NULL,
    dead_lettered   INTEGER NOT NULL,
    dlq_records     INTEGER NOT NULL,
    dlq_evicted     INTEGER NOT NULL
);
CREATE TABLE q (
    seq        INTEGER PRIMARY KEY,
    kind       INTEGER NOT NULL,
    source     TEXT    NOT NULL,
    dedup_key  TEXT,
    receive_ms INTEGER NOT NULL,
    device_ms  INTEGER,
    payload    BLOB    NOT NULL,
    envelope   TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    crc        INTEGER NOT NULL
);
CREATE TABLE sinks (
    name   TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE sink_acks (
    sink TEXT    NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
CREATE TABLE dedup (
    source      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    receive_ms  INTEGER NOT NULL,
    payload_crc INTEGER NOT NULL,
    PRIMARY KEY (source, key)
) WITHOUT ROWID;
CREATE INDEX dedup_by_receive ON dedup (receive_ms);
CREATE TABLE dlq (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    seq        INTEGER,
    sink       TEXT,
    source     TEXT    NOT NULL,
    stage      TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    error      TEXT    NOT NULL,
    time_ms    INTEGER NOT NULL,
    payload    BLOB    NOT NULL,
    envelope   TEXT
);
";

const TABLES: [&str; 6] = ["state", "q", "sinks", "sink_acks", "dedup", "dlq"];

/// Converts a seq from SQLite's signed integer. Negative values never occur in a healthy store.
pub(crate) fn to_seq(v: i64) -> Seq {
    u64::try_from(v).unwrap_or(0)
}

/// Converts a seq to SQLite's signed integer, saturating (such a seq is beyond any real one).
pub(crate) fn to_sql(v: Seq) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The checksummed fields of one row of `q`.
pub(crate) struct RowRef<'a> {
    pub(crate) seq: i64,
    pub(crate) kind: i64,
    pub(crate) source: &'a str,
    pub(crate) dedup_key: Option<&'a str>,
    pub(crate) receive_ms: i64,
    pub(crate) device_ms: Option<i64>,
    pub(crate) payload: &'a [u8],
    pub(crate) envelope: &'a str,
}

impl RowRef<'_> {
    /// The checksum stored in `q.crc`: seq, kind and every field, length-prefixed.
    pub(crate) fn crc(&self) -> i64 {
        let mut c = Crc32::new()
            .update(&self.seq.to_le_bytes())
            .update(&self.kind.to_le_bytes())
            .field(self.source.as_bytes());
        c = match self.dedup_key {
            Some(k) => c.update(&[1]).field(k.as_bytes()),
            None => c.update(&[0]),
        };
        c = c.update(&self.receive_ms.to_le_bytes());
        c = match self.device_ms {
            Some(d) => c.update(&[1]).update(&d.to_le_bytes()),
            None => c.update(&[0]),
        };
        i64::from(
            c.field(self.payload)
                .field(self.envelope.as_bytes())
                .finish(),
        )
    }

    /// Inserts the row into `q` with its size and checksum (inside the caller's transaction).
    fn insert(&self, tx: &Transaction<'_>, size: i64) -> Result<(), StoreError> {
        let mut stmt = tx.prepare_cached(INSERT_Q)?;
        self.insert_with(&mut stmt, size)
    }

    /// [`insert`](Self::insert) through a statement the caller prepared once per batch.
    fn insert_with(&self, stmt: &mut rusqlite::Statement<'_>, size: i64) -> Result<(), StoreError> {
        stmt.execute(params![
            self.seq,
            self.kind,
            self.source,
            self.dedup_key,
            self.receive_ms,
            self.device_ms,
            self.payload,
            self.envelope,
            size,
            self.crc()
        ])?;
        Ok(())
    }
}

const INSERT_Q: &str =
    "INSERT INTO q (seq, kind, source, dedup_key, receive_ms, device_ms, payload,
                                envelope, size, crc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const INSERT_DEDUP: &str =
    "INSERT OR REPLACE INTO dedup (source, key, seq, receive_ms, payload_crc)
                            VALUES (?1, ?2, ?3, ?4, ?5)";

/// A row as read from `q`, before its checksum is verified.
pub(crate) struct RawRow {
    pub(crate) seq: i64,
    pub(crate) kind: i64,
    pub(crate) source: String,
    pub(crate) dedup_key: Option<String>,
    pub(crate) receive_ms: i64,
    pub(crate) device_ms: Option<i64>,
    pub(crate) payload: Vec<u8>,
    pub(crate) envelope: String,
    pub(crate) size: i64,
    pub(crate) crc: i64,
}

pub(crate) const ROW_COLUMNS: &str =
    "seq, kind, source, dedup_key, receive_ms, device_ms, payload, envelope, size, crc";

impl RawRow {
    /// Reads the columns of [`ROW_COLUMNS`]. A column of the wrong type is an error of the row,
    /// reported as `Err(seq)` so the caller can treat the row as corrupt.
    pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RawRow, i64>> {
        let seq: i64 = r.get(0)?;
        let row = (|| -> rusqlite::Result<RawRow> {
            Ok(RawRow {
                seq,
                kind: r.get(1)?,
                source: r.get(2)?,
                dedup_key: r.get(3)?,
                receive_ms: r.get(4)?,
                device_ms: r.get(5)?,
                payload: r.get(6)?,
                envelope: r.get(7)?,
                size: r.get(8)?,
                crc: r.get(9)?,
            })
        })();
        Ok(row.map_err(|_| seq))
    }

    /// True when the checksum matches and the body decodes.
    fn fields(&self) -> RowRef<'_> {
        RowRef {
            seq: self.seq,
            kind: self.kind,
            source: &self.source,
            dedup_key: self.dedup_key.as_deref(),
            receive_ms: self.receive_ms,
            device_ms: self.device_ms,
            payload: &self.payload,
            envelope: &self.envelope,
        }
    }

    pub(crate) fn is_intact(&self) -> bool {
        self.fields().crc() == self.crc
            && self.seq > 0
            && match self.kind {
                KIND_READING => true,
                KIND_GAP => serde_json::from_str::<Gap>(&self.envelope).is_ok(),
                _ => false,
            }
    }

    /// Checks the checksum and decodes the body; `None` if the row is damaged.
    pub(crate) fn decode(self) -> Option<Record> {
        if self.fields().crc() != self.crc || self.seq <= 0 {
            return None;
        }
        let body = match self.kind {
            KIND_READING => RecordBody::Reading(NewRecord {
                source: self.source,
                dedup_key: self.dedup_key,
                receive_time_ms: self.receive_ms,
                device_time_ms: self.device_ms,
                payload: self.payload,
                envelope: self.envelope,
            }),
            KIND_GAP => RecordBody::Gap(serde_json::from_str(&self.envelope).ok()?),
            _ => return None,
        };
        Some(Record {
            seq: to_seq(self.seq),
            body,
        })
    }
}

fn classify_open_error(e: &StoreError) -> Option<String> {
    match e {
        StoreError::Sqlite(inner) if is_corruption_code(inner) => Some(inner.to_string()),
        StoreError::Corrupt(msg) => Some(msg.clone()),
        _ => None,
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io_err<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// fsyncs the directory holding `path`, so a create or rename in it is durable.
fn sync_parent_dir(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let f = fs::File::open(&dir).map_err(io_err("opening directory", &dir))?;
    f.sync_all().map_err(io_err("syncing directory", &dir))
}

fn quarantine_stamp(now_ms: UnixMillis) -> String {
    chrono::DateTime::from_timestamp_millis(now_ms)
        .map(|t| t.format("%Y%m%dT%H%M%S%.3fZ").to_string())
        .unwrap_or_else(|| format!("ms{now_ms}"))
}

impl Store {
    /// Opens the store at `path`, creating it if absent.
    ///
    /// If the file exists but is corrupt, not a database, has an unknown layout or fails
    /// `quick_check`, it is renamed to `<path>.corrupt-<UTC time>` (its WAL likewise, with
    /// `-wal` appended), a fresh store is created in its place and the move is reported in
    /// [`Opened::quarantined`]. Other errors (permissions, a missing directory, disk full, the
    /// store locked by another process) are returned and nothing is moved.
    ///
    /// `now_ms` is used for the quarantine file name and the creation time of a new store.
    pub fn open(
        path: impl AsRef<Path>,
        config: &StoreConfig,
        now_ms: UnixMillis,
    ) -> Result<Opened, StoreError> {
        let path = path.as_ref();
        validate_config(config)?;
        match Self::open_existing_or_new(path, config, now_ms) {
            Ok(store) => Ok(Opened {
                store,
                quarantined: None,
            }),
            Err(e) => {
                let Some(reason) = classify_open_error(&e) else {
                    return Err(e);
                };
                let quarantined = quarantine(path, now_ms, reason)?;
                let store = Self::open_existing_or_new(path, config, now_ms)?;
                Ok(Opened {
                    store,
                    quarantined: Some(quarantined),
                })
            }
        }
    }

    fn open_existing_or_new(
        path: &Path,
        config: &StoreConfig,
        now_ms: UnixMillis,
    ) -> Result<Store, StoreError> {
        let existed = path.exists();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Exclusive locking before WAL: no shared-memory file, and a second process cannot open
        // the same store (it gets SQLITE_BUSY, which is not treated as corruption).
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // Takes effect only for a new (empty) database; an existing store keeps its page size.
        conn.pragma_update(None, "page_size", NEW_STORE_PAGE_SIZE)?;
        // auto_vacuum only takes effect before the first table is created.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Config(format!(
                "journal_mode WAL refused (got {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(
            None,
            "journal_size_limit",
            i64::try_from(config.journal_size_limit_bytes).unwrap_or(i64::MAX),
        )?;
        conn.pragma_update(None, "cache_size", -i64::from(config.cache_size_kib))?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;

        let tables: Vec<String> = {
            let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut store = Store {
            conn,
            config: config.clone(),
            path: path.to_path_buf(),
            commits: 0,
        };
        if tables.is_empty() {
            store.create_schema(now_ms)?;
            if !existed {
                sync_parent_dir(path)?;
            }
            return Ok(store);
        }
        for t in TABLES {
            if !tables.iter().any(|have| have == t) {
                return Err(StoreError::Corrupt(format!("table {t} is missing")));
            }
        }
        let version: Option<i64> = store
            .conn
            .query_row("SELECT format_version FROM state WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        match version {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "unsupported format version {v} (this build reads {FORMAT_VERSION})"
                )))
            }
            None => return Err(StoreError::Corrupt("the state row is missing".into())),
        }
        // The backlog index of earlier builds costs a b-tree insert per append; the backlog
        // is now counted without it (see `stats`).
        store
            .conn
            .execute_batch("DROP INDEX IF EXISTS q_seq_receive;")?;
        if config.quick_check_on_open {
            let mut stmt = store.conn.prepare("PRAGMA quick_check")?;
            let msgs: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?;
            drop(stmt);
            if msgs.len() != 1 || msgs[0] != "ok" {
                return Err(StoreError::Corrupt(format!(
                    "quick_check: {}",
                    msgs.join("; ")
                )));
            }
        }
        store.check_cheap_invariants()?;
        Ok(store)
    }

    fn create_schema(&mut self, now_ms: UnixMillis) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.execute(
            "INSERT INTO state (id, format_version, epoch, created_ms, next_seq, records, bytes,
                                dropped_records, gap_records, duplicates, dedup_conflicts,
                                corrupt_records, dead_lettered, dlq_records, dlq_evicted)
             VALUES (1, ?1, lower(hex(randomblob(16))), ?2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
            params![FORMAT_VERSION, now_ms],
        )?;
        tx.commit()?;
        self.commits += 1;
        Ok(())
    }

    /// Invariants that can be checked without a scan (run at open).
    fn check_cheap_invariants(&self) -> Result<(), StoreError> {
        let state = State::load(&self.conn)?;
        let max_seq: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM q", [], |r| r.get(0))?;
        if let Some(m) = max_seq {
            if m >= state.next_seq {
                return Err(StoreError::Corrupt(format!(
                    "high-water mark {} is not above the highest stored seq {m}",
                    state.next_seq
                )));
            }
        }
        let max_cursor: Option<i64> =
            self.conn
                .query_row("SELECT MAX(cursor) FROM sinks", [], |r| r.get(0))?;
        if let Some(c) = max_cursor {
            if c >= state.next_seq {
                return Err(StoreError::Corrupt(format!(
                    "a sink cursor ({c}) is at or above the high-water mark {}",
                    state.next_seq
                )));
            }
        }
        if state.next_seq < 1 || state.records < 0 || state.bytes < 0 {
            return Err(StoreError::Corrupt(
                "negative counters in the state row".into(),
            ));
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub(crate) fn note_commit(&mut self) {
        self.commits += 1;
    }

    /// Transactions committed through this handle since it was opened (for tests and metrics:
    /// each is one fsync of the WAL).
    pub fn commit_count(&self) -> u64 {
        self.commits
    }

    /// Appends readings in one transaction (one fsync) and returns one result per input, in
    /// order. Returns only after the commit; an `Err` means nothing of the batch was stored.
    ///
    /// Per record: a reading with a dedup key whose `(source, key)` was stored within
    /// `dedup_window_ms` with the same payload is [`Appended::Duplicate`] (also within the
    /// batch); otherwise it gets the next seq. When a bound is reached, policy `block` refuses
    /// that record and every later new record of the batch with [`Full`] (so a source's order is
    /// kept); policy `drop_oldest` deletes the oldest rows first and writes one [`Gap`] record
    /// per reason before the batch's new records. A record larger than `max_bytes` is refused
    /// alone with [`FullReason::RecordTooLarge`] under either policy.
    pub fn append_batch(
        &mut self,
        records: &[NewRecord],
        now_ms: UnixMillis,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let config = self.config.clone();
        let tx = self.conn.transaction()?;
        let mut state = State::load(&tx)?;
        let max_bytes = i64::try_from(config.max_bytes).unwrap_or(i64::MAX);

        // Pass 1: duplicates (against the table and earlier records of this batch).
        let mut batch_keys: HashMap<(&str, &str), (usize, u32)> = HashMap::new();
        let mut plan: Vec<Plan> = Vec::with_capacity(records.len());
        for (i, rec) in records.iter().enumerate() {
            let Some(key) = rec.dedup_key.as_deref() else {
                plan.push(Plan::New);
                continue;
            };
            let crc = crc32(&rec.payload);
            if let Some(&(j, jcrc)) = batch_keys.get(&(rec.source.as_str(), key)) {
                if jcrc == crc {
                    plan.push(Plan::DuplicateOfBatch(j));
                    continue;
                }
                state.dedup_conflicts += 1;
            } else if let Some((seq, crc_stored)) = lookup_dedup(
                &tx,
                &rec.source,
                key,
                now_ms.saturating_sub(config.dedup_window_ms),
            )? {
                if crc_stored == crc {
                    plan.push(Plan::Duplicate(to_seq(seq)));
                    continue;
                }
                state.dedup_conflicts += 1;
            }
            batch_keys.insert((rec.source.as_str(), key), (i, crc));
            plan.push(Plan::New);
        }

        // Pass 2: bounds.
        let mut too_large = vec![false; records.len()];
        let mut needed: i64 = 0;
        for (i, rec) in records.iter().enumerate() {
            if matches!(plan[i], Plan::New) {
                let size = i64::try_from(rec.stored_size()).unwrap_or(i64::MAX);
                if size + gap_reserve() > max_bytes {
                    too_large[i] = true;
                } else {
                    needed = needed.saturating_add(size);
                }
            }
        }
        let any_new = needed > 0;
        let mut refuse_from: Option<(usize, FullReason)> = None;
        if any_new {
            let fits = |state: &State| state.bytes + needed + gap_reserve() <= max_bytes;
            let age_cutoff = config.max_age_ms.map(|a| now_ms.saturating_sub(a));
            let too_old = |tx: &Transaction<'_>| -> Result<bool, StoreError> {
                Ok(match age_cutoff {
                    Some(cutoff) => oldest_receive(tx)?.is_some_and(|t| t < cutoff),
                    None => false,
                })
            };
            if !fits(&state) || too_old(&tx)? {
                // Rows every sink has passed do not count: purge them first.
                purge_rows_in_tx(&tx, &mut state)?;
            }
            match config.full_policy {
                FullPolicy::Block => {
                    let reason = if too_old(&tx)? {
                        Some(FullReason::MaxAge)
                    } else if !fits(&state) {
                        Some(FullReason::MaxBytes)
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        let first = match reason {
                            FullReason::MaxAge => 0,
                            _ => first_not_fitting(records, &plan, &too_large, &state, max_bytes),
                        };
                        refuse_from = Some((first, reason));
                    }
                }
                FullPolicy::DropOldest => {
                    if let Some(cutoff) = age_cutoff {
                        let dropped =
                            drop_head(&tx, &mut state, DropUntil::ReceivedAtOrAfter(cutoff))?;
                        write_gap(&tx, &mut state, dropped, GapReason::MaxAge, now_ms)?;
                    }
                    if !fits(&state) {
                        // Room for the batch, for the gap record about to be written, and
                        // the reserve kept for the next one.
                        let free = state.bytes + needed + 2 * gap_reserve() - max_bytes;
                        let dropped = drop_head(&tx, &mut state, DropUntil::Freed(free))?;
                        write_gap(&tx, &mut state, dropped, GapReason::MaxBytes, now_ms)?;
                    }
                    if !fits(&state) {
                        // The batch alone is larger than the bound: the records that still do
                        // not fit after dropping everything older are refused.
                        refuse_from = Some((
                            first_not_fitting(records, &plan, &too_large, &state, max_bytes),
                            FullReason::MaxBytes,
                        ));
                    }
                }
            }
        }

        // Pass 3: write, through statements prepared once per batch.
        let mut insert_q = tx.prepare_cached(INSERT_Q)?;
        let mut insert_dedup = tx.prepare_cached(INSERT_DEDUP)?;
        let mut out: Vec<AppendResult> = Vec::with_capacity(records.len());
        for (i, rec) in records.iter().enumerate() {
            let result = match plan[i] {
                Plan::Duplicate(seq) => {
                    state.duplicates += 1;
                    Ok(Appended::Duplicate(seq))
                }
                Plan::DuplicateOfBatch(j) => match out.get(j) {
                    Some(Ok(first)) => {
                        state.duplicates += 1;
                        Ok(Appended::Duplicate(first.seq()))
                    }
                    // The first copy was refused: refuse this one the same way.
                    Some(Err(full)) => Err(*full),
                    None => {
                        return Err(StoreError::Corrupt(
                            "invariant: batch duplicate refers forward".into(),
                        ))
                    }
                },
                Plan::New if too_large[i] => Err(Full {
                    reason: FullReason::RecordTooLarge,
                    stored_bytes: to_count(state.bytes),
                    max_bytes: config.max_bytes,
                }),
                Plan::New => match refuse_from {
                    Some((first, reason)) if i >= first => Err(Full {
                        reason,
                        stored_bytes: to_count(state.bytes),
                        max_bytes: config.max_bytes,
                    }),
                    _ => {
                        let seq = state.next_seq;
                        let size = i64::try_from(rec.stored_size()).unwrap_or(i64::MAX);
                        RowRef {
                            seq,
                            kind: KIND_READING,
                            source: &rec.source,
                            dedup_key: rec.dedup_key.as_deref(),
                            receive_ms: rec.receive_time_ms,
                            device_ms: rec.device_time_ms,
                            payload: &rec.payload,
                            envelope: &rec.envelope,
                        }
                        .insert_with(&mut insert_q, size)?;
                        if let Some(key) = rec.dedup_key.as_deref() {
                            insert_dedup.execute(params![
                                rec.source,
                                key,
                                seq,
                                rec.receive_time_ms,
                                i64::from(crc32(&rec.payload))
                            ])?;
                        }
                        state.next_seq += 1;
                        state.records += 1;
                        state.bytes += size;
                        Ok(Appended::New(to_seq(seq)))
                    }
                },
            };
            out.push(result);
        }
        drop(insert_q);
        drop(insert_dedup);
        state.save(&tx)?;
        tx.commit()?;
        self.commits += 1;
        Ok(out)
    }

    /// Sets the configured sinks. New names start at cursor 0 (they read every record still
    /// stored); names not in `sinks` are forgotten with their cursors. With no sink registered
    /// nothing is ever purged.
    pub fn register_sinks(&mut self, sinks: &[&str]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let existing: Vec<String> = {
            let mut stmt = tx.prepare("SELECT name FROM sinks")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for name in &existing {
            if !sinks.contains(&name.as_str()) {
                tx.execute("DELETE FROM sinks WHERE name = ?1", [name])?;
                tx.execute("DELETE FROM sink_acks WHERE sink = ?1", [name])?;
            }
        }
        for name in sinks {
            tx.execute(
                "INSERT OR IGNORE INTO sinks (name, cursor) VALUES (?1, 0)",
                [name],
            )?;
        }
        tx.commit()?;
        self.commits += 1;
        Ok(())
    }

    /// The registered sinks, by name.
    pub fn sinks(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM sinks ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The sink's cursor: every seq at or below it is done for that sink.
    pub fn cursor(&self, sink: &str) -> Result<Seq, StoreError> {
        cursor_of(&self.conn, sink).map(to_seq)
    }

    /// Up to `limit` records after the sink's cursor that the sink has not acknowledged, oldest
    /// first. Same as [`read_pending_after`](Self::read_pending_after) with no lower bound.
    pub fn read_pending(&mut self, sink: &str, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.read_pending_after(sink, 0, limit)
    }

    /// Up to `limit` records with seq above both `after` and the sink's cursor that the sink has
    /// not acknowledged, oldest first. `after` lets a sink with batches in flight read the next
    /// batch. A row whose checksum fails is moved to the dead-letter table (stage `store`,
    /// reason `crc_mismatch`, counted in `corrupt_records`, `time_ms` = the row's receive time)
    /// and skipped, so a damaged row can never stall delivery.
    pub fn read_pending_after(
        &mut self,
        sink: &str,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let cursor = cursor_of(&self.conn, sink)?;
        let from = cursor.max(to_sql(after));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut good = Vec::new();
        let mut bad: Vec<(i64, Option<RawRow>)> = Vec::new();
        {
            let sql = format!(
                "SELECT {ROW_COLUMNS} FROM q
                 WHERE seq > ?1
                   AND NOT EXISTS (SELECT 1 FROM sink_acks a WHERE a.sink = ?2 AND a.seq = q.seq)
                 ORDER BY seq LIMIT ?3"
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![from, sink, limit])?;
            while let Some(row) = rows.next()? {
                match RawRow::from_row(row)? {
                    Ok(raw) if raw.is_intact() => match raw.decode() {
                        Some(rec) => good.push(rec),
                        None => {
                            return Err(StoreError::Corrupt(
                                "invariant: an intact row decodes".into(),
                            ))
                        }
                    },
                    Ok(raw) => bad.push((raw.seq, Some(raw))),
                    Err(seq) => bad.push((seq, None)),
                }
            }
        }
        if !bad.is_empty() {
            self.quarantine_rows(bad)?;
        }
        Ok(good)
    }

    /// Moves damaged rows to the dead-letter table in one transaction.
    fn quarantine_rows(&mut self, bad: Vec<(i64, Option<RawRow>)>) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let mut state = State::load(&tx)?;
        for (seq, raw) in bad {
            let (source, payload, envelope, receive_ms) = match raw {
                Some(r) => (r.source, r.payload, Some(r.envelope), r.receive_ms),
                None => (String::new(), Vec::new(), None, 0),
            };
            tx.execute("DELETE FROM q WHERE seq = ?1", [seq])?;
            state.corrupt_records += 1;
            super::dlq::insert_dead_letter(
                &tx,
                &mut state,
                self.config.dlq_max_records,
                &super::dlq::NewDeadLetter {
                    seq: Some(to_seq(seq)),
                    sink: None,
                    source,
                    stage: super::dlq::STAGE_STORE.into(),
                    reason: super::dlq::REASON_CRC_MISMATCH.into(),
                    error: "stored checksum or field types do not match the row".into(),
                    time_ms: receive_ms,
                    payload,
                    envelope,
                },
            )?;
        }
        // The damaged rows' own `size` cannot be trusted: recount the totals (rare path).
        let (records, bytes): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN typeof(size) = 'integer' THEN size END), 0)
             FROM q",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        state.records = records;
        state.bytes = bytes;
        state.save(&tx)?;
        tx.commit()?;
        self.commits += 1;
        Ok(())
    }

    /// Cumulative acknowledgement: every seq up to and including `up_to` is delivered (or
    /// dead-lettered) by `sink`. Acknowledging below the cursor is a no-op; above the high-water
    /// mark is [`StoreError::AckBeyondEnd`]. One transaction.
    pub fn ack(&mut self, sink: &str, up_to: Seq) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let state = State::load(&tx)?;
        let cursor = cursor_of(&tx, sink)?;
        check_ack_bound(sink, up_to, &state)?;
        let new = cursor.max(to_sql(up_to));
        advance_cursor(&tx, sink, new)?;
        tx.commit()?;
        self.commits += 1;
        Ok(())
    }

    /// Out-of-order acknowledgement of individual seqs. The cursor advances over every record
    /// that is acknowledged without a hole (rows that no longer exist are not holes). One
    /// transaction.
    pub fn ack_seqs(&mut self, sink: &str, seqs: &[Seq]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        ack_seqs_in_tx(&tx, sink, seqs)?;
        tx.commit()?;
        self.commits += 1;
        Ok(())
    }

    /// Deletes, in bulk, every row that all registered sinks have passed, forgets dedup keys
    /// older than the dedup window, and runs incremental vacuum once `vacuum_free_pages` pages
    /// are free. The high-water mark is untouched, so seqs are never reused. With no sink
    /// registered no row is deleted. With `drop_oldest` and `max_age_ms`, also drops expired
    /// rows (writing a gap record).
    pub fn purge_delivered(&mut self, now_ms: UnixMillis) -> Result<PurgeReport, StoreError> {
        let tx = self.conn.transaction()?;
        let mut state = State::load(&tx)?;
        let (deleted_records, deleted_bytes) = purge_rows_in_tx(&tx, &mut state)?;
        if self.config.full_policy == FullPolicy::DropOldest {
            if let Some(age) = self.config.max_age_ms {
                let cutoff = now_ms.saturating_sub(age);
                let dropped = drop_head(&tx, &mut state, DropUntil::ReceivedAtOrAfter(cutoff))?;
                write_gap(&tx, &mut state, dropped, GapReason::MaxAge, now_ms)?;
            }
        }
        let expired = tx.execute(
            "DELETE FROM dedup WHERE receive_ms < ?1",
            [now_ms.saturating_sub(self.config.dedup_window_ms)],
        )?;
        state.save(&tx)?;
        tx.commit()?;
        self.commits += 1;
        let vacuumed_pages = self.incremental_vacuum_if_needed()?;
        Ok(PurgeReport {
            deleted_records,
            deleted_bytes,
            expired_dedup_keys: expired as u64,
            vacuumed_pages,
        })
    }

    fn incremental_vacuum_if_needed(&mut self) -> Result<u64, StoreError> {
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        if free < i64::from(self.config.vacuum_free_pages) {
            return Ok(0);
        }
        // incremental_vacuum frees one page per step: step the statement to completion.
        let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        drop(stmt);
        self.commits += 1;
        let after: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok(to_count(free - after))
    }

    /// Counters and per-sink progress. Cheap in the common case: the rows of `q` hold every
    /// seq from the lowest to the highest stored one (rows leave from the head only), so a
    /// sink's backlog without out-of-order acks is a difference of seqs and its oldest entry is
    /// one lookup (minus the sink's few out-of-order acks above its cursor). Only when the range
    /// has holes (rows moved to the dead-letter table after a failed checksum, until they are
    /// purged) does it count the sink's backlog rows.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let state = State::load(&self.conn)?;
        let oldest = oldest_receive(&self.conn)?;
        let (lo, hi): (Option<i64>, Option<i64>) =
            self.conn
                .query_row("SELECT MIN(seq), MAX(seq) FROM q", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        let contiguous = match (lo, hi) {
            (Some(lo), Some(hi)) => hi - lo + 1 == state.records,
            _ => true,
        };
        let mut sinks = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT name, cursor FROM sinks ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (name, cursor) = row?;
                // Out-of-order acks above the cursor are rare (only while batches are in
                // flight).
                let mut stmt = self.conn.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM sink_acks WHERE sink = ?1 AND seq > ?2)",
                )?;
                let has_acks: bool = stmt.query_row(params![name, cursor], |r| r.get(0))?;
                let pending: i64 = match (lo, hi) {
                    (Some(lo), Some(hi)) if contiguous => {
                        let in_range = (hi - cursor.max(lo - 1)).max(0);
                        if has_acks {
                            // Acked rows above the cursor: few, each one rowid lookup.
                            let mut stmt = self.conn.prepare_cached(
                                "SELECT COUNT(*) FROM sink_acks a
                                 WHERE a.sink = ?1 AND a.seq > ?2
                                   AND EXISTS (SELECT 1 FROM q WHERE q.seq = a.seq)",
                            )?;
                            let acked: i64 = stmt.query_row(params![name, cursor], |r| r.get(0))?;
                            (in_range - acked).max(0)
                        } else {
                            in_range
                        }
                    }
                    (None, _) | (_, None) => 0,
                    _ => {
                        let mut stmt = self.conn.prepare_cached(
                            "SELECT COUNT(*) FROM q
                             WHERE seq > ?1
                               AND NOT EXISTS (SELECT 1 FROM sink_acks a
                                               WHERE a.sink = ?2 AND a.seq = q.seq)",
                        )?;
                        stmt.query_row(params![cursor, name], |r| r.get(0))?
                    }
                };
                let oldest_pending: Option<i64> = if pending == 0 {
                    None
                } else {
                    let mut stmt = self.conn.prepare_cached(
                        "SELECT receive_ms FROM q
                         WHERE seq > ?1
                           AND NOT EXISTS (SELECT 1 FROM sink_acks a
                                           WHERE a.sink = ?2 AND a.seq = q.seq)
                         ORDER BY seq LIMIT 1",
                    )?;
                    stmt.query_row(params![cursor, name], |r| r.get(0))
                        .optional()?
                };
                sinks.push(SinkStats {
                    name,
                    cursor: to_seq(cursor),
                    pending_records: to_count(pending),
                    oldest_pending_receive_ms: oldest_pending,
                });
            }
        }
        Ok(StoreStats {
            epoch: state.epoch,
            next_seq: to_seq(state.next_seq),
            records: to_count(state.records),
            bytes: to_count(state.bytes),
            oldest_receive_ms: oldest,
            dropped_records: to_count(state.dropped_records),
            gap_records: to_count(state.gap_records),
            duplicates: to_count(state.duplicates),
            dedup_conflicts: to_count(state.dedup_conflicts),
            corrupt_records: to_count(state.corrupt_records),
            dlq_records: to_count(state.dlq_records),
            dead_lettered: to_count(state.dead_lettered),
            dlq_evicted: to_count(state.dlq_evicted),
            sinks,
        })
    }

    /// Full scan: recounts rows and bytes, re-checks every checksum, and checks the
    /// seq/cursor invariants. Read-only; for tests, crash harnesses and a `verify` command.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let state = State::load(&self.conn)?;
        let mut report = VerifyReport::default();
        let sql = format!("SELECT {ROW_COLUMNS} FROM q ORDER BY seq");
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        let mut max_seq = 0i64;
        while let Some(row) = rows.next()? {
            report.records += 1;
            match RawRow::from_row(row)? {
                Ok(raw) => {
                    let seq = raw.seq;
                    max_seq = max_seq.max(seq);
                    report.bytes += to_count(raw.size);
                    if raw.decode().is_none() {
                        report.bad_rows.push(to_seq(seq));
                    }
                }
                Err(seq) => report.bad_rows.push(to_seq(seq)),
            }
        }
        if report.records != to_count(state.records) {
            report.problems.push(format!(
                "state.records is {} but {} rows exist",
                state.records, report.records
            ));
        }
        if report.bytes != to_count(state.bytes) {
            report.problems.push(format!(
                "state.bytes is {} but rows sum to {}",
                state.bytes, report.bytes
            ));
        }
        if max_seq >= state.next_seq {
            report.problems.push(format!(
                "high-water mark {} is not above the highest seq {max_seq}",
                state.next_seq
            ));
        }
        let mut stmt = self.conn.prepare("SELECT name, cursor FROM sinks")?;
        let sinks = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for s in sinks {
            let (name, cursor) = s?;
            if cursor >= state.next_seq || cursor < 0 {
                report.problems.push(format!(
                    "sink {name:?} cursor {cursor} outside [0, {})",
                    state.next_seq
                ));
            }
        }
        let dlq: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM dlq", [], |r| r.get(0))?;
        if dlq != state.dlq_records {
            report.problems.push(format!(
                "state.dlq_records is {} but {dlq} dead letters exist",
                state.dlq_records
            ));
        }
        Ok(report)
    }
}

fn validate_config(config: &StoreConfig) -> Result<(), StoreError> {
    if config.max_bytes < ROW_OVERHEAD_BYTES * 4 {
        return Err(StoreError::Config(format!(
            "max_bytes {} is too small",
            config.max_bytes
        )));
    }
    if config.max_age_ms.is_some_and(|a| a <= 0) {
        return Err(StoreError::Config("max_age_ms must be positive".into()));
    }
    if config.dedup_window_ms < 0 {
        return Err(StoreError::Config(
            "dedup_window_ms must not be negative".into(),
        ));
    }
    Ok(())
}

/// Index of the first new record of the batch that does not fit after the rows already stored
/// (records before it fit, in order); `records.len()` if all fit.
fn first_not_fitting(
    records: &[NewRecord],
    plan: &[Plan],
    too_large: &[bool],
    state: &State,
    max_bytes: i64,
) -> usize {
    let mut used = state.bytes.saturating_add(gap_reserve());
    for (i, rec) in records.iter().enumerate() {
        if !matches!(plan[i], Plan::New) || too_large[i] {
            continue;
        }
        let size = i64::try_from(rec.stored_size()).unwrap_or(i64::MAX);
        if used.saturating_add(size) > max_bytes {
            return i;
        }
        used += size;
    }
    records.len()
}

/// Room kept free for one gap record, so `drop_oldest` can always write its marker.
fn gap_reserve() -> i64 {
    ROW_OVERHEAD_BYTES as i64 + 256
}

enum Plan {
    New,
    Duplicate(Seq),
    DuplicateOfBatch(usize),
}

fn lookup_dedup(
    tx: &Transaction<'_>,
    source: &str,
    key: &str,
    cutoff: i64,
) -> Result<Option<(i64, u32)>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, payload_crc FROM dedup WHERE source = ?1 AND key = ?2 AND receive_ms >= ?3",
    )?;
    let hit: Option<(i64, i64)> = stmt
        .query_row(params![source, key, cutoff], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(hit.map(|(seq, crc)| (seq, u32::try_from(crc).unwrap_or(0))))
}

pub(crate) fn cursor_of(conn: &Connection, sink: &str) -> Result<i64, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT cursor FROM sinks WHERE name = ?1")?;
    stmt.query_row([sink], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::UnknownSink(sink.to_string()))
}

fn check_ack_bound(sink: &str, seq: Seq, state: &State) -> Result<(), StoreError> {
    if to_sql(seq) >= state.next_seq {
        return Err(StoreError::AckBeyondEnd {
            sink: sink.to_string(),
            seq,
            next_seq: to_seq(state.next_seq),
        });
    }
    Ok(())
}

/// Records out-of-order acks and advances the cursor (inside the caller's transaction).
pub(crate) fn ack_seqs_in_tx(
    tx: &Transaction<'_>,
    sink: &str,
    seqs: &[Seq],
) -> Result<(), StoreError> {
    let state = State::load(tx)?;
    let cursor = cursor_of(tx, sink)?;
    for &s in seqs {
        check_ack_bound(sink, s, &state)?;
    }
    {
        let mut stmt =
            tx.prepare_cached("INSERT OR IGNORE INTO sink_acks (sink, seq) VALUES (?1, ?2)")?;
        for &s in seqs {
            let s = to_sql(s);
            if s > cursor {
                stmt.execute(params![sink, s])?;
            }
        }
    }
    advance_cursor(tx, sink, cursor)
}

/// Moves the cursor to `at_least`, then past every acknowledged row that follows without a
/// hole, and forgets the individual acks at or below it.
fn advance_cursor(tx: &Transaction<'_>, sink: &str, at_least: i64) -> Result<(), StoreError> {
    let first_unacked: Option<i64> = {
        let mut stmt = tx.prepare_cached(
            "SELECT MIN(seq) FROM q
             WHERE seq > ?1
               AND NOT EXISTS (SELECT 1 FROM sink_acks a WHERE a.sink = ?2 AND a.seq = q.seq)",
        )?;
        stmt.query_row(params![at_least, sink], |r| r.get(0))?
    };
    let new_cursor = match first_unacked {
        Some(u) => at_least.max(u - 1),
        None => {
            let mut stmt = tx.prepare_cached("SELECT MAX(seq) FROM sink_acks WHERE sink = ?1")?;
            let max_ack: Option<i64> = stmt.query_row([sink], |r| r.get(0))?;
            at_least.max(max_ack.unwrap_or(at_least))
        }
    };
    let mut stmt = tx.prepare_cached("UPDATE sinks SET cursor = ?1 WHERE name = ?2")?;
    stmt.execute(params![new_cursor, sink])?;
    let mut stmt = tx.prepare_cached("DELETE FROM sink_acks WHERE sink = ?1 AND seq <= ?2")?;
    stmt.execute(params![sink, new_cursor])?;
    Ok(())
}

fn oldest_receive(conn: &Connection) -> Result<Option<i64>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT receive_ms FROM q ORDER BY seq LIMIT 1")?;
    Ok(stmt.query_row([], |r| r.get(0)).optional()?)
}

/// Deletes the rows every sink has passed; returns (rows, bytes). No sinks: nothing.
pub(crate) fn purge_rows_in_tx(
    tx: &Transaction<'_>,
    state: &mut State,
) -> Result<(u64, u64), StoreError> {
    let min_cursor: Option<i64> =
        tx.query_row("SELECT MIN(cursor) FROM sinks", [], |r| r.get(0))?;
    let Some(upto) = min_cursor else {
        return Ok((0, 0));
    };
    let (n, bytes): (i64, i64) = {
        let mut stmt =
            tx.prepare_cached("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM q WHERE seq <= ?1")?;
        stmt.query_row([upto], |r| Ok((r.get(0)?, r.get(1)?)))?
    };
    if n > 0 {
        let mut stmt = tx.prepare_cached("DELETE FROM q WHERE seq <= ?1")?;
        stmt.execute([upto])?;
        state.records -= n;
        state.bytes -= bytes;
    }
    Ok((to_count(n), to_count(bytes)))
}

enum DropUntil {
    /// Drop from the head until this many bytes are freed.
    Freed(i64),
    /// Drop from the head while rows were received before this time.
    ReceivedAtOrAfter(i64),
}

/// What [`drop_head`] removed.
struct Dropped {
    first_seq: i64,
    last_seq: i64,
    readings: i64,
    bytes: i64,
}

/// Deletes rows from the head of the log (lowest seq first) per `until`, in bulk.
fn drop_head(
    tx: &Transaction<'_>,
    state: &mut State,
    until: DropUntil,
) -> Result<Option<Dropped>, StoreError> {
    let mut first = None;
    let mut last = None;
    let mut readings = 0i64;
    let mut rows_n = 0i64;
    let mut bytes = 0i64;
    {
        let mut stmt =
            tx.prepare_cached("SELECT seq, kind, size, receive_ms FROM q ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (seq, kind, size, receive): (i64, i64, i64, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let stop = match until {
                DropUntil::Freed(target) => bytes >= target,
                DropUntil::ReceivedAtOrAfter(cutoff) => receive >= cutoff,
            };
            if stop {
                break;
            }
            first.get_or_insert(seq);
            last = Some(seq);
            rows_n += 1;
            bytes += size.max(0);
            if kind == KIND_READING {
                readings += 1;
            }
        }
    }
    let (Some(first_seq), Some(last_seq)) = (first, last) else {
        return Ok(None);
    };
    tx.execute("DELETE FROM q WHERE seq <= ?1", [last_seq])?;
    state.records -= rows_n;
    state.bytes -= bytes;
    state.dropped_records += readings;
    Ok(Some(Dropped {
        first_seq,
        last_seq,
        readings,
        bytes,
    }))
}

/// Writes a gap record for `dropped` (if anything was dropped), with the next seq.
fn write_gap(
    tx: &Transaction<'_>,
    state: &mut State,
    dropped: Option<Dropped>,
    reason: GapReason,
    now_ms: UnixMillis,
) -> Result<(), StoreError> {
    let Some(d) = dropped else {
        return Ok(());
    };
    let gap = Gap {
        first_seq: to_seq(d.first_seq),
        last_seq: to_seq(d.last_seq),
        dropped_records: to_count(d.readings),
        dropped_bytes: to_count(d.bytes),
        reason,
        time_ms: now_ms,
    };
    let envelope = serde_json::to_string(&gap)
        .map_err(|e| StoreError::Corrupt(format!("invariant: gap record serializes: {e}")))?;
    let seq = state.next_seq;
    let size = ROW_OVERHEAD_BYTES as i64 + envelope.len() as i64;
    RowRef {
        seq,
        kind: KIND_GAP,
        source: "",
        dedup_key: None,
        receive_ms: now_ms,
        device_ms: None,
        payload: &[],
        envelope: &envelope,
    }
    .insert(tx, size)?;
    state.next_seq += 1;
    state.records += 1;
    state.bytes += size;
    state.gap_records += 1;
    Ok(())
}

fn quarantine(path: &Path, now_ms: UnixMillis, reason: String) -> Result<Quarantined, StoreError> {
    let stamp = quarantine_stamp(now_ms);
    let mut target = sidecar(path, &format!(".corrupt-{stamp}"));
    let mut n = 1;
    while target.exists() {
        target = sidecar(path, &format!(".corrupt-{stamp}-{n}"));
        n += 1;
    }
    fs::rename(path, &target).map_err(io_err("quarantining", path))?;
    let wal = sidecar(path, "-wal");
    let wal_path = if wal.exists() {
        let wal_target = sidecar(&target, "-wal");
        fs::rename(&wal, &wal_target).map_err(io_err("quarantining", &wal))?;
        Some(wal_target)
    } else {
        None
    };
    // A stale shared-memory index must not be applied to the fresh database.
    let shm = sidecar(path, "-shm");
    if shm.exists() {
        fs::remove_file(&shm).map_err(io_err("removing", &shm))?;
    }
    let journal = sidecar(path, "-journal");
    if journal.exists() {
        let j_target = sidecar(&target, "-journal");
        fs::rename(&journal, &j_target).map_err(io_err("quarantining", &journal))?;
    }
    sync_parent_dir(path)?;
    Ok(Quarantined {
        path: target,
        wal_path,
        reason,
    })
}
