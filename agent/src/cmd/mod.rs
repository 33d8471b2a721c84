//! The commands of `iomt-agent`.

pub mod config_cmd;
pub mod decode;
pub mod identity;
pub mod map;
pub mod ops;
pub mod run;
pub mod status;

/// Something processed failed (a message did not map).
pub const EXIT_FAILED: u8 = 1;
/// A mapping template failed to load.
pub const EXIT_TEMPLATE: u8 = 2;
/// The configuration or a template is invalid (`EX_CONFIG`); systemd does not restart on it.
pub const EXIT_CONFIG: u8 = 78;
/// Any other error (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: u8 = 70;

use iomt_agent::mapping::{FhirMapping, Measurement, Timestamp};
use iomt_agent::pipeline::batch::{transform_batch, OfflineIdentity};
use iomt_agent::pipeline::transform::TransformOptions;
use serde_json::{json, Value};

/// Groups and transforms measurements offline (no FHIR server); `inputs[i]` is the input index
/// of measurement `i`, so errors can name the message.
pub fn transform_offline(
    fhir: &FhirMapping,
    ms: &[Measurement],
    inputs: &[usize],
    create: bool,
    issued: Timestamp,
    errors: &mut Vec<Value>,
) -> Vec<Value> {
    let identity = if create {
        OfflineIdentity::Create
    } else {
        OfflineIdentity::Passthrough
    };
    let out = transform_batch(
        fhir,
        ms,
        identity,
        issued,
        &TransformOptions::default(),
        &mut |_| None,
    );
    for e in out.errors {
        let mut idx: Vec<usize> = e
            .measurement_indices
            .iter()
            .filter_map(|&m| inputs.get(m).copied())
            .collect();
        idx.sort_unstable();
        idx.dedup();
        errors.push(json!({
            "stage": "transform",
            "inputs": idx,
            "typeName": e.type_name,
            "deviceId": e.device_id,
            "reason": e.reason,
            "message": e.message,
        }));
    }
    out.observations
}
