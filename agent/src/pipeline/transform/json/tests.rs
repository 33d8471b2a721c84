//! The text writer against `serde_json::to_string` of the `Value` path, on hand-built templates
//! that reach every omission rule (blank strings, empty codings and categories, components,
//! each value type, encounters), and the string escaper on every byte class.

use super::super::{create_observation, SERVICE_SYSTEM};
use super::*;
use crate::mapping::fhir_model::{ComponentTemplate, PeriodInterval, TemplateDecimal};
use proptest::prelude::*;

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).expect("valid time")
}

fn coding(code: Option<&str>, system: Option<&str>, display: Option<&str>) -> TemplateCoding {
    TemplateCoding {
        code: code.map(str::to_owned),
        system: system.map(str::to_owned),
        display: display.map(str::to_owned),
    }
}

fn codings_pool() -> Vec<Vec<TemplateCoding>> {
    vec![
        vec![],
        vec![coding(None, None, None)],
        vec![coding(Some(" "), Some(""), None)],
        vec![
            coding(
                Some("8867-4"),
                Some("http://loinc.org"),
                Some(" Heart rate "),
            ),
            coding(None, None, Some("only display")),
            coding(Some("  "), None, None),
        ],
        vec![coding(Some("a\"b\\c\n"), None, Some("h\u{e9}"))],
    ]
}

fn value_pool(name: &str) -> Vec<FhirValueTemplate> {
    let s = |x: &str| Some(x.to_owned());
    vec![
        FhirValueTemplate::Quantity {
            value_name: name.to_owned(),
            unit: s(" beats/minute "),
            code: s("/min"),
            system: s("http://unitsofmeasure.org"),
        },
        FhirValueTemplate::Quantity {
            value_name: name.to_owned(),
            unit: None,
            code: s(" "),
            system: None,
        },
        FhirValueTemplate::String {
            value_name: name.to_owned(),
        },
        FhirValueTemplate::SampledData {
            value_name: name.to_owned(),
            default_period: TemplateDecimal {
                text: "1000".to_owned(),
                value: 1000.0,
            },
            unit: s("count/min"),
        },
        FhirValueTemplate::SampledData {
            value_name: name.to_owned(),
            default_period: TemplateDecimal {
                text: "250.5".to_owned(),
                value: 250.5,
            },
            unit: None,
        },
        FhirValueTemplate::CodeableConcept {
            value_name: name.to_owned(),
            text: s(" Fall detected "),
            codes: vec![coding(
                Some("1912002"),
                Some("http://snomed.info/sct"),
                None,
            )],
        },
        FhirValueTemplate::CodeableConcept {
            value_name: name.to_owned(),
            text: None,
            codes: vec![],
        },
        FhirValueTemplate::CodeableConcept {
            value_name: name.to_owned(),
            text: s("only text"),
            codes: vec![coding(None, None, None)],
        },
    ]
}

fn group(values: Vec<(String, Vec<(Timestamp, String)>)>) -> ObservationGroup {
    ObservationGroup {
        type_name: " heartrate ".to_owned(),
        device_id: "dev-1".to_owned(),
        patient_id: Some("pat-1".to_owned()),
        encounter_id: None,
        correlation_id: None,
        period: PeriodInterval::Single,
        start: ts("2023-10-09T19:00:00Z"),
        end: ts("2023-10-09T19:59:59.9999999Z"),
        segment: "20231009190000Z.20231009195959Z".to_owned(),
        values,
        source_indices: vec![0],
    }
}

fn identity(encounter: Option<&str>) -> ResolvedIdentity {
    ResolvedIdentity {
        patient_fhir_id: " pat \"1\" ".to_owned(),
        device_fhir_id: "dev/1\t".to_owned(),
        encounter_fhir_id: encounter.map(str::to_owned),
    }
}

fn assert_same(
    t: &CodeValueFhirTemplate,
    g: &ObservationGroup,
    i: &ResolvedIdentity,
    opts: &TransformOptions,
) -> bool {
    let issued = ts("2024-01-02T03:04:05.5Z");
    let want = create_observation(t, g, i, issued, opts)
        .map(|v| serde_json::to_string(&v).expect("serializes"));
    let got = create_observation_json(t, g, i, issued, opts);
    assert_eq!(got, want, "template {t:?}, group {g:?}");
    got.is_ok()
}

#[test]
fn every_template_shape_writes_the_value_paths_bytes() {
    let t0 = ts("2023-10-09T19:00:00Z");
    let t1 = ts("2023-10-09T19:30:00.1234567Z");
    let series: Vec<Vec<(Timestamp, String)>> = vec![
        vec![(t0, "72".to_owned())],
        vec![(t0, " 36.60 ".to_owned())],
        vec![(t0, "-1,234.5".to_owned())],
        vec![(t0, "not a number".to_owned())],
        vec![(t0, "line\nbreak \"q\"".to_owned())],
        vec![(t0, "1".to_owned()), (t1, "2".to_owned())],
    ];
    let mut ok = 0;
    let mut total = 0;
    for codes in codings_pool() {
        for (ci, cat_codes) in codings_pool().into_iter().enumerate() {
            let category = vec![
                TemplateCategory {
                    text: [None, Some(" "), Some("Vital Signs")][ci % 3].map(str::to_owned),
                    codes: cat_codes,
                },
                TemplateCategory {
                    text: None,
                    codes: vec![],
                },
            ];
            for value in value_pool("hr").into_iter().map(Some).chain([None]) {
                for (si, s) in series.iter().enumerate() {
                    let components = if si % 2 == 0 {
                        vec![]
                    } else {
                        vec![
                            ComponentTemplate {
                                codes: codes.clone(),
                                value: value_pool("sys")[si % 8].clone(),
                            },
                            ComponentTemplate {
                                codes: vec![],
                                value: value_pool("missing")[0].clone(),
                            },
                            ComponentTemplate {
                                codes: vec![],
                                value: value_pool("dia")[(si + 3) % 8].clone(),
                            },
                        ]
                    };
                    let t = CodeValueFhirTemplate {
                        type_name: "heartrate".to_owned(),
                        codes: codes.clone(),
                        category: category.clone(),
                        period_interval: PeriodInterval::Hourly,
                        value: value.clone(),
                        components,
                    };
                    let g = group(vec![
                        ("dia".to_owned(), vec![(t0, "80".to_owned())]),
                        ("hr".to_owned(), s.clone()),
                        ("sys".to_owned(), s.clone()),
                    ]);
                    for enc in [None, Some(""), Some(" enc-1 ")] {
                        for short in [false, true] {
                            let opts = TransformOptions {
                                short_identifiers: short,
                            };
                            total += 1;
                            if assert_same(&t, &g, &identity(enc), &opts) {
                                ok += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    // Both outcomes are exercised: Observations and errors (bad numbers, two values).
    assert!(ok > 1000 && ok < total, "ok {ok} of {total}");
}

#[test]
fn missing_identities_give_the_same_errors() {
    let t = CodeValueFhirTemplate {
        type_name: "hr".to_owned(),
        codes: vec![],
        category: vec![],
        period_interval: PeriodInterval::Single,
        value: None,
        components: vec![],
    };
    let g = group(vec![]);
    for (p, d) in [("", "d"), (" ", "d"), ("p", ""), ("p", "\t")] {
        let i = ResolvedIdentity {
            patient_fhir_id: p.to_owned(),
            device_fhir_id: d.to_owned(),
            encounter_fhir_id: None,
        };
        assert!(!assert_same(&t, &g, &i, &TransformOptions::default()));
    }
}

#[test]
fn times_outside_four_digit_years_match() {
    let t = CodeValueFhirTemplate {
        type_name: "hr".to_owned(),
        codes: vec![],
        category: vec![],
        period_interval: PeriodInterval::Single,
        value: None,
        components: vec![],
    };
    for (a, b) in [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.0000001Z"),
        (
            "9999-12-31T23:59:59.9999999Z",
            "9999-12-31T23:59:59.9999999Z",
        ),
    ] {
        let mut g = group(vec![]);
        g.start = ts(a);
        g.end = ts(b);
        assert!(assert_same(
            &t,
            &g,
            &identity(None),
            &TransformOptions::default()
        ));
    }
}

fn serde_escaped(s: &str) -> String {
    serde_json::to_string(s).expect("serializes")
}

#[test]
fn escaping_matches_serde_json_for_every_ascii_byte() {
    for b in 0u8..=0x7f {
        let s = format!("a{}b", char::from(b));
        let mut w = String::new();
        string(&mut w, &s);
        assert_eq!(w, serde_escaped(&s), "byte {b:#x}");
    }
}

proptest! {
    #[test]
    fn escaping_matches_serde_json(s in "\\PC*|[\\x00-\\x1f\"\\\\a\u{e9}\u{1F600}]{0,20}") {
        let mut w = String::new();
        string(&mut w, &s);
        prop_assert_eq!(w, serde_escaped(&s));
    }
}

#[test]
fn the_service_system_literal_is_the_escaped_constant() {
    let mut w = String::new();
    string(&mut w, SERVICE_SYSTEM);
    assert_eq!(w, SERVICE_SYSTEM_JSON);
}

#[test]
fn escaping_matches_serde_json_for_every_ascii_byte_at_every_position() {
    // Long enough for the eight-bytes-at-a-time scan and its remainder.
    for b in 0u8..=0x7f {
        for pos in 0..19 {
            let mut s: Vec<char> = "abcdefghijklmnopqrs".chars().collect();
            s[pos] = char::from(b);
            let s: String = s.into_iter().collect();
            let mut w = String::new();
            string(&mut w, &s);
            assert_eq!(w, serde_escaped(&s), "byte {b:#x} at {pos}");
            assert_eq!(
                any_needs_escape(s.as_bytes()),
                s.bytes().any(|b| NEEDS_ESCAPE[usize::from(b)])
            );
        }
    }
}

proptest! {
    #[test]
    fn the_word_scan_finds_exactly_the_escaped_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        prop_assert_eq!(
            any_needs_escape(&bytes),
            bytes.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)])
        );
    }

    #[test]
    fn long_strings_escape_as_serde_json(s in "[\\x00-\\x1f\"\\\\a\u{e9}\u{1F600}\u{7f}]{8,60}") {
        let mut w = String::new();
        string(&mut w, &s);
        prop_assert_eq!(w, serde_escaped(&s));
    }

    #[test]
    fn plain_integers_are_written_as_the_decimal_parse_writes_them(s in "[0-9]{1,20}") {
        let t = ts("2023-10-09T19:00:00Z");
        if plain_integer(&s) {
            let n = quantity_number("v", &[(t, s.as_str())]).expect("parses");
            prop_assert_eq!(n.to_string(), s);
        }
    }
}
