//! The validated FHIR mapping template model (`CollectionFhir` of `CodeValueFhir`).
//!
//! Produced by the loader in [`super::fhir_template`]; consumed by the transform in
//! `pipeline::transform`. Field names follow the template JSON.

/// A FHIR coding as written in the template (`{code, system, display}`), each optional in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateCoding {
    pub code: Option<String>,
    pub system: Option<String>,
    pub display: Option<String>,
}

/// One `category[]` entry: a CodeableConcept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateCategory {
    pub text: Option<String>,
    pub codes: Vec<TemplateCoding>,
}

/// `periodInterval`: how measurements of one group split into Observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodInterval {
    /// -1: the whole group, keyed by correlation id.
    CorrelationId,
    /// 0: one Observation per distinct timestamp (seconds in the identifier).
    Single,
    /// 60: one Observation per UTC hour.
    Hourly,
    /// 1440: one Observation per UTC day.
    Daily,
}

impl PeriodInterval {
    /// The numeric value upstream uses (-1, 0, 60, 1440).
    pub fn minutes(self) -> i32 {
        match self {
            PeriodInterval::CorrelationId => -1,
            PeriodInterval::Single => 0,
            PeriodInterval::Hourly => 60,
            PeriodInterval::Daily => 1440,
        }
    }
}

/// A decimal number from the template, kept with its original text (e.g. `defaultPeriod`).
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateDecimal {
    /// The value as written in JSON (`5000`, `"5000"`, `1000.5`).
    pub text: String,
    pub value: f64,
}

/// The value part of a CodeValueFhir template or of a component.
#[derive(Debug, Clone, PartialEq)]
pub enum FhirValueTemplate {
    SampledData {
        value_name: String,
        /// Slot length in milliseconds.
        default_period: TemplateDecimal,
        unit: Option<String>,
    },
    Quantity {
        value_name: String,
        unit: Option<String>,
        code: Option<String>,
        system: Option<String>,
    },
    String {
        value_name: String,
    },
    CodeableConcept {
        value_name: String,
        text: Option<String>,
        codes: Vec<TemplateCoding>,
    },
}

impl FhirValueTemplate {
    /// The measurement property this value binds to.
    pub fn value_name(&self) -> &str {
        match self {
            FhirValueTemplate::SampledData { value_name, .. }
            | FhirValueTemplate::Quantity { value_name, .. }
            | FhirValueTemplate::String { value_name }
            | FhirValueTemplate::CodeableConcept { value_name, .. } => value_name,
        }
    }
}

/// One `components[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentTemplate {
    pub codes: Vec<TemplateCoding>,
    pub value: FhirValueTemplate,
}

/// A `CodeValueFhir` template.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeValueFhirTemplate {
    pub type_name: String,
    pub codes: Vec<TemplateCoding>,
    pub category: Vec<TemplateCategory>,
    pub period_interval: PeriodInterval,
    pub value: Option<FhirValueTemplate>,
    pub components: Vec<ComponentTemplate>,
}
