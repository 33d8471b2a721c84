//! UTC instants with .NET tick (100 ns) resolution.
//!
//! The IoMT connector stores times as .NET `DateTime` values: UTC, 100 ns ticks, printed with
//! the round-trip "o" format (`2023-10-09T19:00:00.0000000Z`). Identifiers use the
//! `yyyyMMddHHmmss` form with a literal `Z`. Keeping the same resolution here makes the
//! effective periods and identifiers byte-identical to upstream.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use std::fmt;

/// Number of 100 ns ticks in one second.
pub const TICKS_PER_SECOND: i64 = 10_000_000;

/// A UTC instant truncated to 100 ns.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Wraps a chrono instant, truncating it to whole ticks.
    pub fn from_datetime(dt: DateTime<Utc>) -> Self {
        let nanos = dt.nanosecond();
        // chrono encodes leap seconds as nanos >= 1e9; fold them into the last tick of the second.
        let nanos = if nanos >= 1_000_000_000 {
            999_999_900
        } else {
            nanos - nanos % 100
        };
        Timestamp(dt.with_nanosecond(nanos).unwrap_or(dt))
    }

    /// Builds an instant from Unix seconds and a tick fraction (0..10_000_000).
    pub fn from_unix(secs: i64, ticks: u32) -> Option<Self> {
        Utc.timestamp_opt(secs, ticks.checked_mul(100)?)
            .single()
            .map(Timestamp)
    }

    /// Builds an instant from Unix milliseconds.
    pub fn from_unix_millis(ms: i64) -> Option<Self> {
        Utc.timestamp_millis_opt(ms).single().map(Timestamp)
    }

    /// Parses an RFC 3339 / ISO 8601 instant (offset required). Mostly for tests and the CLI.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| Self::from_datetime(d.with_timezone(&Utc)))
    }

    /// The chrono value.
    pub fn datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// Ticks since the Unix epoch (may be negative).
    pub fn unix_ticks(&self) -> i64 {
        self.0.timestamp() * TICKS_PER_SECOND + i64::from(self.0.nanosecond() / 100)
    }

    /// The instant `ticks` 100 ns ticks since the Unix epoch.
    pub fn from_unix_ticks(ticks: i64) -> Option<Self> {
        let secs = ticks.div_euclid(TICKS_PER_SECOND);
        let frac = ticks.rem_euclid(TICKS_PER_SECOND) as u32;
        Self::from_unix(secs, frac)
    }

    /// Adds (or subtracts) ticks.
    pub fn add_ticks(&self, ticks: i64) -> Option<Self> {
        Self::from_unix_ticks(self.unix_ticks().checked_add(ticks)?)
    }

    /// .NET round-trip ("o") format for a UTC `DateTime`: `yyyy-MM-ddTHH:mm:ss.fffffffZ`.
    pub fn format_o(&self) -> String {
        let mut s = String::with_capacity(28);
        self.write_o(&mut s);
        s
    }

    /// [`Timestamp::format_o`] appended to `out` (no allocation for years 0 to 9999).
    pub fn write_o(&self, out: &mut String) {
        match self.o_bytes() {
            // The buffer holds only ASCII digits and separators.
            Some(b) => out.push_str(std::str::from_utf8(&b).unwrap_or_default()),
            None => {
                let d = self.0;
                out.push_str(&format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
                    d.year(),
                    d.month(),
                    d.day(),
                    d.hour(),
                    d.minute(),
                    d.second(),
                    d.nanosecond() / 100
                ));
            }
        }
    }

    /// The [`Timestamp::format_o`] text as 28 bytes, for years 0 to 9999; `None` outside them
    /// and for chrono's leap-second values (nanoseconds >= 1e9), where [`Timestamp::write_o`]
    /// formats it the slow way. The batch hot path keeps these bytes per window.
    pub fn o_bytes(&self) -> Option<[u8; 28]> {
        let d = self.0;
        let year = d.year();
        let ticks = d.nanosecond() / 100;
        if !(0..=9999).contains(&year) || ticks >= 10_000_000 {
            return None;
        }
        let mut b = *b"0000-00-00T00:00:00.0000000Z";
        // Every field is non-negative and fits its width (year and ticks checked above). The
        // naive date and time are taken once: each `DateTime` accessor converts to local time
        // again.
        let (date, time) = (d.date_naive(), d.time());
        digits(&mut b[0..4], year.unsigned_abs());
        digits(&mut b[5..7], date.month());
        digits(&mut b[8..10], date.day());
        digits(&mut b[11..13], time.hour());
        digits(&mut b[14..16], time.minute());
        digits(&mut b[17..19], time.second());
        digits(&mut b[20..27], ticks);
        Some(b)
    }

    /// The identifier segment form `yyyyMMddHHmmssZ` (seconds resolution, fraction dropped).
    pub fn format_segment(&self) -> String {
        let mut s = String::with_capacity(15);
        self.write_segment(&mut s);
        s
    }

    /// [`Timestamp::format_segment`] appended to `out` (no allocation for years 0 to 9999).
    pub fn write_segment(&self, out: &mut String) {
        let d = self.0;
        let year = d.year();
        if !(0..=9999).contains(&year) {
            out.push_str(&format!(
                "{:04}{:02}{:02}{:02}{:02}{:02}Z",
                year,
                d.month(),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            ));
            return;
        }
        let mut b = *b"00000000000000Z";
        let (date, time) = (d.date_naive(), d.time());
        digits(&mut b[0..4], year.unsigned_abs());
        digits(&mut b[4..6], date.month());
        digits(&mut b[6..8], date.day());
        digits(&mut b[8..10], time.hour());
        digits(&mut b[10..12], time.minute());
        digits(&mut b[12..14], time.second());
        // The buffer holds only ASCII digits and `Z`.
        out.push_str(std::str::from_utf8(&b).unwrap_or_default());
    }

    /// Start of the UTC hour containing this instant.
    pub fn floor_hour(&self) -> Self {
        let t = self.unix_ticks();
        let h = 3600 * TICKS_PER_SECOND;
        Self::from_unix_ticks(t - t.rem_euclid(h)).unwrap_or(*self)
    }

    /// Start of the UTC day containing this instant.
    pub fn floor_day(&self) -> Self {
        let t = self.unix_ticks();
        let d = 86_400 * TICKS_PER_SECOND;
        Self::from_unix_ticks(t - t.rem_euclid(d)).unwrap_or(*self)
    }
}

/// Writes `n` as decimal digits right-aligned in `out`, zero-padded; digits beyond the width
/// are dropped (callers pass values that fit).
fn digits(out: &mut [u8], mut n: u32) {
    for slot in out.iter_mut().rev() {
        // `n % 10` is below 10, so the cast is exact.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format_o())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format_o())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The `format!` forms the digit writers replace (also the oracle of `pipeline::civil`).
    pub(crate) fn slow_o(t: &Timestamp) -> String {
        let d = t.datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
            d.year(),
            d.month(),
            d.day(),
            d.hour(),
            d.minute(),
            d.second(),
            d.nanosecond() / 100
        )
    }

    pub(crate) fn slow_segment(t: &Timestamp) -> String {
        let d = t.datetime();
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            d.year(),
            d.month(),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        )
    }

    proptest! {
        #[test]
        fn digit_writers_match_format(ticks in any::<i64>()) {
            // chrono's range is about ±262,000 years: most i64 tick counts fit.
            if let Some(t) = Timestamp::from_unix_ticks(ticks / 10) {
                prop_assert_eq!(t.format_o(), slow_o(&t));
                prop_assert_eq!(t.format_segment(), slow_segment(&t));
            }
        }
    }

    #[test]
    fn digit_writers_match_format_at_the_edges() {
        for (y, mo, d, h, mi, se, ticks) in [
            (0, 1, 1, 0, 0, 0, 0),
            (-1, 12, 31, 23, 59, 59, 9_999_999),
            (9999, 12, 31, 23, 59, 59, 9_999_999),
            (10000, 1, 1, 0, 0, 0, 1),
            (1970, 1, 1, 0, 0, 0, 0),
        ] {
            let t = Timestamp::from_datetime(
                Utc.with_ymd_and_hms(y, mo, d, h, mi, se)
                    .unwrap()
                    .with_nanosecond(ticks * 100)
                    .unwrap(),
            );
            assert_eq!(t.format_o(), slow_o(&t), "{y}");
            assert_eq!(t.format_segment(), slow_segment(&t), "{y}");
        }
        // A chrono leap second (nanos >= 1e9) takes the slow path.
        let leap = Timestamp(
            Utc.with_ymd_and_hms(2016, 12, 31, 23, 59, 59)
                .unwrap()
                .with_nanosecond(1_500_000_000)
                .unwrap(),
        );
        assert_eq!(leap.format_o(), slow_o(&leap));
    }

    #[test]
    fn o_format_has_seven_digits() {
        let t = Timestamp::parse_rfc3339("2023-10-09T19:18:23.123456789Z").unwrap();
        assert_eq!(t.format_o(), "2023-10-09T19:18:23.1234567Z");
        assert_eq!(t.format_segment(), "20231009191823Z");
        assert_eq!(t.floor_hour().format_o(), "2023-10-09T19:00:00.0000000Z");
        assert_eq!(t.floor_day().format_o(), "2023-10-09T00:00:00.0000000Z");
        assert_eq!(
            t.floor_hour()
                .add_ticks(3600 * TICKS_PER_SECOND - 1)
                .unwrap()
                .format_o(),
            "2023-10-09T19:59:59.9999999Z"
        );
    }

    #[test]
    fn ticks_round_trip_before_epoch() {
        let t = Timestamp::parse_rfc3339("1969-12-31T23:59:59.5Z").unwrap();
        assert_eq!(Timestamp::from_unix_ticks(t.unix_ticks()).unwrap(), t);
        assert_eq!(t.unix_ticks(), -5_000_000);
    }
}
