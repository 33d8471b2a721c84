//! One batch through the FHIR stage, offline: group, resolve identities without a server
//! (Create mode's deterministic ids, or the message ids as they are), create or merge.
//!
//! Used by `iomt-agent map` and by the outbox sink. Pure: the previous version of an
//! Observation comes from a closure, `issued` is a parameter.

use super::group::{effective_period_interval, group_measurements, ObservationGroup};
use super::identity::{
    create_mode_device_id, create_mode_device_resource, create_mode_patient_id,
    create_mode_patient_resource, ResolvedIdentity,
};
use super::transform::{
    create_observation, merge_observation, observation_id, observation_identifier, MergeOutcome,
    TransformOptions,
};
use crate::mapping::{FhirMapping, Measurement, Timestamp};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// How identities are resolved offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineIdentity {
    /// Create mode: Patient id = sha256("_" + patientId), Device id = sha256("_" + deviceId);
    /// the Patient and Device resources are produced too. A missing patient id is an error.
    Create,
    /// The message's patient and device ids are the FHIR ids.
    Passthrough,
}

/// A problem with some measurements of the batch; the rest of the batch is unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// Indices into the measurement slice.
    pub measurement_indices: Vec<usize>,
    pub type_name: String,
    pub device_id: String,
    /// Stable reason code: `no_fhir_template`, `correlation_id_missing`, `identity_not_defined`,
    /// `transform_error`, `time_out_of_range`.
    pub reason: &'static str,
    pub message: String,
}

/// What a batch produced.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// Observations created or changed by this batch, final version, in first-touched order.
    pub observations: Vec<Value>,
    /// Patient and Device resources (Create mode), one per id, in first-seen order.
    pub patients: Vec<Value>,
    pub devices: Vec<Value>,
    pub errors: Vec<BatchError>,
    /// Groups whose merge changed nothing (replays, duplicates).
    pub unchanged: usize,
}

/// Runs a batch. `existing(id)` returns the stored version of an Observation, if any.
pub fn transform_batch(
    fhir: &FhirMapping,
    measurements: &[Measurement],
    identity: OfflineIdentity,
    issued: Timestamp,
    opts: &TransformOptions,
    existing: &mut dyn FnMut(&str) -> Option<Value>,
) -> BatchOutput {
    let mut out = BatchOutput::default();
    let period_of = |t: &str| fhir.get(t).map(effective_period_interval);
    let (groups, group_errors) = group_measurements(measurements, &period_of);
    for e in group_errors {
        let (type_name, device_id, reason) = match &e {
            super::group::GroupError::NoTemplate {
                type_name,
                device_id,
                ..
            } => (type_name, device_id, "no_fhir_template"),
            super::group::GroupError::CorrelationIdNotDefined {
                type_name,
                device_id,
                ..
            } => (type_name, device_id, "correlation_id_missing"),
            super::group::GroupError::TimeOutOfRange {
                type_name,
                device_id,
                ..
            } => (type_name, device_id, "time_out_of_range"),
        };
        out.errors.push(BatchError {
            measurement_indices: e.source_indices().to_vec(),
            type_name: type_name.clone(),
            device_id: device_id.clone(),
            reason,
            message: e.to_string(),
        });
    }
    // Observations of this batch by id: a later group with the same identifier (two readings
    // in one second) merges into the earlier one, as it would on the server.
    let mut current: HashMap<String, Value> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut seen_patients = HashSet::new();
    let mut seen_devices = HashSet::new();
    for g in &groups {
        let Some(template) = fhir.get(&g.type_name) else {
            continue;
        };
        let ident = match resolve(g, identity) {
            Ok(i) => i,
            Err(message) => {
                out.errors.push(err(g, "identity_not_defined", message));
                continue;
            }
        };
        if identity == OfflineIdentity::Create {
            if let Some(p) = &g.patient_id {
                if !seen_patients.contains(&ident.patient_fhir_id) {
                    if let Ok(r) = create_mode_patient_resource(p) {
                        seen_patients.insert(ident.patient_fhir_id.clone());
                        out.patients.push(r);
                    }
                }
            }
            if !seen_devices.contains(&ident.device_fhir_id) {
                if let Ok(r) =
                    create_mode_device_resource(None, &g.device_id, &ident.patient_fhir_id)
                {
                    seen_devices.insert(ident.device_fhir_id.clone());
                    out.devices.push(r);
                }
            }
        }
        let id = observation_id(&observation_identifier(&ident, g, opts));
        let prior = match current.get(&id) {
            Some(v) => Some(v.clone()),
            None => existing(&id),
        };
        let result = match &prior {
            None => create_observation(template, g, &ident, issued, opts).map(Some),
            Some(prev) => merge_observation(template, g, prev).map(|m| match m {
                MergeOutcome::Unchanged => None,
                MergeOutcome::Changed(v) => Some(v),
            }),
        };
        match result {
            Ok(Some(v)) => {
                if !current.contains_key(&id) {
                    order.push(id.clone());
                }
                current.insert(id, v);
            }
            Ok(None) => out.unchanged += 1,
            Err(e) => out.errors.push(err(g, "transform_error", e.to_string())),
        }
    }
    for id in order {
        if let Some(v) = current.remove(&id) {
            out.observations.push(v);
        }
    }
    out
}

fn err(g: &ObservationGroup, reason: &'static str, message: String) -> BatchError {
    BatchError {
        measurement_indices: g.source_indices.clone(),
        type_name: g.type_name.clone(),
        device_id: g.device_id.clone(),
        reason,
        message,
    }
}

fn resolve(g: &ObservationGroup, identity: OfflineIdentity) -> Result<ResolvedIdentity, String> {
    match identity {
        OfflineIdentity::Create => {
            let patient = g.patient_id.as_deref().unwrap_or("");
            let patient_fhir_id = create_mode_patient_id(patient)
                .map_err(|e| format!("{e} (Create mode needs the message's patient id)"))?;
            let device_fhir_id =
                create_mode_device_id(None, &g.device_id).map_err(|e| e.to_string())?;
            Ok(ResolvedIdentity {
                patient_fhir_id,
                device_fhir_id,
                encounter_fhir_id: g.encounter_id.clone(),
            })
        }
        OfflineIdentity::Passthrough => Ok(ResolvedIdentity {
            patient_fhir_id: g
                .patient_id
                .clone()
                .ok_or_else(|| "no patient id in the message".to_owned())?,
            device_fhir_id: g.device_id.clone(),
            encounter_fhir_id: g.encounter_id.clone(),
        }),
    }
}
