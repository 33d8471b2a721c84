//! The mapping engine: device templates (normalization) and FHIR templates (transform models).
//!
//! Architecture invariant: nothing in this module does I/O or reads the clock. Loaders take
//! text, evaluators take JSON values, and times are parameters.

pub mod fhir_model;
pub mod jmes;
pub mod jsonpath;
pub mod measurement;
pub mod time;

pub use measurement::Measurement;
pub use time::Timestamp;
