//! Snapshots of the Observations the upstream documentation samples and the shipped vital-sign
//! templates produce (normalize → group → transform, Create-mode identities, fixed times), and
//! of a SampledData Observation merged across two batches.

use crate::support::read_conformance;
use iomt_agent::mapping::{load_device_mapping, load_fhir_mapping, Timestamp};
use iomt_agent::pipeline::batch::{transform_batch, OfflineIdentity};
use iomt_agent::pipeline::transform::TransformOptions;
use serde_json::{json, Value};

fn t(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

fn repo_file(p: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(p),
    )
    .unwrap()
}

/// Runs messages through a device and a FHIR mapping and returns the Observations.
fn observations(device: &str, fhir: &str, msgs: Vec<Value>, existing: &[Value]) -> Vec<Value> {
    let dev = load_device_mapping(device).into_result().unwrap();
    let fhir = load_fhir_mapping(fhir).into_result().unwrap();
    let mut ms = Vec::new();
    for m in msgs {
        ms.extend(dev.normalize(m, t("2024-06-01T00:00:00Z")).unwrap());
    }
    let out = transform_batch(
        &fhir,
        &ms,
        OfflineIdentity::Create,
        t("2024-06-01T00:00:00Z"),
        &TransformOptions::default(),
        &mut |id| existing.iter().find(|o| o["id"] == id).cloned(),
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    out.observations
}

fn msg(name: &str) -> Value {
    let s = read_conformance(name);
    serde_json::from_str(s.strip_prefix('\u{feff}').unwrap_or(&s)).unwrap()
}

/// A FHIR mapping for the doc samples: hourly SampledData heart rate, BP components.
const DOC_FHIR: &str = r#"{"templateType":"CollectionFhir","template":[
 {"templateType":"CodeValueFhir","template":{"typeName":"heartrate","periodInterval":60,
  "codes":[{"code":"8867-4","system":"http://loinc.org","display":"Heart rate"}],
  "value":{"valueType":"SampledData","valueName":"hr","defaultPeriod":5000,"unit":"count/min"}}},
 {"templateType":"CodeValueFhir","template":{"typeName":"bloodpressure","periodInterval":0,
  "codes":[{"code":"85354-9","system":"http://loinc.org"}],
  "components":[
   {"codes":[{"code":"8480-6","system":"http://loinc.org"}],"value":{"valueType":"Quantity","valueName":"systolic","unit":"mmHg","code":"mm[Hg]","system":"http://unitsofmeasure.org"}},
   {"codes":[{"code":"8462-4","system":"http://loinc.org"}],"value":{"valueType":"Quantity","valueName":"diastolic","unit":"mmHg","code":"mm[Hg]","system":"http://unitsofmeasure.org"}}]}}]}"#;

/// The doc samples carry no patient id and Create mode needs one: every matched reading gets
/// `patientId`, and the template reads it from the matched token.
fn with_patient(mut v: Value) -> Value {
    match v.get_mut("Body") {
        Some(Value::Object(b)) => {
            b.insert("patientId".into(), json!("patient1"));
        }
        Some(Value::Array(items)) => {
            for b in items.iter_mut().filter_map(Value::as_object_mut) {
                b.insert("patientId".into(), json!("patient1"));
            }
        }
        _ => {}
    }
    v
}

fn patient_template(device: &str) -> String {
    let mut d: Value =
        serde_json::from_str(device.strip_prefix('\u{feff}').unwrap_or(device)).unwrap();
    for e in d["template"].as_array_mut().unwrap() {
        e["template"]["patientIdExpression"] = json!("$.matchedToken.patientId");
    }
    d.to_string()
}

#[test]
fn doc_samples_heart_rate_hourly_sampled_data() {
    let dev = patient_template(&read_conformance("doc-heartrate.device.json"));
    let obs = observations(
        &dev,
        DOC_FHIR,
        vec![with_patient(msg("doc-heartrate-array-body.msg.json"))],
        &[],
    );
    insta::assert_json_snapshot!("doc_heartrate_array_body", obs);
}

#[test]
fn doc_samples_blood_pressure_components() {
    let dev = patient_template(&read_conformance("doc-bloodpressure.device.json"));
    let obs = observations(
        &dev,
        DOC_FHIR,
        vec![with_patient(msg("doc-bloodpressure.msg.json"))],
        &[],
    );
    insta::assert_json_snapshot!("doc_bloodpressure", obs);
}

/// Two batches of one hour: the second merges into the first (SampledData re-slotted, status
/// amended, period kept), and a replay of the second changes nothing.
#[test]
fn sampled_data_merge_across_two_batches() {
    let dev = patient_template(&read_conformance("doc-heartrate.device.json"));
    let m = |t: &str, hr: i64| json!({"Body": {"heartRate": hr, "endDate": t, "deviceId": "device123", "patientId": "patient1"}});
    let first = observations(
        &dev,
        DOC_FHIR,
        vec![m("2019-02-01T22:00:10Z", 70), m("2019-02-01T22:30:00Z", 72)],
        &[],
    );
    let second = observations(
        &dev,
        DOC_FHIR,
        vec![m("2019-02-01T22:00:20Z", 75), m("2019-02-01T22:30:00Z", 80)],
        &first,
    );
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["status"], "amended");
    insta::assert_json_snapshot!("sampled_data_merged", second);
    let replay = observations(&dev, DOC_FHIR, vec![m("2019-02-01T22:00:20Z", 75)], &second);
    assert!(replay.is_empty(), "a replay changes nothing: {replay:?}");
}

/// Every shipped vital-sign template produces its Observation with LOINC, UCUM and vital-signs.
#[test]
fn shipped_vital_sign_templates() {
    let dev = repo_file("templates/vitals.device.json");
    let fhir = repo_file("templates/vitals.fhir.json");
    let msgs: Vec<Value> = ["heartrate", "spo2", "bloodpressure", "bodytemperature"]
        .iter()
        .map(|n| {
            serde_json::from_str(&repo_file(&format!("templates/examples/{n}.msg.json"))).unwrap()
        })
        .collect();
    let obs = observations(&dev, &fhir, msgs, &[]);
    let types: Vec<&str> = obs
        .iter()
        .map(|o| o["code"]["text"].as_str().unwrap())
        .collect();
    for want in [
        "heartrate",
        "respiratoryrate",
        "spo2",
        "pulserate",
        "bloodpressure",
        "bodytemperature",
    ] {
        assert!(types.contains(&want), "no {want} Observation in {types:?}");
    }
    for o in &obs {
        assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
        assert!(o["code"]["coding"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["system"] == "http://loinc.org"));
    }
    insta::assert_json_snapshot!("shipped_vitals", obs);
}
