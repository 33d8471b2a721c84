//! The dead-letter table: readings that could not be processed or delivered, kept with the raw
//! payload, the stage and a reason code so an operator can list, show, replay or purge them.
//!
//! Invariants: every insert and delete updates `state.dlq_records` and `state.dead_lettered` in
//! the same transaction; ids are never reused (`AUTOINCREMENT`); when more than
//! `dlq_max_records` are stored, the oldest are evicted and counted in `state.dlq_evicted`
//! (never silently). Dead-lettering a record of the log for a sink also acknowledges it for that
//! sink in the same transaction, so the record leaves the log once every sink is done with it.

use rusqlite::{params, OptionalExtension, Transaction};

use super::store::{
    ack_seqs_in_tx, cursor_of, to_seq, to_sql, RawRow, Seq, State, Store, StoreError, UnixMillis,
    ROW_COLUMNS,
};
use super::RecordBody;

/// Stage name for rows the store itself found damaged.
pub const STAGE_STORE: &str = "store";
/// Reason code for a row whose checksum or field types did not match.
pub const REASON_CRC_MISMATCH: &str = "crc_mismatch";

/// A dead letter to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// The log seq, if the reading had been stored.
    pub seq: Option<Seq>,
    /// The sink that gave up on it, if any.
    pub sink: Option<String>,
    /// The source that received it.
    pub source: String,
    /// Where it failed, e.g. `receive`, `decode`, `map`, `send`, `store`.
    pub stage: String,
    /// A short, stable, machine-readable reason code, e.g. `http_400`, `no_template`.
    pub reason: String,
    /// The error text.
    pub error: String,
    /// When it was dead-lettered.
    pub time_ms: UnixMillis,
    /// The raw payload bytes.
    pub payload: Vec<u8>,
    /// The event envelope JSON, if one had been built.
    pub envelope: Option<String>,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id (never reused).
    pub id: i64,
    /// The rest, as written.
    pub entry: NewDeadLetter,
}

/// A dead letter without its payload, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSummary {
    /// Its id.
    pub id: i64,
    /// Log seq, if any.
    pub seq: Option<Seq>,
    /// Sink, if any.
    pub sink: Option<String>,
    /// Source.
    pub source: String,
    /// Stage.
    pub stage: String,
    /// Reason code.
    pub reason: String,
    /// Error text.
    pub error: String,
    /// When.
    pub time_ms: UnixMillis,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// Which dead letters [`Store::dlq_purge`] deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqPurge {
    /// All of them.
    All,
    /// Those dead-lettered before this time.
    OlderThan(UnixMillis),
}

/// Inserts a dead letter and evicts beyond `max_records` (inside the caller's transaction).
pub(crate) fn insert_dead_letter(
    tx: &Transaction<'_>,
    state: &mut State,
    max_records: u64,
    entry: &NewDeadLetter,
) -> Result<i64, StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO dlq (seq, sink, source, stage, reason, error, time_ms, payload, envelope)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    stmt.execute(params![
        entry.seq.map(to_sql),
        entry.sink,
        entry.source,
        entry.stage,
        entry.reason,
        entry.error,
        entry.time_ms,
        entry.payload,
        entry.envelope
    ])?;
    let id = tx.last_insert_rowid();
    state.dlq_records += 1;
    state.dead_lettered += 1;
    let max = i64::try_from(max_records).unwrap_or(i64::MAX);
    if state.dlq_records > max {
        let excess = state.dlq_records - max;
        let n = tx.execute(
            "DELETE FROM dlq WHERE id IN (SELECT id FROM dlq ORDER BY id LIMIT ?1)",
            [excess],
        )?;
        let n = i64::try_from(n).unwrap_or(0);
        state.dlq_records -= n;
        state.dlq_evicted += n;
    }
    Ok(id)
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get(0)?,
        entry: NewDeadLetter {
            seq: r.get::<_, Option<i64>>(1)?.map(to_seq),
            sink: r.get(2)?,
            source: r.get(3)?,
            stage: r.get(4)?,
            reason: r.get(5)?,
            error: r.get(6)?,
            time_ms: r.get(7)?,
            payload: r.get(8)?,
            envelope: r.get(9)?,
        },
    })
}

const DLQ_COLUMNS: &str = "id, seq, sink, source, stage, reason, error, time_ms, payload, envelope";

impl Store {
    /// Writes a dead letter for a reading that never reached the log or is not tied to a seq
    /// (for example a payload that did not decode). One transaction. Returns its id.
    pub fn dead_letter(&mut self, entry: NewDeadLetter) -> Result<i64, StoreError> {
        let max = self.config.dlq_max_records;
        let tx = self.conn.transaction()?;
        let mut state = State::load(&tx)?;
        let id = insert_dead_letter(&tx, &mut state, max, &entry)?;
        state.save(&tx)?;
        tx.commit()?;
        self.note_commit();
        Ok(id)
    }

    /// A sink gives up on record `seq`: copies it (payload, envelope, source) to the dead-letter
    /// table and acknowledges it for that sink, in one transaction. Other sinks still deliver it.
    /// Returns the dead letter's id.
    pub fn dead_letter_record(
        &mut self,
        sink: &str,
        seq: Seq,
        stage: &str,
        reason: &str,
        error: &str,
        now_ms: UnixMillis,
    ) -> Result<i64, StoreError> {
        let max = self.config.dlq_max_records;
        let tx = self.conn.transaction()?;
        cursor_of(&tx, sink)?;
        let raw: Option<RawRow> = {
            let sql = format!("SELECT {ROW_COLUMNS} FROM q WHERE seq = ?1");
            let mut stmt = tx.prepare_cached(&sql)?;
            stmt.query_row([to_sql(seq)], RawRow::from_row)
                .optional()?
                .and_then(Result::ok)
        };
        let Some(raw) = raw else {
            return Err(StoreError::NoSuchRecord(seq));
        };
        let (source, payload, envelope) = match raw.decode() {
            Some(rec) => match rec.body {
                RecordBody::Reading(r) => (r.source, r.payload, Some(r.envelope)),
                RecordBody::Gap(g) => (String::new(), Vec::new(), serde_json::to_string(&g).ok()),
            },
            None => (String::new(), Vec::new(), None),
        };
        let mut state = State::load(&tx)?;
        let id = insert_dead_letter(
            &tx,
            &mut state,
            max,
            &NewDeadLetter {
                seq: Some(seq),
                sink: Some(sink.to_string()),
                source,
                stage: stage.to_string(),
                reason: reason.to_string(),
                error: error.to_string(),
                time_ms: now_ms,
                payload,
                envelope,
            },
        )?;
        state.save(&tx)?;
        ack_seqs_in_tx(&tx, sink, &[seq])?;
        tx.commit()?;
        self.note_commit();
        Ok(id)
    }

    /// Dead letters with id above `after_id`, oldest first, without payloads.
    pub fn dlq_list(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetterSummary>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, seq, sink, source, stage, reason, error, time_ms, length(payload)
             FROM dlq WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![after_id, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(DeadLetterSummary {
                    id: r.get(0)?,
                    seq: r.get::<_, Option<i64>>(1)?.map(to_seq),
                    sink: r.get(2)?,
                    source: r.get(3)?,
                    stage: r.get(4)?,
                    reason: r.get(5)?,
                    error: r.get(6)?,
                    time_ms: r.get(7)?,
                    payload_len: u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One dead letter with its payload.
    pub fn dlq_show(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let sql = format!("SELECT {DLQ_COLUMNS} FROM dlq WHERE id = ?1");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        Ok(stmt.query_row([id], entry_from_row).optional()?)
    }

    /// Removes a dead letter and returns it, for the caller to feed back into the pipeline.
    /// One transaction; `None` if there is no such id.
    pub fn dlq_replay(&mut self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let tx = self.conn.transaction()?;
        let found = {
            let sql = format!("SELECT {DLQ_COLUMNS} FROM dlq WHERE id = ?1");
            let mut stmt = tx.prepare_cached(&sql)?;
            stmt.query_row([id], entry_from_row).optional()?
        };
        if found.is_some() {
            let mut state = State::load(&tx)?;
            tx.execute("DELETE FROM dlq WHERE id = ?1", [id])?;
            state.dlq_records -= 1;
            state.save(&tx)?;
            tx.commit()?;
            self.note_commit();
        }
        Ok(found)
    }

    /// Deletes dead letters; returns how many.
    pub fn dlq_purge(&mut self, which: DlqPurge) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let mut state = State::load(&tx)?;
        let n = match which {
            DlqPurge::All => tx.execute("DELETE FROM dlq", [])?,
            DlqPurge::OlderThan(t) => tx.execute("DELETE FROM dlq WHERE time_ms < ?1", [t])?,
        };
        state.dlq_records -= i64::try_from(n).unwrap_or(0);
        state.save(&tx)?;
        tx.commit()?;
        self.note_commit();
        Ok(n as u64)
    }

    /// Dead letters now stored.
    pub fn dlq_count(&self) -> Result<u64, StoreError> {
        Ok(to_seq(State::load(&self.conn)?.dlq_records))
    }
}
