//! The JSON-text batch path (`transform_batch_json`, Observations written straight to text)
//! against the `Value` path (`transform_batch`), byte for byte: every FHIR template of the
//! conformance corpus and of `templates/`, fed with the measurements of the conformance
//! normalization cases and of the shipped example messages, and with random groups (values
//! that are numbers in every .NET form, invalid numbers, strings that need escaping, several
//! readings in one second, existing versions to merge into).

use crate::support::{conformance_dir, read_conformance};
use iomt_agent::mapping::fhir_model::CodeValueFhirTemplate;
use iomt_agent::mapping::{
    load_device_mapping, load_fhir_mapping, FhirMapping, Measurement, Timestamp,
};
use iomt_agent::pipeline::batch::{transform_batch, transform_batch_json, OfflineIdentity};
use iomt_agent::pipeline::transform::TransformOptions;
use proptest::prelude::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wrap(text: &str, collection: &str, name: &str) -> String {
    let t = text.strip_prefix('\u{feff}').unwrap_or(text).trim_start();
    if name.contains("-single-") || (name.starts_with("gen-") && !t.starts_with('[')) {
        format!("{{\"templateType\":\"{collection}\",\"template\":[{t}]}}")
    } else if t.starts_with('[') {
        format!("{{\"templateType\":\"{collection}\",\"template\":{t}}}")
    } else {
        t.to_owned()
    }
}

/// Every FHIR template that loads (partial loads included) from the corpus and `templates/`.
fn all_fhir_templates() -> Vec<(String, CodeValueFhirTemplate)> {
    let mut out = Vec::new();
    let mut files: Vec<(String, String)> = Vec::new();
    for e in std::fs::read_dir(conformance_dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") && name != "cases.json" {
            files.push((name.clone(), read_conformance(&name)));
        }
    }
    for e in std::fs::read_dir(repo().join("templates")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            files.push((name, std::fs::read_to_string(&p).unwrap()));
        }
    }
    files.sort();
    for (name, text) in files {
        let l = load_fhir_mapping(&wrap(&text, "CollectionFhir", &name));
        for t in l.mapping.templates {
            out.push((name.clone(), t));
        }
    }
    assert!(out.len() >= 30, "only {} FHIR templates found", out.len());
    out
}

/// The measurements of the conformance normalization cases and of the shipped examples.
fn corpus_measurements() -> Vec<Measurement> {
    let t = Timestamp::parse_rfc3339("2024-06-01T00:00:00Z").unwrap();
    let cases: Value = serde_json::from_str(&read_conformance("cases.json")).unwrap();
    let mut out = Vec::new();
    for case in cases["normalization"].as_array().unwrap() {
        let mapping = match (
            case.get("device_mapping"),
            case.get("device_mapping_inline"),
        ) {
            (Some(f), _) => read_conformance(f.as_str().unwrap()),
            (None, Some(inline)) => inline.to_string(),
            _ => continue,
        };
        let message: Value = match (case.get("message"), case.get("message_inline")) {
            (Some(f), _) => {
                let t = read_conformance(f.as_str().unwrap());
                serde_json::from_str(t.strip_prefix('\u{feff}').unwrap_or(&t)).unwrap()
            }
            (None, Some(m)) => m.clone(),
            _ => continue,
        };
        if let Ok(ms) = load_device_mapping(&mapping).mapping.normalize(message, t) {
            out.extend(ms);
        }
    }
    let dev = load_device_mapping(
        &std::fs::read_to_string(repo().join("templates/vitals.device.json")).unwrap(),
    )
    .into_result()
    .unwrap();
    for e in std::fs::read_dir(repo().join("templates/examples")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        out.extend(dev.normalize(v, t).unwrap());
    }
    assert!(out.len() >= 30, "only {} corpus measurements", out.len());
    out
}

/// Runs both paths over `ms` in both identity modes, with and without short identifiers, and
/// with an existing version for every other Observation of a first pass; asserts equality.
/// Returns how many Observations were compared.
fn compare(fhir: &FhirMapping, ms: &[Measurement], label: &str) -> usize {
    let issued = Timestamp::parse_rfc3339("2024-06-01T12:34:56.7890123Z").unwrap();
    let mut compared = 0;
    for identity in [OfflineIdentity::Create, OfflineIdentity::Passthrough] {
        for short in [false, true] {
            let opts = TransformOptions {
                short_identifiers: short,
            };
            // A first pass over every other measurement gives the "stored" versions.
            let half: Vec<Measurement> = ms.iter().step_by(2).cloned().collect();
            let first = transform_batch(fhir, &half, identity, issued, &opts, &mut |_| None);
            let stored: HashMap<String, Value> = first
                .observations
                .iter()
                .map(|o| (o["id"].as_str().unwrap().to_owned(), o.clone()))
                .collect();
            for with_existing in [false, true] {
                let mut lookup = |id: &str| {
                    if with_existing {
                        stored.get(id).cloned()
                    } else {
                        None
                    }
                };
                let a = transform_batch(fhir, ms, identity, issued, &opts, &mut lookup);
                let mut lookup = |id: &str| {
                    if with_existing {
                        stored.get(id).cloned()
                    } else {
                        None
                    }
                };
                let b = transform_batch_json(fhir, ms, identity, issued, &opts, &mut lookup);
                let ctx =
                    format!("{label} ({identity:?}, short {short}, existing {with_existing})");
                assert_eq!(a.errors, b.errors, "{ctx}: errors");
                assert_eq!(a.unchanged, b.unchanged, "{ctx}: unchanged");
                assert_eq!(a.patients, b.patients, "{ctx}: patients");
                assert_eq!(a.devices, b.devices, "{ctx}: devices");
                assert_eq!(
                    a.observations.len(),
                    b.observations.len(),
                    "{ctx}: observation count"
                );
                for (v, j) in a.observations.iter().zip(&b.observations) {
                    assert_eq!(serde_json::to_string(v).unwrap(), j.json, "{ctx}");
                    assert_eq!(v["id"].as_str(), Some(j.id.as_str()), "{ctx}: id");
                    compared += 1;
                }
            }
        }
    }
    compared
}

/// The value names a template reads (value and components).
fn value_names(t: &CodeValueFhirTemplate) -> Vec<String> {
    t.value
        .iter()
        .chain(t.components.iter().map(|c| &c.value))
        .map(|v| v.value_name().to_owned())
        .collect()
}

/// Values that exercise every branch of the writers: .NET number forms, invalid numbers,
/// strings that need escaping, non-ASCII, blanks.
const VALUES: &[&str] = &[
    "72",
    "36.60",
    "-1,000.5",
    "5.",
    "(5)",
    "1e3",
    "0.000000000000000000000000001",
    "79228162514264337593543950335",
    "123456789012345678901234567890",
    "  98  ",
    "abc",
    "",
    " ",
    "quote \" and backslash \\",
    "line\nbreak\ttab\r\u{8}\u{c}\u{1}\u{1f}\u{7f}",
    "h\u{e9}t\u{e9}ro \u{1F600}",
    "true",
];

fn measurement(
    type_name: &str,
    device: &str,
    patient: Option<&str>,
    encounter: Option<&str>,
    secs: i64,
    ticks: u32,
    props: Vec<(String, String)>,
) -> Measurement {
    let t = Timestamp::from_unix(1_700_000_000 + secs, ticks).unwrap();
    Measurement {
        type_name: type_name.to_owned(),
        occurrence_time: t,
        ingestion_time: t,
        device_id: device.to_owned(),
        patient_id: patient.map(str::to_owned),
        encounter_id: encounter.map(str::to_owned),
        correlation_id: Some("corr-1".to_owned()),
        properties: props,
    }
}

#[test]
fn json_path_matches_value_path_on_the_corpus_measurements() {
    let ms = corpus_measurements();
    let mut total = 0;
    for (name, t) in all_fhir_templates() {
        let fhir = FhirMapping::new(vec![t.clone()]);
        // The corpus measurements, retyped to this template, with its value names.
        let names = value_names(&t);
        let retyped: Vec<Measurement> = ms
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut m = m.clone();
                m.type_name = t.type_name.clone();
                let mut props = m.properties.clone();
                for (k, n) in names.iter().enumerate() {
                    if !props.iter().any(|(p, _)| p == n) && (i + k) % 3 != 0 {
                        props.push((n.clone(), VALUES[(i + k) % VALUES.len()].to_owned()));
                    }
                }
                m.properties = props;
                m
            })
            .collect();
        total += compare(&fhir, &retyped, &format!("{name} / {}", t.type_name));
    }
    assert!(total > 1000, "only {total} observations compared");
}

#[test]
fn json_path_matches_value_path_on_the_shipped_mappings() {
    // The shipped device + FHIR mappings end to end, over their example messages.
    let t = Timestamp::parse_rfc3339("2024-06-01T00:00:00Z").unwrap();
    let dev = load_device_mapping(
        &std::fs::read_to_string(repo().join("templates/vitals.device.json")).unwrap(),
    )
    .into_result()
    .unwrap();
    let fhir = load_fhir_mapping(
        &std::fs::read_to_string(repo().join("templates/vitals.fhir.json")).unwrap(),
    )
    .into_result()
    .unwrap();
    let mut ms = Vec::new();
    for e in std::fs::read_dir(repo().join("templates/examples")).unwrap() {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap();
        ms.extend(dev.normalize(v, t).unwrap());
    }
    assert!(compare(&fhir, &ms, "vitals") >= 4);
}

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(VALUES).prop_map(str::to_owned),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        (any::<u32>(), 0u32..12).prop_map(|(i, s)| format!("{i}.{}", "0".repeat(s as usize))),
        "\\PC{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn json_path_matches_value_path_on_random_groups(
        template_index in any::<proptest::sample::Index>(),
        readings in proptest::collection::vec(
            (
                0..4usize,
                proptest::option::of(4..6usize),
                proptest::option::of(0..2usize),
                0i64..7_200,
                0u32..3,
                proptest::collection::vec((0..8usize, arb_value()), 0..4),
            ),
            1..24,
        ),
        ids in proptest::collection::vec("[ a-zA-Z0-9\"\\\\.\\-\u{e9}\n]{0,10}", 6),
    ) {
        let templates = all_fhir_templates();
        let (name, t) = &templates[template_index.index(templates.len())];
        let names = value_names(t);
        let fhir = FhirMapping::new(vec![t.clone()]);
        let ms: Vec<Measurement> = readings
            .iter()
            .map(|(d, p, e, secs, ticks, props)| {
                // Property indices past the template's names give names it does not read.
                let props = props
                    .iter()
                    .map(|(i, v)| {
                        let n = names.get(*i).cloned().unwrap_or_else(|| format!("other{i}"));
                        (n, v.clone())
                    })
                    .collect();
                measurement(
                    &t.type_name,
                    &ids[*d],
                    p.map(|p| ids[p].as_str()),
                    e.map(|e| ids[e].as_str()),
                    *secs,
                    ticks * 3_333_333,
                    props,
                )
            })
            .collect();
        compare(&fhir, &ms, name);
    }
}
