//! Json.NET's conversions of JSON tokens to strings and to times, as the connector applies them.
//!
//! Upstream reads every extracted token with `JToken.Value<string>()` or `Value<DateTime?>()`
//! after parsing the body with `DateParseHandling.DateTime` and `FloatParseHandling.Double`.
//! That gives these rules (semantics doc §1.6):
//! - integers print as digits; floats print as .NET Core's shortest round-trip `double`
//!   string (`36.60` → `36.6`, `1e15` → `1E+15`, `0.00001` → `1E-05`);
//! - booleans print as `True` / `False`;
//! - strings that Json.NET's ISO parser recognises as dates were turned into `DateTime` tokens
//!   at parse time, so their string form is the invariant culture's `MM/dd/yyyy HH:mm:ss`;
//! - objects and arrays cannot be read as a string (an error);
//! - times: ISO 8601 with `Z` or an offset is an instant; a naive ISO time is UTC (the cloud
//!   hosts run in UTC); a few lenient invariant forms are accepted; numbers are errors (use
//!   JMESPath `fromUnixTimestamp`).
//!
//! Known difference: integers beyond the u64/i64 range arrive here as f64 (serde_json without
//! `arbitrary_precision`), where Json.NET keeps a BigInteger; such values print in E notation.

use super::doc::{JsonTree, Scalar};
use super::time::Timestamp;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// Why a token could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("an {0} cannot be read as a string")]
    NotScalar(&'static str),
    #[error("a number is not a timestamp (use fromUnixTimestamp or fromUnixTimestampMs in a JmesPath expression)")]
    NumberAsTime,
    #[error("'{0}' is not a timestamp (expected ISO 8601, e.g. 2024-01-01T10:00:00Z)")]
    BadTime(String),
    #[error("a {0} is not a timestamp")]
    NotTime(&'static str),
}

fn kind(v: Scalar<'_>) -> &'static str {
    match v {
        Scalar::Null => "null",
        Scalar::Bool(_) => "boolean",
        Scalar::Number(_) => "number",
        Scalar::Str(_) => "string",
        Scalar::Array => "array",
        Scalar::Object => "object",
    }
}

/// `JToken.Value<string>()`. `Ok(None)` for JSON null. `v` is a `serde_json::Value` or a
/// parsed message node: the same text for the same token.
pub fn value_to_string<T: JsonTree>(v: &T) -> Result<Option<String>, ConvertError> {
    match v.scalar() {
        Scalar::Null => Ok(None),
        Scalar::Bool(b) => Ok(Some(if b { "True" } else { "False" }.to_owned())),
        Scalar::Number(n) => Ok(Some(if let Some(i) = n.as_i64() {
            i.to_string()
        } else if let Some(u) = n.as_u64() {
            u.to_string()
        } else {
            dotnet_double(n.as_f64().unwrap_or(f64::NAN))
        })),
        Scalar::Str(s) => Ok(Some(match parse_jsonnet_iso_date(s) {
            Some(dt) => dt.format("%m/%d/%Y %H:%M:%S").to_string(),
            None => s.to_owned(),
        })),
        Scalar::Array => Err(ConvertError::NotScalar("array")),
        Scalar::Object => Err(ConvertError::NotScalar("object")),
    }
}

/// `JToken.Value<DateTime?>()` followed by the connector's UTC handling. `Ok(None)` for null.
pub fn value_to_time<T: JsonTree>(v: &T) -> Result<Option<Timestamp>, ConvertError> {
    match v.scalar() {
        Scalar::Null => Ok(None),
        Scalar::Number(_) => Err(ConvertError::NumberAsTime),
        Scalar::Str(s) => parse_time(s)
            .map(Some)
            .ok_or_else(|| ConvertError::BadTime(truncate(s))),
        other => Err(ConvertError::NotTime(kind(other))),
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 64 {
        let mut t: String = s.chars().take(61).collect();
        t.push_str("...");
        t
    } else {
        s.to_owned()
    }
}

/// Parses a time the way the connector would accept it, as a UTC instant.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    let t = s.trim();
    if let Some(dt) = parse_jsonnet_iso(t) {
        return Some(dt);
    }
    // Lenient forms DateTime.Parse(InvariantCulture) accepts and that devices really send.
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(Timestamp::from_datetime(dt.with_timezone(&Utc)));
    }
    if let Ok(dt) = DateTime::parse_from_rfc2822(t) {
        return Some(Timestamp::from_datetime(dt.with_timezone(&Utc)));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%m/%d/%Y %H:%M:%S%.f",
        "%m/%d/%Y %H:%M",
        "%Y/%m/%d %H:%M:%S%.f",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
            return Some(Timestamp::from_datetime(Utc.from_utc_datetime(&n)));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(dt) = DateTime::<FixedOffset>::parse_from_str(t, f) {
            return Some(Timestamp::from_datetime(dt.with_timezone(&Utc)));
        }
    }
    for f in ["%m/%d/%Y", "%Y/%m/%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(t, f) {
            return Some(Timestamp::from_datetime(
                Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)),
            ));
        }
    }
    None
}

/// Json.NET's `DateTimeParser` ISO form: `yyyy-MM-dd` optionally followed by
/// `THH:mm[:ss[.fffffff...]]` and `Z` or `±HH[:mm]`. Returns the UTC instant.
fn parse_jsonnet_iso(s: &str) -> Option<Timestamp> {
    parse_jsonnet_iso_date(s).map(|dt| Timestamp::from_datetime(Utc.from_utc_datetime(&dt)))
}

/// As [`parse_jsonnet_iso`] but returns the naive date-time Json.NET would hold (offsets are
/// converted to the host's local time, which is UTC on the connector's hosts).
fn parse_jsonnet_iso_date(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    if b.len() == 10 {
        return Some(date.and_time(NaiveTime::MIN));
    }
    if b[10] != b'T' || b.len() < 16 || b[13] != b':' {
        return None;
    }
    let (h, mi) = (num(11..13)?, num(14..16)?);
    let mut i = 16;
    let mut sec = 0;
    let mut ticks = 0u32;
    if b.get(i) == Some(&b':') {
        sec = num(17..19)?;
        i = 19;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return None;
            }
            // Ticks from the first 7 digits; Json.NET rounds the 8th, we truncate (sub-tick).
            let digits = &s[start..i.min(start + 7)];
            ticks = digits.parse::<u32>().ok()? * 10u32.pow(7 - digits.len() as u32);
        }
    }
    let time = NaiveTime::from_hms_nano_opt(h, mi, sec, ticks * 100)?;
    let naive = date.and_time(time);
    let rest = &s[i..];
    if rest.is_empty() || rest == "Z" {
        return Some(naive);
    }
    let sign = match rest.as_bytes()[0] {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return None,
    };
    let off = &rest[1..];
    let (oh, om) = match off.len() {
        2 => (off.parse::<i64>().ok()?, 0),
        4 => (
            off[0..2].parse::<i64>().ok()?,
            off[2..4].parse::<i64>().ok()?,
        ),
        5 if off.as_bytes()[2] == b':' => (
            off[0..2].parse::<i64>().ok()?,
            off[3..5].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    if !off.bytes().all(|c| c.is_ascii_digit() || c == b':') || oh > 14 || om > 59 {
        return None;
    }
    naive.checked_sub_signed(chrono::Duration::minutes(sign * (oh * 60 + om)))
}

/// .NET Core 3.0+ `double.ToString(CultureInfo.InvariantCulture)`: the shortest string that
/// round-trips, in scientific notation when the decimal exponent is -5 or less, or 15 or more
/// (`E+XX` / `E-XX`, at least two exponent digits).
pub fn dotnet_double(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "∞".into() } else { "-∞".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // Shortest round-trip digits via Rust's formatter in exponent form: "d.dddde[-]x".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if !(-4..15).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}E{esign}{:02}", exp.abs());
    }
    let n = digits.len() as i32;
    if exp < 0 {
        format!("{sign}0.{}{}", "0".repeat((-exp - 1) as usize), digits)
    } else if exp + 1 >= n {
        format!("{sign}{}{}", digits, "0".repeat((exp + 1 - n) as usize))
    } else {
        let (int, frac) = digits.split_at((exp + 1) as usize);
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotnet_double_formatting() {
        let cases = [
            (36.6, "36.6"),
            (36.60, "36.6"),
            (1.9812, "1.9812"),
            (78.0 * 0.0254, "1.9811999999999999"),
            (100.0, "100"),
            (0.0001, "0.0001"),
            (0.00001, "1E-05"),
            (123456789012345.0, "123456789012345"),
            (1e15, "1E+15"),
            (1234567890123456.0, "1.234567890123456E+15"),
            (-2.5, "-2.5"),
            (f64::MAX, "1.7976931348623157E+308"),
            (5e-324, "5E-324"),
        ];
        for (x, want) in cases {
            assert_eq!(dotnet_double(x), want, "{x:e}");
        }
    }

    #[test]
    fn token_to_string_like_jsonnet() {
        assert_eq!(value_to_string(&json!(78)).unwrap().unwrap(), "78");
        assert_eq!(value_to_string(&json!(36.60)).unwrap().unwrap(), "36.6");
        assert_eq!(value_to_string(&json!(true)).unwrap().unwrap(), "True");
        assert_eq!(value_to_string(&json!(false)).unwrap().unwrap(), "False");
        assert_eq!(value_to_string(&json!("200m")).unwrap().unwrap(), "200m");
        assert_eq!(value_to_string(&json!(null)).unwrap(), None);
        assert!(value_to_string(&json!({"a": 1})).is_err());
        assert!(value_to_string(&json!([1])).is_err());
        // Date-looking strings became DateTime tokens in Json.NET and print invariantly.
        assert_eq!(
            value_to_string(&json!("2019-02-01T22:46:01.875Z"))
                .unwrap()
                .unwrap(),
            "02/01/2019 22:46:01"
        );
        assert_eq!(
            value_to_string(&json!("2019-02-01T22:46:01+01:00"))
                .unwrap()
                .unwrap(),
            "02/01/2019 21:46:01"
        );
        assert_eq!(
            value_to_string(&json!("2019-02-01 is a date"))
                .unwrap()
                .unwrap(),
            "2019-02-01 is a date"
        );
    }

    #[test]
    fn times() {
        let t = |s: &str| value_to_time(&json!(s)).unwrap().unwrap().format_o();
        assert_eq!(
            t("2019-02-01T22:46:01.875Z"),
            "2019-02-01T22:46:01.8750000Z"
        );
        assert_eq!(
            t("2019-01-30T22:45:02.6073744Z"),
            "2019-01-30T22:45:02.6073744Z"
        );
        assert_eq!(
            t("2023-03-13T22:46:01.8750000"),
            "2023-03-13T22:46:01.8750000Z"
        );
        assert_eq!(
            t("2021-07-13T19:29:01.061144+02:00"),
            "2021-07-13T17:29:01.0611440Z"
        );
        assert_eq!(t("2024-01-01"), "2024-01-01T00:00:00.0000000Z");
        assert_eq!(t("2024-01-01 10:00:00"), "2024-01-01T10:00:00.0000000Z");
        assert_eq!(t("02/01/2019 22:46:01"), "2019-02-01T22:46:01.0000000Z");
        assert_eq!(
            value_to_time(&json!(1690000000)),
            Err(ConvertError::NumberAsTime)
        );
        assert!(matches!(
            value_to_time(&json!("yesterday")),
            Err(ConvertError::BadTime(_))
        ));
        assert!(matches!(
            value_to_time(&json!("2024-13-01T00:00:00Z")),
            Err(ConvertError::BadTime(_))
        ));
        assert!(value_to_time(&json!(true)).is_err());
        assert_eq!(value_to_time(&json!(null)), Ok(None));
    }
}
