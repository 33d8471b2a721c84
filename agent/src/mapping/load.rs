//! Shared machinery of the template loaders: Newtonsoft-compatible member lookup (names match
//! without regard to case), scalar coercion, unknown-member errors, and errors that carry a
//! line and column. Loading never stops at the first error: every error is collected.

use super::json_pos::{child, Pos, PosIndex};
use serde_json::{Map, Value};
use std::fmt;

/// One problem found while loading a template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Where the problem is (1-based); 0/0 when no position applies.
    pub pos: Pos,
    /// JSON pointer of the offending member or value (`""` for the root).
    pub pointer: String,
    /// Index of the entry in the collection's `template` array, when inside one.
    pub entry: Option<usize>,
    /// What is wrong, in upstream's words where upstream has words for it.
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos.line > 0 {
            write!(f, "line {}, column {}: ", self.pos.line, self.pos.column)?;
        }
        if let Some(i) = self.entry {
            write!(f, "template[{i}]: ")?;
        }
        f.write_str(&self.message)?;
        if !self.pointer.is_empty() {
            write!(f, " (at {})", self.pointer)?;
        }
        Ok(())
    }
}

/// Error sink with positions.
pub(crate) struct Diag<'a> {
    pub idx: &'a PosIndex,
    pub errors: Vec<TemplateError>,
    pub entry: Option<usize>,
}

impl<'a> Diag<'a> {
    pub fn new(idx: &'a PosIndex) -> Self {
        Diag {
            idx,
            errors: Vec::new(),
            entry: None,
        }
    }

    pub fn at_value(&mut self, pointer: &str, message: impl Into<String>) {
        let pos = self.idx.value(pointer).unwrap_or_default();
        self.push(pos, pointer, message.into());
    }

    pub fn at_key(&mut self, pointer: &str, message: impl Into<String>) {
        let pos = self.idx.key_or_value(pointer).unwrap_or_default();
        self.push(pos, pointer, message.into());
    }

    fn push(&mut self, pos: Pos, pointer: &str, message: String) {
        self.errors.push(TemplateError {
            pos,
            pointer: pointer.to_owned(),
            entry: self.entry,
            message,
        });
    }
}

/// Parses template text: strips a UTF-8 BOM, parses JSON, builds the position index.
pub(crate) fn parse_text(text: &str) -> Result<(Value, PosIndex), TemplateError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok((v, PosIndex::build(text))),
        Err(e) => Err(TemplateError {
            pos: Pos {
                line: e.line(),
                column: e.column(),
            },
            pointer: String::new(),
            entry: None,
            message: format!("invalid JSON: {e}"),
        }),
    }
}

/// A JSON object read the Newtonsoft way: members looked up ignoring case, every member that
/// was not asked for reported as unknown (when strict).
pub(crate) struct LooseObject<'v> {
    map: &'v Map<String, Value>,
    pub pointer: String,
    used: Vec<bool>,
}

impl<'v> LooseObject<'v> {
    pub fn new(map: &'v Map<String, Value>, pointer: String) -> Self {
        LooseObject {
            map,
            pointer,
            used: vec![false; map.len()],
        }
    }

    /// The member named `name` (any case), with its pointer. The last one wins when several
    /// members differ only in case, as in Json.NET.
    pub fn get(&mut self, name: &str) -> Option<(&'v Value, String)> {
        let mut found = None;
        for (i, (k, v)) in self.map.iter().enumerate() {
            if k.eq_ignore_ascii_case(name) {
                self.used[i] = true;
                found = Some((v, child(&self.pointer, k)));
            }
        }
        found
    }

    /// As [`get`](Self::get) but treats JSON null as absent.
    pub fn get_non_null(&mut self, name: &str) -> Option<(&'v Value, String)> {
        self.get(name).filter(|(v, _)| !v.is_null())
    }

    /// Reports every member that was never asked for (`MissingMemberHandling.Error`).
    pub fn finish_strict(self, type_name: &str, d: &mut Diag<'_>) {
        for (i, k) in self.map.keys().enumerate() {
            if !self.used[i] {
                d.at_key(
                    &child(&self.pointer, k),
                    format!("Could not find member '{k}' on object of type '{type_name}'."),
                );
            }
        }
    }
}

/// Reads a string member with Newtonsoft's coercion (numbers and booleans become strings).
pub(crate) fn coerce_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_owned()),
        _ => None,
    }
}

/// Reads a boolean with Newtonsoft's coercion (`"true"`, `"False"`, 1, 0).
pub(crate) fn coerce_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        _ => None,
    }
}

/// A required string member: reports `Required property 'X' not found in JSON.` when missing.
pub(crate) fn required_string(
    o: &mut LooseObject<'_>,
    name: &str,
    pascal: &str,
    d: &mut Diag<'_>,
) -> Option<String> {
    match o.get(name) {
        None => {
            d.at_value(
                &o.pointer,
                format!("Required property '{pascal}' not found in JSON."),
            );
            None
        }
        Some((v, p)) => match coerce_string(v) {
            Some(s) => Some(s),
            None => {
                d.at_value(&p, format!("'{pascal}' must be a string."));
                None
            }
        },
    }
}

/// An optional string member.
pub(crate) fn optional_string(
    o: &mut LooseObject<'_>,
    name: &str,
    pascal: &str,
    d: &mut Diag<'_>,
) -> Option<String> {
    let (v, p) = o.get_non_null(name)?;
    match coerce_string(v) {
        Some(s) => Some(s),
        None => {
            d.at_value(&p, format!("'{pascal}' must be a string."));
            None
        }
    }
}

/// `templateType` matching: any case, with or without the `Template` suffix unless `exact`.
pub(crate) fn type_matches(actual: &str, expected_base: &str, exact: bool) -> bool {
    actual.eq_ignore_ascii_case(expected_base)
        || (!exact
            && actual.len() == expected_base.len() + 8
            && actual[..expected_base.len()].eq_ignore_ascii_case(expected_base)
            && actual[expected_base.len()..].eq_ignore_ascii_case("Template"))
}

/// A member value with its JSON pointer.
pub(crate) type Member<'v> = (&'v Value, String);

/// Reads a `{templateType, template}` container; unknown container members are ignored.
pub(crate) fn container<'v>(
    v: &'v Value,
    pointer: &str,
) -> Option<(Option<String>, Option<Member<'v>>)> {
    let map = v.as_object()?;
    let mut o = LooseObject::new(map, pointer.to_owned());
    let tt = o
        .get_non_null("templateType")
        .and_then(|(v, _)| coerce_string(v));
    let t = o.get_non_null("template");
    Some((tt, t))
}

/// Checks the root container and returns the entries of its `template` array.
pub(crate) fn root_entries<'v>(
    root: &'v Value,
    base: &str,
    d: &mut Diag<'_>,
) -> Option<&'v Vec<Value>> {
    let target = format!("{base}Template");
    let Some((tt, t)) = container(root, "") else {
        d.at_value(
            "",
            format!("Expected a JSON object with templateType {target}."),
        );
        return None;
    };
    let tt = tt.unwrap_or_default();
    if !type_matches(&tt, base, false) {
        d.at_value(
            "/templateType",
            format!("Expected TemplateType value {target}, actual {tt}."),
        );
        return None;
    }
    match t {
        Some((Value::Array(a), _)) => Some(a),
        Some((_, p)) => {
            d.at_value(
                &p,
                format!(
                    "Expected an array for the template property value for template type {target}."
                ),
            );
            None
        }
        None => {
            d.at_value(
                "",
                format!(
                    "Expected an array for the template property value for template type {target}."
                ),
            );
            None
        }
    }
}
