//! Mapping engine speed, on the same messages in one run: bare `serde_json` parse (into
//! `Value`: the baseline); parse + normalize through `Value`; the bare parse into the borrowed
//! `doc::Node`; parse + normalize from text (`normalize_text`, what the runtime runs); parse +
//! normalize (from text) + group + transform (Single-period Quantity) into Observations
//! as JSON text (`transform_batch_json`, what the outbox writes), and the same into
//! `serde_json::Value` Observations (`transform_batch`, the reference path). For a
//! CalculatedContent heart-rate template (JSONPath) and an IotJsonPathContent template.
//! `stage_*`: one stage on measurements normalized beforehand (group into owned groups; group
//! into the batch's borrowed views; group + transform; the SHA-256 Observation ids alone), for
//! the per-stage breakdown.
//! Runs with the agent's allocator settings (`runtime::malloc`, decision 0006).
//! Results, ratios and the command: `docs/BENCHMARKS.md`, "Mapping engine".
//!
//! `cargo bench -p iomt-agent --bench mapping -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iomt_agent::mapping::doc::Node;
use iomt_agent::mapping::{
    load_device_mapping, load_fhir_mapping, DeviceMapping, FhirMapping, Timestamp,
};
use iomt_agent::pipeline::batch::{transform_batch, transform_batch_json, OfflineIdentity};
use iomt_agent::pipeline::group::{effective_period_interval, group_measurements, group_spans};
use iomt_agent::pipeline::transform::{observation_id, TransformOptions};
use std::hint::black_box;

const N: usize = 1000;

fn calculated() -> (DeviceMapping, FhirMapping, Vec<String>) {
    let dev = r#"{"templateType":"CollectionContent","template":[{"templateType":"CalculatedContent","template":{
        "typeName":"heartrate","typeMatchExpression":"$..[?(@heartRate)]",
        "deviceIdExpression":"$.matchedToken.deviceId","timestampExpression":"$.matchedToken.endDate",
        "patientIdExpression":"$.matchedToken.patientId",
        "values":[{"required":"true","valueExpression":"$.matchedToken.heartRate","valueName":"hr"}]}}]}"#;
    let msgs = (0..N)
        .map(|i| {
            format!(
                r#"{{"Body":{{"heartRate":{},"endDate":"2023-10-09T19:{:02}:{:02}Z","deviceId":"device{}","patientId":"patient{}"}},"Properties":{{}},"SystemProperties":{{}}}}"#,
                60 + i % 40,
                (i / 60) % 60,
                i % 60,
                i % 10,
                i % 10
            )
        })
        .collect();
    (
        load_device_mapping(dev).into_result().unwrap(),
        fhir("heartrate", "hr"),
        msgs,
    )
}

fn iot() -> (DeviceMapping, FhirMapping, Vec<String>) {
    let dev = r#"{"templateType":"CollectionContent","template":[{"templateType":"IotJsonPathContent","template":{
        "typeName":"heartrate","typeMatchExpression":"$..[?(@Body.heartrate)]","patientIdExpression":"$.Body.patientid",
        "values":[{"required":"true","valueExpression":"$.Body.heartrate","valueName":"hr"}]}}]}"#;
    let msgs = (0..N)
        .map(|i| {
            format!(
                r#"{{"Body":{{"heartrate":{},"patientid":"patient{}"}},"Properties":{{"iothub-creation-time-utc":"2023-10-09T19:{:02}:{:02}.6073744Z"}},"SystemProperties":{{"iothub-connection-device-id":"device{}","iothub-enqueuedtime":"2023-10-09T19:{:02}:{:02}.875Z"}}}}"#,
                60 + i % 40,
                i % 10,
                (i / 60) % 60,
                i % 60,
                i % 10,
                (i / 60) % 60,
                i % 60
            )
        })
        .collect();
    (
        load_device_mapping(dev).into_result().unwrap(),
        fhir("heartrate", "hr"),
        msgs,
    )
}

fn fhir(t: &str, v: &str) -> FhirMapping {
    let text = format!(
        r#"{{"templateType":"CollectionFhir","template":[{{"templateType":"CodeValueFhir","template":{{
        "typeName":"{t}","periodInterval":0,"codes":[{{"code":"8867-4","system":"http://loinc.org","display":"Heart rate"}}],
        "category":[{{"text":"Vital Signs","codes":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}}]}}],
        "value":{{"valueType":"Quantity","valueName":"{v}","unit":"beats/minute","code":"/min","system":"http://unitsofmeasure.org"}}}}}}]}}"#
    );
    load_fhir_mapping(&text).into_result().unwrap()
}

fn bench(c: &mut Criterion) {
    // The agent's own allocator settings (`iomt-agent` calls this first thing in main): without
    // them glibc returns each batch's freed memory to the kernel and the next batch faults it
    // back in, which makes a row's speed depend on which rows ran before it.
    iomt_agent::runtime::malloc::tune_allocator();
    let t = Timestamp::parse_rfc3339("2023-10-09T20:00:00Z").unwrap();
    for (name, (dev, fhir, msgs)) in [
        ("calculated_jsonpath", calculated()),
        ("iot_jsonpath", iot()),
    ] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function("parse", |b| {
            b.iter(|| {
                for m in &msgs {
                    black_box(serde_json::from_str::<serde_json::Value>(m).unwrap());
                }
            })
        });
        g.bench_function("parse_normalize", |b| {
            b.iter(|| {
                for m in &msgs {
                    let v: serde_json::Value = serde_json::from_str(m).unwrap();
                    black_box(dev.normalize(v, t).unwrap());
                }
            })
        });
        g.bench_function("parse_node", |b| {
            b.iter(|| {
                for m in &msgs {
                    black_box(Node::parse(m).unwrap());
                }
            })
        });
        g.bench_function("parse_normalize_text", |b| {
            b.iter(|| {
                for m in &msgs {
                    black_box(dev.normalize_text(m, t).unwrap().unwrap());
                }
            })
        });
        g.bench_function("parse_normalize_group_transform", |b| {
            b.iter(|| {
                let mut ms = Vec::with_capacity(N);
                for m in &msgs {
                    ms.extend(dev.normalize_text(m, t).unwrap().unwrap());
                }
                let out = transform_batch_json(
                    &fhir,
                    &ms,
                    OfflineIdentity::Passthrough,
                    t,
                    &TransformOptions::default(),
                    &mut |_| None,
                );
                assert!(out.errors.is_empty());
                assert_eq!(out.observations.len(), N);
                black_box(out.observations)
            })
        });
        g.bench_function("parse_normalize_group_transform_value", |b| {
            b.iter(|| {
                let mut ms = Vec::with_capacity(N);
                for m in &msgs {
                    ms.extend(dev.normalize_text(m, t).unwrap().unwrap());
                }
                let out = transform_batch(
                    &fhir,
                    &ms,
                    OfflineIdentity::Passthrough,
                    t,
                    &TransformOptions::default(),
                    &mut |_| None,
                );
                assert!(out.errors.is_empty());
                black_box(out.observations.len())
            })
        });
        // Stage costs, for the breakdown in docs/BENCHMARKS.md: the same measurements,
        // normalized once outside the timing.
        let ms: Vec<_> = msgs
            .iter()
            .flat_map(|m| dev.normalize(serde_json::from_str(m).unwrap(), t).unwrap())
            .collect();
        g.bench_function("stage_group", |b| {
            let period_of = |ty: &str| fhir.get(ty).map(effective_period_interval);
            b.iter(|| {
                let (groups, errors) = group_measurements(&ms, &period_of);
                assert!(errors.is_empty());
                black_box(groups)
            })
        });
        // The grouping alone as the batch uses it (borrowed views, no owned groups).
        g.bench_function("stage_group_views", |b| {
            let period_of = |ty: &str| fhir.get(ty).map(effective_period_interval);
            b.iter(|| {
                let grouped = group_spans(&ms, &period_of);
                assert!(grouped.errors.is_empty());
                black_box(grouped.len())
            })
        });
        g.bench_function("stage_group_transform", |b| {
            b.iter(|| {
                let out = transform_batch_json(
                    &fhir,
                    &ms,
                    OfflineIdentity::Passthrough,
                    t,
                    &TransformOptions::default(),
                    &mut |_| None,
                );
                black_box(out.observations)
            })
        });
        g.bench_function("stage_id", |b| {
            let identifiers: Vec<String> = ms
                .iter()
                .map(|m| {
                    format!(
                        "{}.{}.{}.{}",
                        m.patient_id.as_deref().unwrap_or(""),
                        m.device_id,
                        m.type_name,
                        m.occurrence_time.format_segment()
                    )
                })
                .collect();
            b.iter(|| {
                for i in &identifiers {
                    black_box(observation_id(i));
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
