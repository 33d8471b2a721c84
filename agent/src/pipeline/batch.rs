//! One batch through the FHIR stage, offline: group, resolve identities without a server
//! (Create mode's deterministic ids, or the message ids as they are), create or merge.
//!
//! Used by `iomt-agent map` and by the outbox sink. Pure: the previous version of an
//! Observation comes from a closure, `issued` is a parameter.
//!
//! Two outputs, same content: [`transform_batch`] gives each Observation as a
//! `serde_json::Value`; [`transform_batch_json`] gives it as JSON text, the bytes
//! `serde_json::to_string` would write for that `Value`. The text path writes created
//! Observations directly ([`create_observation_json`](super::transform::create_observation_json))
//! and only goes through `Value` to merge (an existing version, or a second group with the same
//! identifier in one batch).

use super::group::{effective_period_interval, group_measurements, ObservationGroup};
use super::identity::{
    create_mode_device_id, create_mode_device_resource, create_mode_patient_id,
    create_mode_patient_resource, ResolvedIdentity,
};
use super::transform::{
    create_observation, create_observation_json_with, format_instant, merge_observation,
    observation_id, observation_identifier, MergeOutcome, TransformError, TransformOptions,
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

/// An Observation as JSON text, with its id (what [`transform_batch_json`] gives).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservationJson {
    /// The Observation's `id`.
    pub id: String,
    /// The Observation, compact JSON (as `serde_json::to_string` writes its `Value`).
    pub json: String,
}

/// What a batch produced. `O` is how each Observation is given: a `Value`
/// ([`transform_batch`]) or [`ObservationJson`] ([`transform_batch_json`]).
#[derive(Debug, Default)]
pub struct BatchOutput<O = Value> {
    /// Observations created or changed by this batch, final version, in first-touched order.
    pub observations: Vec<O>,
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
    run::<Value>(fhir, measurements, identity, issued, opts, existing)
}

/// [`transform_batch`] with each Observation as JSON text: the same Observations, in the same
/// order, each exactly `serde_json::to_string` of the `Value` [`transform_batch`] gives.
pub fn transform_batch_json(
    fhir: &FhirMapping,
    measurements: &[Measurement],
    identity: OfflineIdentity,
    issued: Timestamp,
    opts: &TransformOptions,
    existing: &mut dyn FnMut(&str) -> Option<Value>,
) -> BatchOutput<ObservationJson> {
    run::<ObservationJson>(fhir, measurements, identity, issued, opts, existing)
}

/// How the batch holds an Observation between groups and hands it out.
trait Repr: Sized {
    /// Per-batch state (the formatted `issued`).
    type Ctx;
    fn ctx(issued: Timestamp) -> Self::Ctx;
    #[allow(clippy::too_many_arguments)]
    fn create(
        ctx: &Self::Ctx,
        template: &crate::mapping::fhir_model::CodeValueFhirTemplate,
        group: &ObservationGroup,
        ident: &ResolvedIdentity,
        identifier: &str,
        id: &str,
        issued: Timestamp,
        opts: &TransformOptions,
    ) -> Result<Self, TransformError>;
    /// The `Value` to merge a later group of the batch into.
    fn to_value(&self) -> Result<Value, TransformError>;
    fn from_value(id: &str, v: Value) -> Result<Self, TransformError>;
}

impl Repr for Value {
    type Ctx = ();
    fn ctx(_: Timestamp) {}
    fn create(
        _: &(),
        template: &crate::mapping::fhir_model::CodeValueFhirTemplate,
        group: &ObservationGroup,
        ident: &ResolvedIdentity,
        _: &str,
        _: &str,
        issued: Timestamp,
        opts: &TransformOptions,
    ) -> Result<Self, TransformError> {
        create_observation(template, group, ident, issued, opts)
    }
    fn to_value(&self) -> Result<Value, TransformError> {
        Ok(self.clone())
    }
    fn from_value(_: &str, v: Value) -> Result<Self, TransformError> {
        Ok(v)
    }
}

impl Repr for ObservationJson {
    type Ctx = String;
    fn ctx(issued: Timestamp) -> String {
        format_instant(issued)
    }
    fn create(
        issued_text: &String,
        template: &crate::mapping::fhir_model::CodeValueFhirTemplate,
        group: &ObservationGroup,
        ident: &ResolvedIdentity,
        identifier: &str,
        id: &str,
        _: Timestamp,
        _: &TransformOptions,
    ) -> Result<Self, TransformError> {
        let json =
            create_observation_json_with(template, group, ident, identifier, id, issued_text)?;
        Ok(ObservationJson {
            id: id.to_owned(),
            json,
        })
    }
    fn to_value(&self) -> Result<Value, TransformError> {
        serde_json::from_str(&self.json).map_err(|e| TransformError::InvalidExisting {
            reason: format!("observation written earlier in the batch does not parse: {e}"),
        })
    }
    fn from_value(id: &str, v: Value) -> Result<Self, TransformError> {
        let json = serde_json::to_string(&v).map_err(|e| TransformError::InvalidExisting {
            reason: format!("merged observation does not serialize: {e}"),
        })?;
        Ok(ObservationJson {
            id: id.to_owned(),
            json,
        })
    }
}

fn run<O: Repr>(
    fhir: &FhirMapping,
    measurements: &[Measurement],
    identity: OfflineIdentity,
    issued: Timestamp,
    opts: &TransformOptions,
    existing: &mut dyn FnMut(&str) -> Option<Value>,
) -> BatchOutput<O> {
    let mut out: BatchOutput<O> = BatchOutput {
        observations: Vec::new(),
        patients: Vec::new(),
        devices: Vec::new(),
        errors: Vec::new(),
        unchanged: 0,
    };
    let ctx = O::ctx(issued);
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
    // `out.observations` in first-touched order, and where each id is in it.
    let mut position: HashMap<String, usize> = HashMap::new();
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
        let identifier = observation_identifier(&ident, g, opts);
        let id = observation_id(&identifier);
        let prior = match position.get(&id).and_then(|&k| out.observations.get(k)) {
            Some(v) => v.to_value().map(Some),
            None => Ok(existing(&id)),
        };
        let result = match prior {
            Err(e) => Err(e),
            Ok(None) => {
                O::create(&ctx, template, g, &ident, &identifier, &id, issued, opts).map(Some)
            }
            Ok(Some(prev)) => merge_observation(template, g, &prev).and_then(|m| match m {
                MergeOutcome::Unchanged => Ok(None),
                MergeOutcome::Changed(v) => O::from_value(&id, v).map(Some),
            }),
        };
        match result {
            Ok(Some(v)) => match position.get(&id).copied() {
                Some(k) => {
                    if let Some(slot) = out.observations.get_mut(k) {
                        *slot = v;
                    }
                }
                None => {
                    position.insert(id, out.observations.len());
                    out.observations.push(v);
                }
            },
            Ok(None) => out.unchanged += 1,
            Err(e) => out.errors.push(err(g, "transform_error", e.to_string())),
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
