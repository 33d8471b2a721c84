//! Crash harness shared by the SIGKILL test (`sigkill.rs`) and the `buffer_crash` example that
//! `tests/powercut.sh` drives. Uses only the public API of `crate::buffer` (the example maps
//! `crate::buffer` to `iomt_agent::buffer`).
//!
//! Protocol (after buffer-store.md §2.3): the writer appends `@ <tag> <seq>` lines to a log file
//! with one `write` each: `a <last>` before an append, `A <last>` only after the durable commit
//! returned; `I <upto>` before an ack, `D <upto>` after it committed. After a kill or a power
//! cut, [`check`] opens the store and verifies:
//! - it opens, with no quarantine, and a full [`Store::verify`] scan finds no problem;
//! - every acknowledged append (up to the highest `A`) is still present, or acknowledged;
//! - rows after the cursor are exactly `cursor+1 .. next_seq-1` and every payload is
//!   byte-identical to what was written for that seq;
//! - no acknowledged ack was lost (cursor >= last `D`) and the cursor is one that was committed
//!   (the last `D`, the in-flight `I`, or the previous run's cursor): no half-done ack;
//! - the high-water mark never moved backwards and never got ahead of what was attempted.

use std::io::Write as _;
use std::path::Path;

use crate::buffer::{Appended, NewRecord, RecordBody, Store, StoreConfig};

/// The one sink of the harness.
pub const SINK: &str = "uplink";
/// Fixed time base (the harness never reads the clock for the store).
pub const T0: i64 = 1_700_000_000_000;

/// Small deterministic PRNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The ~300-byte payload written for `seq`: a measurement-like JSON with a hex signature.
pub fn payload_for(seq: u64) -> Vec<u8> {
    let mut r = Rng::new(seq);
    let mut sig = String::new();
    for _ in 0..8 {
        sig.push_str(&format!("{:016x}", r.next_u64()));
    }
    format!(
        "{{\"seq\":{seq},\"device\":\"MON-{dev}\",\"obs\":[{{\"code\":\"8867-4\",\"v\":{hr}}},\
         {{\"code\":\"59408-5\",\"v\":{spo2}}},{{\"code\":\"9279-1\",\"v\":{rr}}}],\"sig\":\"{sig}\"}}",
        dev = seq % 17,
        hr = 60 + seq % 40,
        spo2 = 90 + seq % 10,
        rr = 12 + seq % 8,
    )
    .into_bytes()
}

fn record_for(seq: u64) -> NewRecord {
    NewRecord {
        source: "crash".into(),
        dedup_key: None,
        receive_time_ms: T0 + i64::try_from(seq).unwrap_or(0),
        device_time_ms: None,
        payload: payload_for(seq),
        envelope: format!("{{\"Body\":{{\"seq\":{seq}}}}}"),
    }
}

/// The store configuration the harness uses.
pub fn config() -> StoreConfig {
    StoreConfig {
        max_age_ms: None,
        vacuum_free_pages: 256,
        ..StoreConfig::default()
    }
}

fn line(log: &mut std::fs::File, tag: char, seq: u64) -> Result<(), String> {
    // One write per line, so a kill never leaves half a line that looks complete.
    log.write_all(format!("@ {tag} {seq}\n").as_bytes())
        .map_err(|e| format!("writing the protocol log: {e}"))
}

/// The writer: runs until killed (or until an error, returned as text).
pub fn writer(db: &Path, log_path: &Path, seed: u64) -> Result<(), String> {
    writer_with(db, log_path, seed, false)
}

/// The writer; with `lie` it logs `A` (committed) *before* the commit and waits 30 ms, as a
/// source that acknowledged its device too early would. That is the negative control: the check must then
/// catch lost acknowledged appends when a cut or kill lands between the two.
pub fn writer_with(db: &Path, log_path: &Path, seed: u64, lie: bool) -> Result<(), String> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let opened = Store::open(db, &config(), T0).map_err(|e| format!("open: {e}"))?;
    if let Some(q) = opened.quarantined {
        return Err(format!("writer found the store quarantined: {q:?}"));
    }
    let mut store = opened.store;
    store
        .register_sinks(&[SINK])
        .map_err(|e| format!("register: {e}"))?;
    let mut next = store.stats().map_err(|e| format!("stats: {e}"))?.next_seq;
    let mut rng = Rng::new(seed);
    loop {
        if rng.below(10) < 6 {
            let n = [1u64, 16, 256][rng.below(3) as usize];
            let batch: Vec<NewRecord> = (next..next + n).map(record_for).collect();
            let last = next + n - 1;
            line(&mut log, 'a', last)?;
            if lie {
                line(&mut log, 'A', last)?;
                // Widen the window: a SIGSTOP only lands in user space, never inside fsync.
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            let out = store
                .append_batch(&batch, T0)
                .map_err(|e| format!("append: {e}"))?;
            for (i, r) in out.iter().enumerate() {
                if *r != Ok(Appended::New(next + i as u64)) {
                    return Err(format!("append of {} returned {r:?}", next + i as u64));
                }
            }
            line(&mut log, 'A', last)?;
            next = last + 1;
        } else {
            let backlog = next.saturating_sub(store.cursor(SINK).map_err(|e| e.to_string())?);
            let limit = if backlog > 5000 { 2000 } else { 300 };
            let recs = store
                .read_pending(SINK, limit)
                .map_err(|e| format!("read: {e}"))?;
            for r in &recs {
                match &r.body {
                    RecordBody::Reading(body) if body.payload == payload_for(r.seq) => {}
                    other => return Err(format!("seq {} has wrong content {other:?}", r.seq)),
                }
            }
            let Some(upto) = recs.last().map(|r| r.seq) else {
                continue;
            };
            line(&mut log, 'I', upto)?;
            store.ack(SINK, upto).map_err(|e| format!("ack: {e}"))?;
            line(&mut log, 'D', upto)?;
            if rng.below(4) == 0 {
                store
                    .purge_delivered(T0)
                    .map_err(|e| format!("purge: {e}"))?;
            }
        }
    }
}

/// What the protocol log of one run says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Highest `a` (append attempted).
    pub attempted: Option<u64>,
    /// Highest `A` (append committed).
    pub committed: Option<u64>,
    /// Last `I` (ack attempted).
    pub ack_attempted: Option<u64>,
    /// Last `D` (ack committed).
    pub ack_committed: Option<u64>,
}

/// Parses a protocol log; lines without their newline (cut by the kill) are ignored.
pub fn parse_log(text: &str) -> Progress {
    let mut p = Progress::default();
    for l in text.split_inclusive('\n') {
        let Some(l) = l.strip_suffix('\n') else {
            continue;
        };
        let mut parts = l.split(' ');
        let (Some("@"), Some(tag), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match tag {
            "a" => p.attempted = Some(p.attempted.map_or(n, |x| x.max(n))),
            "A" => p.committed = Some(p.committed.map_or(n, |x| x.max(n))),
            "I" => p.ack_attempted = Some(n),
            "D" => p.ack_committed = Some(n),
            _ => {}
        }
    }
    p
}

/// State carried from one check to the next (the store persists across runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// High-water mark seen by the previous check.
    pub next_seq: u64,
    /// Cursor seen by the previous check.
    pub cursor: u64,
}

impl Carried {
    /// `"<next_seq> <cursor>"`.
    pub fn to_text(self) -> String {
        format!("{} {}\n", self.next_seq, self.cursor)
    }

    /// Parses [`to_text`](Self::to_text); `None` if malformed.
    pub fn from_text(s: &str) -> Option<Carried> {
        let mut it = s.split_whitespace().map(str::parse::<u64>);
        Some(Carried {
            next_seq: it.next()?.ok()?,
            cursor: it.next()?.ok()?,
        })
    }
}

/// Result of a passed check.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    /// What to carry into the next check.
    pub carried: Carried,
    /// Rows in the store.
    pub records: u64,
    /// How long the open (with recovery) took.
    pub open_ms: u128,
}

/// Opens the store after a crash and checks it against the run's protocol log.
pub fn check(db: &Path, progress: &Progress, before: Carried) -> Result<Checked, String> {
    let t = std::time::Instant::now();
    let opened = Store::open(db, &config(), T0).map_err(|e| format!("open failed: {e}"))?;
    let open_ms = t.elapsed().as_millis();
    if let Some(q) = opened.quarantined {
        return Err(format!("store was quarantined: {}", q.reason));
    }
    let mut store = opened.store;
    // The writer may have been killed before it registered the sink (as the agent does at start).
    store
        .register_sinks(&[SINK])
        .map_err(|e| format!("register: {e}"))?;
    let report = store.verify().map_err(|e| format!("verify: {e}"))?;
    if !report.problems.is_empty() || !report.bad_rows.is_empty() {
        return Err(format!(
            "verify: {:?}, bad rows {:?}",
            report.problems, report.bad_rows
        ));
    }
    let st = store.stats().map_err(|e| format!("stats: {e}"))?;
    let cursor = store.cursor(SINK).unwrap_or(0);

    // High-water mark: never backwards, never beyond what was attempted.
    if st.next_seq < before.next_seq {
        return Err(format!(
            "high-water mark went backwards: {} < {}",
            st.next_seq, before.next_seq
        ));
    }
    if let Some(c) = progress.committed {
        if st.next_seq <= c {
            return Err(format!(
                "acknowledged append up to {c} lost: next_seq is {}",
                st.next_seq
            ));
        }
    }
    let ceiling = progress.attempted.map_or(before.next_seq, |a| a + 1);
    if st.next_seq > ceiling.max(before.next_seq) {
        return Err(format!(
            "next_seq {} is beyond anything attempted ({ceiling})",
            st.next_seq
        ));
    }

    // Cursor: a committed value, not a half-done one, and not behind a committed ack.
    if let Some(d) = progress.ack_committed {
        if cursor < d {
            return Err(format!("acknowledged ack {d} lost: cursor is {cursor}"));
        }
    }
    let allowed = [
        Some(before.cursor),
        progress.ack_committed,
        progress.ack_attempted,
    ];
    if !allowed.contains(&Some(cursor)) {
        return Err(format!(
            "cursor {cursor} is none of the committed or in-flight values {allowed:?}"
        ));
    }

    // Content: exactly cursor+1 .. next_seq-1, byte-identical.
    let rows = store
        .read_pending(SINK, usize::MAX >> 1)
        .map_err(|e| format!("read: {e}"))?;
    let want: Vec<u64> = (cursor + 1..st.next_seq).collect();
    let got: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    if got != want {
        let first_diff = got.iter().zip(&want).position(|(g, w)| g != w);
        return Err(format!(
            "rows after the cursor are not contiguous: {} rows, want {} (first difference at {first_diff:?})",
            got.len(),
            want.len()
        ));
    }
    for r in &rows {
        match &r.body {
            RecordBody::Reading(body) if *body == record_for(r.seq) => {}
            _ => return Err(format!("seq {} does not hold what was written", r.seq)),
        }
    }
    Ok(Checked {
        carried: Carried {
            next_seq: st.next_seq,
            cursor,
        },
        records: st.records,
        open_ms,
    })
}

/// Summary of a SIGKILL campaign.
#[derive(Debug, Clone, Default)]
pub struct Campaign {
    /// Kills done (each followed by a passed check).
    pub kills: u64,
    /// Readings whose append was committed, over all runs (sanity: the writer did work).
    pub total_committed: u64,
    /// Open-after-crash times in ms.
    pub open_ms: Vec<u128>,
}

/// Runs `kills` times: start a writer via `spawn(seed)`, let it run a random time (10% of runs
/// 0–31 ms, which hits open and recovery; otherwise 30–`max_run_ms` ms), SIGKILL it, check.
pub fn sigkill_campaign(
    db: &Path,
    log_dir: &Path,
    kills: u64,
    seed: u64,
    max_run_ms: u64,
    mut spawn: impl FnMut(&Path, u64) -> std::io::Result<std::process::Child>,
) -> Result<Campaign, String> {
    let mut rng = Rng::new(seed);
    let mut carried = Carried {
        next_seq: 1,
        cursor: 0,
    };
    let mut campaign = Campaign::default();
    for i in 0..kills {
        let log = log_dir.join(format!("run-{i}.log"));
        let mut child = spawn(&log, seed.wrapping_add(i)).map_err(|e| format!("spawn: {e}"))?;
        let ms = if rng.below(10) == 0 {
            rng.below(32)
        } else {
            30 + rng.below(max_run_ms.saturating_sub(30).max(1))
        };
        std::thread::sleep(std::time::Duration::from_millis(ms));
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "writer exited by itself ({status}); see {}",
                log.display()
            ));
        }
        child.kill().map_err(|e| format!("kill: {e}"))?;
        let _status = child.wait().map_err(|e| format!("wait: {e}"))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let progress = parse_log(&text);
        let checked =
            check(db, &progress, carried).map_err(|e| format!("kill {i} (after {ms} ms): {e}"))?;
        campaign.total_committed += progress
            .committed
            .map_or(0, |c| (c + 1).saturating_sub(carried.next_seq));
        carried = checked.carried;
        campaign.kills += 1;
        campaign.open_ms.push(checked.open_ms);
    }
    Ok(campaign)
}
