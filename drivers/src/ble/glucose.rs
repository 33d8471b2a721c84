//! Glucose Measurement 0x2A18 (device-protocols.md §2.7).
//!
//! Body: `sequence_number` (identifies the record; not arrival order), `base_time`,
//! `time_offset_minutes` (when flagged) and `timestamp` = base time + offset (`null` when the
//! base time is incomplete). With the concentration flag: `values.concentration` exactly as
//! sent in `kg/L` or `mol/L` (flag bit 2; the value is not rescaled), and
//! `values.glucose`, the same digits moved to the clinical unit by an exact exponent shift
//! (kg/L × 10^5 = `mg/dL`, mol/L × 10^3 = `mmol/L`), with the MDC code of the sample type
//! (§5.3); `sample_type`, `sample_type_name`, `sample_location`, `sample_location_name`.
//! Optional `sensor_status_annunciation`; `context_information_follows` is flag bit 4 (the
//! context arrives separately in 0x2A34).

use chrono::Duration;
use serde_json::Value;

use super::{put_date_time, BleError, Characteristic, Reader};
use crate::body::{bit_flags, Body, Reading};
use crate::ieee11073::MderFloat;

const TIME_OFFSET: u8 = 0x01;
const CONCENTRATION: u8 = 0x02;
const MOL_PER_L: u8 = 0x04;
const STATUS: u8 = 0x08;
const CONTEXT: u8 = 0x10;

const STATUS_BITS: [Option<&str>; 12] = [
    Some("battery_low"),
    Some("sensor_malfunction"),
    Some("sample_size_insufficient"),
    Some("strip_insertion_error"),
    Some("strip_type_incorrect"),
    Some("result_too_high"),
    Some("result_too_low"),
    Some("sensor_temperature_too_high"),
    Some("sensor_temperature_too_low"),
    Some("read_interrupted"),
    Some("general_device_fault"),
    Some("time_fault"),
];

/// Sample type name and MDC code (§5.3).
fn sample_type(t: u8) -> Option<(&'static str, u32)> {
    Some(match t {
        1 => ("capillary_whole_blood", 160184),
        2 => ("capillary_plasma", 160188),
        3 => ("venous_whole_blood", 160192),
        4 => ("venous_plasma", 160196),
        5 => ("arterial_whole_blood", 160200),
        6 => ("arterial_plasma", 160204),
        7 => ("undetermined_whole_blood", 160364),
        8 => ("undetermined_plasma", 160368),
        9 => ("interstitial_fluid", 160212),
        10 => ("control_solution", 160208),
        _ => return None,
    })
}

fn sample_location(l: u8) -> Option<&'static str> {
    Some(match l {
        1 => "finger",
        2 => "alternate_site_test",
        3 => "earlobe",
        4 => "control_solution",
        15 => "not_available",
        _ => return None,
    })
}

pub(crate) fn decode(data: &[u8]) -> Result<Value, BleError> {
    let c = Characteristic::GlucoseMeasurement;
    let mut r = Reader::new(c, data);
    let flags = r.flags(0x1F)?;
    let sequence = r.u16("sequence number")?;
    let base = r.date_time("base time")?;
    let offset = if flags & TIME_OFFSET != 0 {
        Some(r.i16("time offset")?)
    } else {
        None
    };
    let concentration = if flags & CONCENTRATION != 0 {
        Some((r.sfloat("concentration")?, r.u8("type-sample location")?))
    } else {
        None
    };
    let status = if flags & STATUS != 0 {
        Some(r.u16("sensor status annunciation")?)
    } else {
        None
    };
    r.finish()?;

    let mut body = Body::new(c.name());
    if let Some((conc, type_location)) = concentration {
        let mol = flags & MOL_PER_L != 0;
        let (sent_unit, clinical_unit, shift) = if mol {
            ("mol/L", "mmol/L", 3)
        } else {
            ("kg/L", "mg/dL", 5)
        };
        let kind = type_location & 0x0F;
        let location = type_location >> 4;
        let code = sample_type(kind).map(|t| t.1);
        let clinical = match conc {
            MderFloat::Value(d) => match d.scale(shift) {
                Some(d) => Reading::Decimal(d),
                None => Reading::from(conc),
            },
            MderFloat::Special(_) => Reading::from(conc),
        };
        body.measure("glucose", clinical, Some(clinical_unit), code);
        body.measure("concentration", conc, Some(sent_unit), None);
        body.field("sequence_number", sequence);
        put_times(&mut body, &base, offset);
        body.field("sample_type", kind);
        body.field("sample_type_name", sample_type(kind).map(|t| t.0));
        body.field("sample_location", location);
        body.field("sample_location_name", sample_location(location));
    } else {
        body.field("sequence_number", sequence);
        put_times(&mut body, &base, offset);
    }
    if let Some(raw) = status {
        body.field(
            "sensor_status_annunciation",
            bit_flags(u32::from(raw), &STATUS_BITS),
        );
    }
    body.field("context_information_follows", flags & CONTEXT != 0);
    Ok(body.into_value())
}

fn put_times(body: &mut Body, base: &super::DateTime, offset: Option<i16>) {
    put_date_time(body, "base_time", base);
    if let Some(minutes) = offset {
        body.field("time_offset_minutes", minutes);
    }
    let effective = base
        .to_naive()
        .and_then(|b| b.checked_add_signed(Duration::minutes(i64::from(offset.unwrap_or(0)))))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string());
    body.field("timestamp", effective);
}
