//! The shape of the JSON bodies the decoders produce (the agent wraps each in its envelope).
//!
//! Every device decoder (BLE, Nonin, Masimo, HL7) emits a JSON object with keys in this
//! order (serde_json's `preserve_order` keeps it):
//!
//! ```json
//! {
//!   "type":   "<decoder name, e.g. heart_rate_measurement, nonin8, hl7v2>",
//!   "values": { "<quantity>": <number | string | null>, ... },
//!   "units":  { "<quantity>": "<UCUM code>", ... },
//!   "codes":  { "<quantity>": <MDC code>, ... },
//!   "absent": { "<quantity>": "<reason>", ... },
//!   ... decoder-specific fields (status objects, timestamps, identifiers) ...
//! }
//! ```
//!
//! Invariants:
//! - `values` holds every quantity the frame carries. A decimal follows
//!   [`Decimal::to_json`](crate::ieee11073::Decimal::to_json): a JSON number when serde_json
//!   prints the device's digits exactly, else a string with those digits.
//! - A quantity the device reports as not available is `null` in `values` (never a number such
//!   as 511 or 127) and has a reason in `absent` (see [`Absent`]); `absent` is left out when
//!   empty.
//! - `units` and `codes` have an entry only where the unit or MDC code is known; `codes` is
//!   left out when empty. `jsonl` bodies are the device's own objects and follow none of this.

use serde_json::{Map, Value};

use crate::ieee11073::{Decimal, MderFloat, Special};

/// Why a quantity has no value (the `absent` map of a body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Absent {
    /// An IEEE 11073 special value.
    Special(Special),
    /// The device sent its "no data" marker (Nonin 511/127, `---`, empty HL7 value).
    Missing,
    /// The device reported the measurement as unsuccessful (BLE weight `0xFFFF`).
    Unsuccessful,
    /// The device printed a number but flagged it as invalid at the same time (Masimo `000`
    /// under a sensor exception).
    Invalid,
}

impl Absent {
    /// Stable JSON name: `nan`, `nres`, `+inf`, `-inf`, `reserved`, `missing`,
    /// `unsuccessful` or `invalid`.
    pub const fn name(&self) -> &'static str {
        match self {
            Absent::Special(s) => s.name(),
            Absent::Missing => "missing",
            Absent::Unsuccessful => "unsuccessful",
            Absent::Invalid => "invalid",
        }
    }

    /// Parses a name produced by [`Absent::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Special::ALL
            .iter()
            .find(|s| s.name() == name)
            .map(|s| Absent::Special(*s))
            .or(match name {
                "missing" => Some(Absent::Missing),
                "unsuccessful" => Some(Absent::Unsuccessful),
                "invalid" => Some(Absent::Invalid),
                _ => None,
            })
    }

    /// FHIR `dataAbsentReason` where a source document fixes it (the PHD IG table for
    /// IEEE 11073 specials); `None` for the others, which the agent decides.
    pub const fn data_absent_reason(&self) -> Option<&'static str> {
        match self {
            Absent::Special(s) => Some(s.data_absent_reason()),
            _ => None,
        }
    }
}

/// A reading to put in `values`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reading {
    Int(i64),
    Decimal(Decimal),
    Absent(Absent),
}

impl From<MderFloat> for Reading {
    fn from(value: MderFloat) -> Self {
        match value {
            MderFloat::Value(d) => Reading::Decimal(d),
            MderFloat::Special(s) => Reading::Absent(Absent::Special(s)),
        }
    }
}

/// Builder for a body in the shape above.
#[derive(Debug, Default)]
pub(crate) struct Body {
    kind: String,
    values: Map<String, Value>,
    units: Map<String, Value>,
    codes: Map<String, Value>,
    absent: Map<String, Value>,
    extra: Map<String, Value>,
}

impl Body {
    pub(crate) fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            ..Self::default()
        }
    }

    /// Adds a quantity with its unit and MDC code.
    pub(crate) fn measure(
        &mut self,
        key: &str,
        reading: impl Into<Reading>,
        unit: Option<&str>,
        code: Option<u32>,
    ) {
        let value = match reading.into() {
            Reading::Int(i) => Value::from(i),
            Reading::Decimal(d) => d.to_json(),
            Reading::Absent(reason) => {
                self.absent
                    .insert(key.to_owned(), Value::from(reason.name()));
                Value::Null
            }
        };
        self.values.insert(key.to_owned(), value);
        if let Some(unit) = unit {
            self.units.insert(key.to_owned(), Value::from(unit));
        }
        if let Some(code) = code {
            self.codes.insert(key.to_owned(), Value::from(code));
        }
    }

    /// Adds a decoder-specific field after the standard maps.
    pub(crate) fn field(&mut self, key: &str, value: impl Into<Value>) {
        self.extra.insert(key.to_owned(), value.into());
    }

    pub(crate) fn into_value(self) -> Value {
        let mut out = Map::new();
        out.insert("type".into(), Value::from(self.kind));
        out.insert("values".into(), Value::Object(self.values));
        out.insert("units".into(), Value::Object(self.units));
        if !self.codes.is_empty() {
            out.insert("codes".into(), Value::Object(self.codes));
        }
        if !self.absent.is_empty() {
            out.insert("absent".into(), Value::Object(self.absent));
        }
        out.extend(self.extra);
        Value::Object(out)
    }
}

impl From<Decimal> for Reading {
    fn from(value: Decimal) -> Self {
        Reading::Decimal(value)
    }
}

impl From<Absent> for Reading {
    fn from(value: Absent) -> Self {
        Reading::Absent(value)
    }
}

/// An object of named booleans for the set bits of a status word, preceded by `raw`.
/// `names[i]` names bit `i`; `None` entries (reserved bits) get no key but stay in `raw`.
pub(crate) fn bit_flags(raw: u32, names: &[Option<&str>]) -> Value {
    let mut out = Map::new();
    out.insert("raw".into(), Value::from(raw));
    for (bit, name) in names.iter().enumerate() {
        if let Some(name) = name {
            out.insert((*name).into(), Value::from(raw & (1 << bit) != 0));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_names_round_trip() {
        let all = [
            Absent::Special(Special::NaN),
            Absent::Special(Special::NRes),
            Absent::Special(Special::PositiveInfinity),
            Absent::Special(Special::NegativeInfinity),
            Absent::Special(Special::Reserved),
            Absent::Missing,
            Absent::Unsuccessful,
            Absent::Invalid,
        ];
        for a in all {
            assert_eq!(Absent::from_name(a.name()), Some(a));
        }
        assert_eq!(Absent::from_name("zero"), None);
        assert_eq!(
            Absent::Special(Special::NaN).data_absent_reason(),
            Some("not-a-number")
        );
    }

    #[test]
    fn body_orders_keys_and_records_absence() {
        let mut b = Body::new("t");
        b.field("z", 1);
        b.measure("x", Absent::Missing, Some("%"), Some(150456));
        b.measure("y", Reading::Int(3), None, None);
        let v = b.into_value();
        let keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(keys, ["type", "values", "units", "codes", "absent", "z"]);
        assert_eq!(v["values"]["x"], Value::Null);
        assert_eq!(v["absent"]["x"], "missing");
        assert_eq!(v["values"]["y"], 3);
    }

    #[test]
    fn bit_flags_names_set_bits() {
        let v = bit_flags(0b101, &[Some("a"), Some("b"), Some("c"), None]);
        assert_eq!(v["raw"], 5);
        assert_eq!(v["a"], true);
        assert_eq!(v["b"], false);
        assert_eq!(v["c"], true);
        assert_eq!(v.as_object().map(|o| o.len()), Some(4));
    }
}
