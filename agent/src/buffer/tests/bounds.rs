//! Byte and age bounds under both policies: refusal is explicit, drops are visible and counted.

use super::super::{
    Appended, FullPolicy, FullReason, GapReason, NewRecord, RecordBody, StoreConfig,
    ROW_OVERHEAD_BYTES,
};
use super::{db_path, open, reading, tempdir, T0};

fn sized(n: u64, payload_len: usize) -> NewRecord {
    let mut r = reading("m", n);
    r.payload = vec![b'x'; payload_len];
    r.envelope = "{}".into();
    r.source = "m".into();
    r
}

/// Each record counts exactly 1000 bytes against `max_bytes`.
const REC: u64 = 1000;
fn rec(n: u64) -> NewRecord {
    let r = sized(n, (REC - ROW_OVERHEAD_BYTES - 2 - 1) as usize);
    assert_eq!(r.stored_size(), REC);
    r
}

fn config(policy: FullPolicy, max_bytes: u64) -> StoreConfig {
    StoreConfig {
        max_bytes,
        max_age_ms: None,
        full_policy: policy,
        ..StoreConfig::default()
    }
}

#[test]
fn block_refuses_the_record_that_does_not_fit_and_all_after_it() {
    let dir = tempdir();
    // room for 10 records of 1000 bytes plus the gap reserve
    let cfg = config(FullPolicy::Block, 10 * REC + 400);
    let mut s = open(&db_path(&dir), &cfg);
    s.register_sinks(&["a"]).expect("sinks");
    let batch: Vec<_> = (1..=12).map(rec).collect();
    let out = s.append_batch(&batch, T0).expect("append");
    for (i, r) in out.iter().enumerate() {
        if i < 10 {
            assert_eq!(*r, Ok(Appended::New(i as u64 + 1)));
        } else {
            let full = r.expect_err("must be refused");
            assert_eq!(full.reason, FullReason::MaxBytes);
            assert_eq!(full.stored_bytes, 10 * REC);
        }
    }
    let st = s.stats().expect("stats");
    assert_eq!((st.records, st.bytes, st.next_seq), (10, 10 * REC, 11));
    assert_eq!(st.dropped_records, 0);
    // still full for a new batch
    let out = s.append_batch(&[rec(13)], T0).expect("append");
    assert!(out[0].is_err());
    // delivering makes room without an explicit purge
    s.ack("a", 5).expect("ack");
    let out = s.append_batch(&[rec(13), rec(14)], T0).expect("append");
    assert_eq!(out, vec![Ok(Appended::New(11)), Ok(Appended::New(12))]);
    let seqs: Vec<_> = s
        .read_pending("a", 100)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (6..=12).collect::<Vec<_>>());
}

#[test]
fn a_record_larger_than_the_bound_is_refused_alone() {
    let dir = tempdir();
    let cfg = config(FullPolicy::Block, 10 * REC);
    let mut s = open(&db_path(&dir), &cfg);
    let out = s
        .append_batch(&[rec(1), sized(2, 20_000), rec(3)], T0)
        .expect("append");
    assert_eq!(out[0], Ok(Appended::New(1)));
    assert_eq!(
        out[1].expect_err("too large").reason,
        FullReason::RecordTooLarge
    );
    assert_eq!(out[2], Ok(Appended::New(2)));
    let cfg = config(FullPolicy::DropOldest, 10 * REC);
    let dir = tempdir();
    let mut s = open(&db_path(&dir), &cfg);
    s.append_batch(&[rec(1)], T0).expect("append");
    let out = s.append_batch(&[sized(2, 20_000)], T0).expect("append");
    assert_eq!(
        out[0].expect_err("too large").reason,
        FullReason::RecordTooLarge
    );
    // nothing was dropped for it
    assert_eq!(s.stats().expect("stats").dropped_records, 0);
}

#[test]
fn block_by_age_refuses_until_the_old_records_are_delivered() {
    let dir = tempdir();
    let cfg = StoreConfig {
        max_age_ms: Some(60_000),
        ..config(FullPolicy::Block, 1 << 30)
    };
    let mut s = open(&db_path(&dir), &cfg);
    s.register_sinks(&["a"]).expect("sinks");
    s.append_batch(&[rec(1)], T0).expect("append");
    let mut late = rec(2);
    late.receive_time_ms = T0 + 61_000;
    let out = s
        .append_batch(&[late.clone()], T0 + 61_000)
        .expect("append");
    assert_eq!(out[0].expect_err("too old").reason, FullReason::MaxAge);
    s.ack("a", 1).expect("ack");
    let out = s.append_batch(&[late], T0 + 61_000).expect("append");
    assert_eq!(out, vec![Ok(Appended::New(2))]);
}

#[test]
fn drop_oldest_drops_from_the_head_and_writes_a_visible_counted_gap() {
    let dir = tempdir();
    let cfg = config(FullPolicy::DropOldest, 10 * REC + 400);
    let mut s = open(&db_path(&dir), &cfg);
    s.register_sinks(&["a"]).expect("sinks");
    let first: Vec<_> = (1..=10).map(rec).collect();
    s.append_batch(&first, T0).expect("append");
    // three more: 3 records plus the gap marker must fit
    let more: Vec<_> = (11..=13).map(rec).collect();
    let out = s.append_batch(&more, T0 + 5).expect("append");
    // seq 11 is the gap record, the readings get 12..=14
    assert_eq!(
        out,
        vec![
            Ok(Appended::New(12)),
            Ok(Appended::New(13)),
            Ok(Appended::New(14))
        ]
    );
    let st = s.stats().expect("stats");
    assert!(
        st.bytes <= cfg.max_bytes,
        "{} > {}",
        st.bytes,
        cfg.max_bytes
    );
    assert_eq!(st.gap_records, 1);
    assert!(st.dropped_records >= 3, "{st:?}");
    let got = s.read_pending("a", 100).expect("read");
    let gap = got
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::Gap(g) => Some((r.seq, g.clone())),
            RecordBody::Reading(_) => None,
        })
        .expect("a gap record is visible to the sink");
    assert_eq!(gap.0, 11);
    assert_eq!(gap.1.first_seq, 1);
    assert_eq!(gap.1.dropped_records, st.dropped_records);
    assert_eq!(gap.1.last_seq, st.dropped_records);
    assert_eq!(gap.1.dropped_bytes, st.dropped_records * REC);
    assert_eq!(gap.1.reason, GapReason::MaxBytes);
    assert_eq!(gap.1.time_ms, T0 + 5);
    // nothing is lost silently: every reading is either readable or counted in the gap
    let readable = got
        .iter()
        .filter(|r| matches!(r.body, RecordBody::Reading(_)))
        .count() as u64;
    assert_eq!(readable + gap.1.dropped_records, 13);
    assert!(s.verify().expect("verify").problems.is_empty());
}

#[test]
fn drop_oldest_by_age_expires_old_records_on_purge() {
    let dir = tempdir();
    let cfg = StoreConfig {
        max_age_ms: Some(60_000),
        ..config(FullPolicy::DropOldest, 1 << 30)
    };
    let mut s = open(&db_path(&dir), &cfg);
    s.register_sinks(&["a"]).expect("sinks");
    let mut batch: Vec<_> = (1..=4).map(rec).collect();
    for (i, r) in batch.iter_mut().enumerate() {
        r.receive_time_ms = T0 + i as i64 * 30_000;
    }
    s.append_batch(&batch, T0 + 90_000).expect("append");
    // at T0+100s records received before T0+40s (seqs 1 and 2) are too old
    s.purge_delivered(T0 + 100_000).expect("purge");
    let got = s.read_pending("a", 10).expect("read");
    let seqs: Vec<_> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    match &got[2].body {
        RecordBody::Gap(g) => {
            assert_eq!((g.first_seq, g.last_seq, g.dropped_records), (1, 2, 2));
            assert_eq!(g.reason, GapReason::MaxAge);
        }
        RecordBody::Reading(_) => panic!("expected the gap record"),
    }
    assert_eq!(s.stats().expect("stats").dropped_records, 2);
}

#[test]
fn duplicates_are_answered_even_when_full() {
    let dir = tempdir();
    let cfg = config(FullPolicy::Block, 2 * REC + 400);
    let mut s = open(&db_path(&dir), &cfg);
    let mut a = rec(1);
    a.dedup_key = Some("hl7:1".into());
    s.append_batch(&[a.clone(), rec(2)], T0).expect("append");
    let out = s.append_batch(&[rec(3), a], T0).expect("append");
    assert!(out[0].is_err());
    assert_eq!(out[1], Ok(Appended::Duplicate(1)));
}

#[test]
fn drop_oldest_refuses_what_cannot_fit_even_after_dropping_everything() {
    let dir = tempdir();
    let cfg = config(FullPolicy::DropOldest, 10 * REC + 400);
    let mut s = open(&db_path(&dir), &cfg);
    s.append_batch(&[rec(1), rec(2)], T0).expect("append");
    let batch: Vec<_> = (3..=17).map(rec).collect();
    let out = s.append_batch(&batch, T0).expect("append");
    let accepted = out.iter().filter(|r| r.is_ok()).count();
    assert!((8..=10).contains(&accepted), "{out:?}");
    // accepted ones come first, in order; the rest are refused, nothing silently lost
    assert!(out[..accepted].iter().all(Result::is_ok));
    assert!(out[accepted..]
        .iter()
        .all(|r| r.is_err_and(|f| f.reason == FullReason::MaxBytes)));
    let st = s.stats().expect("stats");
    assert!(
        st.bytes <= cfg.max_bytes,
        "{} > {}",
        st.bytes,
        cfg.max_bytes
    );
    assert_eq!(st.dropped_records, 2);
    assert!(s.verify().expect("verify").problems.is_empty());
}

mod property {
    //! Random batches of random sizes under a small bound, both policies: the bound holds, and
    //! every accepted reading is either still readable or counted by a gap record.
    use proptest::prelude::*;

    use super::super::super::{Appended, FullPolicy, RecordBody};
    use super::super::{db_path, open, tempdir, T0};
    use super::{config, sized};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn nothing_is_dropped_silently(
            drop_oldest in any::<bool>(),
            batches in prop::collection::vec(prop::collection::vec(0usize..3000, 1..20), 1..12),
            acks in prop::collection::vec(any::<bool>(), 12),
        ) {
            let policy = if drop_oldest { FullPolicy::DropOldest } else { FullPolicy::Block };
            let cfg = config(policy, 20_000);
            let dir = tempdir();
            let mut s = open(&db_path(&dir), &cfg);
            s.register_sinks(&["a"]).expect("sinks");
            let mut accepted = 0u64;
            let mut delivered = 0u64;
            let mut n = 0;
            for (bi, sizes) in batches.iter().enumerate() {
                let recs: Vec<_> = sizes.iter().map(|&len| { n += 1; sized(n, len) }).collect();
                let out = s.append_batch(&recs, T0).expect("append");
                let mut refused = false;
                for r in &out {
                    match r {
                        Ok(Appended::New(_)) => {
                            prop_assert!(!refused || drop_oldest, "order kept under block");
                            accepted += 1;
                        }
                        Ok(Appended::Duplicate(_)) => prop_assert!(false, "no keys here"),
                        Err(_) => refused = true,
                    }
                }
                let st = s.stats().expect("stats");
                prop_assert!(st.bytes <= cfg.max_bytes, "{} > {}", st.bytes, cfg.max_bytes);
                if acks[bi % acks.len()] {
                    let got = s.read_pending("a", 5).expect("read");
                    delivered += got
                        .iter()
                        .filter(|r| matches!(r.body, RecordBody::Reading(_)))
                        .count() as u64;
                    if let Some(last) = got.last() {
                        s.ack("a", last.seq).expect("ack");
                    }
                }
            }
            let rest = s.read_pending("a", 100_000).expect("read");
            let mut readable = delivered;
            let mut gap_dropped = 0;
            for r in &rest {
                match &r.body {
                    RecordBody::Reading(_) => readable += 1,
                    RecordBody::Gap(g) => gap_dropped += g.dropped_records,
                }
            }
            // gaps already delivered also count: use the store's counter for them
            let st = s.stats().expect("stats");
            prop_assert!(gap_dropped <= st.dropped_records);
            prop_assert_eq!(readable + st.dropped_records, accepted);
            if !drop_oldest {
                prop_assert_eq!(st.dropped_records, 0);
            }
            prop_assert!(s.verify().expect("verify").problems.is_empty());
        }
    }
}
