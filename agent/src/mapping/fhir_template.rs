//! FHIR mapping templates: loading `CollectionFhir` of `CodeValueFhir` into [`fhir_model`].
//!
//! Strict like upstream: unknown members are errors in a template, in `codes` and in
//! `category`, but ignored inside `value` objects (upstream reads those with a custom
//! converter). Type names bind case-insensitively and must be unique.
//!
//! [`fhir_model`]: super::fhir_model

use super::fhir_model::{
    CodeValueFhirTemplate, ComponentTemplate, FhirValueTemplate, PeriodInterval, TemplateCategory,
    TemplateCoding, TemplateDecimal,
};
use super::json_pos::child;
use super::load::{
    coerce_string, container, optional_string, parse_text, required_string, root_entries,
    type_matches, Diag, LooseObject, TemplateError,
};
use serde_json::Value;
use std::collections::HashMap;

/// A loaded FHIR mapping.
#[derive(Debug, Clone, Default)]
pub struct FhirMapping {
    pub templates: Vec<CodeValueFhirTemplate>,
    by_type: HashMap<String, usize>,
}

impl FhirMapping {
    /// Builds a mapping from templates (type names must be unique ignoring case).
    pub fn new(templates: Vec<CodeValueFhirTemplate>) -> Self {
        let by_type = templates
            .iter()
            .enumerate()
            .map(|(i, t)| (t.type_name.to_lowercase(), i))
            .collect();
        FhirMapping { templates, by_type }
    }

    /// The template for a measurement type (case-insensitive), as upstream's lookup.
    pub fn get(&self, type_name: &str) -> Option<&CodeValueFhirTemplate> {
        // Lower-case ASCII names (the usual) are their own `to_lowercase`: no allocation.
        let i = if type_name
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        {
            self.by_type.get(type_name)
        } else {
            self.by_type.get(&type_name.to_lowercase())
        };
        i.map(|&i| &self.templates[i])
    }
}

/// The outcome of loading a FHIR mapping file.
#[derive(Debug, Clone)]
pub struct FhirMappingLoad {
    pub mapping: FhirMapping,
    pub errors: Vec<TemplateError>,
}

impl FhirMappingLoad {
    /// `Ok` only when the whole mapping is valid.
    pub fn into_result(self) -> Result<FhirMapping, Vec<TemplateError>> {
        if self.errors.is_empty() {
            Ok(self.mapping)
        } else {
            Err(self.errors)
        }
    }
}

/// Loads a FHIR mapping from its JSON text.
pub fn load_fhir_mapping(text: &str) -> FhirMappingLoad {
    let (root, idx) = match parse_text(text) {
        Ok(x) => x,
        Err(e) => {
            return FhirMappingLoad {
                mapping: FhirMapping::default(),
                errors: vec![e],
            }
        }
    };
    let mut d = Diag::new(&idx);
    let mut templates: Vec<CodeValueFhirTemplate> = Vec::new();
    if let Some(entries) = root_entries(&root, "CollectionFhir", &mut d) {
        let mut seen: HashMap<String, String> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            d.entry = Some(i);
            let p = format!("/template/{i}");
            let Some((tt, t)) = container(entry, &p) else {
                d.at_value(&p, "Expected an object with templateType and template.");
                continue;
            };
            let tt = tt.unwrap_or_default();
            if !type_matches(&tt, "CodeValueFhir", false) {
                d.at_value(
                    &child(&p, "templateType"),
                    format!("No match found for template type {tt}."),
                );
                continue;
            }
            let Some((Value::Object(map), tp)) = t else {
                d.at_value(&p, "Expected an object for the template property value for template type CodeValueFhirTemplate.");
                continue;
            };
            if let Some(t) = load_code_value(map, tp.clone(), &mut d) {
                let key = t.type_name.to_lowercase();
                if let Some(prev) = seen.get(&key) {
                    d.at_value(&child(&tp, "typeName"), format!("Duplicate template defined for type name: '{}' (already defined as '{prev}').", t.type_name));
                } else {
                    seen.insert(key, t.type_name.clone());
                    templates.push(t);
                }
            }
        }
        d.entry = None;
    }
    FhirMappingLoad {
        mapping: FhirMapping::new(templates),
        errors: d.errors,
    }
}

fn load_codes(
    o: &mut LooseObject<'_>,
    name: &str,
    pascal: &str,
    required: bool,
    d: &mut Diag<'_>,
) -> Option<Vec<TemplateCoding>> {
    let Some((v, p)) = o.get_non_null(name) else {
        if required {
            d.at_value(
                &o.pointer,
                format!("Required property '{pascal}' not found in JSON."),
            );
            return None;
        }
        return Some(Vec::new());
    };
    let Value::Array(items) = v else {
        d.at_value(&p, format!("'{pascal}' must be an array."));
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{p}/{i}");
        let Value::Object(m) = item else {
            d.at_value(&ip, "Expected an object with code, system and display.");
            ok = false;
            continue;
        };
        let mut co = LooseObject::new(m, ip);
        let code = optional_string(&mut co, "code", "Code", d);
        let system = optional_string(&mut co, "system", "System", d);
        let display = optional_string(&mut co, "display", "Display", d);
        co.finish_strict("FhirCode", d);
        out.push(TemplateCoding {
            code,
            system,
            display,
        });
    }
    ok.then_some(out)
}

fn parse_period(v: &Value) -> Option<PeriodInterval> {
    let n = match v {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => {
            let s = s.trim();
            match s.to_ascii_lowercase().as_str() {
                "correlationid" => return Some(PeriodInterval::CorrelationId),
                "single" => return Some(PeriodInterval::Single),
                "hourly" => return Some(PeriodInterval::Hourly),
                "daily" => return Some(PeriodInterval::Daily),
                _ => s.parse::<i64>().ok()?,
            }
        }
        _ => return None,
    };
    match n {
        -1 => Some(PeriodInterval::CorrelationId),
        0 => Some(PeriodInterval::Single),
        60 => Some(PeriodInterval::Hourly),
        1440 => Some(PeriodInterval::Daily),
        _ => None,
    }
}

fn load_code_value(
    map: &serde_json::Map<String, Value>,
    pointer: String,
    d: &mut Diag<'_>,
) -> Option<CodeValueFhirTemplate> {
    let before = d.errors.len();
    let mut o = LooseObject::new(map, pointer.clone());
    let type_name = required_string(&mut o, "typeName", "TypeName", d);
    if matches!(&type_name, Some(t) if t.trim().is_empty()) {
        d.at_value(
            &child(&pointer, "typeName"),
            "'TypeName' must not be empty or whitespace.",
        );
    }
    let codes = load_codes(&mut o, "codes", "Codes", true, d);
    let mut category = Vec::new();
    match o.get_non_null("category") {
        None => {}
        Some((Value::Array(items), p)) => {
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}/{i}");
                let Value::Object(m) = item else {
                    d.at_value(&ip, "Expected an object with text and codes.");
                    continue;
                };
                let mut co = LooseObject::new(m, ip);
                let text = optional_string(&mut co, "text", "Text", d);
                let codes = load_codes(&mut co, "codes", "Codes", false, d).unwrap_or_default();
                co.finish_strict("FhirCodeableConcept", d);
                category.push(TemplateCategory { text, codes });
            }
        }
        Some((_, p)) => d.at_value(&p, "'Category' must be an array."),
    }
    let period_interval = match o.get_non_null("periodInterval") {
        None => PeriodInterval::Single,
        Some((v, p)) => parse_period(v).unwrap_or_else(|| {
            d.at_value(&p, format!("Invalid periodInterval {v}: expected -1 (CorrelationId), 0 (Single), 60 (Hourly) or 1440 (Daily)."));
            PeriodInterval::Single
        }),
    };
    let value = o
        .get_non_null("value")
        .and_then(|(v, p)| load_value(v, &p, d));
    let mut components = Vec::new();
    match o.get_non_null("components") {
        None => {}
        Some((Value::Array(items), p)) => {
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}/{i}");
                let Value::Object(m) = item else {
                    d.at_value(&ip, "Expected an object with codes and value.");
                    continue;
                };
                let mut co = LooseObject::new(m, ip.clone());
                let codes = load_codes(&mut co, "codes", "Codes", true, d);
                let value = match co.get_non_null("value") {
                    Some((v, vp)) => load_value(v, &vp, d),
                    None => {
                        d.at_value(&ip, "Required property 'Value' not found in JSON.");
                        None
                    }
                };
                co.finish_strict("CodeValueMapping", d);
                if let (Some(codes), Some(value)) = (codes, value) {
                    components.push(ComponentTemplate { codes, value });
                }
            }
        }
        Some((_, p)) => d.at_value(&p, "'Components' must be an array."),
    }
    o.finish_strict("CodeValueFhirTemplate", d);
    if d.errors.len() > before {
        return None;
    }
    Some(CodeValueFhirTemplate {
        type_name: type_name?,
        codes: codes?,
        category,
        period_interval,
        value,
        components,
    })
}

/// Reads a value object. Unknown members are ignored here, as upstream's converter does.
fn load_value(v: &Value, p: &str, d: &mut Diag<'_>) -> Option<FhirValueTemplate> {
    let Value::Object(m) = v else {
        d.at_value(p, "Expected an object for the value.");
        return None;
    };
    let mut o = LooseObject::new(m, p.to_owned());
    let Some(vt) = o
        .get_non_null("valueType")
        .and_then(|(v, _)| coerce_string(v))
    else {
        d.at_value(p, "Required property 'ValueType' not found in JSON.");
        return None;
    };
    let base = vt.trim();
    let base = if base.len() > 13 && base[base.len() - 13..].eq_ignore_ascii_case("FhirValueType") {
        &base[..base.len() - 13]
    } else {
        base
    };
    let value_name = match o
        .get_non_null("valueName")
        .and_then(|(v, _)| coerce_string(v))
    {
        Some(n) if !n.trim().is_empty() => n,
        _ => {
            d.at_value(p, "Required property 'ValueName' not found in JSON.");
            return None;
        }
    };
    let s =
        |o: &mut LooseObject<'_>, n: &str| o.get_non_null(n).and_then(|(v, _)| coerce_string(v));
    match base.to_ascii_lowercase().as_str() {
        "sampleddata" => {
            let dp = match o.get_non_null("defaultPeriod") {
                Some((Value::Number(n), _)) => n.as_f64().map(|x| TemplateDecimal {
                    text: n.to_string(),
                    value: x,
                }),
                Some((Value::String(t), _)) => {
                    t.trim().parse::<f64>().ok().map(|x| TemplateDecimal {
                        text: t.trim().to_owned(),
                        value: x,
                    })
                }
                _ => None,
            };
            match dp {
                Some(dp) if dp.value > 0.0 && dp.value.is_finite() => {
                    Some(FhirValueTemplate::SampledData {
                        value_name,
                        default_period: dp,
                        unit: s(&mut o, "unit"),
                    })
                }
                _ => {
                    d.at_value(p, "SampledData needs a positive 'defaultPeriod' (milliseconds between samples).");
                    None
                }
            }
        }
        "quantity" => Some(FhirValueTemplate::Quantity {
            value_name,
            unit: s(&mut o, "unit"),
            code: s(&mut o, "code"),
            system: s(&mut o, "system"),
        }),
        "string" => Some(FhirValueTemplate::String { value_name }),
        "codeableconcept" => {
            let codes = load_codes(&mut o, "codes", "Codes", false, d)?;
            Some(FhirValueTemplate::CodeableConcept {
                value_name,
                text: s(&mut o, "text"),
                codes,
            })
        }
        _ => {
            d.at_value(p, format!("Unknown valueType '{vt}' (expected SampledData, Quantity, String or CodeableConcept)."));
            None
        }
    }
}
