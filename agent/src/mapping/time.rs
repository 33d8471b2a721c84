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
        let d = self.0;
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

    /// The identifier segment form `yyyyMMddHHmmssZ` (seconds resolution, fraction dropped).
    pub fn format_segment(&self) -> String {
        let d = self.0;
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
mod tests {
    use super::*;

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
