//! Weight Measurement 0x2A9D (device-protocols.md §2.6).
//!
//! The fields are scaled integers, not IEEE 11073 floats. Each becomes a decimal whose
//! digits follow the field's resolution: SI weight raw × 0.005 kg (3 decimals, so 14000 →
//! `70.000`), imperial raw × 0.01 lb, BMI raw × 0.1 kg/m2, SI height raw × 0.001 m, imperial
//! height raw × 0.1 in. Weight `0xFFFF` ("measurement unsuccessful") is `null` with
//! `absent.weight = "unsuccessful"`.
//!
//! Body: `values.weight` (`kg` / `[lb_av]`, MDC 188736), with the BMI flag `values.bmi`
//! (`kg/m2`, MDC 188752) and `values.height` (`m` / `[in_i]`, MDC 188740); optional
//! `timestamp` and `user_id` (`null` for 0xFF).

use serde_json::Value;

use super::{put_date_time, user_id_json, BleError, Characteristic, Reader};
use crate::body::{Absent, Body, Reading};
use crate::ieee11073::Decimal;

const IMPERIAL: u8 = 0x01;
const TIMESTAMP: u8 = 0x02;
const USER: u8 = 0x04;
const BMI_HEIGHT: u8 = 0x08;

pub(crate) fn decode(data: &[u8]) -> Result<Value, BleError> {
    let c = Characteristic::WeightMeasurement;
    let mut r = Reader::new(c, data);
    let flags = r.flags(0x0F)?;
    let imperial = flags & IMPERIAL != 0;
    let raw = r.u16("weight")?;
    let mut body = Body::new(c.name());
    let weight = match (raw, imperial) {
        (0xFFFF, _) => Reading::Absent(Absent::Unsuccessful),
        (raw, false) => Reading::Decimal(Decimal::new(i64::from(raw) * 5, -3)),
        (raw, true) => Reading::Decimal(Decimal::new(i64::from(raw), -2)),
    };
    let unit = if imperial { "[lb_av]" } else { "kg" };
    body.measure("weight", weight, Some(unit), Some(188736));
    if flags & TIMESTAMP != 0 {
        let ts = r.date_time("time stamp")?;
        put_date_time(&mut body, "timestamp", &ts);
    }
    if flags & USER != 0 {
        body.field("user_id", user_id_json(r.u8("user id")?));
    }
    if flags & BMI_HEIGHT != 0 {
        let bmi = r.u16("BMI")?;
        let height = r.u16("height")?;
        body.measure(
            "bmi",
            Decimal::new(i64::from(bmi), -1),
            Some("kg/m2"),
            Some(188752),
        );
        let (height, unit) = if imperial {
            (Decimal::new(i64::from(height), -1), "[in_i]")
        } else {
            (Decimal::new(i64::from(height), -3), "m")
        };
        body.measure("height", height, Some(unit), Some(188740));
    }
    r.finish()?;
    Ok(body.into_value())
}
