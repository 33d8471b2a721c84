//! The agent's durable store-and-forward log.
//!
//! Every reading a source hands over is appended here and committed durably (fsync) **before**
//! the source acknowledges the device; sinks read from it and acknowledge what they delivered;
//! a record leaves the log only when every registered sink has delivered or dead-lettered it.
//! Why SQLite, and the measurements behind it: `docs/decisions/0001-buffer-store-sqlite.md`.
//!
//! # Layers
//!
//! - [`Store`] (`store.rs`, `dlq.rs`): synchronous, one SQLite connection, one writer. Each
//!   mutating call is one transaction and returns after its commit. It never reads the clock:
//!   "now" is a parameter (`now_ms`).
//! - [`GroupCommitter`] (`group_commit.rs`): the async front for sources. A std thread batches
//!   appends (every `max_delay`, default 100 ms, or `max_batch_records`, default 256) into one
//!   transaction; each `append` future resolves after its batch committed.
//!
//! # File
//!
//! One SQLite database file (`<path>`) plus its write-ahead log (`<path>-wal`). Settings on
//! every open: `locking_mode=EXCLUSIVE` (set before WAL, so there is no `-shm` file and a second
//! process gets `SQLITE_BUSY`), `journal_mode=WAL`, `synchronous=FULL` (the WAL is fsynced at
//! every commit; `NORMAL` may lose the last commits at a power cut), `auto_vacuum=INCREMENTAL`
//! (set before the first table is created), `journal_size_limit` (8 MiB by default). A new store
//! is created with 8 KiB pages ([`NEW_STORE_PAGE_SIZE`]); an existing store keeps the page size
//! it was created with (4 KiB for stores of earlier builds), and both are read the same way.
//!
//! # Tables (format version 1)
//!
//! | table | key | columns | role |
//! |---|---|---|---|
//! | `state` | `id = 1` (one row) | `format_version`, `epoch`, `created_ms`, `next_seq`, `records`, `bytes`, counters (`dropped_records`, `gap_records`, `duplicates`, `dedup_conflicts`, `corrupt_records`, `dead_lettered`, `dlq_records`, `dlq_evicted`) | high-water mark, running totals, lifetime counters |
//! | `q` | `seq INTEGER PRIMARY KEY` | `kind` (0 reading, 1 gap), `source`, `dedup_key`, `receive_ms`, `device_ms`, `payload BLOB`, `envelope TEXT`, `size`, `crc`; no secondary index | the log |
//! | `sinks` | `name` | `cursor` | per-sink progress |
//! | `sink_acks` | `(sink, seq)` | — | out-of-order acks above a cursor |
//! | `dedup` | `(source, key)` | `seq`, `receive_ms`, `payload_crc`; index on `receive_ms` | recent source-side keys |
//! | `dlq` | `id INTEGER PRIMARY KEY AUTOINCREMENT` | `seq`, `sink`, `source`, `stage`, `reason`, `error`, `time_ms`, `payload BLOB`, `envelope` | dead letters |
//!
//! `q` has no secondary index, so an append is one b-tree insert per record. Earlier builds kept
//! a covering index `q_seq_receive` on `(seq, receive_ms)` for the backlog count; it cost about
//! a quarter of an append's CPU and is dropped at open (`DROP INDEX IF EXISTS`). Those builds
//! re-create it at open (`CREATE INDEX IF NOT EXISTS`), so the format version is still 1 and a
//! store moves between the builds in both directions. The backlog is counted without it (see
//! invariant 8).
//!
//! A gap record (`kind = 1`) has an empty source and payload; its `envelope` column holds the
//! [`Gap`] as JSON (`first_seq`, `last_seq`, `dropped_records`, `dropped_bytes`, `reason`,
//! `time_ms`). `size` is the record's logical size ([`NewRecord::stored_size`]): payload +
//! envelope + source + dedup key + [`ROW_OVERHEAD_BYTES`]. `crc` is CRC-32 (IEEE) over seq,
//! kind and every field, each length-prefixed; SQLite itself has no page checksums.
//!
//! # Invariants
//!
//! 1. **Seqs are never reused.** `state.next_seq` is the high-water mark: every seq ever
//!    assigned is below it. It is advanced in the same transaction as the insert and is never
//!    derived from `MAX(seq)`, so after a full drain (empty `q`) numbering continues.
//!    `epoch` is random per database, so `(epoch, seq)` stays unique across a quarantine.
//! 2. **Acknowledge after commit.** `append_batch` returns after its single commit; the group
//!    committer resolves each `append` only then. A refused append (`Full`) stores nothing.
//! 3. **Totals match rows.** `state.records`/`state.bytes` change in the same transaction as
//!    every insert and delete into `q`; `state.dlq_records` likewise for `dlq`.
//!    [`Store::verify`] recounts.
//! 4. **Cursors.** For each sink, every seq `<= cursor` is delivered or dead-lettered by it;
//!    `sink_acks` holds acked seqs above the cursor. Acks advance the cursor across every row
//!    that is acked with no unacked row before it. `0 <= cursor < next_seq`.
//! 5. **Leaving the log.** A row is deleted only when it is at or below every sink's cursor
//!    (`purge_delivered`, in bulk, lazily), or by `drop_oldest` (which writes a gap record in
//!    the same transaction and counts the readings), or when its checksum fails on read (moved
//!    to `dlq`, counted). Nothing leaves silently.
//! 6. **Bounds.** `state.bytes` stays within `max_bytes` (minus room kept for one gap record);
//!    with `max_age_ms`, the oldest row is not older than it — `block` refuses appends instead
//!    (the caller's backpressure signal), `drop_oldest` drops from the head.
//! 7. **Dedup.** A reading whose `(source, dedup_key)` was stored within `dedup_window_ms` with
//!    the same payload CRC gets the existing seq back ([`Appended::Duplicate`]); a different
//!    payload under the same key is stored as new and counted (`dedup_conflicts`), because a
//!    false duplicate would lose a reading.
//! 8. **Rows leave from the head.** Apart from damaged rows moved to `dlq` (invariant 5), rows
//!    are deleted only as a prefix of `q` (`seq <= x`), and seqs are assigned consecutively.
//!    So without such holes `q` holds every seq from `MIN(seq)` to `MAX(seq)`
//!    (`MAX - MIN + 1 = state.records`), and [`Store::stats`] counts a sink's backlog as a
//!    difference of seqs minus the sink's out-of-order acks on stored rows; with holes it counts
//!    the rows.
//!
//! # Recovery
//!
//! - **Crash or power cut:** SQLite replays the WAL on open: committed transactions are present,
//!   uncommitted ones are not. Cursors and the high-water mark are in the same file, so delivery
//!   resumes from the cursors (at-least-once: a batch delivered but not yet acknowledged is sent
//!   again; downstream dedups on `(epoch, seq)`).
//! - **Unreadable store:** if open finds `SQLITE_CORRUPT`/`SQLITE_NOTADB`, a missing table or
//!   state row, an unknown `format_version`, a failed `PRAGMA quick_check` or a broken cheap
//!   invariant (a seq or cursor at/above `next_seq`), the file is renamed to
//!   `<path>.corrupt-<UTC time>` (its WAL to `…-wal`; a stale `-shm` is removed), the directory
//!   is fsynced, a fresh store with a new epoch is created, and [`Opened::quarantined`] says so.
//!   Errors that are not corruption (permissions, a missing directory, disk full, the store
//!   locked by another process) are returned and nothing is moved. The agent never needs a human
//!   to delete files, and never crash-loops on a bad store.
//! - **An empty (0-byte) file** holds no data and is initialised as a new store in place.
//! - **A damaged row** found while reading is moved to the dead-letter table (stage `store`,
//!   reason `crc_mismatch`) so delivery is never stalled by it.
//!
//! # Sinks
//!
//! [`Store::register_sinks`] sets the configured sinks. Every record goes to every registered
//! sink; a sink that is not routed a record acknowledges it without sending. A new sink starts
//! at cursor 0 (it sees every record still stored); a sink removed from the list loses its
//! cursor. With no sink registered nothing is purged (and the bounds eventually apply).

mod crc;
mod dlq;
mod group_commit;
mod store;

#[cfg(test)]
mod tests;

pub use dlq::{
    DeadLetter, DeadLetterSummary, DlqPurge, NewDeadLetter, REASON_CRC_MISMATCH, STAGE_STORE,
};
pub use group_commit::{CommitterStats, GroupCommitConfig, GroupCommitter, SharedStore};
pub use store::{
    AppendResult, Appended, Full, FullPolicy, FullReason, Gap, GapReason, NewRecord, Opened,
    PurgeReport, Quarantined, Record, RecordBody, Seq, SinkStats, Store, StoreConfig, StoreError,
    StoreStats, UnixMillis, VerifyReport, FORMAT_VERSION, NEW_STORE_PAGE_SIZE, ROW_OVERHEAD_BYTES,
};

/// Builders for source-side dedup keys. Each kind has its own prefix so keys of different kinds
/// can never collide; keys are scoped per source name by the store.
pub mod dedup_key {
    /// HL7 v2: the message control id (MSH-10).
    pub fn hl7(message_control_id: &str) -> String {
        format!("hl7:{message_control_id}")
    }

    /// MQTT: the client id and the packet's message id. Packet ids are recycled once a
    /// publish is acknowledged, so a later reading can carry the same id; the store only calls
    /// it a duplicate when the payload is also identical, and the dedup window should be short
    /// for such sources.
    pub fn mqtt(client_id: &str, message_id: u16) -> String {
        format!("mqtt:{client_id}:{message_id}")
    }

    /// A device's serial number and its own timestamp of the reading.
    pub fn device(serial: &str, device_time: &str) -> String {
        format!("dev:{serial}:{device_time}")
    }
}
