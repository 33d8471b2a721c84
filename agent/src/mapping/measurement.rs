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

impl Measurement {
    /// The normalized-message JSON upstream writes to its normalized event hub (Newtonsoft
    /// defaults, PascalCase, times in Json.NET's ISO form with trailing zero digits trimmed).
    pub fn to_normalized_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let opt = |o: &Option<String>| o.as_ref().map_or(Value::Null, |s| Value::String(s.clone()));
        json!({
            "Type": self.type_name,
            "OccurrenceTimeUtc": jsonnet_time(&self.occurrence_time),
            "IngestionTimeUtc": jsonnet_time(&self.ingestion_time),
            "DeviceId": self.device_id,
            "PatientId": opt(&self.patient_id),
            "EncounterId": opt(&self.encounter_id),
            "CorrelationId": opt(&self.correlation_id),
            "Properties": self.properties.iter().map(|(n, v)| json!({"Name": n, "Value": v})).collect::<Vec<_>>(),
        })
    }
}

/// Json.NET's default UTC `DateTime` form: `yyyy-MM-ddTHH:mm:ss.FFFFFFFZ` (the `F`s drop
/// trailing zeros, and the dot too when the fraction is zero).
pub fn jsonnet_time(t: &Timestamp) -> String {
    let o = t.format_o(); // yyyy-MM-ddTHH:mm:ss.fffffffZ
    let (head, frac) = o.split_at(19);
    let frac = frac
        .trim_end_matches('Z')
        .trim_start_matches('.')
        .trim_end_matches('0');
    if frac.is_empty() {
        format!("{head}Z")
    } else {
        format!("{head}.{frac}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonnet_time_trims_zeros() {
        let t = |s| jsonnet_time(&Timestamp::parse_rfc3339(s).unwrap());
        assert_eq!(t("2019-02-01T22:46:01.875Z"), "2019-02-01T22:46:01.875Z");
        assert_eq!(t("2024-01-01T10:00:00Z"), "2024-01-01T10:00:00Z");
        assert_eq!(
            t("2019-01-30T22:45:02.6073744Z"),
            "2019-01-30T22:45:02.6073744Z"
        );
    }
}
