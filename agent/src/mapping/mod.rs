//! The mapping engine: device templates (normalization) and FHIR templates (transform models).
//!
//! Architecture invariant: nothing in this module does I/O or reads the clock. Loaders take
//! text, evaluators take JSON values, and times are parameters.

pub mod convert;
pub mod device;
pub mod doc;
pub mod expr;
pub mod fhir_model;
pub mod fhir_template;
pub mod jmes;
pub mod json_pos;
pub mod jsonpath;
pub mod load;
pub mod measurement;
pub mod time;

#[cfg(test)]
mod text_tests;

pub use device::{load_device_mapping, DeviceMapping, DeviceMappingLoad, NormalizeError};
pub use fhir_template::{load_fhir_mapping, FhirMapping, FhirMappingLoad};
pub use load::TemplateError;
pub use measurement::Measurement;
pub use time::Timestamp;
