//! Masimo ASCII 1 lines (Radical-7, Rad-8, Rad-87, Rad-97; device-protocols.md §3.3):
//! `MM/DD/YY HH:MM:SS KEY=VALUE KEY=VALUE …`.
//!
//! Rules:
//! - Leading NULs and whitespace are stripped; a line that does not then start with
//!   `dd/dd/dd dd:dd:dd` is rejected (partial first line after opening the port).
//! - Keys are case-insensitive (`SpO2`, `PR` in the Rad-8 trend layout). Values may end in
//!   `%`; a value made only of `-`, `+` and `.` means "no value"; decimals keep their digits
//!   (`PI=02.21` → 2.21, `PI=00.55` → 0.55).
//! - `ALARM`, `EXC` and `EXC1` are hex; `EXC` may carry a `:text` suffix.
//! - When `EXC` has a sensor exception that makes the readings meaningless (mask
//!   [`MASIMO_SUPPRESSING_EXCEPTIONS`]: no sensor, defective sensor, pulse search, sensor off,
//!   unrecognised sensor), every physiological value is `null` with `absent = "invalid"`, even
//!   when the line prints `000`. Other exceptions (low perfusion, interference, ambient light,
//!   low signal IQ) are flagged only.
//! - The two-digit year is taken as 20YY.
//!
//! Body: `values` in line order — `spo2` (%, 150456), `pulse_rate` from `BPM` or `PR` (/min,
//! 149530), `perfusion_index` (%, 150448), `spco` (%), `spmet` (%), `sphb` (g/dL), `spoc`
//! (mL/dL), `pvi` (%), `desat`, `pi_delta`; then `device_time` (ISO local, no offset),
//! `serial_number` (string, `null` when dashed), `alarm` (integer; bit meanings are
//! proprietary), `exceptions` (raw plus named bits of the low 12 bits), `exception_text`,
//! `exc1`, and `other` for keys not listed here (raw text; `RESVD` is ignored).

use chrono::NaiveDate;
use serde_json::{Map, Value};

use super::SerialError;
use crate::body::{bit_flags, Absent, Body, Reading};
use crate::ieee11073::Decimal;

const PROTOCOL: &str = "masimo-ascii";

/// EXC bits under which the numeric values are not measurements: 0x001 no sensor, 0x002
/// defective sensor, 0x008 pulse search, 0x020 sensor off, 0x080 unrecognised sensor.
pub const MASIMO_SUPPRESSING_EXCEPTIONS: u32 = 0x001 | 0x002 | 0x008 | 0x020 | 0x080;

const EXCEPTION_BITS: [Option<&str>; 12] = [
    Some("no_sensor"),
    Some("defective_sensor"),
    Some("low_perfusion"),
    Some("pulse_search"),
    Some("interference"),
    Some("sensor_off"),
    Some("ambient_light"),
    Some("unrecognized_sensor"),
    None,
    None,
    Some("low_signal_iq"),
    Some("masimo_set_active"),
];

fn not_data(reason: impl Into<String>) -> SerialError {
    SerialError::NotADataLine {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

fn bad(key: &str, value: &str, reason: impl Into<String>) -> SerialError {
    SerialError::BadValue {
        protocol: PROTOCOL,
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// (body key, UCUM unit, MDC code) for a numeric key.
fn numeric_key(key: &str) -> Option<(&'static str, Option<&'static str>, Option<u32>)> {
    Some(match key {
        "SPO2" => ("spo2", Some("%"), Some(150456)),
        "BPM" | "PR" => ("pulse_rate", Some("/min"), Some(149530)),
        "PI" => ("perfusion_index", Some("%"), Some(150448)),
        "SPCO" => ("spco", Some("%"), None),
        "SPMET" => ("spmet", Some("%"), None),
        "SPHB" => ("sphb", Some("g/dL"), None),
        "SPOC" => ("spoc", Some("mL/dL"), None),
        "PVI" => ("pvi", Some("%"), None),
        "DESAT" => ("desat", None, None),
        "PIDELTA" => ("pi_delta", None, None),
        _ => return None,
    })
}

fn is_dashes(v: &str) -> bool {
    !v.is_empty() && v.chars().all(|c| matches!(c, '-' | '+' | '.'))
}

fn parse_numeric(key: &str, value: &str) -> Result<Reading, SerialError> {
    let v = value.strip_suffix('%').unwrap_or(value);
    if is_dashes(v) {
        return Ok(Reading::Absent(Absent::Missing));
    }
    v.parse::<Decimal>()
        .map(Reading::Decimal)
        .map_err(|e| bad(key, value, e.to_string()))
}

fn parse_hex(key: &str, value: &str) -> Result<u32, SerialError> {
    if value.is_empty() || value.len() > 8 {
        return Err(bad(key, value, "expected 1 to 8 hex digits"));
    }
    u32::from_str_radix(value, 16).map_err(|e| bad(key, value, e.to_string()))
}

/// Parses the `MM/DD/YY HH:MM:SS` prefix into an ISO local date-time.
fn device_time(prefix: &str) -> Result<String, SerialError> {
    let b = prefix.as_bytes();
    let shape_ok = b.len() == 17
        && b.iter().enumerate().all(|(i, c)| match i {
            2 | 5 => *c == b'/',
            8 => *c == b' ',
            11 | 14 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(not_data("does not start with MM/DD/YY HH:MM:SS"));
    }
    let n = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
    let (month, day, year) = (n(0), n(3), 2000 + n(6));
    let (h, m, s) = (n(9), n(12), n(15));
    let dt = NaiveDate::from_ymd_opt(year as i32, month, day)
        .and_then(|d| d.and_hms_opt(h, m, s))
        .ok_or_else(|| not_data(format!("invalid date-time {prefix:?}")))?;
    Ok(dt.format("%Y-%m-%dT%H:%M:%S").to_string())
}

/// Decodes one Masimo ASCII 1 line (without its CR LF).
pub fn decode_masimo_line(line: &str) -> Result<Value, SerialError> {
    let line = line
        .trim_start_matches(|c: char| c == '\0' || c.is_whitespace())
        .trim_end();
    let prefix = line.get(..17).ok_or_else(|| not_data("too short"))?;
    let time = device_time(prefix)?;
    let rest = &line[17..];
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return Err(not_data("no space after the time"));
    }

    let mut readings: Vec<(&'static str, Reading, Option<&str>, Option<u32>)> = Vec::new();
    let mut serial = None;
    let mut alarm = None;
    let mut exc = None;
    let mut exc_text = None;
    let mut exc1 = None;
    let mut other = Map::new();
    let mut seen: Vec<String> = Vec::new();
    for token in rest.split_whitespace() {
        let (raw_key, value) = token
            .split_once('=')
            .ok_or_else(|| not_data(format!("token {token:?} is not KEY=VALUE")))?;
        let key = raw_key.to_ascii_uppercase();
        if seen.contains(&key) {
            return Err(bad(&key, value, "duplicate key"));
        }
        seen.push(key.clone());
        if let Some((name, unit, code)) = numeric_key(&key) {
            if readings.iter().any(|r| r.0 == name) {
                return Err(bad(&key, value, "duplicate quantity"));
            }
            readings.push((name, parse_numeric(&key, value)?, unit, code));
            continue;
        }
        match key.as_str() {
            "SN" => {
                serial = Some(if value.chars().all(|c| c == '-') {
                    Value::Null
                } else {
                    Value::from(value)
                });
            }
            "ALARM" => alarm = Some(parse_hex(&key, value)?),
            "EXC" => {
                let (hex, text) = match value.split_once(':') {
                    Some((h, t)) => (h, Some(t)),
                    None => (value, None),
                };
                exc = Some(parse_hex(&key, hex)?);
                exc_text = text.map(str::to_owned);
            }
            "EXC1" => exc1 = Some(parse_hex(&key, value)?),
            "RESVD" => {}
            _ => {
                other.insert(raw_key.to_owned(), Value::from(value));
            }
        }
    }
    if readings.is_empty() {
        return Err(not_data("no measurement keys"));
    }

    let suppress = exc.is_some_and(|e| e & MASIMO_SUPPRESSING_EXCEPTIONS != 0);
    let mut body = Body::new(PROTOCOL);
    for (name, reading, unit, code) in readings {
        let reading = match reading {
            Reading::Decimal(_) | Reading::Int(_) if suppress => Reading::Absent(Absent::Invalid),
            r => r,
        };
        body.measure(name, reading, unit, code);
    }
    body.field("device_time", time);
    if let Some(sn) = serial {
        body.field("serial_number", sn);
    }
    if let Some(alarm) = alarm {
        body.field("alarm", alarm);
    }
    if let Some(exc) = exc {
        body.field("exceptions", bit_flags(exc, &EXCEPTION_BITS));
    }
    if let Some(text) = exc_text {
        body.field("exception_text", text);
    }
    if let Some(exc1) = exc1 {
        body.field("exc1", exc1);
    }
    if !other.is_empty() {
        body.field("other", Value::Object(other));
    }
    Ok(body.into_value())
}
