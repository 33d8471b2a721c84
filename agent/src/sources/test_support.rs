//! Helpers for the device sources' unit tests: load a ward config with one source block, and
//! map envelopes with the shipped driver templates (`templates/drivers.*.json`).

use crate::config::{load, ConfigError, SourceKind};
use crate::mapping::{load_device_mapping, load_fhir_mapping, Measurement, Timestamp};
use crate::pipeline::batch::{transform_batch, OfflineIdentity};
use crate::pipeline::transform::TransformOptions;
use serde_json::Value;
use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Loads a config whose only source is `source` (the body of a `[[sources]]` table).
pub fn load_source(source: &str) -> Result<(String, SourceKind), Vec<ConfigError>> {
    let r = repo();
    let text = format!(
        "ward = \"W7\"\n[mapping]\ndevice = \"{}\"\nfhir = \"{}\"\n[[sources]]\n{source}\n[[sinks]]\ntype = \"outbox\"\n",
        r.join("templates/drivers.device.json").display(),
        r.join("templates/drivers.fhir.json").display(),
    );
    let c = load(&text, &r.join("test-ward.toml"))?;
    let s = c.sources.into_iter().next().expect("one source");
    Ok((s.name, s.kind))
}

/// The error messages of a config that must fail, joined.
pub fn source_errors(source: &str) -> String {
    match load_source(source) {
        Ok(_) => panic!("config was accepted:\n{source}"),
        Err(e) => e
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Normalizes envelopes (JSON text, as stored in the log) with the driver templates and
/// transforms them into Observations (Create-mode identity).
pub fn map_envelopes(envelopes: &[String]) -> (Vec<Measurement>, Vec<Value>) {
    let r = repo();
    let dev = load_device_mapping(
        &std::fs::read_to_string(r.join("templates/drivers.device.json")).unwrap(),
    )
    .into_result()
    .unwrap();
    let fhir =
        load_fhir_mapping(&std::fs::read_to_string(r.join("templates/drivers.fhir.json")).unwrap())
            .into_result()
            .unwrap();
    let t = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let mut ms = Vec::new();
    for e in envelopes {
        let v: Value = serde_json::from_str(e).unwrap();
        ms.extend(dev.normalize(v, t).unwrap());
    }
    let out = transform_batch(
        &fhir,
        &ms,
        OfflineIdentity::Create,
        t,
        &TransformOptions::default(),
        &mut |_| None,
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    (ms, out.observations)
}

/// `system|code` of every coding of an Observation's code.
pub fn codings(obs: &Value) -> Vec<String> {
    obs["code"]["coding"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "{}|{}",
                        c["system"].as_str().unwrap_or(""),
                        c["code"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Observation whose codings include `code`.
pub fn obs_with<'a>(obs: &'a [Value], code: &str) -> &'a Value {
    obs.iter()
        .find(|o| codings(o).iter().any(|c| c.ends_with(&format!("|{code}"))))
        .unwrap_or_else(|| panic!("no Observation coded {code} in {obs:#?}"))
}
