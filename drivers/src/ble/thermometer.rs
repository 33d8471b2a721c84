//! Temperature Measurement 0x2A1C and Intermediate Temperature 0x2A1E (same layout,
//! device-protocols.md §2.4).
//!
//! Body: `values.temperature` (a 32-bit FLOAT; `Cel` or `[degF]` as sent), `codes.temperature`
//! from the Temperature Type per §5.3 (MDC_TEMP_BODY 150364 when the type is absent or not a
//! known value), optional `timestamp`, `temperature_type` (the raw code) and
//! `temperature_site` (`armpit`, `body`, `ear`, `finger`, `gastrointestinal_tract`, `mouth`,
//! `rectum`, `toe`, `tympanum`, or `null` for codes the spec reserves).

use serde_json::Value;

use super::{put_date_time, BleError, Characteristic, Reader};
use crate::body::Body;

const FAHRENHEIT: u8 = 0x01;
const TIMESTAMP: u8 = 0x02;
const TYPE: u8 = 0x04;

/// MDC_TEMP_BODY, used when no (known) type is given.
const TEMP_BODY: u32 = 150364;

pub(crate) fn decode_measurement(data: &[u8]) -> Result<Value, BleError> {
    decode(Characteristic::TemperatureMeasurement, data)
}

pub(crate) fn decode_intermediate(data: &[u8]) -> Result<Value, BleError> {
    decode(Characteristic::IntermediateTemperature, data)
}

/// Site name and MDC code for an HTS Temperature Type.
fn site(kind: u8) -> Option<(&'static str, u32)> {
    Some(match kind {
        1 => ("armpit", 188452),
        2 => ("body", 150364),
        3 => ("ear", 188428),
        4 => ("finger", 188432),
        5 => ("gastrointestinal_tract", 188456),
        6 => ("mouth", 188424),
        7 => ("rectum", 188420),
        8 => ("toe", 188448),
        9 => ("tympanum", 150392),
        _ => return None,
    })
}

fn decode(c: Characteristic, data: &[u8]) -> Result<Value, BleError> {
    let mut r = Reader::new(c, data);
    let flags = r.flags(0x07)?;
    let unit = if flags & FAHRENHEIT != 0 {
        "[degF]"
    } else {
        "Cel"
    };
    let temperature = r.float("temperature")?;
    let timestamp = if flags & TIMESTAMP != 0 {
        Some(r.date_time("time stamp")?)
    } else {
        None
    };
    let kind = if flags & TYPE != 0 {
        Some(r.u8("temperature type")?)
    } else {
        None
    };
    r.finish()?;
    let site = kind.and_then(site);
    let mut body = Body::new(c.name());
    body.measure(
        "temperature",
        temperature,
        Some(unit),
        Some(site.map_or(TEMP_BODY, |s| s.1)),
    );
    if let Some(ts) = timestamp {
        put_date_time(&mut body, "timestamp", &ts);
    }
    if let Some(kind) = kind {
        body.field("temperature_type", kind);
        body.field("temperature_site", site.map(|s| s.0));
    }
    Ok(body.into_value())
}
