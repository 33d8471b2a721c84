//! The pure parts of identity resolution: resolved FHIR ids, Create-mode deterministic ids and
//! the minimal Patient and Device bodies that Create mode writes.
//!
//! Upstream reference: `R4DeviceAndPatientCreateIdentityService`, `ResourceManagementService`,
//! `IdentifierExtensions.ComputeHashForIdentifier` and `ModelExtensions.GetId` in
//! microsoft/iomt-fhir (semantics doc §5).
//!
//! Invariants:
//! - A deterministic id is the lowercase hex SHA-256 of `"{system}_{value}"` (UTF-8), where a
//!   missing or whitespace-only system counts as the empty string (upstream's `BuildIdentifier`
//!   turns such a system into `null`, and C# interpolates `null` as nothing). So the Patient id
//!   for `patient1` is `sha256("_patient1")`.
//! - The Patient identifier never has a system (upstream passes `null`); the Device identifier
//!   uses the configured default device identifier system, if any.
//! - Bodies are built in FHIR R4 element order (`resourceType`, `id`, `identifier`, then
//!   `patient` for Device), which is what Firely's serializer writes.
//! - No I/O here: searching, caching and PUTs belong to the FHIR sink.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The FHIR ids an Observation links to, as resolved by the identity service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedIdentity {
    /// `Patient.id` (the logical id on the FHIR server, not the message's patient identifier).
    pub patient_fhir_id: String,
    /// `Device.id`.
    pub device_fhir_id: String,
    /// `Encounter.id`, when the message carried an encounter identifier that was resolved.
    pub encounter_fhir_id: Option<String>,
}

/// Errors of the pure identity helpers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Create mode needs the message's patient id (upstream `ResourceIdentityNotDefinedException`).
    #[error("resource identity not defined: {resource} identifier is missing or blank")]
    NotDefined {
        /// `Patient` or `Device`.
        resource: &'static str,
    },
}

/// Lowercase hex SHA-256 of `"{system}_{value}"`; a missing or whitespace-only `system` is
/// treated as empty (upstream `ComputeHashForIdentifier` after `BuildIdentifier`).
pub fn identifier_hash(system: Option<&str>, value: &str) -> String {
    hex_string(&IdentifierHasher::new(system).digest(value))
}

/// [`identifier_hash`] for many values of one system: the hasher state after
/// `"{system}_"` is computed once and cloned per value (the system URL of the Observation
/// identifiers is a whole SHA-256 block).
#[derive(Clone)]
pub(crate) struct IdentifierHasher(Sha256);

impl IdentifierHasher {
    pub(crate) fn new(system: Option<&str>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(normalize_system(system).unwrap_or("").as_bytes());
        hasher.update(b"_");
        IdentifierHasher(hasher)
    }

    /// SHA-256 of `"{system}_{value}"`.
    pub(crate) fn digest(&self, value: &str) -> [u8; 32] {
        let mut hasher = self.0.clone();
        hasher.update(value.as_bytes());
        hasher.finalize().into()
    }
}

/// Lowercase hex of a digest, as ASCII bytes.
pub(crate) fn hex_bytes(digest: &[u8; 32]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, &b) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// Lowercase hex of a digest.
pub(crate) fn hex_string(digest: &[u8; 32]) -> String {
    // Only ASCII hex digits.
    std::str::from_utf8(&hex_bytes(digest))
        .unwrap_or_default()
        .to_owned()
}

/// Create-mode Patient id for the message's patient identifier: `sha256("_" + patientId)`.
pub fn create_mode_patient_id(patient_identifier: &str) -> Result<String, IdentityError> {
    let value = require(patient_identifier, "Patient")?;
    Ok(identifier_hash(None, value))
}

/// Create-mode Device id: `sha256((system or "") + "_" + deviceId)`.
pub fn create_mode_device_id(
    system: Option<&str>,
    device_identifier: &str,
) -> Result<String, IdentityError> {
    let value = require(device_identifier, "Device")?;
    Ok(identifier_hash(system, value))
}

/// The Patient body Create mode PUTs to `Patient/{id}`:
/// `{"resourceType":"Patient","id":…,"identifier":[{"value":patientId}]}`.
pub fn create_mode_patient_resource(patient_identifier: &str) -> Result<Value, IdentityError> {
    let id = create_mode_patient_id(patient_identifier)?;
    Ok(json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [identifier_json(None, patient_identifier)],
    }))
}

/// The Device body Create mode PUTs to `Device/{id}`:
/// `{"resourceType":"Device","id":…,"identifier":[{"system"?,"value":deviceId}],
/// "patient":{"reference":"Patient/{patientFhirId}"}}`.
pub fn create_mode_device_resource(
    system: Option<&str>,
    device_identifier: &str,
    patient_fhir_id: &str,
) -> Result<Value, IdentityError> {
    let id = create_mode_device_id(system, device_identifier)?;
    let patient = require(patient_fhir_id, "Patient")?;
    Ok(json!({
        "resourceType": "Device",
        "id": id,
        "identifier": [identifier_json(system, device_identifier)],
        "patient": { "reference": format!("Patient/{patient}") },
    }))
}

/// The Patient id in a Device's `patient.reference`, as upstream `GetId<Patient>` reads it: the
/// reference must start with `Patient/` (any case) and the rest must match
/// `^[A-Za-z0-9_.\-~#]+$`; anything else (absolute URLs, `_history` suffixes, other types)
/// gives `None`, which upstream reports as PatientNotFound.
pub fn patient_id_from_reference(reference: &str) -> Option<&str> {
    const PREFIX: &str = "Patient/";
    let head = reference.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let id = &reference[PREFIX.len()..];
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '~' | '#'));
    valid.then_some(id)
}

fn normalize_system(system: Option<&str>) -> Option<&str> {
    system.filter(|s| !s.trim().is_empty())
}

fn require<'a>(value: &'a str, resource: &'static str) -> Result<&'a str, IdentityError> {
    if value.trim().is_empty() {
        Err(IdentityError::NotDefined { resource })
    } else {
        Ok(value)
    }
}

fn identifier_json(system: Option<&str>, value: &str) -> Value {
    let mut m = Map::new();
    if let Some(s) = normalize_system(system) {
        m.insert("system".into(), Value::String(s.trim().to_owned()));
    }
    // Firely's JSON writer trims string primitives.
    m.insert("value".into(), Value::String(value.trim().to_owned()));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_support::worked_examples;

    fn example_id(key_prefix: &str) -> String {
        let ex = worked_examples();
        let ids = ex["create_mode_ids"]
            .as_object()
            .expect("create_mode_ids object");
        let (_, v) = ids
            .iter()
            .find(|(k, _)| k.starts_with(key_prefix))
            .unwrap_or_else(|| panic!("no create_mode_ids entry starting with {key_prefix}"));
        v.as_str().expect("id string").to_owned()
    }

    #[test]
    fn worked_example_patient_id() {
        assert_eq!(
            create_mode_patient_id("patient1").unwrap(),
            example_id("Patient")
        );
    }

    #[test]
    fn worked_example_device_id_without_system() {
        let expected = example_id("Device");
        assert_eq!(create_mode_device_id(None, "device1").unwrap(), expected);
        // A blank configured system is the same as none (upstream BuildIdentifier).
        assert_eq!(
            create_mode_device_id(Some("  "), "device1").unwrap(),
            expected
        );
    }

    #[test]
    fn device_id_with_system_hashes_system_then_underscore() {
        let with = create_mode_device_id(Some("urn:sys"), "device1").unwrap();
        assert_eq!(with, identifier_hash(Some("urn:sys"), "device1"));
        assert_ne!(with, create_mode_device_id(None, "device1").unwrap());
        // "urn:sys_device1" hashed directly.
        let direct = hex::encode(Sha256::digest(b"urn:sys_device1"));
        assert_eq!(with, direct);
    }

    #[test]
    fn blank_identifiers_are_errors() {
        assert_eq!(
            create_mode_patient_id(" ").unwrap_err(),
            IdentityError::NotDefined {
                resource: "Patient"
            }
        );
        assert!(create_mode_device_id(None, "").is_err());
        assert!(create_mode_device_resource(None, "d", "").is_err());
    }

    #[test]
    fn patient_body_exact_bytes() {
        let body = create_mode_patient_resource("patient1").unwrap();
        let expected = format!(
            r#"{{"resourceType":"Patient","id":"{}","identifier":[{{"value":"patient1"}}]}}"#,
            example_id("Patient")
        );
        assert_eq!(serde_json::to_string(&body).unwrap(), expected);
    }

    #[test]
    fn device_body_exact_bytes() {
        let pid = example_id("Patient");
        let body = create_mode_device_resource(None, "device1", &pid).unwrap();
        let expected = format!(
            r#"{{"resourceType":"Device","id":"{}","identifier":[{{"value":"device1"}}],"patient":{{"reference":"Patient/{pid}"}}}}"#,
            example_id("Device")
        );
        assert_eq!(serde_json::to_string(&body).unwrap(), expected);

        let with_system = create_mode_device_resource(Some("urn:sys"), "device1", &pid).unwrap();
        assert_eq!(
            with_system["identifier"],
            json!([{"system": "urn:sys", "value": "device1"}])
        );
        let keys: Vec<_> = with_system["identifier"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["system", "value"]);
    }

    #[test]
    fn reference_parsing_follows_get_id() {
        assert_eq!(
            patient_id_from_reference("Patient/abc-1.2_x~#"),
            Some("abc-1.2_x~#")
        );
        assert_eq!(patient_id_from_reference("patient/abc"), Some("abc"));
        assert_eq!(patient_id_from_reference("Patient/"), None);
        assert_eq!(patient_id_from_reference("Patient/a/_history/2"), None);
        assert_eq!(patient_id_from_reference("https://x/Patient/a"), None);
        assert_eq!(patient_id_from_reference("Device/a"), None);
        assert_eq!(patient_id_from_reference("Pat"), None);
        // Multi-byte input must not panic on slicing.
        assert_eq!(patient_id_from_reference("Patiént/a"), None);
    }

    #[test]
    fn identifier_hasher_and_hex_match_sha256_hex() {
        for (system, value) in [
            (None, "patient1"),
            (Some(" "), ""),
            (Some("http://x"), "d\u{e9}v\"1"),
            (
                Some(crate::pipeline::transform::SERVICE_SYSTEM),
                "p.d.hr.20231009191823Z.20231009191823Z",
            ),
        ] {
            let sys = system.filter(|s: &&str| !s.trim().is_empty()).unwrap_or("");
            let want = hex::encode(Sha256::digest(format!("{sys}_{value}").as_bytes()));
            assert_eq!(identifier_hash(system, value), want);
            let h = IdentifierHasher::new(system);
            assert_eq!(hex_string(&h.digest(value)), want);
            // The hasher is reusable: a second value starts from the same prefix.
            assert_eq!(hex_string(&h.digest(value)), want);
        }
    }
}
