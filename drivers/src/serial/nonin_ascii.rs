//! Nonin ASCII lines (7500FO, 9600 Avant, BT4000, 9847; device-protocols.md §3.2):
//! `[HH:MM:SS ]SPO2=XXX HR=YYY` optionally followed by `*` (event mark, also accepted glued
//! to a value as in `HR=101*`), `F` (fast-responding values) and `B` (breath detected; also accepted glued to a value).
//!
//! Body: `values.spo2` (%, MDC 150456), `values.pulse_rate` (/min, MDC 149530); `---` is
//! `null` with `absent = "missing"`. Then `event_mark`, `fast_response`, `breath_detected`
//! (booleans) and `time_of_day` (`HH:MM:SS`, only when the line has one; it has no date).
//! Both `SPO2` and `HR` are required; any other token rejects the line (a header line, or a
//! format this decoder does not know).

use serde_json::Value;

use super::SerialError;
use crate::body::{Absent, Body, Reading};

const PROTOCOL: &str = "nonin-ascii";

fn not_data(reason: impl Into<String>) -> SerialError {
    SerialError::NotADataLine {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

fn parse_value(key: &str, text: &str) -> Result<Reading, SerialError> {
    if !text.is_empty() && text.chars().all(|c| c == '-') {
        return Ok(Reading::Absent(Absent::Missing));
    }
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SerialError::BadValue {
            protocol: PROTOCOL,
            key: key.into(),
            value: text.into(),
            reason: "expected up to 3 digits or ---".into(),
        });
    }
    text.parse::<i64>()
        .map(Reading::Int)
        .map_err(|e| SerialError::BadValue {
            protocol: PROTOCOL,
            key: key.into(),
            value: text.into(),
            reason: e.to_string(),
        })
}

fn time_of_day(token: &str) -> Option<String> {
    let b = token.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let num = |i: usize| -> Option<u8> {
        let (h, l) = (b[i], b[i + 1]);
        (h.is_ascii_digit() && l.is_ascii_digit()).then(|| (h - b'0') * 10 + (l - b'0'))
    };
    let (h, m, s) = (num(0)?, num(3)?, num(6)?);
    (h < 24 && m < 60 && s < 60).then(|| token.to_owned())
}

/// Decodes one Nonin ASCII line (without its CR LF).
pub fn decode_nonin_ascii_line(line: &str) -> Result<Value, SerialError> {
    let mut tokens = line.split_whitespace().peekable();
    let time = match tokens.peek() {
        Some(t) if t.contains(':') => {
            let t = time_of_day(t).ok_or_else(|| not_data(format!("bad time {t:?}")))?;
            tokens.next();
            Some(t)
        }
        _ => None,
    };
    let (mut spo2, mut hr) = (None, None);
    let (mut event, mut fast, mut breath) = (false, false, false);
    for token in tokens {
        match token {
            "*" => event = true,
            "F" => fast = true,
            "B" => breath = true,
            _ => {
                let (key, mut value) = token
                    .split_once('=')
                    .ok_or_else(|| not_data(format!("unexpected token {token:?}")))?;
                loop {
                    if let Some(v) = value.strip_suffix('*') {
                        event = true;
                        value = v;
                    } else if let Some(v) = value.strip_suffix('B') {
                        breath = true;
                        value = v;
                    } else {
                        break;
                    }
                }
                let slot = match key {
                    "SPO2" => &mut spo2,
                    "HR" => &mut hr,
                    _ => return Err(not_data(format!("unknown key {key:?}"))),
                };
                if slot.is_some() {
                    return Err(not_data(format!("duplicate key {key:?}")));
                }
                *slot = Some(parse_value(key, value)?);
            }
        }
    }
    let (Some(spo2), Some(hr)) = (spo2, hr) else {
        return Err(not_data("needs both SPO2= and HR="));
    };
    let mut body = Body::new(PROTOCOL);
    body.measure("spo2", spo2, Some("%"), Some(150456));
    body.measure("pulse_rate", hr, Some("/min"), Some(149530));
    body.field("event_mark", event);
    body.field("fast_response", fast);
    body.field("breath_detected", breath);
    if let Some(t) = time {
        body.field("time_of_day", t);
    }
    Ok(body.into_value())
}
