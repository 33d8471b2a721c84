//! The effective-period texts of a window for the batch hot path: the .NET "o" form
//! (`yyyy-MM-ddTHH:mm:ss.fffffffZ`, [`Timestamp::o_bytes`]) of its start and end, computed once
//! per group, and the identifier segment form (`yyyyMMddHHmmssZ`) derived from the "o" bytes
//! ([`segment_of_o`]) instead of a second calendar conversion.
//!
//! Invariants: pure, no panics; where `o_bytes` is `None` (years outside 0..=9999, chrono
//! leap-second values) callers use [`Timestamp::write_o`] / [`Timestamp::write_segment`], so the
//! output is always exactly theirs (the proptests below compare the two over the whole chrono
//! range).

use crate::mapping::Timestamp;

/// The segment form of an instant from its "o" text (the same fields, fewer separators).
pub(crate) fn segment_of_o(o: &[u8; 28]) -> [u8; 15] {
    let mut b = *b"00000000000000Z";
    b[0..4].copy_from_slice(&o[0..4]);
    b[4..6].copy_from_slice(&o[5..7]);
    b[6..8].copy_from_slice(&o[8..10]);
    b[8..10].copy_from_slice(&o[11..13]);
    b[10..12].copy_from_slice(&o[14..16]);
    b[12..14].copy_from_slice(&o[17..19]);
    b
}

/// The "o" texts of a window's start and end (each `None` outside the fast range), computed
/// once per group for both the identifier segment and `effectivePeriod`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effective {
    pub(crate) start: Option<[u8; 28]>,
    pub(crate) end: Option<[u8; 28]>,
}

impl Effective {
    pub(crate) fn new(start: Timestamp, end: Timestamp) -> Self {
        let s = start.o_bytes();
        Effective {
            start: s,
            end: if end == start { s } else { end.o_bytes() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::time::tests::{slow_o, slow_segment};
    use chrono::{TimeZone, Timelike, Utc};
    use proptest::prelude::*;

    /// The oracle: both texts formatted field by field, independently of `o_bytes`.
    fn slow(t: Timestamp) -> (String, String) {
        (slow_o(&t), slow_segment(&t))
    }

    /// The texts the batch writes: the "o" bytes and the segment derived from them, or the
    /// `Timestamp` writers where there are no "o" bytes.
    fn fast(t: Timestamp) -> (String, String) {
        match t.o_bytes() {
            Some(o) => (
                String::from_utf8(o.to_vec()).unwrap(),
                String::from_utf8(segment_of_o(&o).to_vec()).unwrap(),
            ),
            None => (t.format_o(), t.format_segment()),
        }
    }

    proptest! {
        #[test]
        fn same_text_as_the_timestamp_writers(ticks in any::<i64>()) {
            // chrono's range is about ±262,000 years: most i64 tick counts fit.
            if let Some(t) = Timestamp::from_unix_ticks(ticks / 10) {
                prop_assert_eq!(fast(t), slow(t));
            }
        }

        #[test]
        fn same_text_in_the_years_that_take_the_fast_path(
            secs in -62_167_219_200i64..253_402_300_800,
            frac in 0u32..10_000_000,
        ) {
            let t = Timestamp::from_unix(secs, frac).expect("in range");
            prop_assert!(t.o_bytes().is_some());
            prop_assert_eq!(fast(t), slow(t));
        }
    }

    #[test]
    fn same_text_at_the_edges() {
        for (y, mo, d, h, mi, se, ticks) in [
            (0, 1, 1, 0, 0, 0, 0),
            (0, 2, 29, 0, 0, 0, 0),
            (-1, 12, 31, 23, 59, 59, 9_999_999),
            (1600, 2, 29, 12, 0, 0, 1),
            (1900, 2, 28, 23, 59, 59, 9_999_999),
            (1900, 3, 1, 0, 0, 0, 0),
            (1969, 12, 31, 23, 59, 59, 9_999_999),
            (1970, 1, 1, 0, 0, 0, 0),
            (2000, 2, 29, 0, 0, 0, 0),
            (2023, 10, 9, 19, 18, 23, 1_234_567),
            (9999, 12, 31, 23, 59, 59, 9_999_999),
            (10000, 1, 1, 0, 0, 0, 1),
        ] {
            let t = Timestamp::from_datetime(
                Utc.with_ymd_and_hms(y, mo, d, h, mi, se)
                    .unwrap()
                    .with_nanosecond(ticks * 100)
                    .unwrap(),
            );
            assert_eq!(fast(t), slow(t), "{y}-{mo}-{d}");
            assert_eq!(t.o_bytes().is_some(), (0..=9999).contains(&y), "{y}");
        }
        assert_eq!(
            fast(Timestamp::parse_rfc3339("2023-10-09T19:18:23.1234567Z").unwrap()),
            (
                "2023-10-09T19:18:23.1234567Z".to_owned(),
                "20231009191823Z".to_owned()
            )
        );
    }
}
