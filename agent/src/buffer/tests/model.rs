//! Model-based property test: random sequences of append / ack / out-of-order ack / purge /
//! reopen ("crash": the store is dropped without purging and opened again) run against the real
//! store and against an in-memory model of the specification. After every step the sinks'
//! pending records, the cursors and the totals must agree with the model; seqs handed out must
//! be strictly increasing across reopens (never reused) and no acknowledged reading may be lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::super::{Appended, NewRecord, RecordBody, Store, StoreConfig};
use super::{tempdir, T0};

const SINKS: [&str; 2] = ["a", "b"];
const SOURCES: [&str; 2] = ["mon", "pump"];

#[derive(Debug, Clone)]
enum Op {
    /// (source index, dedup key index or none, payload variant)
    Append(Vec<(usize, Option<u8>, u8)>),
    /// Cumulative ack of the pending record at this fraction of the backlog (per mille).
    Ack(usize, u16),
    /// Out-of-order acks of pending records picked by these fractions (per mille).
    AckSeqs(usize, Vec<u16>),
    Purge,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((0usize..2, prop::option::of(0u8..6), 0u8..3), 1..12)
            .prop_map(Op::Append),
        2 => (0usize..2, 0u16..1000).prop_map(|(s, f)| Op::Ack(s, f)),
        2 => (0usize..2, prop::collection::vec(0u16..1000, 1..6))
            .prop_map(|(s, f)| Op::AckSeqs(s, f)),
        1 => Just(Op::Purge),
        1 => Just(Op::Reopen),
    ]
}

fn record(source: usize, key: Option<u8>, variant: u8) -> NewRecord {
    NewRecord {
        source: SOURCES[source].to_string(),
        dedup_key: key.map(|k| format!("hl7:{k}")),
        receive_time_ms: T0,
        device_time_ms: None,
        payload: vec![b'p', variant, key.unwrap_or(255)],
        envelope: format!("{{\"v\":{variant}}}"),
    }
}

/// The specification, in memory.
#[derive(Debug, Default)]
struct Model {
    next_seq: u64,
    rows: BTreeMap<u64, NewRecord>,
    cursors: BTreeMap<&'static str, u64>,
    acked: BTreeMap<&'static str, BTreeSet<u64>>,
    dedup: HashMap<(String, String), (u64, Vec<u8>)>,
}

impl Model {
    fn new() -> Self {
        let mut m = Model {
            next_seq: 1,
            ..Model::default()
        };
        for s in SINKS {
            m.cursors.insert(s, 0);
            m.acked.insert(s, BTreeSet::new());
        }
        m
    }

    fn append(&mut self, recs: &[NewRecord]) -> Vec<Appended> {
        recs.iter()
            .map(|r| {
                if let Some(k) = &r.dedup_key {
                    let id = (r.source.clone(), k.clone());
                    if let Some((seq, payload)) = self.dedup.get(&id) {
                        if *payload == r.payload {
                            return Appended::Duplicate(*seq);
                        }
                    }
                    self.dedup.insert(id, (self.next_seq, r.payload.clone()));
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.rows.insert(seq, r.clone());
                Appended::New(seq)
            })
            .collect()
    }

    fn pending(&self, sink: &str) -> Vec<u64> {
        let cursor = self.cursors[sink];
        let acked = &self.acked[sink];
        self.rows
            .range(cursor + 1..)
            .map(|(s, _)| *s)
            .filter(|s| !acked.contains(s))
            .collect()
    }

    /// Advance the cursor over acknowledged rows with no unacknowledged row before them.
    fn advance(&mut self, sink: &'static str) {
        let mut cursor = self.cursors[sink];
        let acked = self.acked.get_mut(sink).expect("sink");
        let first_unacked = self
            .rows
            .range(cursor + 1..)
            .map(|(s, _)| *s)
            .find(|s| !acked.contains(s));
        cursor = match first_unacked {
            Some(u) => cursor.max(u - 1),
            None => cursor.max(acked.iter().next_back().copied().unwrap_or(cursor)),
        };
        acked.retain(|s| *s > cursor);
        self.cursors.insert(sink, cursor);
    }

    fn ack(&mut self, sink: &'static str, up_to: u64) {
        let c = self.cursors[sink].max(up_to);
        self.cursors.insert(sink, c);
        self.advance(sink);
    }

    fn ack_seqs(&mut self, sink: &'static str, seqs: &[u64]) {
        let cursor = self.cursors[sink];
        let acked = self.acked.get_mut(sink).expect("sink");
        acked.extend(seqs.iter().copied().filter(|s| *s > cursor));
        self.advance(sink);
    }

    fn purge(&mut self) -> u64 {
        let min = self.cursors.values().copied().min().unwrap_or(0);
        let before = self.rows.len();
        self.rows.retain(|s, _| *s > min);
        (before - self.rows.len()) as u64
    }
}

fn config() -> StoreConfig {
    StoreConfig {
        max_age_ms: None,
        dedup_window_ms: i64::MAX / 4,
        quick_check_on_open: true,
        ..StoreConfig::default()
    }
}

fn reopen(path: &std::path::Path) -> Store {
    let opened = Store::open(path, &config(), T0).expect("open");
    assert!(opened.quarantined.is_none());
    opened.store
}

fn pick(list: &[u64], per_mille: u16) -> Option<u64> {
    if list.is_empty() {
        return None;
    }
    let i = (usize::from(per_mille) * list.len()) / 1000;
    list.get(i.min(list.len() - 1)).copied()
}

fn check(store: &mut Store, model: &Model) -> Result<(), TestCaseError> {
    for sink in SINKS {
        let got = store.read_pending(sink, 10_000).expect("read");
        let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
        prop_assert_eq!(&seqs, &model.pending(sink), "pending of {}", sink);
        for r in &got {
            match &r.body {
                RecordBody::Reading(body) => prop_assert_eq!(body, &model.rows[&r.seq]),
                RecordBody::Gap(g) => prop_assert!(false, "unexpected gap {:?}", g),
            }
        }
        prop_assert_eq!(store.cursor(sink).expect("cursor"), model.cursors[sink]);
    }
    let st = store.stats().expect("stats");
    prop_assert_eq!(st.next_seq, model.next_seq);
    prop_assert_eq!(st.records, model.rows.len() as u64);
    prop_assert_eq!(
        st.bytes,
        model.rows.values().map(NewRecord::stored_size).sum::<u64>()
    );
    // The backlog count takes a shortcut when a sink has no out-of-order acks: both ways must
    // agree with the model.
    for s in &st.sinks {
        prop_assert_eq!(
            s.pending_records,
            model.pending(&s.name).len() as u64,
            "pending count of {}",
            &s.name
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempdir();
        let path = dir.path().join("model.db");
        let mut store = reopen(&path);
        store.register_sinks(&SINKS).expect("sinks");
        let mut model = Model::new();
        let mut last_new_seq = 0u64;
        for op in ops {
            match op {
                Op::Append(specs) => {
                    let recs: Vec<_> = specs.iter().map(|&(s, k, v)| record(s, k, v)).collect();
                    let got: Vec<Appended> = store
                        .append_batch(&recs, T0)
                        .expect("append")
                        .into_iter()
                        .map(|r| r.expect("no bound is reached here"))
                        .collect();
                    let want = model.append(&recs);
                    prop_assert_eq!(&got, &want);
                    for a in got {
                        if let Appended::New(s) = a {
                            prop_assert!(s > last_new_seq, "seq {} reused", s);
                            last_new_seq = s;
                        }
                    }
                }
                Op::Ack(si, f) => {
                    let sink = SINKS[si];
                    if let Some(up_to) = pick(&model.pending(sink), f) {
                        store.ack(sink, up_to).expect("ack");
                        model.ack(sink, up_to);
                    }
                }
                Op::AckSeqs(si, fs) => {
                    let sink = SINKS[si];
                    let pending = model.pending(sink);
                    let seqs: Vec<u64> = fs.iter().filter_map(|f| pick(&pending, *f)).collect();
                    store.ack_seqs(sink, &seqs).expect("ack");
                    model.ack_seqs(sink, &seqs);
                }
                Op::Purge => {
                    let report = store.purge_delivered(T0).expect("purge");
                    prop_assert_eq!(report.deleted_records, model.purge());
                }
                Op::Reopen => {
                    drop(store);
                    store = reopen(&path);
                }
            }
            check(&mut store, &model)?;
        }
        let report = store.verify().expect("verify");
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
        prop_assert!(report.bad_rows.is_empty());
    }
}
