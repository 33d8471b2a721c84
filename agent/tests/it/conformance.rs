//! The upstream conformance suite: every case of `cases.json` and every data file of
//! `shared/conformance/iomt-fhir/`, with its documented outcome.

use crate::support::{conformance_dir, read_conformance};
use iomt_agent::mapping::fhir_model::{FhirValueTemplate, PeriodInterval};
use iomt_agent::mapping::{load_device_mapping, load_fhir_mapping, Measurement, Timestamp};
use serde_json::Value;

fn cases() -> Value {
    serde_json::from_str(&read_conformance("cases.json")).expect("cases.json parses")
}

/// Wraps a `*-single-*` file (one container) into a collection, as the manifest says.
fn wrap_single(text: &str, collection: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    format!("{{\"templateType\":\"{collection}\",\"template\":[{text}]}}")
}

/// The generator fixtures hold one container (`gen-*-template.json`) or a bare array of them
/// (`gen-projection.device-templates.json`): make a collection of either.
fn wrap_generated(text: &str, collection: &str) -> String {
    let t = text.strip_prefix('\u{feff}').unwrap_or(text).trim_start();
    if t.starts_with('[') {
        format!("{{\"templateType\":\"{collection}\",\"template\":{t}}}")
    } else {
        wrap_single(t, collection)
    }
}

fn ingest_time() -> Timestamp {
    Timestamp::parse_rfc3339("2024-06-01T00:00:00Z").expect("valid")
}

fn check_measurement(
    case: &str,
    i: usize,
    got: &Measurement,
    want: &Value,
    numeric_tolerance: bool,
) {
    let ctx = format!("case {case}, measurement {i}");
    assert_eq!(got.type_name, want["type"].as_str().unwrap(), "{ctx}: type");
    assert_eq!(
        got.device_id,
        want["deviceId"].as_str().unwrap(),
        "{ctx}: deviceId"
    );
    let t = Timestamp::parse_rfc3339(want["occurrenceTimeUtc"].as_str().unwrap()).unwrap();
    assert_eq!(got.occurrence_time, t, "{ctx}: occurrenceTimeUtc");
    if let Some(p) = want.get("patientId") {
        assert_eq!(got.patient_id.as_deref(), p.as_str(), "{ctx}: patientId");
    }
    let props = want["properties"].as_array().unwrap();
    assert_eq!(
        got.properties.len(),
        props.len(),
        "{ctx}: property count in {:?}",
        got.properties
    );
    for (j, (g, w)) in got.properties.iter().zip(props).enumerate() {
        assert_eq!(g.0, w["name"].as_str().unwrap(), "{ctx}: property {j} name");
        let wv = w["value"].as_str().unwrap();
        if numeric_tolerance && j == 0 {
            let (a, b): (f64, f64) = (g.1.parse().unwrap(), wv.parse().unwrap());
            assert!((a - b).abs() < 1e-4, "{ctx}: property {j}: {a} vs {b}");
        } else {
            assert_eq!(g.1, wv, "{ctx}: property {j} value");
        }
    }
}

#[test]
fn normalization_cases() {
    let cases = cases();
    let list = cases["normalization"].as_array().unwrap();
    assert_eq!(list.len(), 22, "the manifest lists 22 normalization cases");
    for case in list {
        let id = case["id"].as_str().unwrap();
        let mapping_text = match (
            case.get("device_mapping"),
            case.get("device_mapping_inline"),
        ) {
            (Some(f), _) => read_conformance(f.as_str().unwrap()),
            (None, Some(inline)) => inline.to_string(),
            _ => panic!("case {id} has no mapping"),
        };
        let load = load_device_mapping(&mapping_text);
        let mapping_valid = case
            .get("mapping_valid")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        assert_eq!(
            load.errors.is_empty(),
            mapping_valid,
            "case {id}: load errors {:?}",
            load.errors
        );
        let message: Value = match (case.get("message"), case.get("message_inline")) {
            (Some(f), _) => {
                let t = read_conformance(f.as_str().unwrap());
                serde_json::from_str(t.strip_prefix('\u{feff}').unwrap_or(&t)).unwrap()
            }
            (None, Some(m)) => m.clone(),
            _ => panic!("case {id} has no message"),
        };
        let got = load
            .mapping
            .normalize(message, ingest_time())
            .unwrap_or_else(|e| panic!("case {id}: normalization failed: {e:?}"));
        if let Some(n) = case.get("expect_count") {
            assert_eq!(got.len() as u64, n.as_u64().unwrap(), "case {id}: count");
        }
        if let Some(by_type) = case.get("expect_count_by_type").and_then(Value::as_object) {
            for (t, n) in by_type {
                let c = got.iter().filter(|m| &m.type_name == t).count() as u64;
                assert_eq!(c, n.as_u64().unwrap(), "case {id}: count of {t}");
            }
        }
        let want = case["expect"].as_array().unwrap();
        let tolerant = case.get("compare").is_some();
        if case.get("expect_count").is_none() {
            assert_eq!(got.len(), want.len(), "case {id}: count, got {got:?}");
        }
        for (i, w) in want.iter().enumerate() {
            check_measurement(id, i, &got[i], w, tolerant);
        }
        for m in &got {
            assert_eq!(
                m.ingestion_time,
                ingest_time(),
                "case {id}: ingestion time is the parameter"
            );
        }
    }
}

#[test]
fn template_load_cases() {
    let cases = cases();
    let list = cases["template_load"].as_array().unwrap();
    assert_eq!(list.len(), 22);
    for case in list {
        let file = case["file"].as_str().unwrap();
        let text = read_conformance(file);
        let kind = case["kind"].as_str().unwrap();
        let (count, errors, loadable_count) = match kind {
            "device" => {
                let l = load_device_mapping(&text);
                (
                    l.mapping.templates.len(),
                    l.errors,
                    l.mapping.templates.len(),
                )
            }
            "fhir" => {
                let l = load_fhir_mapping(&text);
                if let Some(loadable) = case.get("loadable") {
                    let t = l
                        .mapping
                        .get(loadable["typeName"].as_str().unwrap())
                        .expect("loadable template present");
                    assert_eq!(
                        t.period_interval.minutes() as i64,
                        loadable["periodInterval"].as_i64().unwrap()
                    );
                }
                (
                    l.mapping.templates.len(),
                    l.errors,
                    l.mapping.templates.len(),
                )
            }
            other => panic!("unknown kind {other}"),
        };
        let valid = case["valid"].as_bool().unwrap();
        assert_eq!(
            errors.is_empty(),
            valid,
            "{file} ({kind}): errors {errors:#?}"
        );
        if let Some(n) = case.get("templates") {
            assert_eq!(count as u64, n.as_u64().unwrap(), "{file}: template count");
        }
        if let Some(n) = case.get("loadable_templates") {
            assert_eq!(
                loadable_count as u64,
                n.as_u64().unwrap(),
                "{file}: loadable templates"
            );
        }
        for needle in case
            .get("errors_contain")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let needle = needle.as_str().unwrap();
            assert!(
                errors.iter().any(|e| e.message.contains(needle)),
                "{file}: no error contains {needle:?}: {errors:#?}"
            );
        }
        for e in &errors {
            if !e.message.starts_with("invalid JSON") && file != "invalid-json.txt" {
                assert!(e.pos.line > 0, "{file}: error without a line: {e}");
            }
        }
    }
}

#[test]
fn fhir_single_template_parse_cases() {
    let cases = cases();
    for case in cases["fhir_single_template_parse"].as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let l = load_fhir_mapping(&wrap_single(&read_conformance(file), "CollectionFhir"));
        let valid = case["valid"].as_bool().unwrap();
        assert_eq!(l.errors.is_empty(), valid, "{file}: {:#?}", l.errors);
        let Some(expect) = case.get("expect") else {
            continue;
        };
        let t = &l.mapping.templates[0];
        assert_eq!(t.type_name, expect["typeName"].as_str().unwrap(), "{file}");
        assert_eq!(
            t.period_interval.minutes() as i64,
            expect["periodInterval"].as_i64().unwrap(),
            "{file}"
        );
        if let Some(n) = expect.get("components") {
            assert_eq!(t.components.len() as u64, n.as_u64().unwrap(), "{file}");
        }
        if let Some(codes) = expect.get("codes").and_then(Value::as_array) {
            for (c, w) in t.codes.iter().zip(codes) {
                assert_eq!(c.code.as_deref(), w["code"].as_str());
                assert_eq!(c.system.as_deref(), w["system"].as_str());
            }
        }
        match expect.get("value") {
            Some(Value::Null) => assert!(t.value.is_none(), "{file}: value must be absent"),
            Some(v) => {
                let got = t.value.as_ref().expect("value present");
                assert_eq!(got.value_name(), v["valueName"].as_str().unwrap());
                match (got, v["valueType"].as_str().unwrap()) {
                    (
                        FhirValueTemplate::SampledData {
                            default_period,
                            unit,
                            ..
                        },
                        "SampledData",
                    ) => {
                        assert_eq!(default_period.value, v["defaultPeriod"].as_f64().unwrap());
                        assert_eq!(unit.as_deref(), v["unit"].as_str());
                    }
                    (FhirValueTemplate::CodeableConcept { text, .. }, "CodeableConcept") => {
                        assert_eq!(text.as_deref(), v["text"].as_str());
                    }
                    (FhirValueTemplate::String { .. }, "String") => {}
                    (g, w) => panic!("{file}: value type {g:?} is not {w}"),
                }
            }
            None => {}
        }
    }
}

/// Every data file in the corpus, loaded with the outcome its name and the README document.
#[test]
fn every_conformance_file_has_its_documented_outcome() {
    let invalid_device = [
        "device-invalid-empty-root.json",
        "device-invalid-template-not-array.json",
        "device-invalid-missing-required-expressions.json",
        "device-mixed-validity-partial-load.json",
        "device-unknown-template-types.json",
        "invalid-root-templatetype.json",
    ];
    let invalid_fhir = [
        "fhir-invalid-empty-root.json",
        "fhir-invalid-template-not-array.json",
        "fhir-invalid-missing-typename-duplicates.json",
        "fhir-mixed-validity-partial-load.json",
        "fhir-unknown-template-types.json",
        "fhir-wrong-root-is-device-mapping.json",
        "invalid-root-templatetype.json",
    ];
    let mut seen = 0;
    let mut names: Vec<_> = std::fs::read_dir(conformance_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in &names {
        let text = read_conformance(name);
        let is_fhir = name.starts_with("fhir-")
            || name.ends_with(".fhir.json")
            || name.contains("fhir-template")
            || name.starts_with("validate-fhir");
        let is_device = !is_fhir
            && (name.starts_with("device-")
                || name.ends_with(".device.json")
                || name.contains("device-template")
                || name.starts_with("validate-device"));
        if name == "invalid-json.txt" || name == "invalid-root-templatetype.json" {
            assert!(
                !load_device_mapping(&text).errors.is_empty(),
                "{name}: device loader must reject it"
            );
            assert!(
                !load_fhir_mapping(&text).errors.is_empty(),
                "{name}: FHIR loader must reject it"
            );
            seen += 1;
        } else if is_device {
            let text = if name.contains("-single-") {
                wrap_single(&text, "CollectionContent")
            } else if name.starts_with("gen-") {
                wrap_generated(&text, "CollectionContent")
            } else {
                text
            };
            let l = load_device_mapping(&text);
            let want_valid = !name.contains("invalid") && !invalid_device.contains(&name.as_str());
            assert_eq!(l.errors.is_empty(), want_valid, "{name}: {:#?}", l.errors);
            if want_valid {
                assert!(
                    !l.mapping.templates.is_empty() || name.contains("empty"),
                    "{name}: no templates loaded"
                );
            }
            seen += 1;
        } else if is_fhir {
            let text = if name.contains("-single-") {
                wrap_single(&text, "CollectionFhir")
            } else if name.starts_with("gen-") {
                wrap_generated(&text, "CollectionFhir")
            } else {
                text
            };
            let l = load_fhir_mapping(&text);
            let want_valid = !name.contains("invalid") && !invalid_fhir.contains(&name.as_str());
            assert_eq!(l.errors.is_empty(), want_valid, "{name}: {:#?}", l.errors);
            seen += 1;
        } else if name.ends_with(".json") && name != "cases.json" {
            // Messages: valid JSON event shapes.
            let t = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let v: Value = serde_json::from_str(t).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(v.is_object() || v.is_array(), "{name}");
            seen += 1;
        }
    }
    assert!(seen >= 80, "only {seen} files checked");
}

/// The shipped sample and generator mappings normalize their own sample messages.
#[test]
fn generator_fixtures_normalize_their_messages() {
    for (device, msg, fhir) in [
        (
            "gen-heartrate.device-template.json",
            "gen-heartrate.msg.json",
            "gen-heartrate.fhir-template.json",
        ),
        (
            "gen-bloodpressure.device-template.json",
            "gen-bloodpressure.msg.json",
            "gen-bloodpressure.fhir-template.json",
        ),
        (
            "gen-oxygensaturation.device-template.json",
            "gen-oxygensaturation.msg.json",
            "gen-oxygensaturation.fhir-template.json",
        ),
        (
            "gen-projection.device-templates.json",
            "gen-projection.msg.json",
            "",
        ),
    ] {
        let l = load_device_mapping(&wrap_generated(
            &read_conformance(device),
            "CollectionContent",
        ));
        assert!(l.errors.is_empty(), "{device}: {:?}", l.errors);
        let text = read_conformance(msg);
        let body: Value =
            serde_json::from_str(text.strip_prefix('\u{feff}').unwrap_or(&text)).unwrap();
        let bodies = match body {
            Value::Array(a) => a,
            other => vec![other],
        };
        let mut total = 0;
        for b in bodies {
            // The generator writes templates for flat messages (`$.device`), fed as they are.
            let got = l.mapping.normalize(b, ingest_time());
            let got = got.unwrap_or_else(|e| panic!("{msg}: {e:?}"));
            total += got.len();
            if !fhir.is_empty() {
                let f =
                    load_fhir_mapping(&wrap_generated(&read_conformance(fhir), "CollectionFhir"));
                assert!(f.errors.is_empty(), "{fhir}: {:?}", f.errors);
                for m in &got {
                    assert!(
                        f.mapping.get(&m.type_name).is_some(),
                        "{fhir} has no template for {}",
                        m.type_name
                    );
                }
            }
        }
        assert!(total > 0, "{msg}: nothing normalized");
    }
}

#[test]
fn periods_load_by_name_or_number() {
    for (p, want) in [
        ("60", PeriodInterval::Hourly),
        ("\"Hourly\"", PeriodInterval::Hourly),
        ("\"daily\"", PeriodInterval::Daily),
        ("-1", PeriodInterval::CorrelationId),
        ("\"0\"", PeriodInterval::Single),
    ] {
        let text = format!(
            r#"{{"templateType":"CollectionFhir","template":[{{"templateType":"CodeValueFhir","template":{{"typeName":"hr","codes":[],"periodInterval":{p}}}}}]}}"#
        );
        let l = load_fhir_mapping(&text);
        assert!(l.errors.is_empty(), "{p}: {:?}", l.errors);
        assert_eq!(l.mapping.templates[0].period_interval, want, "{p}");
    }
    let bad = r#"{"templateType":"CollectionFhir","template":[{"templateType":"CodeValueFhir","template":{"typeName":"hr","codes":[],"periodInterval":30}}]}"#;
    let l = load_fhir_mapping(bad);
    assert!(
        l.errors
            .iter()
            .any(|e| e.message.contains("Invalid periodInterval 30")),
        "{:?}",
        l.errors
    );
}
