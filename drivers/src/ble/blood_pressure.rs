//! Blood Pressure Measurement 0x2A35 and Intermediate Cuff Pressure 0x2A36
//! (device-protocols.md §2.3).
//!
//! Body (BPM): `values.systolic`, `values.diastolic`, `values.mean_arterial_pressure`
//! (`mm[Hg]` or `kPa` as the device sent, MDC 150021/150022/150023) and, when flagged,
//! `values.pulse_rate` (/min, MDC 149546). ICP: `values.cuff_pressure` instead of the three
//! pressures; the diastolic and MAP fields of ICP are unused and skipped whatever they
//! contain (Nordic fills them with zeros, the spec says NaN). Optional `timestamp`,
//! `user_id` (`null` for 0xFF "unknown user") and `measurement_status` (bits plus
//! `pulse_rate_range`: `within_range`, `above_upper_limit`, `below_lower_limit`, `reserved`).

use serde_json::{Map, Value};

use super::{put_date_time, user_id_json, BleError, Characteristic, Reader};
use crate::body::{bit_flags, Body};

const KPA: u8 = 0x01;
const TIMESTAMP: u8 = 0x02;
const PULSE: u8 = 0x04;
const USER: u8 = 0x08;
const STATUS: u8 = 0x10;

pub(crate) fn decode_measurement(data: &[u8]) -> Result<Value, BleError> {
    decode(Characteristic::BloodPressureMeasurement, data)
}

pub(crate) fn decode_intermediate(data: &[u8]) -> Result<Value, BleError> {
    decode(Characteristic::IntermediateCuffPressure, data)
}

fn decode(c: Characteristic, data: &[u8]) -> Result<Value, BleError> {
    let intermediate = c == Characteristic::IntermediateCuffPressure;
    let mut r = Reader::new(c, data);
    let flags = r.flags(0x1F)?;
    let unit = if flags & KPA != 0 { "kPa" } else { "mm[Hg]" };
    let mut body = Body::new(c.name());
    if intermediate {
        let cuff = r.sfloat("current cuff pressure")?;
        r.skip(4, "unused diastolic and MAP fields")?;
        body.measure("cuff_pressure", cuff, Some(unit), None);
    } else {
        let sys = r.sfloat("systolic")?;
        let dia = r.sfloat("diastolic")?;
        let map = r.sfloat("mean arterial pressure")?;
        body.measure("systolic", sys, Some(unit), Some(150021));
        body.measure("diastolic", dia, Some(unit), Some(150022));
        body.measure("mean_arterial_pressure", map, Some(unit), Some(150023));
    }
    let timestamp = if flags & TIMESTAMP != 0 {
        Some(r.date_time("time stamp")?)
    } else {
        None
    };
    if flags & PULSE != 0 {
        let pulse = r.sfloat("pulse rate")?;
        body.measure("pulse_rate", pulse, Some("/min"), Some(149546));
    }
    if let Some(ts) = timestamp {
        put_date_time(&mut body, "timestamp", &ts);
    }
    if flags & USER != 0 {
        body.field("user_id", user_id_json(r.u8("user id")?));
    }
    if flags & STATUS != 0 {
        let status = r.u16("measurement status")?;
        body.field("measurement_status", measurement_status(status));
    }
    r.finish()?;
    Ok(body.into_value())
}

fn measurement_status(raw: u16) -> Value {
    let mut obj = match bit_flags(
        u32::from(raw),
        &[
            Some("body_movement"),
            Some("cuff_too_loose"),
            Some("irregular_pulse"),
        ],
    ) {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    let range = match (raw >> 3) & 0x03 {
        0 => "within_range",
        1 => "above_upper_limit",
        2 => "below_lower_limit",
        _ => "reserved",
    };
    obj.insert("pulse_rate_range".into(), Value::from(range));
    obj.insert("improper_position".into(), Value::from(raw & 0x20 != 0));
    Value::Object(obj)
}
