//! Every vector of device-protocols.md §2 → decoder → gateway body → `templates/ble.*.json`
//! (normalize + transform) → Observations, snapshotted per profile. Also checks the
//! clinically important properties directly: digits kept, special values never become
//! numbers, live-display characteristics never become Observations, units follow the device.

use crate::harness::repo;
use iomt_agent::mapping::{load_device_mapping, load_fhir_mapping, DeviceMapping, Timestamp};
use iomt_agent::pipeline::batch::{transform_batch, OfflineIdentity};
use iomt_agent::pipeline::transform::TransformOptions;
use iomt_agent::sources::ble::body::{gateway_body, DeviceInfo, ReadingContext};
use iomt_agent::sources::ble::BtAddress;
use iomt_agent::sources::envelope::envelope;
use iomt_drivers::ble::Characteristic;
use serde_json::{json, Map, Value};

struct Templates {
    device: DeviceMapping,
    fhir: iomt_agent::mapping::FhirMapping,
}

fn templates() -> Templates {
    let r = repo();
    let device = load_device_mapping(
        &std::fs::read_to_string(r.join("templates/ble.device.json")).expect("device template"),
    )
    .into_result()
    .expect("ble.device.json loads without errors");
    let fhir = load_fhir_mapping(
        &std::fs::read_to_string(r.join("templates/ble.fhir.json")).expect("fhir template"),
    )
    .into_result()
    .expect("ble.fhir.json loads without errors");
    Templates { device, fhir }
}

fn t(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).expect("time")
}

/// Decodes a vector and maps it; returns the Observations (ids and all).
fn observe(tpl: &Templates, c: Characteristic, hex_bytes: &str) -> Vec<Value> {
    let bytes = hex::decode(hex_bytes.replace(' ', "")).expect("hex");
    let decoded = c
        .decode(&bytes)
        .unwrap_or_else(|e| panic!("{hex_bytes}: {e}"));
    let info = DeviceInfo {
        manufacturer: Some("Acme Medical".into()),
        system_id: Some([0x0D, 0x18, 0x00, 0xFE, 0xFF, 0xEE, 0xFF, 0xC0]),
        ..DeviceInfo::default()
    };
    let received = t("2026-03-15T07:31:05.25Z");
    let reading = gateway_body(
        decoded,
        &ReadingContext {
            device_id: "C0-FF-EE-00-18-0D",
            patient_id: Some("patient-0042"),
            bed: Some("12"),
            address: BtAddress::parse("C0:FF:EE:00:18:0D").expect("address"),
            info: &info,
            received_at: received,
            // The device clock was set by the gateway (Current Time written): stamps are UTC.
            clock_offset_ms: Some(0),
            use_device_clock: true,
        },
    );
    let msg = envelope(reading.body, Map::new(), "C0-FF-EE-00-18-0D", received);
    let measurements = tpl
        .device
        .normalize(msg, received)
        .unwrap_or_else(|e| panic!("{hex_bytes}: normalization failed: {e:?}"));
    let out = transform_batch(
        &tpl.fhir,
        &measurements,
        OfflineIdentity::Create,
        t("2026-03-15T08:00:00Z"),
        &TransformOptions::default(),
        &mut |_| None,
    );
    assert!(
        out.errors.is_empty(),
        "{hex_bytes}: transform errors {:?}",
        out.errors
    );
    out.observations
}

/// Maps every vector of a profile; the snapshot lists the Observations per vector.
fn profile(tpl: &Templates, vectors: &[(Characteristic, &str)]) -> Value {
    Value::Array(
        vectors
            .iter()
            .map(|(c, hex_bytes)| {
                json!({"characteristic": c.name(), "hex": hex_bytes, "observations": observe(tpl, *c, hex_bytes)})
            })
            .collect(),
    )
}

fn value_text(o: &Value) -> String {
    o["valueQuantity"]["value"].to_string()
}

/// LOINC and MDC codes of an Observation or component (the connector also adds a coding
/// with the template's type name, left out here).
fn code_of(o: &Value) -> Vec<String> {
    o["code"]["coding"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| {
                    c["system"] == "http://loinc.org"
                        || c["system"] == "urn:iso:std:iso:11073:10101"
                })
                .map(|c| c["code"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

const HR: Characteristic = Characteristic::HeartRateMeasurement;
const BPM: Characteristic = Characteristic::BloodPressureMeasurement;
const ICP: Characteristic = Characteristic::IntermediateCuffPressure;
const HTM: Characteristic = Characteristic::TemperatureMeasurement;
const ITM: Characteristic = Characteristic::IntermediateTemperature;
const SPOT: Characteristic = Characteristic::PlxSpotCheckMeasurement;
const CONT: Characteristic = Characteristic::PlxContinuousMeasurement;
const WEIGHT: Characteristic = Characteristic::WeightMeasurement;
const GLU: Characteristic = Characteristic::GlucoseMeasurement;

#[test]
fn heart_rate_vectors() {
    let tpl = templates();
    let v = profile(
        &tpl,
        &[
            (HR, "00 55"),
            (HR, "04 FF"),
            (HR, "1E 55 32 00 21 00"),
            (HR, "1F 01 01 32 01 01 00 02 01 FF FF"),
            (HR, "06 5A"),
            (HR, "10 54 AA 02 99 02"),
            (HR, "16 48 34 03 4D 03"),
            (HR, "0D 48 00 D2 04"),
        ],
    );
    let obs = observe(&tpl, HR, "1F 01 01 32 01 01 00 02 01 FF FF");
    assert_eq!(obs.len(), 1);
    assert_eq!(value_text(&obs[0]), "257");
    assert_eq!(code_of(&obs[0]), ["8867-4", "147842"]);
    assert_eq!(obs[0]["valueQuantity"]["code"], "/min");
    assert_eq!(
        obs[0]["subject"]["reference"]
            .as_str()
            .map(|s| s.starts_with("Patient/")),
        Some(true)
    );
    insta::assert_json_snapshot!("ble_heart_rate", v);
}

#[test]
fn blood_pressure_vectors() {
    let tpl = templates();
    let v = profile(
        &tpl,
        &[
            (
                BPM,
                "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
            ),
            (BPM, "15 BD F0 0B 00 9F F0 3C 00 12 00"),
            (BPM, "00 BD F0 0B 00 9F F0"),
            (
                BPM,
                "1E 78 00 50 00 5D 00 E8 07 03 0F 08 1E 00 48 00 01 00 00",
            ),
            (BPM, "00 78 00 50 00 FF 07"),
            (BPM, "01 A0 F0 6B F0 7C F0"),
        ],
    );
    // kPa keeps its unit and the device's digits: SFLOAT 0xF0A0 is 16.0, not 16.
    let kpa = observe(&tpl, BPM, "01 A0 F0 6B F0 7C F0");
    assert_eq!(kpa.len(), 1);
    let comps = kpa[0]["component"].as_array().expect("components");
    let values: Vec<String> = comps
        .iter()
        .map(|c| c["valueQuantity"]["value"].to_string())
        .collect();
    assert_eq!(values, ["16.0", "10.7", "12.4"]);
    assert!(comps.iter().all(|c| c["valueQuantity"]["code"] == "kPa"));
    // MAP NaN: no mean component, and no number in its place.
    let nan = observe(&tpl, BPM, "00 78 00 50 00 FF 07");
    let comps = nan[0]["component"].as_array().expect("components");
    assert_eq!(comps.len(), 2, "{comps:?}");
    assert!(comps.iter().all(|c| code_of(c) != ["8478-0", "150023"]));
    // Pulse rate is its own Observation (MDC_PULS_RATE_NON_INV); the device time stamp
    // (clock set by the gateway) is the effective time.
    let full = observe(
        &tpl,
        BPM,
        "1E 78 00 50 00 5D 00 E8 07 03 0F 08 1E 00 48 00 01 00 00",
    );
    assert_eq!(full.len(), 2);
    let pulse = full
        .iter()
        .find(|o| code_of(o).contains(&"149546".to_owned()))
        .expect("pulse rate");
    assert_eq!(value_text(pulse), "72");
    assert!(full.iter().all(|o| o["effectivePeriod"]["start"]
        .as_str()
        .is_some_and(|s| s.starts_with("2024-03-15T08:30:00"))));
    // Intermediate cuff pressure is a live-display value: never an Observation.
    for icp in [
        "1E 04 00 00 00 00 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
        "15 6F F0 00 00 00 00 3C 00 12 00",
        "00 D7 F0 00 00 00 00",
        "04 98 00 FF 07 FF 07 46 00",
    ] {
        assert!(observe(&tpl, ICP, icp).is_empty(), "{icp}");
    }
    insta::assert_json_snapshot!("ble_blood_pressure", v);
}

#[test]
fn thermometer_vectors() {
    let tpl = templates();
    let v = profile(
        &tpl,
        &[
            (HTM, "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04"),
            (HTM, "00 34 08 00 FE"),
            (HTM, "06 74 01 00 FF E8 07 03 0F 08 1E 00 06"),
            (HTM, "01 DA 03 00 FF"),
            (HTM, "04 FB FF FF FF 02"),
            (HTM, "00 FF FF 7F 00"),
        ],
    );
    let f = observe(&tpl, HTM, "01 DA 03 00 FF");
    assert_eq!(value_text(&f[0]), "98.6");
    assert_eq!(f[0]["valueQuantity"]["code"], "[degF]");
    let c = observe(&tpl, HTM, "06 74 01 00 FF E8 07 03 0F 08 1E 00 06");
    assert_eq!(value_text(&c[0]), "37.2");
    assert_eq!(c[0]["valueQuantity"]["code"], "Cel");
    assert_eq!(
        value_text(&observe(&tpl, HTM, "04 FB FF FF FF 02")[0]),
        "-0.5"
    );
    // 37.60 and 21.00: the value is right, one trailing zero is lost (serde_json prints
    // the shortest f64; see docs/ble.md "Precision").
    assert_eq!(
        value_text(&observe(&tpl, HTM, "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04")[0]),
        "37.6"
    );
    assert_eq!(value_text(&observe(&tpl, HTM, "00 34 08 00 FE")[0]), "21.0");
    // NaN: no Observation, never a number.
    assert!(observe(&tpl, HTM, "00 FF FF 7F 00").is_empty());
    for itm in ["06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04", "01 DA 03 00 FF"] {
        assert!(observe(&tpl, ITM, itm).is_empty(), "intermediate {itm}");
    }
    insta::assert_json_snapshot!("ble_thermometer", v);
}

#[test]
fn pulse_oximeter_vectors() {
    let tpl = templates();
    let v = profile(
        &tpl,
        &[
            (SPOT, "00 62 00 48 00"),
            (
                SPOT,
                "0F 61 00 40 00 E8 07 03 0F 08 1F 05 80 00 20 00 00 15 F0",
            ),
            (SPOT, "1A 61 00 40 00 80 00 15 F0"),
            (CONT, "03 61 00 4B 00 60 00 4C 00 62 00 4A 00"),
            (CONT, "1C 5F 00 58 00 00 01 00 00 00 23 E0"),
            (CONT, "00 FF 07 FF 07"),
        ],
    );
    let spot = observe(&tpl, SPOT, "00 62 00 48 00");
    assert_eq!(spot.len(), 2);
    let spo2 = spot
        .iter()
        .find(|o| code_of(o).contains(&"150456".to_owned()))
        .expect("SpO2");
    assert_eq!(code_of(spo2), ["2708-6", "59408-5", "150456"]);
    assert_eq!(value_text(spo2), "98");
    assert!(
        observe(&tpl, CONT, "00 FF 07 FF 07").is_empty(),
        "no finger: no numbers"
    );
    insta::assert_json_snapshot!("ble_pulse_oximeter", v);
}

#[test]
fn weight_scale_vectors() {
    let tpl = templates();
    let v = profile(
        &tpl,
        &[
            (WEIGHT, "00 B0 36"),
            (WEIGHT, "01 54 3D"),
            (WEIGHT, "0C B0 36 05 F5 00 D6 06"),
            (WEIGHT, "0E EE 3E E8 07 03 0F 07 00 00 02 FD 00 F9 06"),
            (WEIGHT, "00 FF FF"),
        ],
    );
    let lb = observe(&tpl, WEIGHT, "01 54 3D");
    assert_eq!(lb[0]["valueQuantity"]["code"], "[lb_av]");
    assert_eq!(value_text(&lb[0]), "157.0");
    let full = observe(&tpl, WEIGHT, "0C B0 36 05 F5 00 D6 06");
    let mut got: Vec<(String, String)> = full
        .iter()
        .map(|o| (code_of(o)[0].clone(), value_text(o)))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("29463-7".to_owned(), "70.0".to_owned()),
            ("39156-5".to_owned(), "24.5".to_owned()),
            ("8302-2".to_owned(), "1.75".to_owned()),
        ]
    );
    assert!(
        observe(&tpl, WEIGHT, "00 FF FF").is_empty(),
        "unsuccessful: no number"
    );
    insta::assert_json_snapshot!("ble_weight_scale", v);
}

#[test]
fn glucose_vectors() {
    let tpl = templates();
    let v = profile(
        &tpl,
        &[
            (GLU, "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01"),
            (GLU, "02 07 00 E8 07 03 0F 07 2D 00 5F B0 11"),
            (GLU, "07 08 00 E8 07 03 0F 0C 05 00 3C 00 35 C0 12"),
            (GLU, "0A 09 00 E8 07 03 0F 12 00 00 8F B0 11 40 00"),
        ],
    );
    let mg = observe(&tpl, GLU, "02 07 00 E8 07 03 0F 07 2D 00 5F B0 11");
    assert_eq!(value_text(&mg[0]), "95");
    assert_eq!(code_of(&mg[0]), ["41653-7", "160184"]);
    assert_eq!(
        mg[0]["effectivePeriod"]["start"].as_str().map(|s| &s[..19]),
        Some("2024-03-15T07:45:00")
    );
    let mmol = observe(&tpl, GLU, "07 08 00 E8 07 03 0F 0C 05 00 3C 00 35 C0 12");
    assert_eq!(value_text(&mmol[0]), "5.3");
    assert_eq!(mmol[0]["valueQuantity"]["code"], "mmol/L");
    assert_eq!(code_of(&mmol[0]), ["14743-9", "160188"]);
    // Control solution (type 10, location 4) is never a patient Observation.
    assert!(observe(&tpl, GLU, "02 0A 00 E8 07 03 0F 07 2D 00 5F B0 4A").is_empty());
    insta::assert_json_snapshot!("ble_glucose", v);
}
