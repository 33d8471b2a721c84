//! The 7-byte GATT Date Time field (device-protocols.md §1.4): `year u16 LE, month, day,
//! hours, minutes, seconds`. Year, month or day 0 means "not known".
//!
//! Invariant: a [`DateTime`] that exists is in range: year 1582..=9999 or unknown, month
//! 1..=12 or unknown, day 1..=31 or unknown (and a real calendar day when year, month and day
//! are all known), hours < 24, minutes < 60, seconds < 60. The format has no time zone.

use chrono::{NaiveDate, NaiveDateTime};
use serde_json::{json, Value};

/// A decoded GATT Date Time; unknown calendar fields are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateTime {
    /// Year, `None` when the device sent 0.
    pub year: Option<u16>,
    /// Month 1..=12, `None` when the device sent 0.
    pub month: Option<u8>,
    /// Day 1..=31, `None` when the device sent 0.
    pub day: Option<u8>,
    /// Hours 0..=23.
    pub hours: u8,
    /// Minutes 0..=59.
    pub minutes: u8,
    /// Seconds 0..=59.
    pub seconds: u8,
}

impl DateTime {
    /// Decodes and range-checks the 7 bytes; the error says which field is wrong.
    pub fn from_bytes(b: [u8; 7]) -> Result<Self, String> {
        let year = u16::from_le_bytes([b[0], b[1]]);
        let [_, _, month, day, hours, minutes, seconds] = b;
        if year != 0 && !(1582..=9999).contains(&year) {
            return Err(format!("year {year} is outside 1582..=9999"));
        }
        if month > 12 {
            return Err(format!("month {month} is greater than 12"));
        }
        if day > 31 {
            return Err(format!("day {day} is greater than 31"));
        }
        if hours > 23 || minutes > 59 || seconds > 59 {
            return Err(format!(
                "time {hours:02}:{minutes:02}:{seconds:02} is out of range"
            ));
        }
        let dt = Self {
            year: (year != 0).then_some(year),
            month: (month != 0).then_some(month),
            day: (day != 0).then_some(day),
            hours,
            minutes,
            seconds,
        };
        if let (Some(y), Some(m), Some(d)) = (dt.year, dt.month, dt.day) {
            if NaiveDate::from_ymd_opt(i32::from(y), u32::from(m), u32::from(d)).is_none() {
                return Err(format!("{y:04}-{m:02}-{d:02} is not a calendar date"));
            }
        }
        Ok(dt)
    }

    /// The date-time when year, month and day are all known.
    pub fn to_naive(&self) -> Option<NaiveDateTime> {
        let date = NaiveDate::from_ymd_opt(
            i32::from(self.year?),
            u32::from(self.month?),
            u32::from(self.day?),
        )?;
        date.and_hms_opt(
            u32::from(self.hours),
            u32::from(self.minutes),
            u32::from(self.seconds),
        )
    }

    /// ISO-8601 local time without offset (`2024-03-15T08:30:00`) when complete.
    pub fn iso(&self) -> Option<String> {
        self.to_naive()
            .map(|dt| dt.format("%Y-%m-%dT%H:%M:%S").to_string())
    }

    /// The fields as a JSON object, unknown ones `null`.
    pub fn parts_json(&self) -> Value {
        json!({
            "year": self.year,
            "month": self.month,
            "day": self.day,
            "hours": self.hours,
            "minutes": self.minutes,
            "seconds": self.seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_vectors() {
        let dt = DateTime::from_bytes([0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00]).expect("valid");
        assert_eq!(dt.iso().as_deref(), Some("2024-03-15T08:30:00"));
        let dt = DateTime::from_bytes([0x00, 0x00, 0x04, 0x11, 0x14, 0x29, 0x3B]).expect("valid");
        assert_eq!(dt.year, None);
        assert_eq!((dt.month, dt.day), (Some(4), Some(17)));
        assert_eq!((dt.hours, dt.minutes, dt.seconds), (20, 41, 59));
        assert_eq!(dt.iso(), None);
        assert_eq!(dt.parts_json()["year"], Value::Null);
        assert_eq!(dt.parts_json()["seconds"], 59);
    }

    #[test]
    fn rejects_out_of_range_fields() {
        let bad = [
            [0xE8, 0x07, 13, 1, 0, 0, 0],
            [0xE8, 0x07, 1, 32, 0, 0, 0],
            [0xE8, 0x07, 1, 1, 24, 0, 0],
            [0xE8, 0x07, 1, 1, 0, 60, 0],
            [0xE8, 0x07, 1, 1, 0, 0, 60],
            [0xE8, 0x07, 2, 30, 0, 0, 0],
            [0x01, 0x00, 1, 1, 0, 0, 0],
        ];
        for b in bad {
            assert!(DateTime::from_bytes(b).is_err(), "{b:?}");
        }
        // 2024 is a leap year.
        assert!(DateTime::from_bytes([0xE8, 0x07, 2, 29, 0, 0, 0]).is_ok());
    }
}
