//! The gateway body of one BLE reading: the decoder's body (`iomt_drivers::ble`) plus the
//! device's identity, patient binding and the reading's effective time, so that the shipped
//! `templates/ble.*.json` (and a hospital's own templates) can map it. Pure: no I/O, and the
//! time is a parameter.
//!
//! Shape (keys in this order):
//!
//! ```json
//! { "deviceId": "C0-FF-EE-00-18-0D", "patientId": "p-1", "bed": "12",
//!   "timestamp": "2026-03-15T07:31:05.123Z", "timeSource": "gateway",
//!   "type": "heart_rate_measurement", "values": {...}, "units": {...}, "codes": {...},
//!   "absent": {...}, ...decoder fields..., "deviceTime": "2024-03-15T08:30:00",
//!   "bluetoothAddress": "C0-FF-EE-00-18-0D", "systemId": "00-1C-05-FF-FE-FF-E8-74",
//!   "deviceInformation": {"manufacturer": "...", "model": "...", "serial": "...",
//!                         "firmware": "...", "hardware": "...", "software": "..."},
//!   "identifiers": [{"system": "http://hl7.org/fhir/sid/eui-48/bluetooth", "type": "BTMAC",
//!                    "value": "C0-FF-EE-00-18-0D"}, {"system": "urn:oid:...2680", ...}] }
//! ```
//!
//! Invariants:
//! - `values` keeps the device's digits: a decimal the decoder gave as a JSON float is turned
//!   into a string with exactly the digits serde printed (`2.0` → `"2.0"`), because the
//!   connector's token-to-string conversion (Json.NET: `2.0` → `"2"`) would otherwise drop
//!   them before the FHIR Quantity is written. Integers stay numbers; `null` (a special value
//!   or "unsuccessful") stays `null` with its reason in `absent`: nothing invents a number.
//! - The decoder's own `timestamp` (the device's local clock, no zone) is renamed
//!   `deviceTime` (and `timestamp_parts` → `deviceTime_parts`); `timestamp` is the effective
//!   UTC time: the device time corrected by the coincident Current Time reading when allowed
//!   and possible (`timeSource = "device"`), else the gateway's receive time
//!   (`timeSource = "gateway"`). A device that says its clock is not set (PLX flag) is never
//!   trusted.
//! - Identity follows the HL7 PHD IG: the Bluetooth address as an EUI-48 with dashes, and the
//!   Device Information System ID (0x2A23, sent least significant octet first) as an EUI-64,
//!   most significant octet first, with dashes.

use super::config::{dashed, BtAddress};
use crate::mapping::measurement::jsonnet_time;
use crate::mapping::Timestamp;
use serde_json::{json, Map, Value};

/// `Device.identifier.system` for a Bluetooth address (PHD IG, `BTMAC`).
pub const EUI48_BLUETOOTH_SYSTEM: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
/// `Device.identifier.system` for an IEEE 11073 system id (PHD IG, `SYSID`).
pub const SYSTEM_ID_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";

/// What the Device Information Service (0x180A) told about the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub hardware: Option<String>,
    pub software: Option<String>,
    /// System ID 0x2A23 as read (8 octets, least significant first).
    pub system_id: Option<[u8; 8]>,
}

impl DeviceInfo {
    /// A DIS string characteristic's value: UTF-8 (lossy), trailing NULs and blanks removed;
    /// `None` when nothing is left.
    pub fn text(raw: &[u8]) -> Option<String> {
        let s = String::from_utf8_lossy(raw);
        let s = s
            .trim_end_matches(['\0', ' ', '\t', '\r', '\n'])
            .trim_start();
        (!s.is_empty()).then(|| s.to_owned())
    }

    /// The System ID as an EUI-64 (`None` unless 8 octets were read).
    pub fn eui64(&self) -> Option<String> {
        self.system_id.map(|wire| system_id_eui64(&wire))
    }
}

/// System ID octets as sent (least significant first) → EUI-64 with dashes, most
/// significant (OUI) first: `74 E8 FF FE FF 05 1C 00` → `00-1C-05-FF-FE-FF-E8-74`.
pub fn system_id_eui64(wire: &[u8; 8]) -> String {
    let mut msb_first = *wire;
    msb_first.reverse();
    dashed(&msb_first)
}

/// Where the reading's effective time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The device's time stamp, corrected by the coincident Current Time reading.
    Device,
    /// The gateway's receive time.
    Gateway,
}

impl TimeSource {
    pub const fn name(&self) -> &'static str {
        match self {
            TimeSource::Device => "device",
            TimeSource::Gateway => "gateway",
        }
    }
}

/// Everything the body needs besides the decoder output.
#[derive(Debug, Clone)]
pub struct ReadingContext<'a> {
    pub device_id: &'a str,
    pub patient_id: Option<&'a str>,
    pub bed: Option<&'a str>,
    pub address: BtAddress,
    pub info: &'a DeviceInfo,
    /// Gateway receive time.
    pub received_at: Timestamp,
    /// Gateway time minus device clock, in ms (from reading Current Time at connect, or 0
    /// after writing it); `None` when unknown.
    pub clock_offset_ms: Option<i64>,
    /// Whether device time stamps may be used at all.
    pub use_device_clock: bool,
}

/// A reading ready for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayReading {
    pub body: Value,
    /// The effective time.
    pub time: Timestamp,
    pub time_source: TimeSource,
    /// Dedup key for the log: the device's record number or its own time stamp, when it has
    /// one (a device that resends a stored measurement after a reconnect sends the same
    /// bytes); `None` for live readings without either.
    pub dedup_key: Option<String>,
}

/// Builds the gateway body from a decoder body (see the module doc). A decoder output that is
/// not an object (never the case for `iomt_drivers::ble`) is kept under `reading`.
pub fn gateway_body(decoded: Value, ctx: &ReadingContext<'_>) -> GatewayReading {
    let mut decoded = match decoded {
        Value::Object(o) => o,
        other => {
            let mut o = Map::new();
            o.insert("reading".into(), other);
            o
        }
    };
    let device_time = decoded.remove("timestamp");
    let device_time_parts = decoded.remove("timestamp_parts");
    let kind = decoded
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Some(Value::Object(values)) = decoded.get_mut("values") {
        for v in values.values_mut() {
            keep_digits(v);
        }
    }
    let device_iso = device_time.as_ref().and_then(Value::as_str);
    let clock_not_set = decoded.get("clock_not_set") == Some(&Value::Bool(true));
    let corrected = match (ctx.use_device_clock && !clock_not_set, device_iso) {
        (true, Some(iso)) => ctx
            .clock_offset_ms
            .and_then(|offset| corrected_time(iso, offset)),
        _ => None,
    };
    let (time, time_source) = match corrected {
        Some(t) => (t, TimeSource::Device),
        None => (ctx.received_at, TimeSource::Gateway),
    };
    let dedup_key = dedup_key(&ctx.address, &kind, &decoded, device_iso);

    let mut out = Map::new();
    out.insert("deviceId".into(), json!(ctx.device_id));
    if let Some(p) = ctx.patient_id {
        out.insert("patientId".into(), json!(p));
    }
    if let Some(b) = ctx.bed {
        out.insert("bed".into(), json!(b));
    }
    out.insert("timestamp".into(), json!(jsonnet_time(&time)));
    out.insert("timeSource".into(), json!(time_source.name()));
    out.extend(decoded);
    if let Some(t) = device_time {
        out.insert("deviceTime".into(), t);
    }
    if let Some(p) = device_time_parts {
        out.insert("deviceTime_parts".into(), p);
    }
    let eui48 = ctx.address.eui48();
    out.insert("bluetoothAddress".into(), json!(eui48));
    let eui64 = ctx.info.eui64();
    if let Some(s) = &eui64 {
        out.insert("systemId".into(), json!(s));
    }
    let mut dis = Map::new();
    for (k, v) in [
        ("manufacturer", &ctx.info.manufacturer),
        ("model", &ctx.info.model),
        ("serial", &ctx.info.serial),
        ("firmware", &ctx.info.firmware),
        ("hardware", &ctx.info.hardware),
        ("software", &ctx.info.software),
    ] {
        if let Some(v) = v {
            dis.insert(k.into(), json!(v));
        }
    }
    if !dis.is_empty() {
        out.insert("deviceInformation".into(), Value::Object(dis));
    }
    let mut ids = vec![json!({"system": EUI48_BLUETOOTH_SYSTEM, "type": "BTMAC", "value": eui48})];
    if let Some(s) = eui64 {
        ids.push(json!({"system": SYSTEM_ID_SYSTEM, "type": "SYSID", "value": s}));
    }
    out.insert("identifiers".into(), Value::Array(ids));
    GatewayReading {
        body: Value::Object(out),
        time,
        time_source,
        dedup_key,
    }
}

/// A float number → a string with the digits serde prints; everything else unchanged.
fn keep_digits(v: &mut Value) {
    if let Value::Number(n) = v {
        if n.is_f64() {
            *v = Value::String(n.to_string());
        }
    }
}

/// The device's local time stamp (no zone) plus the offset to the gateway's UTC clock.
fn corrected_time(iso: &str, offset_ms: i64) -> Option<Timestamp> {
    let naive = chrono::NaiveDateTime::parse_from_str(iso, "%Y-%m-%dT%H:%M:%S").ok()?;
    let ms = naive.and_utc().timestamp_millis().checked_add(offset_ms)?;
    Timestamp::from_unix_millis(ms)
}

fn dedup_key(
    address: &BtAddress,
    kind: &str,
    decoded: &Map<String, Value>,
    device_iso: Option<&str>,
) -> Option<String> {
    let device = address.eui48();
    if let Some(seq) = decoded.get("sequence_number").and_then(Value::as_u64) {
        // Glucose records are identified by their sequence number (with the base time, as
        // a meter that is reset starts counting again).
        let base = decoded
            .get("base_time")
            .and_then(Value::as_str)
            .unwrap_or("-");
        return Some(crate::buffer::dedup_key::device(
            &device,
            &format!("{kind}#{seq}@{base}"),
        ));
    }
    device_iso.map(|t| crate::buffer::dedup_key::device(&device, &format!("{kind}@{t}")))
}

/// Current Time (0x2A2B) value → local date-time as the device keeps it (`None` for an
/// unknown or impossible date). Layout: year u16 LE, month, day, hours, minutes, seconds,
/// day of week, fractions256, adjust reason (10 octets; the last three are ignored).
pub fn parse_current_time(raw: &[u8]) -> Option<chrono::NaiveDateTime> {
    if raw.len() < 7 {
        return None;
    }
    let year = i32::from(u16::from_le_bytes([raw[0], raw[1]]));
    let date = chrono::NaiveDate::from_ymd_opt(year, u32::from(raw[2]), u32::from(raw[3]))?;
    let frac_ms = raw.get(8).map_or(0, |f| u32::from(*f) * 1000 / 256);
    date.and_hms_milli_opt(
        u32::from(raw[4]),
        u32::from(raw[5]),
        u32::from(raw[6]),
        frac_ms,
    )
    .filter(|_| year > 0)
}

/// The Current Time value for `t` (UTC): 10 octets, adjust reason "manual time update".
pub fn encode_current_time(t: &Timestamp) -> [u8; 10] {
    use chrono::{Datelike, Timelike};
    let d = t.datetime();
    let year = u16::try_from(d.year()).unwrap_or(0).to_le_bytes();
    let frac = (d.nanosecond() / 1_000_000 * 256 / 1000).min(255) as u8;
    [
        year[0],
        year[1],
        d.month() as u8,
        d.day() as u8,
        d.hour() as u8,
        d.minute() as u8,
        d.second().min(59) as u8,
        d.weekday().number_from_monday() as u8,
        frac,
        0x01,
    ]
}

/// Gateway time minus device time, in ms, from a coincident Current Time reading.
pub fn clock_offset_ms(device_now: chrono::NaiveDateTime, gateway_now: &Timestamp) -> i64 {
    gateway_now.datetime().timestamp_millis() - device_now.and_utc().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iomt_drivers::ble::Characteristic;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).expect("time")
    }

    fn ctx<'a>(info: &'a DeviceInfo, offset: Option<i64>) -> ReadingContext<'a> {
        ReadingContext {
            device_id: "hr-bed-12",
            patient_id: Some("patient-0042"),
            bed: Some("12"),
            address: BtAddress::parse("C0:FF:EE:00:18:0D").expect("address"),
            info,
            received_at: ts("2026-03-15T07:31:05.25Z"),
            clock_offset_ms: offset,
            use_device_clock: true,
        }
    }

    fn decode(c: Characteristic, hex_bytes: &str) -> Value {
        let bytes = hex::decode(hex_bytes.replace(' ', "")).expect("hex");
        c.decode(&bytes).expect("vector decodes")
    }

    #[test]
    fn body_has_identity_binding_and_receive_time() {
        let info = DeviceInfo {
            manufacturer: Some("Acme".into()),
            serial: Some("SN-1".into()),
            system_id: Some([0x74, 0xE8, 0xFF, 0xFE, 0xFF, 0x05, 0x1C, 0x00]),
            ..DeviceInfo::default()
        };
        let r = gateway_body(
            decode(Characteristic::HeartRateMeasurement, "06 5A"),
            &ctx(&info, None),
        );
        let b = &r.body;
        let keys: Vec<&str> = b
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "deviceId",
                "patientId",
                "bed",
                "timestamp",
                "timeSource",
                "type",
                "values",
                "units",
                "codes",
                "sensor_contact",
                "bluetoothAddress",
                "systemId",
                "deviceInformation",
                "identifiers"
            ]
        );
        assert_eq!(b["timestamp"], "2026-03-15T07:31:05.25Z");
        assert_eq!(b["timeSource"], "gateway");
        assert_eq!(b["values"]["heart_rate"], 90);
        assert_eq!(b["systemId"], "00-1C-05-FF-FE-FF-E8-74");
        assert_eq!(b["identifiers"][0]["value"], "C0-FF-EE-00-18-0D");
        assert_eq!(b["identifiers"][1]["system"], SYSTEM_ID_SYSTEM);
        assert_eq!(
            b["deviceInformation"],
            json!({"manufacturer": "Acme", "serial": "SN-1"})
        );
        assert_eq!(r.dedup_key, None, "live heart rate has no record identity");
    }

    #[test]
    fn decimals_keep_their_digits_and_specials_stay_null() {
        let info = DeviceInfo::default();
        // 37.2 Cel (FLOAT 372e-1) and a PLX spot-check with PAI 2.1 and SpO2 97.
        let t = gateway_body(
            decode(
                Characteristic::TemperatureMeasurement,
                "06 74 01 00 FF E8 07 03 0F 08 1E 00 06",
            ),
            &ctx(&info, None),
        );
        assert_eq!(t.body["values"]["temperature"], "37.2");
        // SFLOAT 0xF014 = 2.0 must not become 2: BPM kPa vector 16.0/10.7/12.4.
        let bp = gateway_body(
            decode(
                Characteristic::BloodPressureMeasurement,
                "01 A0 F0 6B F0 7C F0",
            ),
            &ctx(&info, None),
        );
        assert_eq!(bp.body["values"]["systolic"], "16.0");
        assert_eq!(bp.body["units"]["systolic"], "kPa");
        // A string decimal from the decoder (37.60) is kept as it is.
        let t = gateway_body(
            decode(
                Characteristic::TemperatureMeasurement,
                "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04",
            ),
            &ctx(&info, None),
        );
        assert_eq!(t.body["values"]["temperature"], "37.60");
        // NaN stays null with its reason.
        let nan = gateway_body(
            decode(Characteristic::TemperatureMeasurement, "00 FF FF 7F 00"),
            &ctx(&info, None),
        );
        assert_eq!(nan.body["values"]["temperature"], Value::Null);
        assert_eq!(nan.body["absent"]["temperature"], "nan");
        // Integers stay numbers.
        let hr = gateway_body(
            decode(Characteristic::HeartRateMeasurement, "00 55"),
            &ctx(&info, None),
        );
        assert!(hr.body["values"]["heart_rate"].is_u64());
    }

    #[test]
    fn device_time_is_used_only_when_it_can_be_corrected() {
        let info = DeviceInfo::default();
        let bytes = "06 74 01 00 FF E8 07 03 0F 08 1E 00 06"; // device 2024-03-15T08:30:00
        let c = Characteristic::TemperatureMeasurement;
        // No coincident reading: receive time, device time kept aside.
        let r = gateway_body(decode(c, bytes), &ctx(&info, None));
        assert_eq!(r.time_source, TimeSource::Gateway);
        assert_eq!(r.body["deviceTime"], "2024-03-15T08:30:00");
        assert!(r.body.get("timestamp_parts").is_none());
        // Device clock one hour ahead of UTC (offset -1 h).
        let r = gateway_body(decode(c, bytes), &ctx(&info, Some(-3_600_000)));
        assert_eq!(r.time_source, TimeSource::Device);
        assert_eq!(r.body["timestamp"], "2024-03-15T07:30:00Z");
        assert_eq!(
            r.dedup_key.as_deref(),
            Some("dev:C0-FF-EE-00-18-0D:temperature_measurement@2024-03-15T08:30:00")
        );
        // Not allowed by config.
        let mut cx = ctx(&info, Some(0));
        cx.use_device_clock = false;
        assert_eq!(
            gateway_body(decode(c, bytes), &cx).time_source,
            TimeSource::Gateway
        );
        // Year unknown: parts only, receive time.
        let r = gateway_body(
            decode(
                Characteristic::BloodPressureMeasurement,
                "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
            ),
            &ctx(&info, Some(0)),
        );
        assert_eq!(r.time_source, TimeSource::Gateway);
        assert_eq!(r.body["deviceTime"], Value::Null);
        assert!(r.body["deviceTime_parts"].is_object());
        assert_eq!(r.dedup_key, None);
        // PLX with "clock not set": never trusted.
        let r = gateway_body(
            decode(
                Characteristic::PlxSpotCheckMeasurement,
                "1B 61 00 40 00 E8 07 03 0F 08 1F 05 80 00 15 F0",
            ),
            &ctx(&info, Some(0)),
        );
        assert_eq!(r.time_source, TimeSource::Gateway);
    }

    #[test]
    fn glucose_records_are_keyed_by_sequence_number() {
        let info = DeviceInfo::default();
        let r = gateway_body(
            decode(
                Characteristic::GlucoseMeasurement,
                "02 07 00 E8 07 03 0F 07 2D 00 5F B0 11",
            ),
            &ctx(&info, None),
        );
        assert_eq!(
            r.dedup_key.as_deref(),
            Some("dev:C0-FF-EE-00-18-0D:glucose_measurement#7@2024-03-15T07:45:00")
        );
        assert_eq!(r.body["values"]["glucose"], 95);
    }

    #[test]
    fn device_information_helpers() {
        assert_eq!(
            DeviceInfo::text(b"Acme Medical\0\0"),
            Some("Acme Medical".into())
        );
        assert_eq!(DeviceInfo::text(b" \0"), None);
        assert_eq!(DeviceInfo::text(&[0xFF, b'A']), Some("\u{FFFD}A".into()));
        assert_eq!(
            system_id_eui64(&[0xC9, 0xF2, 0x53, 0xFE, 0xFF, 0x12, 0xF3, 0xC4]),
            "C4-F3-12-FF-FE-53-F2-C9",
            "the PHD IG example device"
        );
    }

    #[test]
    fn current_time_round_trip_and_offset() {
        let t = ts("2026-03-15T07:31:05.5Z");
        let raw = encode_current_time(&t);
        assert_eq!(
            raw[..8],
            [0xEA, 0x07, 3, 15, 7, 31, 5, 7],
            "2026-03-15 is a Sunday"
        );
        let back = parse_current_time(&raw).expect("valid");
        assert_eq!(clock_offset_ms(back, &t), 0);
        assert_eq!(parse_current_time(&[0, 0, 1, 1, 0, 0, 0]), None, "year 0");
        assert_eq!(parse_current_time(&[0xEA, 0x07, 13, 1, 0, 0, 0]), None);
        assert_eq!(parse_current_time(&[0xEA, 0x07]), None);
    }
}
