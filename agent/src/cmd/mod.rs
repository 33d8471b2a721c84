//! The commands of `iomt-agent`.

pub mod map;

/// Something processed failed (a message did not map).
pub const EXIT_FAILED: u8 = 1;
/// A mapping template failed to load.
pub const EXIT_TEMPLATE: u8 = 2;
/// Any other error (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: u8 = 70;

use iomt_agent::mapping::{FhirMapping, Measurement, Timestamp};
use serde_json::Value;

/// Groups and transforms measurements offline (no FHIR server). Filled in with the
/// grouping and transform stage.
pub fn transform_offline(
    _fhir: &FhirMapping,
    _ms: &[Measurement],
    _create: bool,
    _issued: Timestamp,
    _errors: &mut Vec<Value>,
) -> Vec<Value> {
    Vec::new()
}
