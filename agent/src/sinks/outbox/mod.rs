//! The outbox sink: FHIR resources as NDJSON files under the state directory.
//!
//! The embedded default when no FHIR server or Event Hub is configured, and a local record of
//! everything the agent would have written. One file per resource type, rotated by size:
//! `Observation-000001.ndjson`, `Patient-000001.ndjson`, `Device-000001.ndjson`, ... Each line is
//! one FHIR resource. When a later batch changes an Observation (a merge into the same
//! hourly SampledData, say), the new version is appended as a new line; readers keep the last
//! line per id.
//!
//! # Idempotence (exactly one line per resource version)
//!
//! `index.sqlite` beside the files remembers, per `(type, id)`, the SHA-256 of the last
//! version written and its JSON (needed to merge the next batch into it), and per file the
//! number of bytes that are committed. `resources` is an ordinary rowid table with a unique
//! index on `(rtype, id)`: the key lookups walk small index cells. (The first layout was a
//! `WITHOUT ROWID` table keyed by `(rtype, id)` with the JSON inline; its cells overflowed, and
//! SQLite reads an overflowing cell whole to compare keys, so every lookup read kilobytes per
//! b-tree level and a backlog drained at ~2,000 readings/s. [`Outbox::open`] migrates that
//! layout in one transaction.) A write:
//! 1. skips resources whose content is unchanged (a replay after a crash writes nothing);
//! 2. appends the new lines and fsyncs the file;
//! 3. commits the index (hashes, JSON, committed length) in one transaction.
//!
//! Only then does the sink acknowledge the records to the log. If the agent dies between 2 and
//! 3, the next open truncates each file to its committed length and the log replays the batch,
//! which writes the same lines again: no line is ever duplicated or lost.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox index: {0}")]
    Index(#[from] rusqlite::Error),
    #[error("resource has no resourceType or id")]
    NotAResource,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Moves an index written with the first layout (`resources ... WITHOUT ROWID`) to the current
/// one, in one transaction. A no-op on a new or already migrated index.
fn migrate_index(index: &Connection) -> Result<(), OutboxError> {
    let sql: Option<String> = index
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'resources'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if !sql.is_some_and(|s| s.to_ascii_uppercase().contains("WITHOUT ROWID")) {
        return Ok(());
    }
    index.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE resources_v2 (
             rtype TEXT NOT NULL, id TEXT NOT NULL, sha256 BLOB NOT NULL, json TEXT NOT NULL,
             UNIQUE (rtype, id));
         INSERT INTO resources_v2 (rtype, id, sha256, json)
             SELECT rtype, id, sha256, json FROM resources;
         DROP TABLE resources;
         ALTER TABLE resources_v2 RENAME TO resources;
         COMMIT;",
    )?;
    Ok(())
}

/// What one write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    pub written: usize,
    pub unchanged: usize,
}

/// A resource already serialized, for [`Outbox::write_serialized`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerializedResource {
    /// `resourceType`.
    pub rtype: String,
    pub id: String,
    /// Compact JSON, one line (no newline).
    pub json: String,
}

impl SerializedResource {
    /// Serializes a resource (it must have a string `resourceType` and `id`).
    pub fn from_value(r: &Value) -> Result<SerializedResource, OutboxError> {
        let (Some(rtype), Some(id)) = (
            r.get("resourceType").and_then(Value::as_str),
            r.get("id").and_then(Value::as_str),
        ) else {
            return Err(OutboxError::NotAResource);
        };
        let json = serde_json::to_string(r).map_err(|_| OutboxError::NotAResource)?;
        Ok(SerializedResource {
            rtype: rtype.to_owned(),
            id: id.to_owned(),
            json,
        })
    }
}

/// The outbox directory and its index.
pub struct Outbox {
    dir: PathBuf,
    max_file_bytes: u64,
    index: Connection,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) an outbox, repairing files left longer than their committed length.
    pub fn open(dir: &Path, max_file_bytes: u64) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let index_path = dir.join("index.sqlite");
        let index = Connection::open(&index_path)?;
        index.pragma_update(None, "journal_mode", "WAL")?;
        index.pragma_update(None, "synchronous", "FULL")?;
        // Lookups touch few pages (the last version of recent Observations); keep the cache small.
        index.pragma_update(None, "cache_size", -512)?;
        migrate_index(&index)?;
        index.execute_batch(
            "CREATE TABLE IF NOT EXISTS resources (
                 rtype TEXT NOT NULL, id TEXT NOT NULL, sha256 BLOB NOT NULL, json TEXT NOT NULL,
                 UNIQUE (rtype, id));
             CREATE TABLE IF NOT EXISTS files (
                 rtype TEXT PRIMARY KEY, seq INTEGER NOT NULL, committed INTEGER NOT NULL);",
        )?;
        let outbox = Outbox {
            dir: dir.to_owned(),
            max_file_bytes,
            index,
        };
        outbox.repair()?;
        Ok(outbox)
    }

    fn file_name(rtype: &str, seq: i64) -> String {
        format!("{rtype}-{seq:06}.ndjson")
    }

    /// Truncates the current file of each type to its committed length, removes files beyond it.
    fn repair(&self) -> Result<(), OutboxError> {
        let mut stmt = self
            .index
            .prepare("SELECT rtype, seq, committed FROM files")?;
        let rows: Vec<(String, i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (rtype, seq, committed) in rows {
            let p = self.dir.join(Self::file_name(&rtype, seq));
            if let Ok(meta) = std::fs::metadata(&p) {
                if meta.len() > committed as u64 {
                    let f = OpenOptions::new().write(true).open(&p).map_err(io(&p))?;
                    f.set_len(committed as u64).map_err(io(&p))?;
                    f.sync_all().map_err(io(&p))?;
                }
            }
            // A rotation that did not commit: the next file exists but is not in the index.
            let next = self.dir.join(Self::file_name(&rtype, seq + 1));
            if next.exists() {
                std::fs::remove_file(&next).map_err(io(&next))?;
            }
        }
        // Types whose first file never committed.
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rtype) = name.strip_suffix("-000001.ndjson") {
                let known: Option<i64> = self
                    .index
                    .query_row("SELECT seq FROM files WHERE rtype = ?1", [rtype], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if known.is_none() {
                    std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
                }
            }
        }
        Ok(())
    }

    /// The last version written of a resource.
    pub fn get(&self, rtype: &str, id: &str) -> Result<Option<Value>, OutboxError> {
        let json: Option<String> = self
            .index
            .prepare_cached("SELECT json FROM resources WHERE rtype = ?1 AND id = ?2")?
            .query_row([rtype, id], |r| r.get(0))
            .optional()?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Writes resources (skipping unchanged ones) durably. All or nothing per call.
    pub fn write(&mut self, resources: &[Value]) -> Result<WriteReport, OutboxError> {
        let serialized = resources
            .iter()
            .map(SerializedResource::from_value)
            .collect::<Result<Vec<_>, _>>()?;
        self.write_serialized(serialized)
    }

    /// [`Outbox::write`] for resources already serialized (compact JSON, as
    /// `serde_json::to_string` writes them): the same lines, hashes and index rows.
    pub fn write_serialized(
        &mut self,
        resources: Vec<SerializedResource>,
    ) -> Result<WriteReport, OutboxError> {
        let mut report = WriteReport::default();
        // (rtype, id, hash, json) of what must be written, in order.
        let mut pending: Vec<(String, String, Vec<u8>, String)> = Vec::new();
        // Position in `pending` of the last version of each (type, id) in this batch.
        let mut last: std::collections::HashMap<(String, String), usize> =
            std::collections::HashMap::new();
        for SerializedResource { rtype, id, json } in resources {
            // A line break would split the resource over two lines (serde_json never writes one).
            if json.contains('\n') {
                return Err(OutboxError::NotAResource);
            }
            let (rtype, id) = (rtype.as_str(), id.as_str());
            let hash = Sha256::digest(json.as_bytes()).to_vec();
            let in_batch = last.get(&(rtype.to_owned(), id.to_owned())).copied();
            let same = match in_batch {
                Some(k) => pending[k].2 == hash,
                None => {
                    let old: Option<Vec<u8>> = self
                        .index
                        .prepare_cached(
                            "SELECT sha256 FROM resources WHERE rtype = ?1 AND id = ?2",
                        )?
                        .query_row([rtype, id], |r| r.get(0))
                        .optional()?;
                    old.as_deref() == Some(hash.as_slice())
                }
            };
            if same {
                report.unchanged += 1;
            } else {
                last.insert((rtype.to_owned(), id.to_owned()), pending.len());
                pending.push((rtype.to_owned(), id.to_owned(), hash, json));
            }
        }
        if pending.is_empty() {
            return Ok(report);
        }
        // Group lines by type, append, fsync.
        let mut types: Vec<&str> = pending.iter().map(|p| p.0.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        let mut file_state: Vec<(String, i64, u64)> = Vec::new();
        for rtype in types {
            let (mut seq, committed): (i64, i64) = self
                .index
                .query_row(
                    "SELECT seq, committed FROM files WHERE rtype = ?1",
                    [rtype],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .unwrap_or((1, 0));
            let mut len = committed as u64;
            if len >= self.max_file_bytes {
                seq += 1;
                len = 0;
            }
            let path = self.dir.join(Self::file_name(rtype, seq));
            let mut f: File = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            let mut buf = Vec::new();
            for (_, _, _, json) in pending.iter().filter(|p| p.0 == rtype) {
                buf.extend_from_slice(json.as_bytes());
                buf.push(b'\n');
            }
            f.write_all(&buf).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
            if len == 0 {
                // A new file: make its directory entry durable too.
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(&self.dir))?;
            }
            file_state.push((rtype.to_owned(), seq, len + buf.len() as u64));
        }
        let tx = self.index.transaction()?;
        for (rtype, id, hash, json) in &pending {
            tx.prepare_cached(
                "INSERT INTO resources (rtype, id, sha256, json) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (rtype, id) DO UPDATE SET sha256 = excluded.sha256, json = excluded.json",
            )?
            .execute(params![rtype, id, hash, json])?;
        }
        for (rtype, seq, committed) in &file_state {
            tx.execute(
                "INSERT INTO files (rtype, seq, committed) VALUES (?1, ?2, ?3)
                 ON CONFLICT (rtype) DO UPDATE SET seq = excluded.seq, committed = excluded.committed",
                params![rtype, seq, *committed as i64],
            )?;
        }
        tx.commit()?;
        report.written = pending.len();
        Ok(report)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs(id: &str, v: i64) -> Value {
        json!({"resourceType": "Observation", "id": id, "valueQuantity": {"value": v}})
    }

    fn lines(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn replays_write_nothing_and_changes_append() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 1 << 20).unwrap();
        assert_eq!(
            o.write(&[obs("a", 1), obs("b", 2)]).unwrap(),
            WriteReport {
                written: 2,
                unchanged: 0
            }
        );
        assert_eq!(
            o.write(&[obs("a", 1), obs("b", 2)]).unwrap(),
            WriteReport {
                written: 0,
                unchanged: 2
            }
        );
        assert_eq!(o.write(&[obs("a", 3)]).unwrap().written, 1);
        assert_eq!(lines(d.path()).len(), 3);
        assert_eq!(
            o.get("Observation", "a").unwrap().unwrap()["valueQuantity"]["value"],
            3
        );
        drop(o);
        let mut o = Outbox::open(d.path(), 1 << 20).unwrap();
        assert_eq!(o.write(&[obs("a", 3)]).unwrap().unchanged, 1);
    }

    #[test]
    fn uncommitted_tail_is_truncated_on_open() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 1 << 20).unwrap();
        o.write(&[obs("a", 1)]).unwrap();
        drop(o);
        // A crash after the append but before the index commit leaves an extra line.
        let p = d.path().join("Observation-000001.ndjson");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"resourceType\":\"Observation\",\"id\":\"b\"}\n")
            .unwrap();
        let mut o = Outbox::open(d.path(), 1 << 20).unwrap();
        assert_eq!(lines(d.path()).len(), 1);
        assert_eq!(o.write(&[obs("b", 2)]).unwrap().written, 1);
        assert_eq!(lines(d.path()).len(), 2);
    }

    #[test]
    fn files_rotate_by_size() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 100).unwrap();
        for i in 0..10 {
            o.write(&[obs(&format!("id-{i}"), i)]).unwrap();
        }
        let files = std::fs::read_dir(d.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("Observation-")
            })
            .count();
        assert!(files >= 3, "{files} files");
        assert_eq!(lines(d.path()).len(), 10);
    }

    #[test]
    fn an_index_in_the_first_layout_is_migrated_and_keeps_idempotence() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut o = Outbox::open(d.path(), 1 << 20).unwrap();
            o.write(&[obs("a", 1), obs("b", 2)]).unwrap();
        }
        // Rewrite the index as the first release laid it out.
        {
            let c = Connection::open(d.path().join("index.sqlite")).unwrap();
            c.execute_batch(
                "CREATE TABLE old (
                     rtype TEXT NOT NULL, id TEXT NOT NULL, sha256 BLOB NOT NULL,
                     json TEXT NOT NULL, PRIMARY KEY (rtype, id)) WITHOUT ROWID;
                 INSERT INTO old SELECT rtype, id, sha256, json FROM resources;
                 DROP TABLE resources;
                 ALTER TABLE old RENAME TO resources;",
            )
            .unwrap();
        }
        let mut o = Outbox::open(d.path(), 1 << 20).unwrap();
        let sql: String = o
            .index
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'resources'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.to_ascii_uppercase().contains("WITHOUT ROWID"), "{sql}");
        assert_eq!(o.get("Observation", "a").unwrap(), Some(obs("a", 1)));
        // The replay writes nothing; a change appends one line.
        assert_eq!(
            o.write(&[obs("a", 1), obs("b", 3)]).unwrap(),
            WriteReport {
                written: 1,
                unchanged: 1
            }
        );
        assert_eq!(lines(d.path()).len(), 3);
    }

    #[test]
    fn one_batch_with_versions_of_the_same_resource_writes_each_change_once() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 1 << 20).unwrap();
        let report = o
            .write(&[
                obs("a", 1),
                obs("a", 1),
                obs("b", 1),
                obs("a", 2),
                obs("a", 2),
            ])
            .unwrap();
        assert_eq!(
            report,
            WriteReport {
                written: 3,
                unchanged: 2
            }
        );
        assert_eq!(lines(d.path()).len(), 3);
        assert_eq!(o.get("Observation", "a").unwrap(), Some(obs("a", 2)));
    }
}
