//! FHIR transform: an [`ObservationGroup`] plus its `CodeValueFhir` template → a FHIR R4
//! Observation (`serde_json::Value`), or a merge of the group into an existing Observation.
//! Byte-compatible with microsoft/iomt-fhir (`CodeValueFhirTemplateProcessor`, the four
//! `*FhirValueProcessor`s, `R4FhirImportService`; semantics doc §2.4–§2.5, §4.6).
//!
//! # Shape (create)
//! Keys are written in FHIR R4 element order, as Firely's serializer does (serde_json has
//! `preserve_order`): `resourceType, id, identifier, status, category?, code, subject,`
//! `encounter?, effectivePeriod, issued, value[x]?, device, component?`. Note that R4 puts
//! `device` *after* `value[x]`.
//! - `id` = hex SHA-256 of `SERVICE_SYSTEM + "_" + identifier.value` ([`observation_id`]).
//! - `identifier` = `[{system: SERVICE_SYSTEM, value: {patient}.{device}.{type}.{segment}}]`.
//! - `code` = `{coding: template codes + {SERVICE_SYSTEM, type, type}, text: type}` where type
//!   is the measurement type of the group; components likewise with their `valueName`.
//! - `effectivePeriod` uses .NET "o" (`2023-10-09T19:00:00.0000000Z`).
//! - `issued` is the `issued` parameter formatted as Firely writes a `DateTimeOffset` from
//!   `DateTimeOffset.UtcNow`: `yyyy-MM-ddTHH:mm:ss.FFFFFFF+00:00` (trailing zero digits of the
//!   fraction dropped, and the `.` too when the fraction is zero): [`format_instant`].
//! - `value[x]` only when the template's `valueName` has data in the group; a component only
//!   when its `valueName` has data. SampledData = `{origin:{value:0, unit?}, period,
//!   dimensions:1, data}`; Quantity = `{value, unit?, system?, code?}` (exactly one value);
//!   String (exactly one value); CodeableConcept = `{coding?, text?}` from the template (the
//!   measurement value is ignored but its `valueName` must be present).
//!
//! # Merge
//! Deep copy, then as upstream: category replaced; `value[x]` merged (SampledData: the existing
//! `data` is decoded from the **existing** `effectivePeriod.start` with the **template's**
//! `defaultPeriod`, `E` dropped, merged with the group (new wins on identical times) and rebuilt
//! over `[min(start), max(end)]`; origin/period/dimensions are kept) or replaced (Quantity,
//! String, CodeableConcept); components matched by their service-system coding, merged, or
//! appended (a new component's value is built over the existing effective period, as
//! upstream); `effectivePeriod` = union; `effectiveDateTime` becomes a period. If nothing
//! changed → [`MergeOutcome::Unchanged`], else `status = amended`. `code`, `subject`, `device`,
//! `issued`, `identifier` and anything else (`meta`, extensions) are left as they are.
//!
//! # Short identifiers (opt-in, [`TransformOptions::short_identifiers`])
//! In Create mode the FHIR ids are 64-hex hashes and identifiers reach 171 characters, more
//! than servers that index 128 characters can match (iomt-fhir #187). The short form is
//! deterministic and always ≤ 128 characters:
//! 1. the full identifier when it is ≤ 128 characters (so short Lookup-mode identifiers stay
//!    identical to upstream's and edge/cloud writers still merge);
//! 2. else `~{h}.{type}.{segment}` with `h` the first 32 hex digits of
//!    SHA-256(`{patientFhirId}.{deviceFhirId}`), when that is ≤ 128 characters;
//! 3. else `~` + the 64 hex digits of SHA-256(full identifier).
//!
//! The leading `~` cannot start a FHIR id (`[A-Za-z0-9\-.]`), so short forms never collide with
//! full ones. The Observation id is still the hash of whatever identifier value is used.
//!
//! # Deviations from upstream (all deliberate, documented)
//! - Numbers: Firely writes a `decimal` with its scale (`decimal.ToString()`: `36.60` stays
//!   `36.60`). serde_json is built without `arbitrary_precision`, so that cannot be reproduced
//!   exactly. A value whose .NET decimal has scale 0
//!   (`72`, `007`, `5e3` for template decimals) is written as a JSON integer; otherwise as the
//!   shortest f64 (`36.60` → `36.6`, `5.00` → `5.0`, C# would keep `36.60` / `5.00`). Integers
//!   beyond 64 bits become f64. Quantity text is parsed with .NET `NumberStyles.Number` rules
//!   (sign before or after, `,` group separators, no exponent).
//! - Strings: Firely 4.3's JSON writer (`FhirJsonBuilder`, behind the `FhirJsonSerializer` that
//!   `Microsoft.Health.Fhir.Client` uses) trims string primitives; so does this module (codes,
//!   displays, texts, units, valueString), except the identifier value, which is kept exactly
//!   as hashed and searched (upstream would store a trimmed identifier it can then never find).
//!   Blank template strings and codings with no field are omitted instead of written empty.
//! - Merge into an Observation that has no `value[x]` (or a matched component without one):
//!   upstream throws NotSupported and drops the group; here the value is created, built over
//!   the existing effective period like a new component.
//! - A blank or missing existing `data` decodes as no values (upstream throws).
//! - SampledData slots skip values before a slot instead of stalling ([`sampled_data`]).
//! - Existing effective times with more than 7 fractional digits are truncated to 100 ns.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike, Utc};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use super::group::ObservationGroup;
use super::identity::{IdentifierHasher, ResolvedIdentity};
use super::sampled_data::{self, SampledDataError};
use crate::mapping::fhir_model::{
    CodeValueFhirTemplate, FhirValueTemplate, TemplateCategory, TemplateCoding, TemplateDecimal,
};
use crate::mapping::Timestamp;

mod json;
pub use json::create_observation_json;
pub(crate) use json::{issued_json, write_observation, Ids, Prepared};

/// The identifier system of every Observation, and the system of the extra type codings.
pub const SERVICE_SYSTEM: &str = "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/";

/// Longest identifier value the short form produces (what #187-affected servers index).
pub const SHORT_IDENTIFIER_MAX: usize = 128;

/// Transform options. The default is upstream-identical output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransformOptions {
    /// Use the ≤ 128-character identifier form described in the module doc.
    pub short_identifiers: bool,
}

/// Why a group could not be turned into (or merged into) an Observation. None of these is
/// transient: retrying the same group gives the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// Quantity value not numeric, or not exactly one value (upstream
    /// `InvalidQuantityFhirValueException`).
    #[error("invalid quantity for value {value_name:?}: {reason}")]
    InvalidQuantity { value_name: String, reason: String },
    /// String value with other than exactly one value (upstream `Single()` failure).
    #[error("invalid string for value {value_name:?}: expected 1 value, received {count}")]
    InvalidString { value_name: String, count: usize },
    /// The existing value has another type than the template's (upstream NotSupported).
    #[error("existing {element} is {actual}, expected {expected}")]
    ValueTypeMismatch {
        element: String,
        expected: &'static str,
        actual: String,
    },
    /// The existing SampledData has more than one dimension (upstream NotSupported).
    #[error("existing sampled data of {element} has {dimensions} dimensions, only 1 is supported")]
    SampledDataDimensions { element: String, dimensions: String },
    /// Slot arithmetic failed (bad `defaultPeriod`, too many slots).
    #[error("sampled data of {element}: {source}")]
    SampledData {
        element: String,
        source: SampledDataError,
    },
    /// The resolved identity lacks a Patient or Device id.
    #[error("missing {resource} id for the observation")]
    MissingIdentity { resource: &'static str },
    /// The existing Observation cannot be merged (not an object, no usable `effective[x]`, ...).
    #[error("existing observation cannot be merged: {reason}")]
    InvalidExisting { reason: String },
}

/// Result of [`merge_observation`].
#[derive(Debug, Clone, PartialEq)]
pub enum MergeOutcome {
    /// The merge changed nothing: do not write.
    Unchanged,
    /// The merged Observation (`status` = `amended`), to be written with `If-Match`.
    Changed(Value),
}

/// The Observation identifier value: `{patientFhirId}.{deviceFhirId}.{type}.{segment}`, or its
/// short form when `opts.short_identifiers` (module doc).
pub fn observation_identifier(
    identity: &ResolvedIdentity,
    group: &ObservationGroup,
    opts: &TransformOptions,
) -> String {
    let mut out = String::new();
    write_identifier(
        &mut out,
        &identity.patient_fhir_id,
        &identity.device_fhir_id,
        &group.type_name,
        &group.segment,
        opts,
    );
    out
}

/// [`observation_identifier`] from its parts, appended to `out`.
pub(crate) fn write_identifier(
    out: &mut String,
    patient: &str,
    device: &str,
    type_name: &str,
    segment: &str,
    opts: &TransformOptions,
) {
    let full_len = patient.len() + device.len() + type_name.len() + segment.len() + 3;
    if !opts.short_identifiers || full_len <= SHORT_IDENTIFIER_MAX {
        out.reserve(full_len);
        for (i, part) in [patient, device, type_name, segment]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                out.push('.');
            }
            out.push_str(part);
        }
        return;
    }
    let pd = sha256_hex(&format!("{patient}.{device}"));
    let medium = format!("~{}.{}.{}", &pd[..32], type_name, segment);
    if medium.len() <= SHORT_IDENTIFIER_MAX {
        out.push_str(&medium);
        return;
    }
    let full = format!("{patient}.{device}.{type_name}.{segment}");
    out.push('~');
    out.push_str(&sha256_hex(&full));
}

/// The deterministic Observation id: hex SHA-256 of `SERVICE_SYSTEM + "_" + identifier_value`.
pub fn observation_id(identifier_value: &str) -> String {
    super::identity::hex_string(&observation_digest(identifier_value))
}

/// The SHA-256 behind [`observation_id`] (the hasher state after `SERVICE_SYSTEM + "_"`, a
/// whole block, is computed once per process).
pub(crate) fn observation_digest(identifier_value: &str) -> [u8; 32] {
    static HASHER: std::sync::LazyLock<IdentifierHasher> =
        std::sync::LazyLock::new(|| IdentifierHasher::new(Some(SERVICE_SYSTEM)));
    HASHER.digest(identifier_value)
}

/// Formats an instant as Firely writes `Observation.issued` from a UTC `DateTimeOffset`:
/// `yyyy-MM-ddTHH:mm:ss[.FFFFFFF]+00:00`.
pub fn format_instant(t: Timestamp) -> String {
    let d = t.datetime();
    let ticks = d.nanosecond() / 100;
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    );
    if ticks > 0 {
        let frac = format!("{ticks:07}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str("+00:00");
    s
}

/// Builds a new Observation for `group`. `issued` is the creation time (a parameter: this
/// module never reads the clock).
pub fn create_observation(
    template: &CodeValueFhirTemplate,
    group: &ObservationGroup,
    identity: &ResolvedIdentity,
    issued: Timestamp,
    opts: &TransformOptions,
) -> Result<Value, TransformError> {
    let patient = non_blank(Some(identity.patient_fhir_id.as_str())).ok_or(
        TransformError::MissingIdentity {
            resource: "Patient",
        },
    )?;
    let device = non_blank(Some(identity.device_fhir_id.as_str()))
        .ok_or(TransformError::MissingIdentity { resource: "Device" })?;
    let identifier = observation_identifier(identity, group, opts);
    let window = Window {
        data: (group.start, group.end),
        observation: (group.start, group.end),
    };

    let mut o = Map::new();
    o.insert("resourceType".into(), "Observation".into());
    o.insert("id".into(), observation_id(&identifier).into());
    o.insert(
        "identifier".into(),
        Value::Array(vec![obj([
            ("system", SERVICE_SYSTEM.into()),
            ("value", identifier.into()),
        ])]),
    );
    o.insert("status".into(), "final".into());
    let category = resolve_category(&template.category);
    if !category.is_empty() {
        o.insert("category".into(), Value::Array(category));
    }
    o.insert(
        "code".into(),
        resolve_code(&group.type_name, &template.codes),
    );
    o.insert("subject".into(), reference("Patient", patient));
    if let Some(enc) = non_blank(identity.encounter_fhir_id.as_deref()) {
        o.insert("encounter".into(), reference("Encounter", enc));
    }
    o.insert(
        "effectivePeriod".into(),
        period_json(group.start, group.end),
    );
    o.insert("issued".into(), format_instant(issued).into());
    if let Some(vt) = &template.value {
        if let Some(values) = template_values(vt, group) {
            let (key, v) = create_value(vt, values, &window, "value")?;
            o.insert(key.into(), v);
        }
    }
    o.insert("device".into(), reference("Device", device));
    let mut components = Vec::new();
    for c in &template.components {
        if let Some(values) = template_values(&c.value, group) {
            let name = c.value.value_name();
            let (key, v) = create_value(&c.value, values, &window, name)?;
            components.push(obj([("code", resolve_code(name, &c.codes)), (key, v)]));
        }
    }
    if !components.is_empty() {
        o.insert("component".into(), Value::Array(components));
    }
    Ok(Value::Object(o))
}

/// Merges `group` into `existing` (an Observation read from the server). See the module doc.
pub fn merge_observation(
    template: &CodeValueFhirTemplate,
    group: &ObservationGroup,
    existing: &Value,
) -> Result<MergeOutcome, TransformError> {
    let Some(existing_obj) = existing.as_object() else {
        return Err(invalid_existing("not a JSON object"));
    };
    match existing_obj.get("resourceType") {
        None => {}
        Some(Value::String(s)) if s == "Observation" => {}
        Some(other) => return Err(invalid_existing(format!("resourceType is {other}"))),
    }
    let mut merged = existing_obj.clone();

    // Category: replaced by the template's (or removed).
    merged.shift_remove("category");
    let category = resolve_category(&template.category);
    if !category.is_empty() {
        merged.insert("category".into(), Value::Array(category));
    }

    let observation_period = existing_period(&merged)?;
    let window = Window {
        data: (group.start, group.end),
        observation: observation_period,
    };

    if let Some(vt) = &template.value {
        if let Some(values) = template_values(vt, group) {
            let (key, v) = merge_value(vt, values, &window, &merged, "value")?;
            remove_value_keys(&mut merged);
            merged.insert(key.into(), v);
        }
    }

    if !template.components.is_empty() {
        let mut components = match merged.shift_remove("component") {
            None => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid_existing("component is not an array")),
        };
        for c in &template.components {
            let Some(values) = template_values(&c.value, group) else {
                continue;
            };
            let name = c.value.value_name();
            match components
                .iter()
                .position(|comp| has_service_coding(comp, name))
            {
                None => {
                    let (key, v) = create_value(&c.value, values, &window, name)?;
                    components.push(obj([("code", resolve_code(name, &c.codes)), (key, v)]));
                }
                Some(i) => {
                    let Some(comp) = components[i].as_object() else {
                        return Err(invalid_existing("component entry is not an object"));
                    };
                    let (key, v) = merge_value(&c.value, values, &window, comp, name)?;
                    let mut comp = comp.clone();
                    remove_value_keys(&mut comp);
                    comp.insert(key.into(), v);
                    components[i] = Value::Object(reorder(comp, COMPONENT_ORDER));
                }
            }
        }
        if !components.is_empty() {
            merged.insert("component".into(), Value::Array(components));
        }
    }

    let (mut start, mut end) = observation_period;
    start = start.min(group.start);
    end = end.max(group.end);
    for k in EFFECTIVE_KEYS {
        merged.shift_remove(*k);
        merged.shift_remove(&format!("_{k}"));
    }
    merged.insert("effectivePeriod".into(), period_json(start, end));

    let mut merged = reorder(merged, OBSERVATION_ORDER);
    if &merged == existing_obj {
        return Ok(MergeOutcome::Unchanged);
    }
    merged.insert("status".into(), "amended".into());
    Ok(MergeOutcome::Changed(Value::Object(merged)))
}

// ---------------------------------------------------------------------------------------------
// Values

/// DataPeriod (the group's boundary) and ObservationPeriod (the Observation's effective period)
/// of upstream's `IObservationData`. Created values (SampledData) are built over the
/// observation period: the group boundary on create, the *existing* effective period when a
/// merge creates a value (upstream `CreateMergeData(grp.Boundary, observationPeriod, ...)`).
#[derive(Clone, Copy)]
struct Window {
    data: (Timestamp, Timestamp),
    observation: (Timestamp, Timestamp),
}

/// The group's series for a value template, when the template's `valueName` has data.
fn template_values<'g>(
    vt: &FhirValueTemplate,
    group: &'g ObservationGroup,
) -> Option<&'g [(Timestamp, String)]> {
    let name = vt.value_name();
    if name.trim().is_empty() {
        return None;
    }
    group.values_of(name)
}

fn value_key(vt: &FhirValueTemplate) -> &'static str {
    match vt {
        FhirValueTemplate::SampledData { .. } => "valueSampledData",
        FhirValueTemplate::Quantity { .. } => "valueQuantity",
        FhirValueTemplate::String { .. } => "valueString",
        FhirValueTemplate::CodeableConcept { .. } => "valueCodeableConcept",
    }
}

/// The number of a Quantity value: exactly one value, parsed as a .NET decimal. Shared by the
/// `Value` path and the text path (`transform/json.rs`).
pub(super) fn quantity_number<S: AsRef<str>>(
    value_name: &str,
    values: &[(Timestamp, S)],
) -> Result<Number, TransformError> {
    let text = match values {
        [(_, only)] => only.as_ref(),
        _ => {
            return Err(TransformError::InvalidQuantity {
                value_name: value_name.to_owned(),
                reason: format!("expected 1 value, received {}", values.len()),
            })
        }
    };
    dotnet_decimal(text, NumberStyle::Number).ok_or_else(|| TransformError::InvalidQuantity {
        value_name: value_name.to_owned(),
        reason: format!("error encountered processing value: {text}"),
    })
}

/// The text of a String value: exactly one value. Shared like [`quantity_number`].
pub(super) fn single_string<'v, S: AsRef<str>>(
    value_name: &str,
    values: &'v [(Timestamp, S)],
) -> Result<&'v str, TransformError> {
    match values {
        [(_, only)] => Ok(only.as_ref()),
        _ => Err(TransformError::InvalidString {
            value_name: value_name.to_owned(),
            count: values.len(),
        }),
    }
}

/// Creates a value (CreateValue): SampledData over the window's observation period.
fn create_value(
    vt: &FhirValueTemplate,
    values: &[(Timestamp, String)],
    window: &Window,
    element: &str,
) -> Result<(&'static str, Value), TransformError> {
    let key = value_key(vt);
    let v = match vt {
        FhirValueTemplate::SampledData {
            default_period,
            unit,
            ..
        } => {
            let period = slot_period(default_period, element)?;
            let (start, end) = window.observation;
            let data = sampled_data::build(values, start, end, period)
                .map_err(|source| sampled_error(element, source))?;
            // Upstream's shape, no UCUM system/code (docs/decisions/0005-*.md).
            let mut origin = Map::new();
            origin.insert("value".into(), Value::Number(Number::from(0)));
            if let Some(u) = non_blank(unit.as_deref()) {
                origin.insert("unit".into(), fhir_string(u));
            }
            obj([
                ("origin", Value::Object(origin)),
                (
                    "period",
                    Value::Number(template_decimal_number(default_period)),
                ),
                ("dimensions", Value::Number(Number::from(1))),
                ("data", Value::String(data)),
            ])
        }
        FhirValueTemplate::Quantity {
            value_name,
            unit,
            code,
            system,
        } => {
            let number = quantity_number(value_name, values)?;
            let mut q = Map::new();
            q.insert("value".into(), Value::Number(number));
            for (k, v) in [("unit", unit), ("system", system), ("code", code)] {
                if let Some(s) = non_blank(v.as_deref()) {
                    q.insert(k.into(), fhir_string(s));
                }
            }
            Value::Object(q)
        }
        FhirValueTemplate::String { value_name } => fhir_string(single_string(value_name, values)?),
        FhirValueTemplate::CodeableConcept { text, codes, .. } => {
            let mut cc = Map::new();
            let coding = template_codings(codes);
            if !coding.is_empty() {
                cc.insert("coding".into(), Value::Array(coding));
            }
            if let Some(t) = non_blank(text.as_deref()) {
                cc.insert("text".into(), fhir_string(t));
            }
            Value::Object(cc)
        }
    };
    Ok((key, v))
}

/// Merges a value (MergeValue) into the `value[x]` of `holder` (the Observation or a component).
fn merge_value(
    vt: &FhirValueTemplate,
    values: &[(Timestamp, String)],
    window: &Window,
    holder: &Map<String, Value>,
    element: &str,
) -> Result<(&'static str, Value), TransformError> {
    let expected = value_key(vt);
    let existing = VALUE_KEYS
        .iter()
        .find_map(|k| holder.get(*k).map(|v| (*k, v)));
    let Some((existing_key, existing_value)) = existing else {
        // Deviation: upstream throws NotSupported for a missing existing value.
        return create_value(vt, values, window, element);
    };
    if existing_key != expected {
        return Err(TransformError::ValueTypeMismatch {
            element: element.to_owned(),
            expected: &expected["value".len()..],
            actual: existing_key["value".len()..].to_owned(),
        });
    }
    match vt {
        FhirValueTemplate::SampledData { default_period, .. } => {
            let Some(sd) = existing_value.as_object() else {
                return Err(invalid_existing(format!(
                    "{element} SampledData is not an object"
                )));
            };
            if let Some(d) = sd.get("dimensions") {
                if d.as_f64().is_some_and(|n| n > 1.0) {
                    return Err(TransformError::SampledDataDimensions {
                        element: element.to_owned(),
                        dimensions: d.to_string(),
                    });
                }
            }
            let period = slot_period(default_period, element)?;
            let (obs_start, obs_end) = window.observation;
            let (data_start, data_end) = window.data;
            let existing_data = sd.get("data").and_then(Value::as_str).unwrap_or("");
            let decoded = sampled_data::decode(existing_data, obs_start, period)
                .map_err(|source| sampled_error(element, source))?;
            let merged_values = sampled_data::merge(&decoded, values);
            let data = sampled_data::build(
                &merged_values,
                data_start.min(obs_start),
                data_end.max(obs_end),
                period,
            )
            .map_err(|source| sampled_error(element, source))?;
            let mut sd = sd.clone();
            sd.insert("data".into(), Value::String(data));
            Ok((expected, Value::Object(sd)))
        }
        // Quantity, String, CodeableConcept: replaced.
        _ => create_value(vt, values, window, element),
    }
}

fn slot_period(p: &TemplateDecimal, element: &str) -> Result<i64, TransformError> {
    sampled_data::period_ticks(p.value).map_err(|source| sampled_error(element, source))
}

fn sampled_error(element: &str, source: SampledDataError) -> TransformError {
    TransformError::SampledData {
        element: element.to_owned(),
        source,
    }
}

fn has_service_coding(component: &Value, value_name: &str) -> bool {
    component
        .get("code")
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .is_some_and(|codings| {
            codings.iter().any(|c| {
                c.get("code").and_then(Value::as_str) == Some(value_name)
                    && c.get("system").and_then(Value::as_str) == Some(SERVICE_SYSTEM)
            })
        })
}

// ---------------------------------------------------------------------------------------------
// Existing effective period

fn existing_period(o: &Map<String, Value>) -> Result<(Timestamp, Timestamp), TransformError> {
    let parse = |v: Option<&Value>, what: &str| -> Result<Timestamp, TransformError> {
        let s = v
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_existing(format!("{what} is missing")))?;
        parse_fhir_datetime(s)
            .ok_or_else(|| invalid_existing(format!("{what} {s:?} is not a dateTime")))
    };
    if let Some(p) = o.get("effectivePeriod") {
        let start = parse(p.get("start"), "effectivePeriod.start")?;
        let end = parse(p.get("end"), "effectivePeriod.end")?;
        return Ok((start, end));
    }
    if let Some(dt) = o.get("effectiveDateTime") {
        let t = parse(Some(dt), "effectiveDateTime")?;
        return Ok((t, t));
    }
    match EFFECTIVE_KEYS.iter().find(|k| o.contains_key(**k)) {
        Some(k) => Err(invalid_existing(format!("{k} is not supported"))),
        None => Err(invalid_existing("effective[x] is missing")),
    }
}

/// Parses a FHIR `dateTime` as Firely 4.3 does for merging (`XmlConvert.ToDateTimeOffset`):
/// partial dates fill out to midnight, January 1, UTC; a time without zone is UTC (the host
/// zone of the cloud service); more than 7 fractional digits are truncated.
pub fn parse_fhir_datetime(s: &str) -> Option<Timestamp> {
    if !s.is_ascii() {
        return None;
    }
    let date = |y: &str, m: &str, d: &str| -> Option<Timestamp> {
        if !(y.len() == 4 && m.len() == 2 && d.len() == 2) {
            return None;
        }
        let all_digits = [y, m, d]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()));
        if !all_digits {
            return None;
        }
        let nd = NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)?;
        Some(Timestamp::from_datetime(
            Utc.from_utc_datetime(&nd.and_hms_opt(0, 0, 0)?),
        ))
    };
    match s.len() {
        4 => date(s, "01", "01"),
        7 if s.as_bytes()[4] == b'-' => date(&s[..4], &s[5..7], "01"),
        10 if s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-' => {
            date(&s[..4], &s[5..7], &s[8..10])
        }
        n if n > 11 => {
            let time = &s[11..];
            let has_zone = time.ends_with(['Z', 'z']) || time.contains(['+', '-']);
            let full = if has_zone {
                s.to_owned()
            } else {
                format!("{s}Z")
            };
            DateTime::parse_from_rfc3339(&full)
                .ok()
                .map(|d| Timestamp::from_datetime(d.with_timezone(&Utc)))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Codes, references, JSON helpers

fn resolve_code(text: &str, codes: &[TemplateCoding]) -> Value {
    let mut coding = template_codings(codes);
    coding.push(obj([
        ("system", SERVICE_SYSTEM.into()),
        ("code", fhir_string(text)),
        ("display", fhir_string(text)),
    ]));
    obj([
        ("coding", Value::Array(coding)),
        ("text", fhir_string(text)),
    ])
}

fn resolve_category(categories: &[TemplateCategory]) -> Vec<Value> {
    categories
        .iter()
        .filter_map(|c| {
            let mut cc = Map::new();
            let coding = template_codings(&c.codes);
            if !coding.is_empty() {
                cc.insert("coding".into(), Value::Array(coding));
            }
            if let Some(t) = non_blank(c.text.as_deref()) {
                cc.insert("text".into(), fhir_string(t));
            }
            (!cc.is_empty()).then_some(Value::Object(cc))
        })
        .collect()
}

fn template_codings(codes: &[TemplateCoding]) -> Vec<Value> {
    codes
        .iter()
        .filter_map(|c| {
            let mut m = Map::new();
            for (k, v) in [
                ("system", &c.system),
                ("code", &c.code),
                ("display", &c.display),
            ] {
                if let Some(s) = non_blank(v.as_deref()) {
                    m.insert(k.into(), fhir_string(s));
                }
            }
            (!m.is_empty()).then_some(Value::Object(m))
        })
        .collect()
}

fn reference(kind: &str, id: &str) -> Value {
    obj([("reference", Value::String(format!("{kind}/{}", id.trim())))])
}

fn period_json(start: Timestamp, end: Timestamp) -> Value {
    obj([
        ("start", start.format_o().into()),
        ("end", end.format_o().into()),
    ])
}

fn obj<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn fhir_string(s: &str) -> Value {
    Value::String(s.trim().to_owned())
}

fn non_blank(s: Option<&str>) -> Option<&str> {
    s.filter(|x| !x.trim().is_empty())
}

fn invalid_existing(reason: impl Into<String>) -> TransformError {
    TransformError::InvalidExisting {
        reason: reason.into(),
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

const VALUE_KEYS: &[&str] = &[
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
];

const EFFECTIVE_KEYS: &[&str] = &[
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveTiming",
    "effectiveInstant",
];

/// R4 `Observation` element order (`value[x]` and `effective[x]` expanded in R4's type order).
const OBSERVATION_ORDER: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "identifier",
    "basedOn",
    "partOf",
    "status",
    "category",
    "code",
    "subject",
    "focus",
    "encounter",
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveTiming",
    "effectiveInstant",
    "issued",
    "performer",
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
    "dataAbsentReason",
    "interpretation",
    "note",
    "bodySite",
    "method",
    "specimen",
    "device",
    "referenceRange",
    "hasMember",
    "derivedFrom",
    "component",
];

/// R4 `Observation.component` element order.
const COMPONENT_ORDER: &[&str] = &[
    "id",
    "extension",
    "modifierExtension",
    "code",
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
    "dataAbsentReason",
    "interpretation",
    "referenceRange",
];

fn remove_value_keys(m: &mut Map<String, Value>) {
    for k in VALUE_KEYS {
        m.shift_remove(*k);
        m.shift_remove(&format!("_{k}"));
    }
}

/// Rebuilds `map` with the keys of `order` first (each followed by its `_key` primitive
/// extension twin), then any other keys in their original order.
fn reorder(map: Map<String, Value>, order: &[&str]) -> Map<String, Value> {
    let mut entries: Vec<Option<(String, Value)>> = map.into_iter().map(Some).collect();
    let mut out = Map::new();
    let mut take = |name: &str, out: &mut Map<String, Value>| {
        if let Some(slot) = entries
            .iter_mut()
            .find(|e| matches!(e, Some((k, _)) if k == name))
        {
            if let Some((k, v)) = slot.take() {
                out.insert(k, v);
            }
        }
    };
    for k in order {
        take(k, &mut out);
        take(&format!("_{k}"), &mut out);
    }
    for (k, v) in entries.into_iter().flatten() {
        out.insert(k, v);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// .NET decimal text → JSON number

/// Which .NET `NumberStyles` a text is parsed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberStyle {
    /// `NumberStyles.Number` (`decimal.Parse` default): signs before or after, `,` groups.
    Number,
    /// `NumberStyles.Float` (Json.NET reading a decimal): leading sign, exponent.
    Float,
}

/// Largest .NET decimal, 79228162514264337593543950335.
const DECIMAL_MAX: f64 = 7.922_816_251_426_434e28;

/// Parses `text` like .NET `decimal.Parse(text, style, InvariantCulture)` and returns the JSON
/// number this module writes for it (module doc, "Numbers"); `None` when .NET would throw.
fn dotnet_decimal(text: &str, style: NumberStyle) -> Option<Number> {
    let is_ws = |c: char| matches!(c, '\t'..='\r' | ' ');
    let s = text.trim_matches(is_ws);
    if let Some(n) = plain_integer(s) {
        return Some(n);
    }
    dotnet_decimal_general(s, style)
}

/// The usual device value, an optionally signed run of at most 18 digits, without the general
/// parser's allocations. Same result as [`dotnet_decimal_general`] (a test checks it): such a
/// text has scale 0 and fits an `i64`, and zero is written without sign.
fn plain_integer(s: &str) -> Option<Number> {
    let b = s.as_bytes();
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 18 digits: below 10^18, no overflow.
    let v = digits
        .iter()
        .fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
    Some(Number::from(if negative { -v } else { v }))
}

/// [`dotnet_decimal`] on an already trimmed text, any form.
fn dotnet_decimal_general(s: &str, style: NumberStyle) -> Option<Number> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut negative = false;
    let mut leading_sign = false;
    if let Some(&c) = b.first() {
        if c == b'+' || c == b'-' {
            negative = c == b'-';
            leading_sign = true;
            i += 1;
        }
    }
    let mut int_digits = String::new();
    while i < b.len() {
        match b[i] {
            d @ b'0'..=b'9' => int_digits.push(d as char),
            b',' if style == NumberStyle::Number && !int_digits.is_empty() => {}
            _ => break,
        }
        i += 1;
    }
    let mut frac_digits = String::new();
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            frac_digits.push(b[i] as char);
            i += 1;
        }
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return None;
    }
    let mut exp: i64 = 0;
    if style == NumberStyle::Float && i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        let mut exp_neg = false;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            exp_neg = b[j] == b'-';
            j += 1;
        }
        let digits_start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            exp = exp
                .saturating_mul(10)
                .saturating_add(i64::from(b[j] - b'0'));
            j += 1;
        }
        if j > digits_start {
            if exp_neg {
                exp = -exp;
            }
            i = j;
        } else {
            exp = 0;
        }
    }
    if style == NumberStyle::Number
        && !leading_sign
        && i < b.len()
        && (b[i] == b'+' || b[i] == b'-')
    {
        negative = b[i] == b'-';
        i += 1;
    }
    if i != b.len() {
        return None;
    }

    let frac_len = frac_digits.len() as i64;
    let scale = (frac_len - exp).max(0);
    let mantissa = format!("{int_digits}{frac_digits}");
    let sign = if negative { "-" } else { "" };
    let as_f64: f64 = format!("{sign}0.{mantissa}e{}", int_digits.len() as i64 + exp)
        .parse()
        .ok()?;
    if !as_f64.is_finite() || as_f64.abs() > DECIMAL_MAX {
        return None; // .NET OverflowException
    }
    if as_f64 == 0.0 {
        // .NET prints a zero decimal without sign.
        return Some(if scale == 0 {
            Number::from(0)
        } else {
            Number::from_f64(0.0)?
        });
    }
    if scale == 0 {
        let zeros = usize::try_from(exp - frac_len).ok()?;
        let digits = format!("{mantissa}{}", "0".repeat(zeros));
        let digits = digits.trim_start_matches('0');
        if let Ok(n) = format!("{sign}{digits}").parse::<i64>() {
            return Some(Number::from(n));
        }
        if let Ok(n) = digits.parse::<u64>() {
            if !negative {
                return Some(Number::from(n));
            }
        }
    }
    Number::from_f64(as_f64)
}

/// The JSON number for a template decimal (`defaultPeriod`): its text parsed as Json.NET's
/// `ReadAsDecimal` does, else the numeric value.
fn template_decimal_number(d: &TemplateDecimal) -> Number {
    let text = d.text.trim().trim_matches('"');
    if let Some(n) = dotnet_decimal(text, NumberStyle::Float) {
        return n;
    }
    if d.value.fract() == 0.0 && d.value.abs() < 9.0e15 {
        return Number::from(d.value as i64);
    }
    Number::from_f64(d.value).unwrap_or_else(|| Number::from(0))
}

#[cfg(test)]
mod plain_integer_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn plain_integers_parse_as_the_general_parser_does(
            s in "[+-]?[0-9]{1,18}",
            style in prop_oneof![Just(NumberStyle::Number), Just(NumberStyle::Float)],
        ) {
            prop_assert_eq!(plain_integer(&s), dotnet_decimal_general(&s, style));
        }
    }

    #[test]
    fn plain_integer_edges() {
        for s in [
            "0",
            "-0",
            "+0",
            "007",
            "-999999999999999999",
            "999999999999999999",
            "1",
        ] {
            for style in [NumberStyle::Number, NumberStyle::Float] {
                assert_eq!(plain_integer(s), dotnet_decimal_general(s, style), "{s}");
                assert!(plain_integer(s).is_some(), "{s}");
            }
        }
        for s in ["", "-", "1.0", "1,000", "1e3", "9999999999999999999", " 1"] {
            assert_eq!(plain_integer(s), None, "{s}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::fhir_model::{ComponentTemplate, PeriodInterval};
    use crate::mapping::Measurement;
    use crate::pipeline::group::{effective_period_interval, group_measurements};
    use crate::pipeline::test_support::worked_examples;
    use proptest::prelude::*;
    use serde_json::json;

    const LOINC: &str = "http://loinc.org";
    const UCUM: &str = "http://unitsofmeasure.org";

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).expect("test timestamp")
    }

    fn issued() -> Timestamp {
        ts("2023-10-09T20:05:00.1230000Z")
    }

    fn meas(ty: &str, t: Timestamp, props: &[(&str, &str)]) -> Measurement {
        Measurement {
            type_name: ty.into(),
            occurrence_time: t,
            ingestion_time: ts("2023-10-09T20:00:00Z"),
            device_id: "device1".into(),
            patient_id: Some("patient1".into()),
            encounter_id: None,
            correlation_id: None,
            properties: props
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn identity() -> ResolvedIdentity {
        ResolvedIdentity {
            patient_fhir_id: "patient1".into(),
            device_fhir_id: "device1".into(),
            encounter_fhir_id: None,
        }
    }

    fn coding(code: &str, system: &str, display: &str) -> TemplateCoding {
        TemplateCoding {
            code: Some(code.into()),
            system: Some(system.into()),
            display: Some(display.into()),
        }
    }

    fn vital_signs() -> Vec<TemplateCategory> {
        vec![TemplateCategory {
            text: Some("Vital Signs".into()),
            codes: vec![coding(
                "vital-signs",
                "http://terminology.hl7.org/CodeSystem/observation-category",
                "Vital Signs",
            )],
        }]
    }

    fn sampled(value_name: &str, period_ms: f64, unit: Option<&str>) -> FhirValueTemplate {
        FhirValueTemplate::SampledData {
            value_name: value_name.into(),
            default_period: TemplateDecimal {
                text: period_ms.to_string(),
                value: period_ms,
            },
            unit: unit.map(Into::into),
        }
    }

    fn quantity(value_name: &str, unit: &str, code: &str) -> FhirValueTemplate {
        FhirValueTemplate::Quantity {
            value_name: value_name.into(),
            unit: Some(unit.into()),
            code: Some(code.into()),
            system: Some(UCUM.into()),
        }
    }

    fn hr_sampled_template(period: PeriodInterval) -> CodeValueFhirTemplate {
        CodeValueFhirTemplate {
            type_name: "heartrate".into(),
            codes: vec![coding("8867-4", LOINC, "Heart rate")],
            category: vital_signs(),
            period_interval: period,
            value: Some(sampled("hr", 5000.0, Some("count/min"))),
            components: vec![],
        }
    }

    fn hr_quantity_template() -> CodeValueFhirTemplate {
        CodeValueFhirTemplate {
            type_name: "heartrate".into(),
            codes: vec![coding("8867-4", LOINC, "Heart rate")],
            category: vital_signs(),
            period_interval: PeriodInterval::Single,
            value: Some(quantity("hr", "count/min", "/min")),
            components: vec![],
        }
    }

    fn bp_template() -> CodeValueFhirTemplate {
        CodeValueFhirTemplate {
            type_name: "bloodpressure".into(),
            codes: vec![coding("85354-9", LOINC, "Blood pressure panel")],
            category: vital_signs(),
            period_interval: PeriodInterval::Single,
            value: None,
            components: vec![
                ComponentTemplate {
                    codes: vec![coding("8480-6", LOINC, "Systolic blood pressure")],
                    value: quantity("systolic", "mmHg", "mm[Hg]"),
                },
                ComponentTemplate {
                    codes: vec![coding("8462-4", LOINC, "Diastolic blood pressure")],
                    value: quantity("diastolic", "mmHg", "mm[Hg]"),
                },
                ComponentTemplate {
                    codes: vec![coding("8478-0", LOINC, "Mean blood pressure")],
                    value: quantity("mean", "mmHg", "mm[Hg]"),
                },
            ],
        }
    }

    /// Groups `ms` with the template's effective interval and returns the only group.
    fn one_group(t: &CodeValueFhirTemplate, ms: &[Measurement]) -> ObservationGroup {
        let p = effective_period_interval(t);
        let (mut groups, errors) = group_measurements(ms, &move |_| Some(p));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(groups.len(), 1, "expected one group");
        groups.remove(0)
    }

    fn create(t: &CodeValueFhirTemplate, g: &ObservationGroup) -> Value {
        create_observation(t, g, &identity(), issued(), &TransformOptions::default())
            .expect("create")
    }

    fn changed(outcome: MergeOutcome) -> Value {
        match outcome {
            MergeOutcome::Changed(v) => v,
            MergeOutcome::Unchanged => panic!("expected a change"),
        }
    }

    fn tokens(v: &Value) -> Vec<String> {
        v.as_str()
            .expect("data string")
            .split(' ')
            .map(str::to_owned)
            .collect()
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect()
    }

    // --- worked examples (cases.json) -----------------------------------------------------

    #[test]
    fn worked_example_hourly_identifier_id_period_and_slot() {
        let ex = worked_examples();
        assert_eq!(ex["observation_identifier_system"], SERVICE_SYSTEM);
        let h = &ex["hourly"];
        let ty = h["type"].as_str().unwrap();
        let occurrence = ts(h["occurrence"].as_str().unwrap());
        let ident = ResolvedIdentity {
            patient_fhir_id: h["patient_fhir_id"].as_str().unwrap().into(),
            device_fhir_id: h["device_fhir_id"].as_str().unwrap().into(),
            encounter_fhir_id: None,
        };
        // "720 space-separated slots; slot 220 = the value, ..." under the key naming the period.
        let (sd_key, sd_text) = h
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.starts_with("sampledData_defaultPeriod_"))
            .unwrap();
        let period: f64 = sd_key.rsplit('_').next().unwrap().parse().unwrap();
        let numbers: Vec<usize> = sd_text
            .as_str()
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        let (slots, slot) = (numbers[0], numbers[1]);

        let mut t = hr_sampled_template(PeriodInterval::Hourly);
        t.type_name = ty.into();
        t.value = Some(sampled("hr", period, Some("count/min")));
        let g = one_group(&t, &[meas(ty, occurrence, &[("hr", "72")])]);
        let opts = TransformOptions::default();
        let identifier = observation_identifier(&ident, &g, &opts);
        assert_eq!(identifier, h["identifier_value"]);
        assert_eq!(observation_id(&identifier), h["observation_id"]);

        let obs = create_observation(&t, &g, &ident, issued(), &opts).unwrap();
        assert_eq!(obs["id"], h["observation_id"]);
        assert_eq!(
            obs["identifier"],
            json!([{"system": SERVICE_SYSTEM, "value": identifier}])
        );
        assert_eq!(obs["effectivePeriod"], h["effectivePeriod"]);
        let data = tokens(&obs["valueSampledData"]["data"]);
        assert_eq!(data.len(), slots);
        assert_eq!(data[slot], "72");
        assert_eq!(data.iter().filter(|t| *t == "E").count(), slots - 1);
    }

    #[test]
    fn worked_example_single_identifier_and_id() {
        let ex = worked_examples();
        let h = &ex["hourly"];
        let s = &ex["single"];
        let ty = h["type"].as_str().unwrap();
        let t = hr_quantity_template();
        let g = one_group(
            &t,
            &[meas(
                ty,
                ts(h["occurrence"].as_str().unwrap()),
                &[("hr", "72")],
            )],
        );
        let ident = ResolvedIdentity {
            patient_fhir_id: h["patient_fhir_id"].as_str().unwrap().into(),
            device_fhir_id: h["device_fhir_id"].as_str().unwrap().into(),
            encounter_fhir_id: None,
        };
        let identifier = observation_identifier(&ident, &g, &TransformOptions::default());
        assert_eq!(identifier, s["identifier_value"]);
        assert_eq!(observation_id(&identifier), s["observation_id"]);
    }

    // --- create: shapes -------------------------------------------------------------------

    #[test]
    fn quantity_observation_snapshot_and_element_order() {
        let t = hr_quantity_template();
        let g = one_group(
            &t,
            &[meas(
                "heartrate",
                ts("2023-10-09T19:18:23.5Z"),
                &[("hr", "72")],
            )],
        );
        let mut ident = identity();
        ident.encounter_fhir_id = Some("enc1".into());
        let obs =
            create_observation(&t, &g, &ident, issued(), &TransformOptions::default()).unwrap();
        assert_eq!(
            keys(&obs),
            [
                "resourceType",
                "id",
                "identifier",
                "status",
                "category",
                "code",
                "subject",
                "encounter",
                "effectivePeriod",
                "issued",
                "valueQuantity",
                "device"
            ]
        );
        assert_eq!(obs["valueQuantity"]["value"].to_string(), "72");
        assert_eq!(obs["issued"], "2023-10-09T20:05:00.123+00:00");
        assert_eq!(
            obs["effectivePeriod"]["start"],
            "2023-10-09T19:18:23.5000000Z"
        );
        assert_eq!(
            obs["effectivePeriod"]["end"],
            obs["effectivePeriod"]["start"]
        );
        insta::assert_json_snapshot!("quantity_heartrate", obs);
    }

    #[test]
    fn sampled_data_hourly_snapshot() {
        let t = hr_sampled_template(PeriodInterval::Hourly);
        let ms = [
            meas("heartrate", ts("2023-10-09T19:00:00Z"), &[("hr", "60")]),
            meas("heartrate", ts("2023-10-09T19:00:07Z"), &[("hr", "61")]),
            meas("heartrate", ts("2023-10-09T19:59:58Z"), &[("hr", "99.5")]),
        ];
        let g = one_group(&t, &ms);
        let obs = create(&t, &g);
        let sd = &obs["valueSampledData"];
        assert_eq!(keys(sd), ["origin", "period", "dimensions", "data"]);
        assert_eq!(sd["origin"], json!({"value": 0, "unit": "count/min"}));
        assert_eq!(sd["period"].to_string(), "5000");
        let data = tokens(&sd["data"]);
        assert_eq!(
            (data[0].as_str(), data[1].as_str(), data[719].as_str()),
            ("60", "61", "99.5")
        );
        insta::assert_json_snapshot!("sampled_data_hourly", obs);
    }

    #[test]
    fn blood_pressure_components_snapshot() {
        let t = bp_template();
        let g = one_group(
            &t,
            &[meas(
                "bloodpressure",
                ts("2023-10-09T19:18:23Z"),
                &[("systolic", "120"), ("diastolic", "80")],
            )],
        );
        let obs = create(&t, &g);
        assert!(obs.get("valueQuantity").is_none());
        let comps = obs["component"].as_array().unwrap();
        assert_eq!(comps.len(), 2, "the mean component has no data");
        assert_eq!(keys(&comps[0]), ["code", "valueQuantity"]);
        assert_eq!(comps[0]["code"]["text"], "systolic");
        assert_eq!(
            comps[0]["code"]["coding"][1],
            json!({"system": SERVICE_SYSTEM, "code": "systolic", "display": "systolic"})
        );
        assert_eq!(keys(&obs).last(), Some(&"component"));
        insta::assert_json_snapshot!("blood_pressure_components", obs);
    }

    #[test]
    fn codeable_concept_snapshot_and_value_name_presence() {
        let t = CodeValueFhirTemplate {
            type_name: "fallevent".into(),
            codes: vec![coding("1912002", "http://snomed.info/sct", "Fall")],
            category: vec![],
            period_interval: PeriodInterval::Single,
            value: Some(FhirValueTemplate::CodeableConcept {
                value_name: "fall".into(),
                text: Some("Fall detected".into()),
                codes: vec![coding("1912002", "http://snomed.info/sct", "Fall")],
            }),
            components: vec![],
        };
        let g = one_group(
            &t,
            &[meas(
                "fallevent",
                ts("2023-10-09T19:18:23Z"),
                &[("fall", "anything")],
            )],
        );
        let obs = create(&t, &g);
        assert!(obs.get("category").is_none(), "empty category omitted");
        assert_eq!(keys(&obs["valueCodeableConcept"]), ["coding", "text"]);
        insta::assert_json_snapshot!("codeable_concept_fall", obs);

        // Without the valueName in the data there is no value at all.
        let g = one_group(
            &t,
            &[meas(
                "fallevent",
                ts("2023-10-09T19:18:23Z"),
                &[("other", "x")],
            )],
        );
        assert!(create(&t, &g).get("valueCodeableConcept").is_none());
    }

    #[test]
    fn string_snapshot() {
        let t = CodeValueFhirTemplate {
            type_name: "devicestatus".into(),
            codes: vec![coding("status", "urn:example", "Device status")],
            category: vec![],
            period_interval: PeriodInterval::Hourly, // forced to Single by grouping
            value: Some(FhirValueTemplate::String {
                value_name: "status".into(),
            }),
            components: vec![],
        };
        let ms = [
            meas(
                "devicestatus",
                ts("2023-10-09T19:18:23Z"),
                &[("status", " lead off ")],
            ),
            meas(
                "devicestatus",
                ts("2023-10-09T19:20:00Z"),
                &[("status", "ok")],
            ),
        ];
        let (groups, _) = group_measurements(&ms, &|_| Some(effective_period_interval(&t)));
        assert_eq!(groups.len(), 2, "String values are grouped Single");
        let obs = create(&t, &groups[0]);
        assert_eq!(
            obs["valueString"], "lead off",
            "string primitives are trimmed"
        );
        insta::assert_json_snapshot!("string_status", obs);
    }

    #[test]
    fn quantity_and_string_need_exactly_one_value() {
        let mut t = hr_quantity_template();
        t.period_interval = PeriodInterval::Hourly;
        // Caller did not force Single: upstream's InvalidQuantity.
        let ms = [
            meas("heartrate", ts("2023-10-09T19:18:23Z"), &[("hr", "72")]),
            meas("heartrate", ts("2023-10-09T19:18:24Z"), &[("hr", "73")]),
        ];
        let (groups, _) = group_measurements(&ms, &|_| Some(PeriodInterval::Hourly));
        let err = create_observation(
            &t,
            &groups[0],
            &identity(),
            issued(),
            &TransformOptions::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            TransformError::InvalidQuantity {
                value_name: "hr".into(),
                reason: "expected 1 value, received 2".into()
            }
        );
        t.value = Some(FhirValueTemplate::String {
            value_name: "hr".into(),
        });
        let err = create_observation(
            &t,
            &groups[0],
            &identity(),
            issued(),
            &TransformOptions::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            TransformError::InvalidString {
                value_name: "hr".into(),
                count: 2
            }
        );

        let t = hr_quantity_template();
        let g = one_group(
            &t,
            &[meas(
                "heartrate",
                ts("2023-10-09T19:18:23Z"),
                &[("hr", "True")],
            )],
        );
        let err = create_observation(&t, &g, &identity(), issued(), &TransformOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, TransformError::InvalidQuantity { ref reason, .. } if reason.contains("True"))
        );
        assert!(err
            .to_string()
            .starts_with("invalid quantity for value \"hr\""));
    }

    #[test]
    fn missing_identity_is_an_error() {
        let t = hr_quantity_template();
        let g = one_group(
            &t,
            &[meas(
                "heartrate",
                ts("2023-10-09T19:18:23Z"),
                &[("hr", "72")],
            )],
        );
        let mut ident = identity();
        ident.device_fhir_id = " ".into();
        let err =
            create_observation(&t, &g, &ident, issued(), &TransformOptions::default()).unwrap_err();
        assert_eq!(err, TransformError::MissingIdentity { resource: "Device" });
    }

    #[test]
    fn issued_follows_firely_fffffff_k() {
        assert_eq!(
            format_instant(ts("2023-10-09T20:05:00Z")),
            "2023-10-09T20:05:00+00:00"
        );
        assert_eq!(
            format_instant(ts("2023-10-09T20:05:00.1234567Z")),
            "2023-10-09T20:05:00.1234567+00:00"
        );
        assert_eq!(
            format_instant(ts("2023-10-09T20:05:00.0000010Z")),
            "2023-10-09T20:05:00.000001+00:00"
        );
    }

    #[test]
    fn quantity_numbers_follow_dotnet_decimal_parse() {
        let n = |s: &str| dotnet_decimal(s, NumberStyle::Number).map(|n| n.to_string());
        assert_eq!(n("72").as_deref(), Some("72"));
        assert_eq!(n(" +007 ").as_deref(), Some("7"));
        assert_eq!(n("36.6").as_deref(), Some("36.6"));
        assert_eq!(
            n("36.60").as_deref(),
            Some("36.6"),
            "documented deviation: C# keeps 36.60"
        );
        assert_eq!(n("5.0").as_deref(), Some("5.0"));
        assert_eq!(n("-12.5").as_deref(), Some("-12.5"));
        assert_eq!(n("12.5-").as_deref(), Some("-12.5"), "trailing sign");
        assert_eq!(n("1,234.5").as_deref(), Some("1234.5"), "group separators");
        assert_eq!(n(".5").as_deref(), Some("0.5"));
        assert_eq!(n("5.").as_deref(), Some("5"));
        assert_eq!(n("-0").as_deref(), Some("0"));
        assert_eq!(
            n("18446744073709551615").as_deref(),
            Some("18446744073709551615")
        );
        for bad in [
            "",
            " ",
            ".",
            "-",
            "1e3",
            "NaN",
            "Infinity",
            "True",
            "1 2",
            "+-1",
            "-1-",
            ",5",
            "0x10",
            "1e99999999999999999999",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
        assert_eq!(
            n("99999999999999999999999999999"),
            None,
            "beyond decimal range"
        );
        let f = |s: &str| dotnet_decimal(s, NumberStyle::Float).map(|n| n.to_string());
        assert_eq!(f("5e3").as_deref(), Some("5000"));
        assert_eq!(f("1.5e3").as_deref(), Some("1500"));
        assert_eq!(f("1000.5").as_deref(), Some("1000.5"));
        assert_eq!(f("1,000"), None);
        let td = |text: &str, value: f64| {
            template_decimal_number(&TemplateDecimal {
                text: text.into(),
                value,
            })
            .to_string()
        };
        assert_eq!(td("5000", 5000.0), "5000");
        assert_eq!(td("\"250\"", 250.0), "250");
        assert_eq!(td("1000.5", 1000.5), "1000.5");
    }

    #[test]
    fn short_identifiers_stay_within_128_and_keep_short_ones() {
        let t = hr_quantity_template();
        let g = one_group(
            &t,
            &[meas(
                "heartrate",
                ts("2023-10-09T19:18:23Z"),
                &[("hr", "72")],
            )],
        );
        let short = TransformOptions {
            short_identifiers: true,
        };
        // Short enough already: identical to upstream.
        assert_eq!(
            observation_identifier(&identity(), &g, &short),
            observation_identifier(&identity(), &g, &TransformOptions::default())
        );
        // Create-mode ids: 171 characters in full.
        let pid = crate::pipeline::identity::create_mode_patient_id("patient1").unwrap();
        let did = crate::pipeline::identity::create_mode_device_id(None, "device1").unwrap();
        let ident = ResolvedIdentity {
            patient_fhir_id: pid.clone(),
            device_fhir_id: did.clone(),
            encounter_fhir_id: None,
        };
        let full = observation_identifier(&ident, &g, &TransformOptions::default());
        assert_eq!(full.len(), 171);
        let s = observation_identifier(&ident, &g, &short);
        assert!(s.len() <= SHORT_IDENTIFIER_MAX);
        let h = sha256_hex(&format!("{pid}.{did}"));
        assert_eq!(
            s,
            format!("~{}.heartrate.20231009191823Z.20231009191823Z", &h[..32])
        );
        let obs = create_observation(&t, &g, &ident, issued(), &short).unwrap();
        assert_eq!(obs["identifier"][0]["value"], s.as_str());
        assert_eq!(obs["id"], observation_id(&s).as_str());
        // Very long correlation segment: whole-identifier hash.
        let mut long = g.clone();
        long.segment = "x".repeat(200);
        let s = observation_identifier(&ident, &long, &short);
        assert_eq!(s.len(), 65);
        assert!(s.starts_with('~'));
        assert_ne!(s, observation_identifier(&identity(), &long, &short));
    }

    #[test]
    fn parses_fhir_datetimes_for_merge() {
        let p = |s: &str| parse_fhir_datetime(s).map(|t| t.format_o());
        assert_eq!(
            p("2023-10-09T19:00:00.0000000Z").as_deref(),
            Some("2023-10-09T19:00:00.0000000Z")
        );
        assert_eq!(
            p("2023-10-09T21:00:00+02:00").as_deref(),
            Some("2023-10-09T19:00:00.0000000Z")
        );
        assert_eq!(
            p("2023-10-09T19:00:00.123").as_deref(),
            Some("2023-10-09T19:00:00.1230000Z")
        );
        assert_eq!(
            p("2023-10-09T19:00:00.123456789Z").as_deref(),
            Some("2023-10-09T19:00:00.1234567Z")
        );
        assert_eq!(
            p("2023-10-09").as_deref(),
            Some("2023-10-09T00:00:00.0000000Z")
        );
        assert_eq!(
            p("2023-10").as_deref(),
            Some("2023-10-01T00:00:00.0000000Z")
        );
        assert_eq!(p("2023").as_deref(), Some("2023-01-01T00:00:00.0000000Z"));
        for bad in [
            "",
            "20é3-10",
            "2023-13",
            "yesterday",
            "2023-10-09T25:00:00Z",
            "2023-10-09Té",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    // --- merge ----------------------------------------------------------------------------

    fn hr_batch(items: &[(&str, &str)]) -> Vec<Measurement> {
        items
            .iter()
            .map(|(t, v)| meas("heartrate", ts(t), &[("hr", v)]))
            .collect()
    }

    #[test]
    fn sampled_data_merge_across_two_batches() {
        let t = hr_sampled_template(PeriodInterval::Hourly);
        let b1 = one_group(
            &t,
            &hr_batch(&[
                ("2023-10-09T19:00:00Z", "60"),
                ("2023-10-09T19:18:23Z", "72"),
            ]),
        );
        let b2 = one_group(
            &t,
            &hr_batch(&[
                ("2023-10-09T19:18:24Z", "74"), // same 5 s slot (220) as 19:18:23: newest batch wins
                ("2023-10-09T19:30:00Z", "80"),
            ]),
        );
        let created = create(&t, &b1);
        let merged = changed(merge_observation(&t, &b2, &created).unwrap());

        assert_eq!(merged["status"], "amended");
        let data = tokens(&merged["valueSampledData"]["data"]);
        assert_eq!(data.len(), 720);
        assert_eq!(data[0], "60");
        assert_eq!(data[220], "74");
        assert_eq!(data[360], "80");
        assert_eq!(data.iter().filter(|t| *t != "E").count(), 3);
        // Not refreshed on merge.
        for k in [
            "id",
            "identifier",
            "code",
            "subject",
            "device",
            "issued",
            "effectivePeriod",
        ] {
            assert_eq!(merged[k], created[k], "{k}");
        }
        assert_eq!(keys(&merged), keys(&created));
        insta::assert_json_snapshot!("sampled_data_merged", merged);

        // Replays are no-ops, also when the server returns the elements in another order.
        assert_eq!(
            merge_observation(&t, &b2, &merged).unwrap(),
            MergeOutcome::Unchanged
        );
        let shuffled: Map<String, Value> = merged
            .as_object()
            .unwrap()
            .clone()
            .into_iter()
            .rev()
            .collect();
        assert_ne!(keys(&Value::Object(shuffled.clone())), keys(&merged));
        assert_eq!(
            merge_observation(&t, &b2, &Value::Object(shuffled)).unwrap(),
            MergeOutcome::Unchanged
        );
        assert_eq!(
            merge_observation(&t, &b1, &created).unwrap(),
            MergeOutcome::Unchanged
        );
        // Re-sending batch 1 after batch 2 makes batch 1's value the newest in slot 220.
        let again = changed(merge_observation(&t, &b1, &merged).unwrap());
        assert_eq!(tokens(&again["valueSampledData"]["data"])[220], "72");
    }

    #[test]
    fn sampled_data_merge_decodes_with_the_template_period_and_keeps_stored_fields() {
        let t = hr_sampled_template(PeriodInterval::Hourly);
        let g = one_group(&t, &hr_batch(&[("2023-10-09T19:00:10Z", "61")]));
        let mut existing = create(&t, &g);
        // Stored by someone else with period 1000 and a custom origin: data slots are still
        // read at the template's 5000 ms (upstream quirk), origin/period are not touched.
        existing["valueSampledData"] = json!({
            "origin": {"value": 1, "unit": "x"},
            "period": 1000,
            "dimensions": 1,
            "data": "50 E 52"
        });
        let merged = changed(merge_observation(&t, &g, &existing).unwrap());
        let sd = &merged["valueSampledData"];
        assert_eq!(sd["origin"], json!({"value": 1, "unit": "x"}));
        assert_eq!(sd["period"], 1000);
        let data = tokens(&sd["data"]);
        assert_eq!(
            (data[0].as_str(), data[1].as_str(), data[2].as_str()),
            ("50", "E", "61")
        );
    }

    #[test]
    fn new_component_on_merge_skips_values_outside_the_existing_period() {
        // Regression for upstream's stalled slot walk (semantics §2.5 pitfall).
        let t = CodeValueFhirTemplate {
            type_name: "ecg".into(),
            codes: vec![coding("ecg", "urn:example", "ECG")],
            category: vec![],
            period_interval: PeriodInterval::CorrelationId,
            value: None,
            components: vec![
                ComponentTemplate {
                    codes: vec![],
                    value: sampled("a", 1000.0, None),
                },
                ComponentTemplate {
                    codes: vec![],
                    value: sampled("b", 1000.0, None),
                },
            ],
        };
        let corr = |mut m: Measurement| {
            m.correlation_id = Some("run-1".into());
            m
        };
        let b1 = one_group(
            &t,
            &[
                corr(meas("ecg", ts("2023-10-09T10:00:00Z"), &[("a", "1")])),
                corr(meas("ecg", ts("2023-10-09T10:00:05Z"), &[("a", "6")])),
            ],
        );
        let created = create(&t, &b1);
        assert_eq!(
            created["component"][0]["valueSampledData"]["data"],
            "1 E E E E 6"
        );
        let b2 = one_group(
            &t,
            &[
                corr(meas("ecg", ts("2023-10-09T09:59:50Z"), &[("b", "early")])),
                corr(meas("ecg", ts("2023-10-09T10:00:02Z"), &[("b", "3")])),
                corr(meas("ecg", ts("2023-10-09T10:00:10Z"), &[("a", "11")])),
            ],
        );
        let merged = changed(merge_observation(&t, &b2, &created).unwrap());
        assert_eq!(
            merged["effectivePeriod"],
            json!({"start": "2023-10-09T09:59:50.0000000Z", "end": "2023-10-09T10:00:10.0000000Z"})
        );
        let comps = merged["component"].as_array().unwrap();
        assert_eq!(comps.len(), 2);
        // Existing component: rebuilt over the union (21 slots from 09:59:50).
        let a = tokens(&comps[0]["valueSampledData"]["data"]);
        assert_eq!(a.len(), 21);
        assert_eq!(
            (a[10].as_str(), a[15].as_str(), a[20].as_str()),
            ("1", "6", "11")
        );
        // New component: built over the existing period [10:00:00, 10:00:05] as upstream, the
        // 09:59:50 value skipped instead of turning everything into E.
        assert_eq!(comps[1]["valueSampledData"]["data"], "E E 3 E E E");
        assert_eq!(comps[1]["code"]["text"], "b");
    }

    #[test]
    fn quantity_merge_replaces_value_and_unions_the_period() {
        let t = hr_quantity_template();
        let g1 = one_group(&t, &hr_batch(&[("2023-10-09T19:18:23.1Z", "72")]));
        let g2 = one_group(&t, &hr_batch(&[("2023-10-09T19:18:23.9Z", "75")]));
        // Same second: same identifier, so the sink merges the second into the first.
        let opts = TransformOptions::default();
        assert_eq!(
            observation_identifier(&identity(), &g1, &opts),
            observation_identifier(&identity(), &g2, &opts)
        );
        let created = create(&t, &g1);
        let merged = changed(merge_observation(&t, &g2, &created).unwrap());
        assert_eq!(merged["valueQuantity"]["value"], 75);
        assert_eq!(
            merged["effectivePeriod"],
            json!({"start": "2023-10-09T19:18:23.1000000Z", "end": "2023-10-09T19:18:23.9000000Z"})
        );
        assert_eq!(
            merge_observation(&t, &g1, &created).unwrap(),
            MergeOutcome::Unchanged
        );
    }

    #[test]
    fn components_are_matched_by_service_coding_and_appended_when_new() {
        let t = bp_template();
        let t0 = ts("2023-10-09T19:18:23Z");
        let created = create(
            &t,
            &one_group(&t, &[meas("bloodpressure", t0, &[("systolic", "120")])]),
        );
        assert_eq!(created["component"].as_array().unwrap().len(), 1);
        let g = one_group(
            &t,
            &[meas(
                "bloodpressure",
                t0,
                &[("systolic", "121"), ("diastolic", "81")],
            )],
        );
        let merged = changed(merge_observation(&t, &g, &created).unwrap());
        let comps = merged["component"].as_array().unwrap();
        assert_eq!(comps.len(), 2);
        assert_eq!(comps[0]["code"]["text"], "systolic");
        assert_eq!(comps[0]["valueQuantity"]["value"], 121);
        assert_eq!(comps[1]["code"]["text"], "diastolic");
        assert_eq!(comps[1]["valueQuantity"]["value"], 81);
    }

    #[test]
    fn merge_errors_follow_upstream_not_supported_cases() {
        let t = hr_sampled_template(PeriodInterval::Hourly);
        let g = one_group(&t, &hr_batch(&[("2023-10-09T19:00:10Z", "61")]));
        let created = create(&t, &g);

        let mut wrong_type = created.clone();
        let o = wrong_type.as_object_mut().unwrap();
        o.shift_remove("valueSampledData");
        o.insert("valueQuantity".into(), json!({"value": 1}));
        assert_eq!(
            merge_observation(&t, &g, &wrong_type).unwrap_err(),
            TransformError::ValueTypeMismatch {
                element: "value".into(),
                expected: "SampledData",
                actual: "Quantity".into()
            }
        );

        let mut dims = created.clone();
        dims["valueSampledData"]["dimensions"] = json!(2);
        assert!(matches!(
            merge_observation(&t, &g, &dims).unwrap_err(),
            TransformError::SampledDataDimensions { .. }
        ));

        let mut no_effective = created.clone();
        no_effective
            .as_object_mut()
            .unwrap()
            .shift_remove("effectivePeriod");
        assert!(matches!(
            merge_observation(&t, &g, &no_effective).unwrap_err(),
            TransformError::InvalidExisting { .. }
        ));

        let mut timing = no_effective.clone();
        timing["effectiveTiming"] = json!({});
        let err = merge_observation(&t, &g, &timing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "existing observation cannot be merged: effectiveTiming is not supported"
        );

        assert!(merge_observation(&t, &g, &json!([])).is_err());
        assert!(merge_observation(&t, &g, &json!({"resourceType": "Patient"})).is_err());
    }

    #[test]
    fn merge_into_foreign_shapes() {
        let t = hr_quantity_template();
        let g = one_group(&t, &hr_batch(&[("2023-10-09T19:18:23Z", "72")]));
        // Written by another tool: effectiveDateTime, no category, no value, extra elements in
        // non-canonical order.
        let existing = json!({
            "resourceType": "Observation",
            "status": "final",
            "extension": [{"url": "urn:x", "valueString": "kept"}],
            "id": "abc",
            "meta": {"versionId": "3"},
            "effectiveDateTime": "2023-10-09T19:18:20Z",
            "code": {"text": "old"},
            "x-unknown": true,
            "subject": {"reference": "Patient/p"}
        });
        let merged = changed(merge_observation(&t, &g, &existing).unwrap());
        assert_eq!(
            keys(&merged),
            [
                "resourceType",
                "id",
                "meta",
                "extension",
                "status",
                "category",
                "code",
                "subject",
                "effectivePeriod",
                "valueQuantity",
                "x-unknown"
            ]
        );
        assert_eq!(merged["status"], "amended");
        assert_eq!(
            merged["code"],
            json!({"text": "old"}),
            "code is not refreshed"
        );
        assert_eq!(
            merged["valueQuantity"]["value"], 72,
            "missing value is created (deviation)"
        );
        assert_eq!(
            merged["effectivePeriod"],
            json!({"start": "2023-10-09T19:18:20.0000000Z", "end": "2023-10-09T19:18:23.0000000Z"})
        );

        // Category removed when the template has none.
        let mut t2 = t.clone();
        t2.category.clear();
        let created = create(&t, &g);
        let merged = changed(merge_observation(&t2, &g, &created).unwrap());
        assert!(merged.get("category").is_none());
    }

    // --- properties -----------------------------------------------------------------------

    fn batch_at(offsets_ms: &[(i64, u16)]) -> Vec<Measurement> {
        let base = ts("2023-10-09T19:00:00Z");
        offsets_ms
            .iter()
            .map(|(ms, v)| {
                let t = base.add_ticks(ms * 10_000).expect("in range");
                meas(
                    "heartrate",
                    t,
                    &[("hr", &v.to_string()), ("sys", &(v / 2).to_string())],
                )
            })
            .collect()
    }

    fn template_with_component(period_ms: f64) -> CodeValueFhirTemplate {
        let mut t = hr_sampled_template(PeriodInterval::Hourly);
        t.value = Some(sampled("hr", period_ms, Some("count/min")));
        t.components = vec![ComponentTemplate {
            codes: vec![],
            value: sampled("sys", period_ms, None),
        }];
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn merging_a_group_into_its_own_create_output_is_unchanged(
            items in prop::collection::vec((0i64..3_600_000, 0u16..300), 1..40),
            period in prop::sample::select(vec![1000.0, 5000.0, 1500.5, 60_000.0]),
        ) {
            let t = template_with_component(period);
            let g = one_group(&t, &batch_at(&items));
            let created = create(&t, &g);
            prop_assert_eq!(merge_observation(&t, &g, &created).unwrap(), MergeOutcome::Unchanged);

            let q = hr_quantity_template();
            let (groups, _) = group_measurements(&batch_at(&items), &|_| Some(PeriodInterval::Single));
            for g in &groups {
                let created = create(&q, g);
                prop_assert_eq!(merge_observation(&q, g, &created).unwrap(), MergeOutcome::Unchanged);
            }
        }

        #[test]
        fn merge_order_of_batches_in_disjoint_slots_does_not_matter(
            slots in prop::collection::btree_map(0i64..720, (0i64..5000, any::<bool>(), 0u16..300), 2..60),
        ) {
            let in_a: Vec<_> = slots.iter().filter(|(_, (_, a, _))| *a).map(|(s, (off, _, v))| (s * 5000 + off, *v)).collect();
            let in_b: Vec<_> = slots.iter().filter(|(_, (_, a, _))| !*a).map(|(s, (off, _, v))| (s * 5000 + off, *v)).collect();
            prop_assume!(!in_a.is_empty() && !in_b.is_empty());
            let t = template_with_component(5000.0);
            let (ga, gb) = (one_group(&t, &batch_at(&in_a)), one_group(&t, &batch_at(&in_b)));
            let ab = changed(merge_observation(&t, &gb, &create(&t, &ga)).unwrap());
            let ba = changed(merge_observation(&t, &ga, &create(&t, &gb)).unwrap());
            let all: Vec<_> = in_a.iter().chain(in_b.iter()).copied().collect();
            let together = create(&t, &one_group(&t, &batch_at(&all)));
            for path in [&["valueSampledData", "data"][..], &["component"][..]] {
                let get = |v: &Value| path.iter().fold(v.clone(), |v, k| v[*k].clone());
                prop_assert_eq!(get(&ab), get(&ba));
                prop_assert_eq!(get(&ab), get(&together));
            }
        }
    }
}
