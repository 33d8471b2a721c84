//! Fast text forms of a [`Timestamp`] for the batch hot path: the .NET "o" form
//! (`yyyy-MM-ddTHH:mm:ss.fffffffZ`) and the identifier segment form (`yyyyMMddHHmmssZ`).
//!
//! The same bytes as [`Timestamp::write_o`] and [`Timestamp::write_segment`], computed from the
//! Unix seconds with a days-to-civil conversion (proleptic Gregorian calendar) instead of
//! chrono's calendar accessors, which convert the instant again for every field.
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
/// leap-second nanoseconds).
fn civil(t: Timestamp) -> Option<Civil> {
    let dt = t.datetime();
    let nanos = dt.timestamp_subsec_nanos();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let secs = dt.timestamp();
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to (year, month, day): shift the epoch to 0000-03-01 so leap days
    // fall at the end of a year, then split into 400-year eras.
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11, March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era.checked_mul(400)?.checked_add(yoe)? + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    // Every field is in range of u32 (checked or bounded above).
    let f = |v: i64| u32::try_from(v).unwrap_or(0);
    Some(Civil {
        year: f(year),
        month: f(month),
        day: f(day),
        hour: f(sod / 3600),
        minute: f(sod / 60 % 60),
        second: f(sod % 60),
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

/// [`Timestamp::write_o`], faster.
pub(crate) fn write_o(out: &mut String, t: Timestamp) {
    match o_bytes(t) {
        // The buffer holds only ASCII digits and separators.
        Some(b) => out.push_str(std::str::from_utf8(&b).unwrap_or_default()),
        None => t.write_o(out),
    }
}

/// The segment text of `t` (15 bytes), or `None` where [`Timestamp::write_segment`] must be
/// used.
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
