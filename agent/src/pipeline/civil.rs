//! Fast text forms of a [`Timestamp`] for the batch hot path: the .NET "o" form
//! (`yyyy-MM-ddTHH:mm:ss.fffffffZ`) and the identifier segment form (`yyyyMMddHHmmssZ`).
//!
//! The same bytes as [`Timestamp::write_o`] and [`Timestamp::write_segment`], with the
//! calendar fields read once from the UTC value (the `DateTime<Utc>` accessors convert the
//! instant to local time again for every field), and the segment derived from the "o" text
//! when both are needed ([`segment_of_o`]).
//!
//! Invariants: pure, no panics; for years outside 0..=9999 and for chrono leap-second values
//! (nanoseconds >= 1e9) the writers defer to the `Timestamp` methods, so the output is always
//! exactly theirs (proptests below compare the two over the whole chrono range).

use crate::mapping::Timestamp;

/// Calendar fields of a UTC instant whose year is 0..=9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 100 ns ticks within the second, 0..10_000_000.
    ticks: u32,
}

/// The calendar fields, or `None` when the fast form does not apply (year outside 0..=9999,
/// leap-second nanoseconds). Read once from the UTC naive value: the `DateTime<Utc>` field
/// accessors each convert to local time again.
fn civil(t: Timestamp) -> Option<Civil> {
    use chrono::{Datelike, Timelike};
    let n = t.datetime().naive_utc();
    let (date, time) = (n.date(), n.time());
    let nanos = time.nanosecond();
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    Some(Civil {
        year,
        month: date.month(),
        day: date.day(),
        hour: time.hour(),
        minute: time.minute(),
        second: time.second(),
        ticks: nanos / 100,
    })
}

/// Writes `n` as decimal digits right-aligned in `out`, zero-padded.
fn digits(out: &mut [u8], mut n: u32) {
    for slot in out.iter_mut().rev() {
        // `n % 10` is below 10, so the cast is exact.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The .NET "o" text of `t` (28 bytes), or `None` where [`Timestamp::write_o`] must be used.
pub(crate) fn o_bytes(t: Timestamp) -> Option<[u8; 28]> {
    let c = civil(t)?;
    let mut b = *b"0000-00-00T00:00:00.0000000Z";
    digits(&mut b[0..4], c.year);
    digits(&mut b[5..7], c.month);
    digits(&mut b[8..10], c.day);
    digits(&mut b[11..13], c.hour);
    digits(&mut b[14..16], c.minute);
    digits(&mut b[17..19], c.second);
    digits(&mut b[20..27], c.ticks);
    Some(b)
}

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
        let s = o_bytes(start);
        Effective {
            start: s,
            end: if end == start { s } else { o_bytes(end) },
        }
    }
}

/// [`Timestamp::write_o`], faster (the batch uses [`Effective`]).
#[cfg(test)]
pub(crate) fn write_o(out: &mut String, t: Timestamp) {
    match o_bytes(t) {
        // The buffer holds only ASCII digits and separators.
        Some(b) => out.push_str(std::str::from_utf8(&b).unwrap_or_default()),
        None => t.write_o(out),
    }
}

/// The segment text of `t` (15 bytes), or `None` where [`Timestamp::write_segment`] must be
/// used (the batch uses [`segment_of_o`]).
#[cfg(test)]
pub(crate) fn segment_bytes(t: Timestamp) -> Option<[u8; 15]> {
    let c = civil(t)?;
    let mut b = *b"00000000000000Z";
    digits(&mut b[0..4], c.year);
    digits(&mut b[4..6], c.month);
    digits(&mut b[6..8], c.day);
    digits(&mut b[8..10], c.hour);
    digits(&mut b[10..12], c.minute);
    digits(&mut b[12..14], c.second);
    Some(b)
}

/// [`Timestamp::write_segment`], faster (the batch uses [`segment_bytes`] directly).
#[cfg(test)]
pub(crate) fn write_segment(out: &mut String, t: Timestamp) {
    match segment_bytes(t) {
        // The buffer holds only ASCII digits and `Z`.
        Some(b) => out.push_str(std::str::from_utf8(&b).unwrap_or_default()),
        None => t.write_segment(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike, Utc};
    use proptest::prelude::*;

    fn fast(t: Timestamp) -> (String, String) {
        let (mut o, mut s) = (String::new(), String::new());
        write_o(&mut o, t);
        write_segment(&mut s, t);
        (o, s)
    }

    proptest! {
        #[test]
        fn same_text_as_the_timestamp_writers(ticks in any::<i64>()) {
            // chrono's range is about ±262,000 years: most i64 tick counts fit.
            if let Some(t) = Timestamp::from_unix_ticks(ticks / 10) {
                prop_assert_eq!(fast(t), (t.format_o(), t.format_segment()));
                if let Some(o) = o_bytes(t) {
                    prop_assert_eq!(Some(segment_of_o(&o)), segment_bytes(t));
                }
            }
        }

        #[test]
        fn same_text_in_the_years_that_take_the_fast_path(
            secs in -62_167_219_200i64..253_402_300_800,
            frac in 0u32..10_000_000,
        ) {
            let t = Timestamp::from_unix(secs, frac).expect("in range");
            prop_assert!(o_bytes(t).is_some());
            prop_assert_eq!(fast(t), (t.format_o(), t.format_segment()));
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
            assert_eq!(fast(t), (t.format_o(), t.format_segment()), "{y}-{mo}-{d}");
            assert_eq!(o_bytes(t).is_some(), (0..=9999).contains(&y), "{y}");
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
