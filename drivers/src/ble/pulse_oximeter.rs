//! PLX Spot-check Measurement 0x2A5E and PLX Continuous Measurement 0x2A5F
//! (device-protocols.md §2.5).
//!
//! Spot-check body: `values.spo2` (%, MDC 150456), `values.pulse_rate` (/min, MDC 149530),
//! optional `values.pulse_amplitude_index` (%, no MDC code: close to but not the same as
//! perfusion index), `timestamp`, `measurement_status`, `device_and_sensor_status`, and
//! `clock_not_set` (flag bit 4: a timestamp, if any, is untrusted).
//! Continuous body: the normal pair as `spo2` / `pulse_rate`, and `spo2_fast` /
//! `pulse_rate_fast`, `spo2_slow` / `pulse_rate_slow` when flagged (no MDC codes for these),
//! then status fields and PAI as above. Continuous has no timestamp: the agent uses its
//! receive time. When measurement status is present, `demo` repeats its "data for
//! demonstration" bit so every decoder exposes demo data the same way.

use serde_json::Value;

use super::{put_date_time, BleError, Characteristic, Reader};
use crate::body::{bit_flags, Body};

const SPO2: u32 = 150456;
const PULSE: u32 = 149530;

const MEASUREMENT_STATUS_BITS: [Option<&str>; 16] = [
    None,
    None,
    None,
    None,
    None,
    Some("measurement_ongoing"),
    Some("early_estimated_data"),
    Some("validated_data"),
    Some("fully_qualified_data"),
    Some("data_from_measurement_storage"),
    Some("data_for_demonstration"),
    Some("data_for_testing"),
    Some("calibration_ongoing"),
    Some("measurement_unavailable"),
    Some("questionable_measurement_detected"),
    Some("invalid_measurement_detected"),
];

const DEVICE_STATUS_BITS: [Option<&str>; 16] = [
    Some("extended_display_update_ongoing"),
    Some("equipment_malfunction"),
    Some("signal_processing_irregularity"),
    Some("inadequate_signal"),
    Some("poor_signal"),
    Some("low_perfusion"),
    Some("erratic_signal"),
    Some("non_pulsatile_signal"),
    Some("questionable_pulse"),
    Some("signal_analysis_ongoing"),
    Some("sensor_interference"),
    Some("sensor_unconnected_to_user"),
    Some("unknown_sensor_connected"),
    Some("sensor_displaced"),
    Some("sensor_malfunctioning"),
    Some("sensor_disconnected"),
];

const DEMO_BIT: u16 = 1 << 10;

pub(crate) fn decode_spot_check(data: &[u8]) -> Result<Value, BleError> {
    let c = Characteristic::PlxSpotCheckMeasurement;
    let mut r = Reader::new(c, data);
    let flags = r.flags(0x1F)?;
    let mut body = Body::new(c.name());
    let spo2 = r.sfloat("SpO2")?;
    let pr = r.sfloat("pulse rate")?;
    body.measure("spo2", spo2, Some("%"), Some(SPO2));
    body.measure("pulse_rate", pr, Some("/min"), Some(PULSE));
    if flags & 0x01 != 0 {
        let ts = r.date_time("timestamp")?;
        put_date_time(&mut body, "timestamp", &ts);
    }
    read_status_and_pai(
        &mut r,
        &mut body,
        flags & 0x02 != 0,
        flags & 0x04 != 0,
        flags & 0x08 != 0,
    )?;
    body.field("clock_not_set", flags & 0x10 != 0);
    r.finish()?;
    Ok(body.into_value())
}

pub(crate) fn decode_continuous(data: &[u8]) -> Result<Value, BleError> {
    let c = Characteristic::PlxContinuousMeasurement;
    let mut r = Reader::new(c, data);
    let flags = r.flags(0x1F)?;
    let mut body = Body::new(c.name());
    let spo2 = r.sfloat("SpO2PR-Normal SpO2")?;
    let pr = r.sfloat("SpO2PR-Normal PR")?;
    body.measure("spo2", spo2, Some("%"), Some(SPO2));
    body.measure("pulse_rate", pr, Some("/min"), Some(PULSE));
    if flags & 0x01 != 0 {
        let spo2 = r.sfloat("SpO2PR-Fast SpO2")?;
        let pr = r.sfloat("SpO2PR-Fast PR")?;
        body.measure("spo2_fast", spo2, Some("%"), None);
        body.measure("pulse_rate_fast", pr, Some("/min"), None);
    }
    if flags & 0x02 != 0 {
        let spo2 = r.sfloat("SpO2PR-Slow SpO2")?;
        let pr = r.sfloat("SpO2PR-Slow PR")?;
        body.measure("spo2_slow", spo2, Some("%"), None);
        body.measure("pulse_rate_slow", pr, Some("/min"), None);
    }
    read_status_and_pai(
        &mut r,
        &mut body,
        flags & 0x04 != 0,
        flags & 0x08 != 0,
        flags & 0x10 != 0,
    )?;
    r.finish()?;
    Ok(body.into_value())
}

fn read_status_and_pai(
    r: &mut Reader<'_>,
    body: &mut Body,
    measurement_status: bool,
    device_status: bool,
    pai: bool,
) -> Result<(), BleError> {
    if measurement_status {
        let raw = r.u16("measurement status")?;
        body.field(
            "measurement_status",
            bit_flags(u32::from(raw), &MEASUREMENT_STATUS_BITS),
        );
        body.field("demo", raw & DEMO_BIT != 0);
    }
    if device_status {
        let raw = r.u24("device and sensor status")?;
        body.field(
            "device_and_sensor_status",
            bit_flags(raw, &DEVICE_STATUS_BITS),
        );
    }
    if pai {
        let pai = r.sfloat("pulse amplitude index")?;
        body.measure("pulse_amplitude_index", pai, Some("%"), None);
    }
    Ok(())
}
