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
//! One writer ([`write_observation`]) serves both [`create_observation_json`] (an owned
//! [`ObservationGroup`]) and the batch (a borrowed [`GroupView`]), through [`GroupData`]. What
//! depends only on the template and the measurement type (status, category, code, the subject
//! reference's start, a Quantity's unit/system/code, a whole CodeableConcept value, each
//! component's code) is rendered by the same small writers into a [`Prepared`] once and copied
//! per Observation. A Quantity whose text is a plain integer is copied as it is (what the
//! decimal parse and serde_json's `Number` would write; proptested).
//!
//! Invariants: pure (no I/O, no clock), no panics; errors are the ones
//! [`create_observation`](super::create_observation) returns, in the same order.

use std::fmt::Write as _;

use super::{
    format_instant, non_blank, observation_id, observation_identifier, quantity_number,
    sampled_error, single_string, slot_period, template_decimal_number, Window,
};
use super::{TransformError, TransformOptions};
use crate::mapping::fhir_model::{
    CodeValueFhirTemplate, FhirValueTemplate, TemplateCategory, TemplateCoding,
};
use crate::mapping::Timestamp;
use crate::pipeline::civil;
use crate::pipeline::group::{GroupView, ObservationGroup, Series};
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
    let prepared = Prepared::new(template, &group.type_name);
    let mut w = String::with_capacity(768);
    write_observation(
        &mut w,
        template,
        &prepared,
        group,
        &Ids {
            patient: &identity.patient_fhir_id,
            device: &identity.device_fhir_id,
            encounter: identity.encounter_fhir_id.as_deref(),
            identifier: &identifier,
            id: &id,
        },
        &civil::Effective::new(group.start, group.end),
        &issued_json(issued),
    )?;
    Ok(w)
}

/// `issued` as the JSON string literal the Observations carry ([`format_instant`], quoted).
pub(crate) fn issued_json(issued: Timestamp) -> String {
    let mut s = String::with_capacity(36);
    string(&mut s, &format_instant(issued));
    s
}

/// What the writer reads of a group: [`ObservationGroup`] and the batch's borrowed
/// [`GroupView`] both provide it.
pub(crate) trait GroupData {
    fn start(&self) -> Timestamp;
    fn end(&self) -> Timestamp;
    /// `values_of(name)`: the `(time, value)` series, time-ascending, if the group has it.
    fn series(&self, name: &str) -> Option<SeriesRef<'_>>;
}

/// A series as either kind of group holds it.
pub(crate) enum SeriesRef<'a> {
    Owned(&'a [(Timestamp, String)]),
    View(Series<'a>),
}

impl GroupData for ObservationGroup {
    fn start(&self) -> Timestamp {
        self.start
    }
    fn end(&self) -> Timestamp {
        self.end
    }
    fn series(&self, name: &str) -> Option<SeriesRef<'_>> {
        self.values_of(name).map(SeriesRef::Owned)
    }
}

impl GroupData for GroupView<'_> {
    fn start(&self) -> Timestamp {
        self.start
    }
    fn end(&self) -> Timestamp {
        self.end
    }
    fn series(&self, name: &str) -> Option<SeriesRef<'_>> {
        GroupView::series(self, name).map(SeriesRef::View)
    }
}

/// The ids an Observation carries: resolved Patient / Device / Encounter ids, the identifier
/// value and the Observation id ([`observation_identifier`] and [`observation_id`] of them).
pub(crate) struct Ids<'a> {
    pub(crate) patient: &'a str,
    pub(crate) device: &'a str,
    pub(crate) encounter: Option<&'a str>,
    pub(crate) identifier: &'a str,
    pub(crate) id: &'a str,
}

/// The parts of an Observation's text that depend only on its template and measurement type,
/// rendered (and escaped) once: everything from the end of the identifier to the patient
/// reference, the fixed parts of the value and of each component.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// `}],"status":"final"`, the category, `,"code":{...}`, `,"subject":{"reference":"Patient/`.
    head: String,
    /// For `template.value`.
    value: Option<PreparedValue>,
    /// For each of `template.components`: `{"code":{...},` and its value.
    components: Vec<(String, PreparedValue)>,
}

#[derive(Debug, Clone)]
enum PreparedValue {
    /// After the Quantity's number: `,"unit":..,"system":..,"code":..}`.
    QuantityTail(String),
    /// The whole `"valueCodeableConcept":{...}` (it does not depend on the group).
    Fixed(String),
    /// Written per group (SampledData, String).
    Dynamic,
}

impl Prepared {
    /// The fixed parts for `template` and a group of measurement type `type_name`.
    pub(crate) fn new(template: &CodeValueFhirTemplate, type_name: &str) -> Self {
        let mut head = String::with_capacity(256);
        head.push_str(r#"}],"status":"final""#);
        category(&mut head, &template.category);
        head.push_str(r#","code":"#);
        code(&mut head, type_name, &template.codes);
        head.push_str(r#","subject":{"reference":""#);
        escaped(&mut head, "Patient");
        head.push('/');
        let components = template
            .components
            .iter()
            .map(|c| {
                let mut h = String::from(r#"{"code":"#);
                code(&mut h, c.value.value_name(), &c.codes);
                h.push(',');
                (h, PreparedValue::new(&c.value))
            })
            .collect();
        Prepared {
            head,
            value: template.value.as_ref().map(PreparedValue::new),
            components,
        }
    }
}

impl PreparedValue {
    fn new(vt: &FhirValueTemplate) -> Self {
        match vt {
            FhirValueTemplate::Quantity {
                unit, code, system, ..
            } => {
                let mut tail = String::new();
                quantity_tail(&mut tail, unit, system, code);
                PreparedValue::QuantityTail(tail)
            }
            FhirValueTemplate::CodeableConcept { text, codes, .. } => {
                let mut w = String::new();
                codeable_concept(&mut w, text, codes);
                PreparedValue::Fixed(w)
            }
            FhirValueTemplate::SampledData { .. } | FhirValueTemplate::String { .. } => {
                PreparedValue::Dynamic
            }
        }
    }
}

/// Appends the Observation for `group` to `w`: the bytes [`create_observation_json`] gives.
/// `prepared` must be [`Prepared::new`] of this `template` and the group's type, `ids` what
/// the identity, [`observation_identifier`] and [`observation_id`] give, `effective`
/// `Effective::new(start, end)` of the group, `issued` what [`issued_json`] gives. On error `w` may hold a partial Observation.
pub(crate) fn write_observation<G: GroupData + ?Sized>(
    w: &mut String,
    template: &CodeValueFhirTemplate,
    prepared: &Prepared,
    group: &G,
    ids: &Ids<'_>,
    effective: &civil::Effective,
    issued: &str,
) -> Result<(), TransformError> {
    let patient = non_blank(Some(ids.patient)).ok_or(TransformError::MissingIdentity {
        resource: "Patient",
    })?;
    let device = non_blank(Some(ids.device))
        .ok_or(TransformError::MissingIdentity { resource: "Device" })?;
    let (start, end) = (group.start(), group.end());
    let window = Window {
        data: (start, end),
        observation: (start, end),
    };

    w.push_str(r#"{"resourceType":"Observation","id":"#);
    string(w, ids.id);
    w.push_str(r#","identifier":[{"system":"#);
    w.push_str(SERVICE_SYSTEM_JSON);
    w.push_str(r#","value":"#);
    string(w, ids.identifier);
    w.push_str(&prepared.head);
    escaped(w, patient.trim());
    w.push_str("\"}");
    if let Some(enc) = non_blank(ids.encounter) {
        w.push_str(r#","encounter":"#);
        reference(w, "Encounter", enc);
    }
    w.push_str(r#","effectivePeriod":{"start":""#);
    for (i, (t, o)) in [(start, &effective.start), (end, &effective.end)]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            w.push_str(r#"","end":""#);
        }
        match o {
            // Only ASCII digits and separators.
            Some(b) => w.push_str(std::str::from_utf8(b).unwrap_or_default()),
            None => t.write_o(w),
        }
    }
    w.push_str(r#""},"issued":"#);
    w.push_str(issued);
    if let (Some(vt), Some(pv)) = (&template.value, &prepared.value) {
        if let Some(values) = series_of(vt, group) {
            w.push(',');
            prepared_value(w, vt, pv, &values, &window, "value")?;
        }
    }
    w.push_str(r#","device":"#);
    reference(w, "Device", device);
    let mark = w.len();
    w.push_str(r#","component":["#);
    let mut any = false;
    for (c, (head, pv)) in template.components.iter().zip(&prepared.components) {
        if let Some(values) = series_of(&c.value, group) {
            if any {
                w.push(',');
            }
            any = true;
            w.push_str(head);
            prepared_value(w, &c.value, pv, &values, &window, c.value.value_name())?;
            w.push('}');
        }
    }
    if any {
        w.push(']');
    } else {
        w.truncate(mark);
    }
    w.push('}');
    Ok(())
}

/// `template_values` for either kind of group.
fn series_of<'g, G: GroupData + ?Sized>(
    vt: &FhirValueTemplate,
    group: &'g G,
) -> Option<SeriesRef<'g>> {
    let name = vt.value_name();
    if name.trim().is_empty() {
        return None;
    }
    group.series(name)
}

/// A created value through its prepared parts.
fn prepared_value(
    w: &mut String,
    vt: &FhirValueTemplate,
    pv: &PreparedValue,
    values: &SeriesRef<'_>,
    window: &Window,
    element: &str,
) -> Result<(), TransformError> {
    match (pv, vt) {
        (PreparedValue::QuantityTail(tail), FhirValueTemplate::Quantity { value_name, .. }) => {
            w.push_str(r#""valueQuantity":{"value":"#);
            let only = match values {
                SeriesRef::Owned([(_, only)]) => Some(only.as_str()),
                SeriesRef::View(s) => match s.as_slice() {
                    [(_, only)] => Some(*only),
                    _ => None,
                },
                SeriesRef::Owned(_) => None,
            };
            match only {
                // What the .NET decimal parse and serde_json's `Number` make of it.
                Some(text) if plain_integer(text) => w.push_str(text),
                _ => {
                    let n = match values {
                        SeriesRef::Owned(v) => quantity_number(value_name, v)?,
                        SeriesRef::View(s) => quantity_number(value_name, s.as_slice())?,
                    };
                    number(w, &n);
                }
            }
            w.push_str(tail);
            Ok(())
        }
        (PreparedValue::Fixed(text), FhirValueTemplate::CodeableConcept { .. }) => {
            w.push_str(text);
            Ok(())
        }
        _ => match values {
            SeriesRef::Owned(v) => value(w, vt, v, window, element),
            SeriesRef::View(s) => value(w, vt, s.as_slice(), window, element),
        },
    }
}

/// Digits without a leading zero (or `0`), at most 19 of them: the .NET decimal parse gives
/// that integer and serde_json writes it back as the same text.
pub(crate) fn plain_integer(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 19
        && b.iter().all(u8::is_ascii_digit)
        && (b.len() == 1 || b[0] != b'0')
}

/// `,"unit":..,"system":..,"code":..}`: the end of a created `valueQuantity`.
fn quantity_tail(
    w: &mut String,
    unit: &Option<String>,
    system: &Option<String>,
    code: &Option<String>,
) {
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

/// `"valueCodeableConcept":{...}` from the template.
fn codeable_concept(w: &mut String, text: &Option<String>, codes: &[TemplateCoding]) {
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

/// `"valueX":{...}` for a created value (`create_value`).
fn value<S: AsRef<str>>(
    w: &mut String,
    vt: &FhirValueTemplate,
    values: &[(Timestamp, S)],
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
            quantity_tail(w, unit, system, code);
        }
        FhirValueTemplate::String { value_name } => {
            let only = single_string(value_name, values)?;
            w.push_str(r#""valueString":"#);
            string(w, only.trim());
        }
        FhirValueTemplate::CodeableConcept { text, codes, .. } => {
            codeable_concept(w, text, codes);
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
    if !any_needs_escape(bytes) {
        w.push_str(s);
        return;
    }
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

/// Whether any byte of `bytes` is in [`NEEDS_ESCAPE`], eight bytes at a time.
fn any_needs_escape(bytes: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero, or below `n` (n <= 128): the high bit of that byte of
    // `(x - n * LO) & !x & HI` is set (bytes >= 0x80 never match: `!x` clears their bit).
    let below = |x: u64, n: u64| x.wrapping_sub(n * LO) & !x & HI;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        let x = u64::from_le_bytes(b);
        if below(x, 0x20)
            | below(x ^ (LO * u64::from(b'"')), 1)
            | below(x ^ (LO * u64::from(b'\\')), 1)
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| NEEDS_ESCAPE[usize::from(b)])
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
