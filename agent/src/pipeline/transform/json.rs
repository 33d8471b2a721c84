//! The create path written straight to JSON text.
//!
//! [`create_observation_json`] produces exactly the bytes `serde_json::to_string` gives for the
//! `Value` that [`create_observation`](super::create_observation) builds: same keys in the same
//! order, same omissions, same string escaping (serde_json's: `\"`, `\\`, `\b`, `\f`, `\n`,
//! `\r`, `\t`, other control characters as `\u00xx`, everything else raw UTF-8) and same number
//! text (serde_json's `Number` display). It skips the `Value` tree (an ordered map per object,
//! about forty allocations per Observation), which was half of the transform's time.
//!
//! The `Value` path stays the reference: the merge path still works on `Value`s, and the
//! differential tests (`tests.rs` here, and `tests/it/transform_json.rs`) compare the two
//! outputs byte for byte over conformance cases, shipped templates and random groups.
//!
//! Invariants: pure (no I/O, no clock), no panics; errors are the ones
//! [`create_observation`](super::create_observation) returns, in the same order.

use std::fmt::Write as _;

use super::{
    format_instant, non_blank, observation_id, observation_identifier, quantity_number,
    sampled_error, single_string, slot_period, template_decimal_number, template_values, Window,
};
use super::{TransformError, TransformOptions};
use crate::mapping::fhir_model::{
    CodeValueFhirTemplate, FhirValueTemplate, TemplateCategory, TemplateCoding,
};
use crate::mapping::Timestamp;
use crate::pipeline::group::ObservationGroup;
use crate::pipeline::identity::ResolvedIdentity;
use crate::pipeline::sampled_data;

#[cfg(test)]
mod tests;

/// [`SERVICE_SYSTEM`](super::SERVICE_SYSTEM) as a JSON string literal (it has nothing to escape; a test checks that
/// this is what escaping it gives).
const SERVICE_SYSTEM_JSON: &str =
    "\"https://azure.microsoft.com/en-us/services/iomt-fhir-connector/\"";

/// A new Observation as JSON text, identical to
/// `serde_json::to_string(&create_observation(template, group, identity, issued, opts)?)`.
pub fn create_observation_json(
    template: &CodeValueFhirTemplate,
    group: &ObservationGroup,
    identity: &ResolvedIdentity,
    issued: Timestamp,
    opts: &TransformOptions,
) -> Result<String, TransformError> {
    let identifier = observation_identifier(identity, group, opts);
    let id = observation_id(&identifier);
    create_observation_json_with(
        template,
        group,
        identity,
        &identifier,
        &id,
        &format_instant(issued),
    )
}

/// [`create_observation_json`] with the identifier, the id and the formatted `issued` already
/// computed (a batch computes the id anyway, and `issued` once for all its Observations).
/// `identifier` and `id` must be what [`observation_identifier`] and [`observation_id`] give
/// for this group and identity, and `issued` what [`format_instant`] gives.
pub(crate) fn create_observation_json_with(
    template: &CodeValueFhirTemplate,
    group: &ObservationGroup,
    identity: &ResolvedIdentity,
    identifier: &str,
    id: &str,
    issued: &str,
) -> Result<String, TransformError> {
    let patient = non_blank(Some(identity.patient_fhir_id.as_str())).ok_or(
        TransformError::MissingIdentity {
            resource: "Patient",
        },
    )?;
    let device = non_blank(Some(identity.device_fhir_id.as_str()))
        .ok_or(TransformError::MissingIdentity { resource: "Device" })?;
    let window = Window {
        data: (group.start, group.end),
        observation: (group.start, group.end),
    };

    let mut w = String::with_capacity(768);
    w.push_str(r#"{"resourceType":"Observation","id":"#);
    string(&mut w, id);
    w.push_str(r#","identifier":[{"system":"#);
    w.push_str(SERVICE_SYSTEM_JSON);
    w.push_str(r#","value":"#);
    string(&mut w, identifier);
    w.push_str(r#"}],"status":"final""#);
    category(&mut w, &template.category);
    w.push_str(r#","code":"#);
    code(&mut w, &group.type_name, &template.codes);
    w.push_str(r#","subject":"#);
    reference(&mut w, "Patient", patient);
    if let Some(enc) = non_blank(identity.encounter_fhir_id.as_deref()) {
        w.push_str(r#","encounter":"#);
        reference(&mut w, "Encounter", enc);
    }
    w.push_str(r#","effectivePeriod":{"start":""#);
    time_o(&mut w, group.start);
    w.push_str(r#"","end":""#);
    time_o(&mut w, group.end);
    w.push_str(r#""},"issued":"#);
    string(&mut w, issued);
    if let Some(vt) = &template.value {
        if let Some(values) = template_values(vt, group) {
            w.push(',');
            value(&mut w, vt, values, &window, "value")?;
        }
    }
    w.push_str(r#","device":"#);
    reference(&mut w, "Device", device);
    let mark = w.len();
    w.push_str(r#","component":["#);
    let mut any = false;
    for c in &template.components {
        if let Some(values) = template_values(&c.value, group) {
            let name = c.value.value_name();
            if any {
                w.push(',');
            }
            any = true;
            w.push_str(r#"{"code":"#);
            code(&mut w, name, &c.codes);
            w.push(',');
            value(&mut w, &c.value, values, &window, name)?;
            w.push('}');
        }
    }
    if any {
        w.push(']');
    } else {
        w.truncate(mark);
    }
    w.push('}');
    Ok(w)
}

/// `"valueX":{...}` for a created value (`create_value`).
fn value(
    w: &mut String,
    vt: &FhirValueTemplate,
    values: &[(Timestamp, String)],
    window: &Window,
    element: &str,
) -> Result<(), TransformError> {
    match vt {
        FhirValueTemplate::SampledData {
            default_period,
            unit,
            ..
        } => {
            let period = slot_period(default_period, element)?;
            let (start, end) = window.observation;
            let data = sampled_data::build(values, start, end, period)
                .map_err(|source| sampled_error(element, source))?;
            w.push_str(r#""valueSampledData":{"origin":{"value":0"#);
            if let Some(u) = non_blank(unit.as_deref()) {
                w.push_str(r#","unit":"#);
                string(w, u.trim());
            }
            w.push_str(r#"},"period":"#);
            number(w, &template_decimal_number(default_period));
            w.push_str(r#","dimensions":1,"data":"#);
            string(w, &data);
            w.push('}');
        }
        FhirValueTemplate::Quantity {
            value_name,
            unit,
            code,
            system,
        } => {
            let n = quantity_number(value_name, values)?;
            w.push_str(r#""valueQuantity":{"value":"#);
            number(w, &n);
            for (k, v) in [
                (r#","unit":"#, unit),
                (r#","system":"#, system),
                (r#","code":"#, code),
            ] {
                if let Some(s) = non_blank(v.as_deref()) {
                    w.push_str(k);
                    string(w, s.trim());
                }
            }
            w.push('}');
        }
        FhirValueTemplate::String { value_name } => {
            let only = single_string(value_name, values)?;
            w.push_str(r#""valueString":"#);
            string(w, only.trim());
        }
        FhirValueTemplate::CodeableConcept { text, codes, .. } => {
            w.push_str(r#""valueCodeableConcept":{"#);
            let had_coding = codings(w, "\"coding\":", codes);
            if let Some(t) = non_blank(text.as_deref()) {
                if had_coding {
                    w.push(',');
                }
                w.push_str(r#""text":"#);
                string(w, t.trim());
            }
            w.push('}');
        }
    }
    Ok(())
}

/// `,"category":[...]` (`resolve_category`), nothing when no category has content.
fn category(w: &mut String, categories: &[TemplateCategory]) {
    let mark = w.len();
    w.push_str(r#","category":["#);
    let mut any = false;
    for c in categories {
        let entry = w.len();
        if any {
            w.push(',');
        }
        w.push('{');
        let had_coding = codings(w, "\"coding\":", &c.codes);
        let text = non_blank(c.text.as_deref());
        if let Some(t) = text {
            if had_coding {
                w.push(',');
            }
            w.push_str(r#""text":"#);
            string(w, t.trim());
        }
        if had_coding || text.is_some() {
            w.push('}');
            any = true;
        } else {
            w.truncate(entry);
        }
    }
    if any {
        w.push(']');
    } else {
        w.truncate(mark);
    }
}

/// `{"coding":[template codings..., service coding],"text":text}` (`resolve_code`).
fn code(w: &mut String, text: &str, codes: &[TemplateCoding]) {
    let text = text.trim();
    w.push_str(r#"{"coding":["#);
    if coding_list(w, codes) {
        w.push(',');
    }
    w.push_str(r#"{"system":"#);
    w.push_str(SERVICE_SYSTEM_JSON);
    w.push_str(r#","code":"#);
    string(w, text);
    w.push_str(r#","display":"#);
    string(w, text);
    w.push_str(r#"}],"text":"#);
    string(w, text);
    w.push('}');
}

/// `{key}[codings]` when at least one coding has content (`template_codings`); returns whether
/// anything was written.
fn codings(w: &mut String, key: &str, codes: &[TemplateCoding]) -> bool {
    let mark = w.len();
    w.push_str(key);
    w.push('[');
    if coding_list(w, codes) {
        w.push(']');
        true
    } else {
        w.truncate(mark);
        false
    }
}

/// The codings with content, comma-separated, without brackets; returns whether any.
fn coding_list(w: &mut String, codes: &[TemplateCoding]) -> bool {
    let mut any = false;
    for c in codes {
        let entry = w.len();
        if any {
            w.push(',');
        }
        w.push('{');
        let mut fields = 0;
        for (k, v) in [
            (r#""system":"#, &c.system),
            (r#""code":"#, &c.code),
            (r#""display":"#, &c.display),
        ] {
            if let Some(s) = non_blank(v.as_deref()) {
                if fields > 0 {
                    w.push(',');
                }
                fields += 1;
                w.push_str(k);
                string(w, s.trim());
            }
        }
        if fields > 0 {
            w.push('}');
            any = true;
        } else {
            w.truncate(entry);
        }
    }
    any
}

/// `{"reference":"{kind}/{id trimmed}"}`.
fn reference(w: &mut String, kind: &str, id: &str) {
    w.push_str(r#"{"reference":""#);
    escaped(w, kind);
    w.push('/');
    escaped(w, id.trim());
    w.push_str("\"}");
}

/// A timestamp in .NET "o" form, without quotes.
fn time_o(w: &mut String, t: Timestamp) {
    t.write_o(w);
}

/// A JSON number as serde_json writes a `Number`.
fn number(w: &mut String, n: &serde_json::Number) {
    // Writing to a String cannot fail.
    write!(w, "{n}").ok();
}

/// A JSON string literal, escaped as serde_json does.
fn string(w: &mut String, s: &str) {
    w.push('"');
    escaped(w, s);
    w.push('"');
}

/// The escaped contents of a JSON string (serde_json's `format_escaped_str_contents`).
fn escaped(w: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        // Every escaped byte is ASCII, so `start..i` and `i + 1..` are char boundaries.
        w.push_str(&s[start..i]);
        match b {
            b'"' => w.push_str("\\\""),
            b'\\' => w.push_str("\\\\"),
            0x08 => w.push_str("\\b"),
            0x0c => w.push_str("\\f"),
            b'\n' => w.push_str("\\n"),
            b'\r' => w.push_str("\\r"),
            b'\t' => w.push_str("\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                w.push_str("\\u00");
                w.push(char::from(HEX[usize::from(b >> 4)]));
                w.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    w.push_str(&s[start..]);
}

/// Bytes serde_json escapes: control characters, `"` and `\\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};
