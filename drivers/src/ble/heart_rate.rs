//! Heart Rate Measurement 0x2A37 (device-protocols.md §2.2).
//!
//! Body: `values.heart_rate` (/min, MDC 147842) and `values.energy_expended` (kJ) when
//! flagged; `sensor_contact` is `not_supported` (bits 1–2 = 0 or 1), `not_detected` (2) or
//! `detected` (3); with the RR flag, `rr_intervals_raw` (units of 1/1024 s, oldest first) and
//! `rr_intervals_ms` (exact `raw × 1000 / 1024`). The RR flag with no RR value, or an odd
//! number of RR bytes, is rejected.

use serde_json::Value;

use super::{BleError, Characteristic, Reader};
use crate::body::{Body, Reading};

const UINT16_HR: u8 = 0x01;
const ENERGY: u8 = 0x08;
const RR: u8 = 0x10;

pub(crate) fn decode(data: &[u8]) -> Result<Value, BleError> {
    let c = Characteristic::HeartRateMeasurement;
    let mut r = Reader::new(c, data);
    let flags = r.flags(0x1F)?;
    let hr = if flags & UINT16_HR != 0 {
        r.u16("heart rate")?
    } else {
        u16::from(r.u8("heart rate")?)
    };
    let contact = match (flags >> 1) & 0x03 {
        0 | 1 => "not_supported",
        2 => "not_detected",
        _ => "detected",
    };
    let mut body = Body::new(c.name());
    body.measure(
        "heart_rate",
        Reading::Int(i64::from(hr)),
        Some("/min"),
        Some(147842),
    );
    if flags & ENERGY != 0 {
        let kj = r.u16("energy expended")?;
        body.measure(
            "energy_expended",
            Reading::Int(i64::from(kj)),
            Some("kJ"),
            None,
        );
    }
    body.field("sensor_contact", contact);
    if flags & RR != 0 {
        let rest = r.rest();
        if rest.is_empty() || !rest.len().is_multiple_of(2) {
            return Err(BleError::BadRrIntervals {
                characteristic: c.name(),
                len: rest.len(),
            });
        }
        let raw: Vec<u16> = rest
            .chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        // raw × 1000 / 1024 = raw × 125 / 128: exact in binary floating point.
        let ms: Vec<Value> = raw
            .iter()
            .map(|v| Value::from(f64::from(*v) * 125.0 / 128.0))
            .collect();
        body.field("rr_intervals_raw", raw);
        body.field("rr_intervals_ms", ms);
    }
    r.finish()?;
    Ok(body.into_value())
}
