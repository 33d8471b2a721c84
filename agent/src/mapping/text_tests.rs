//! Differential tests: normalizing from text through the borrowed [`Node`] gives exactly what
//! `normalize(serde_json::from_str(text))` gives (measurements, errors, error texts, order,
//! parse errors), on the conformance corpus, the shipped templates and random messages.

use super::doc::Node;
use super::{load_device_mapping, DeviceMapping, Measurement, NormalizeError, Timestamp};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

type Outcome = Result<Result<Vec<Measurement>, Vec<NormalizeError>>, String>;

/// The reference: parse into `serde_json::Value`, then normalize.
fn reference(m: &DeviceMapping, text: &str, t: Timestamp) -> Outcome {
    serde_json::from_str(text)
        .map(|v| m.normalize(v, t))
        .map_err(|e| e.to_string())
}

/// Every text entry point against the reference, with and without the CalculatedContent
/// shortcut; returns how many measurements the reference gave (to check coverage).
fn check(m: &DeviceMapping, text: &str, t: Timestamp, what: &str) -> usize {
    let mut produced = 0;
    for m in [m.clone(), m.without_direct()] {
        let want = reference(&m, text, t);
        let got = m.normalize_text(text, t).map_err(|e| e.to_string());
        assert_eq!(got, want, "normalize_text: {what}");
        let only = Node::parse(text)
            .map(|n| m.normalize_node_only(n, t))
            .map_err(|e| e.to_string());
        assert_eq!(only, want, "normalize_node_only: {what}");
        if let Ok(Ok(ms)) = &want {
            produced += ms.len();
        }
    }
    produced
}

fn corpus() -> Option<PathBuf> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared/conformance/iomt-fhir"))
        .find(|p| p.is_dir())
}

fn read(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    s.strip_prefix('\u{feff}').unwrap_or(&s).to_owned()
}

/// Loads a device mapping file (single containers wrapped, as the corpus manifest says); the
/// valid subset of a partly invalid mapping is used too.
fn mapping_of(name: &str, text: &str) -> Option<DeviceMapping> {
    let text = if name.contains("-single-") || name.starts_with("gen-") {
        let t = text.trim_start();
        if t.contains("\"CollectionContent\"") {
            t.to_owned()
        } else {
            format!(r#"{{"templateType":"CollectionContent","template":[{t}]}}"#)
        }
    } else {
        text.to_owned()
    };
    let load = load_device_mapping(&text);
    (!load.mapping.templates.is_empty()).then_some(load.mapping)
}

/// Every device mapping and every message of the corpus and of `templates/`, crossed: the
/// matching pairs give measurements, the others every kind of error.
#[test]
fn corpus_and_shipped_templates_cross_product() {
    let t = Timestamp::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut mappings: Vec<(String, DeviceMapping)> = Vec::new();
    let mut messages: Vec<(String, String)> = Vec::new();
    let shipped = repo.join("templates");
    for e in std::fs::read_dir(&shipped).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n.ends_with(".device.json") {
            mappings.extend(mapping_of(&n, &read(&p)).map(|m| (n, m)));
        }
    }
    for e in std::fs::read_dir(shipped.join("examples")).unwrap() {
        let p = e.unwrap().path();
        messages.push((p.display().to_string(), read(&p)));
    }
    let Some(c) = corpus() else {
        panic!("the conformance corpus (shared/conformance/iomt-fhir) is missing");
    };
    for e in std::fs::read_dir(&c).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n.starts_with("device-")
            || n.ends_with(".device.json")
            || n.ends_with(".device-template.json")
            || n.ends_with(".device-templates.json")
            || n.starts_with("sample-") && n.ends_with(".device.json")
            || n.starts_with("validate-device")
        {
            mappings.extend(mapping_of(&n, &read(&p)).map(|m| (n.clone(), m)));
        }
        if n.starts_with("msg-") || n.ends_with(".msg.json") || n == "invalid-json.txt" {
            messages.push((n, read(&p)));
        }
    }
    let cases: serde_json::Value = serde_json::from_str(&read(&c.join("cases.json"))).unwrap();
    let cases = cases["normalization"].as_array().unwrap();
    assert_eq!(cases.len(), 22);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        if let Some(inline) = case.get("device_mapping_inline") {
            mappings.extend(mapping_of(id, &inline.to_string()).map(|m| (id.to_owned(), m)));
        }
        if let Some(inline) = case.get("message_inline") {
            messages.push((id.to_owned(), inline.to_string()));
            // The same message pretty-printed (escapes, whitespace) must not matter either.
            messages.push((
                format!("{id} pretty"),
                serde_json::to_string_pretty(inline).unwrap(),
            ));
        }
    }
    assert!(mappings.len() >= 30, "{} mappings", mappings.len());
    assert!(messages.len() >= 20, "{} messages", messages.len());
    let mut produced = 0;
    let mut failed = 0;
    for (mn, m) in &mappings {
        for (xn, x) in &messages {
            produced += check(m, x, t, &format!("{mn} on {xn}"));
            if let Ok(Err(_)) = reference(m, x, t) {
                failed += 1;
            }
        }
    }
    assert!(
        produced > 100,
        "only {produced} measurements: the test compares too little"
    );
    assert!(
        failed > 50,
        "only {failed} failing pairs: the error path is barely compared"
    );
}

// === random messages ===

/// A message tree that can hold what `serde_json::Value` cannot: repeated keys, and numbers
/// and strings as raw JSON text (escapes, every number form).
#[derive(Debug, Clone)]
enum Gen {
    Raw(String),
    Arr(Vec<Gen>),
    Obj(Vec<(String, Gen)>),
}

impl Gen {
    fn write(&self, out: &mut String) {
        match self {
            Gen::Raw(s) => out.push_str(s),
            Gen::Arr(a) => {
                out.push('[');
                for (i, g) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    g.write(out);
                }
                out.push(']');
            }
            Gen::Obj(m) => {
                out.push('{');
                for (i, (k, g)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(k);
                    out.push(':');
                    g.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Keys (as JSON text) the templates below look for, some escaped, and others.
fn arb_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        r#""heartRate""#,
        r#""heart\u0052ate""#,
        r#""deviceId""#,
        r#""endDate""#,
        r#""patientId""#,
        r#""matchedToken""#,
        r#""Body""#,
        r#""heartrate""#,
        r#""patientid""#,
        r#""Properties""#,
        r#""SystemProperties""#,
        r#""iothub-creation-time-utc""#,
        r#""iothub-connection-device-id""#,
        r#""iothub-enqueuedtime""#,
        r#""enqueuedTime""#,
        r#""steps""#,
        r#""a""#,
        r#""""#,
        r#""\n\t""#,
    ])
    .prop_map(str::to_owned)
}

fn arb_leaf() -> impl Strategy<Value = Gen> {
    let fixed = prop::sample::select(vec![
        "null",
        "true",
        "false",
        "0",
        "-0",
        "-0.0",
        "1e3",
        "1E3",
        "72.0",
        "36.60",
        "1.5e-7",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "0.1",
        "1e308",
        r#""2023-10-09T19:00:00Z""#,
        r#""2023-10-09T19:00:00.6073744Z""#,
        r#""2023-10-09T21:00:00+02:00""#,
        r#""2023-10-09 19:00""#,
        r#""yesterday""#,
        r#""device1""#,
        r#""patient\u0031""#,
        r#""""#,
        r#""  ""#,
        r#""\u00e9\n\"q\"""#,
        r#""\ud83d\ude00""#,
        r#""60""#,
        r#""True""#,
    ])
    .prop_map(|s| Gen::Raw(s.to_owned()));
    prop_oneof![
        4 => fixed,
        1 => any::<i64>().prop_map(|i| Gen::Raw(i.to_string())),
        1 => any::<u64>().prop_map(|u| Gen::Raw(u.to_string())),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Gen::Raw(serde_json::to_string(&f).unwrap_or_default())),
        1 => "[a-z0-9 :.-]{0,12}".prop_map(|s| Gen::Raw(format!("\"{s}\""))),
    ]
}

fn arb_gen() -> impl Strategy<Value = Gen> {
    arb_leaf().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            1 => prop::collection::vec(inner.clone(), 0..4).prop_map(Gen::Arr),
            3 => prop::collection::vec((arb_key(), inner), 0..7).prop_map(Gen::Obj),
        ]
    })
}

/// A value for a member the templates read: mostly a plausible one, sometimes anything.
fn arb_field(good: &'static [&'static str]) -> impl Strategy<Value = Gen> {
    prop_oneof![
        5 => prop::sample::select(good).prop_map(|s| Gen::Raw(s.to_owned())),
        1 => arb_gen(),
    ]
}

/// An object with the members of one of the shapes the templates read (each present or
/// not), extra random members, and now and then one of them repeated.
fn arb_shaped(fields: Vec<(&'static str, &'static [&'static str])>) -> impl Strategy<Value = Gen> {
    let present = fields
        .into_iter()
        .map(|(k, good)| (any::<u8>(), arb_field(good)).prop_map(move |(p, v)| (p, k, v)))
        .collect::<Vec<_>>();
    (
        present,
        prop::collection::vec((arb_key(), arb_gen()), 0..3),
        any::<u8>(),
    )
        .prop_map(|(present, extra, dup)| {
            let mut m: Vec<(String, Gen)> = present
                .into_iter()
                .filter(|(p, _, _)| *p > 25)
                .map(|(_, k, v)| (format!("\"{k}\""), v))
                .collect();
            m.extend(extra);
            if dup < 40 && !m.is_empty() {
                let i = usize::from(dup) % m.len();
                let mut again = m[i].clone();
                again.1 = Gen::Raw("61".to_owned());
                m.push(again);
            }
            if dup % 3 == 0 {
                m.reverse();
            }
            Gen::Obj(m)
        })
}

const TIMES: &[&str] = &[
    r#""2023-10-09T19:00:00Z""#,
    r#""2023-10-09T19:00:00.6073744Z""#,
    r#""2023-10-09T21:00:00+02:00""#,
];
const IDS: &[&str] = &[r#""device1""#, r#""dev\u0069ce2""#, r#""patient-1""#];
const VALUES: &[&str] = &["60", "72.0", "36.60", r#""61""#, "1e3", "-0"];

fn arb_calculated() -> impl Strategy<Value = Gen> {
    let body = arb_shaped(vec![
        ("heartRate", VALUES),
        ("deviceId", IDS),
        ("endDate", TIMES),
        ("patientId", IDS),
        ("steps", VALUES),
        ("a", TIMES),
    ])
    .boxed();
    let list = prop::collection::vec(body.clone(), 0..3).prop_map(Gen::Arr);
    prop_oneof![body, list].prop_flat_map(|b| {
        arb_shaped(vec![("Properties", &["{}"]), ("SystemProperties", &["{}"])]).prop_map(
            move |mut env| {
                if let Gen::Obj(m) = &mut env {
                    m.insert(0, ("\"Body\"".to_owned(), b.clone()));
                }
                env
            },
        )
    })
}

fn arb_iot() -> impl Strategy<Value = Gen> {
    (
        arb_shaped(vec![("heartrate", VALUES), ("patientid", IDS)]),
        arb_shaped(vec![("iothub-creation-time-utc", TIMES)]),
        arb_shaped(vec![
            ("iothub-connection-device-id", IDS),
            ("iothub-enqueuedtime", TIMES),
        ]),
    )
        .prop_map(|(b, p, s)| {
            Gen::Obj(vec![
                ("\"Body\"".to_owned(), b),
                ("\"Properties\"".to_owned(), p),
                ("\"SystemProperties\"".to_owned(), s),
            ])
        })
}

fn arb_flat() -> impl Strategy<Value = Gen> {
    arb_shaped(vec![
        ("heartRate", VALUES),
        ("deviceId", IDS),
        ("endDate", TIMES),
        ("enqueuedTime", TIMES),
        ("patientId", IDS),
        ("steps", VALUES),
    ])
}

/// A message: a shaped one (CalculatedContent envelope, IoT Hub envelope, flat) or an object
/// of random members drawn from the keys above; repeats included.
fn arb_message() -> impl Strategy<Value = String> {
    let random = prop::collection::vec((arb_key(), arb_gen()), 0..8).prop_map(Gen::Obj);
    let msg = prop_oneof![random, arb_calculated(), arb_iot(), arb_flat()];
    (msg, any::<u8>()).prop_map(|(m, cut)| {
        let mut s = String::new();
        m.write(&mut s);
        // Now and then a truncated or trailing-garbage text, for the parse errors.
        match cut {
            0..=5 => {
                let at = s.len() * usize::from(cut) / 6;
                let at = (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                s.truncate(at);
            }
            6 => s.push_str(" x"),
            _ => {}
        }
        s
    })
}

fn random_mappings() -> Vec<DeviceMapping> {
    let calc = |tm: &str, dev: &str, time: &str, extra: &str| {
        format!(
            r#"{{"templateType":"CalculatedContent","template":{{"typeName":"hr","typeMatchExpression":"{tm}",
            "deviceIdExpression":"{dev}","timestampExpression":"{time}","patientIdExpression":"$.matchedToken.patientId",
            "values":[{{"required":"true","valueExpression":"$.matchedToken.heartRate","valueName":"hr"}}{extra}]}}}}"#
        )
    };
    let texts = [
        // The bench's CalculatedContent template.
        calc("$..[?(@heartRate)]", "$.matchedToken.deviceId", "$.matchedToken.endDate", ""),
        // Expressions only the matchedToken insertion evaluates, optional values.
        calc(
            "$..[?(@heartRate)]",
            "$.Body.deviceId",
            "$..matchedToken.endDate",
            r#",{"required":"false","valueExpression":"$.matchedToken.steps","valueName":"steps"}"#,
        ),
        calc("$.Body", "$.Body.deviceId", "$.Body.endDate", ""),
        calc("$..[?(@a)]", "$.matchedToken.a", "$.matchedToken.a", ""),
        // The bench's IotJsonPathContent template and a JsonPathContent one.
        r#"{"templateType":"IotJsonPathContent","template":{"typeName":"hr","typeMatchExpression":"$..[?(@Body.heartrate)]",
            "patientIdExpression":"$.Body.patientid","values":[{"required":"true","valueExpression":"$.Body.heartrate","valueName":"hr"}]}}"#.to_owned(),
        r#"{"templateType":"JsonPathContent","template":{"typeName":"hr","typeMatchExpression":"$..[?(@heartRate)]",
            "deviceIdExpression":"$.deviceId","timestampExpression":"$.endDate","patientIdExpression":"$.patientId",
            "values":[{"required":"true","valueExpression":"$.heartRate","valueName":"hr"},
                      {"required":"false","valueExpression":"$.steps","valueName":"steps"}]}}"#.to_owned(),
        r#"{"templateType":"IotCentralJsonPathContent","template":{"typeName":"hr","typeMatchExpression":"$..[?(@heartRate)]",
            "values":[{"required":"false","valueExpression":"$.heartRate","valueName":"hr"}]}}"#.to_owned(),
        // JMESPath (the Value fallback, and the node's own conversion in normalize_node_only).
        r#"{"templateType":"CalculatedContent","template":{"typeName":"hr","typeMatchExpression":"$..[?(@heartRate)]",
            "deviceIdExpression":{"value":"matchedToken.deviceId","language":"JmesPath"},"timestampExpression":"$.matchedToken.endDate",
            "values":[{"required":"true","valueExpression":{"value":"matchedToken.heartRate","language":"JmesPath"},"valueName":"hr"}]}}"#.to_owned(),
    ];
    let mut out: Vec<DeviceMapping> = texts
        .iter()
        .map(|t| {
            load_device_mapping(&format!(
                r#"{{"templateType":"CollectionContent","template":[{t}]}}"#
            ))
            .into_result()
            .unwrap_or_else(|e| panic!("{t}: {e:?}"))
        })
        .collect();
    // All of them at once (one message, several templates, errors of several).
    out.push(DeviceMapping {
        templates: out.iter().flat_map(|m| m.templates.clone()).collect(),
    });
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_messages_normalize_the_same_from_text(text in arb_message()) {
        let t = Timestamp::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
        for m in random_mappings() {
            check(&m, &text, t, &text);
        }
        // And the parse itself: the same tree (compared as text, which keeps member order
        // and number forms) or the same error.
        let v: Result<serde_json::Value, _> = serde_json::from_str(&text);
        let n = Node::parse(&text);
        match (v, n) {
            (Ok(v), Ok(n)) => prop_assert_eq!(
                serde_json::to_string(&n.to_value()).unwrap(),
                serde_json::to_string(&v).unwrap()
            ),
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            (v, n) => prop_assert!(false, "value {:?}, node {:?}", v, n),
        }
    }
}

/// The random messages do reach the interesting paths: measurements of every template and
/// repeated keys.
#[test]
fn random_messages_cover_measurements() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let t = Timestamp::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
    let mappings = random_mappings();
    let mut runner = TestRunner::deterministic();
    let mut produced = vec![0usize; mappings.len()];
    let mut dup = 0;
    for _ in 0..3000 {
        let text = arb_message().new_tree(&mut runner).unwrap().current();
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(&text) {
            dup += usize::from(
                text.matches("\"heartRate\"").count() > 1 && o.contains_key("heartRate"),
            );
        }
        for (i, m) in mappings.iter().enumerate() {
            if let Ok(Ok(ms)) = reference(m, &text, t) {
                produced[i] += ms.len();
            }
        }
    }
    assert!(dup > 0, "no message repeated a key");
    // The IoT Central template needs a root `deviceId` and `enqueuedTime`: rare but not zero.
    let single = &produced[..produced.len() - 1];
    assert!(
        single.iter().all(|&n| n > 20),
        "measurements per template: {produced:?}"
    );
}
