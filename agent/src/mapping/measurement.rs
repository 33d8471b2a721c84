//! The normalized measurement: what a device template makes of one matched token.

use super::time::Timestamp;

/// One normalized reading, as upstream's `Measurement` (Type, OccurrenceTimeUtc, ...).
///
/// Property values keep their textual form (Json.NET's `Value<string>()`), in the order of the
/// template's `values[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// `typeName` of the device template that produced it.
    pub type_name: String,
    /// The device's own time for the reading (from `timestampExpression`).
    pub occurrence_time: Timestamp,
    /// When the gateway received the message (the envelope's enqueued time). A parameter of
    /// normalization, never read from the clock inside the mapping code.
    pub ingestion_time: Timestamp,
    pub device_id: String,
    pub patient_id: Option<String>,
    pub encounter_id: Option<String>,
    pub correlation_id: Option<String>,
    /// `(valueName, value)` pairs.
    pub properties: Vec<(String, String)>,
}
