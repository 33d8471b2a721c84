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
//!
//! Per-message cost (the text path): the batch groups into borrowed
//! [`GroupView`]s ([`group_spans`]: no owned group unless one is merged or the `Value` path
//! runs), the fixed parts of each template's Observations are rendered once per batch and type
//! ([`Prepared`]), the window's "o" texts once per group for both the identifier segment and
//! `effectivePeriod`, the id's SHA-256 from the service system's precomputed prefix state
//! (`observation_digest`), and earlier Observations of the batch are found by that digest. Two
//! allocations per Observation remain: its text and its id.

use super::civil::Effective;
use super::group::{effective_period_interval, group_spans, str_eq, GroupView};
use super::identity::{
    create_mode_device_id, create_mode_device_resource, create_mode_patient_id,
    create_mode_patient_resource, hex_bytes, ResolvedIdentity,
};
use super::transform::{
    create_observation, issued_json, merge_observation, observation_digest, write_identifier,
    write_observation, Ids, MergeOutcome, Prepared, TransformError, TransformOptions,
};
use crate::mapping::fhir_model::CodeValueFhirTemplate;
use crate::mapping::{FhirMapping, Measurement, Timestamp};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

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
    /// Per-batch state (the formatted `issued`, the prepared templates).
    type Ctx<'t>;
    fn ctx<'t>(issued: Timestamp) -> Self::Ctx<'t>;
    #[allow(clippy::too_many_arguments)]
    fn create<'t>(
        ctx: &mut Self::Ctx<'t>,
        template: &'t CodeValueFhirTemplate,
        group: &GroupView<'_>,
        effective: &Effective,
        ident: &Ident<'_>,
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
    type Ctx<'t> = ();
    fn ctx<'t>(_: Timestamp) -> Self::Ctx<'t> {}
    fn create(
        _: &mut (),
        template: &CodeValueFhirTemplate,
        group: &GroupView<'_>,
        _: &Effective,
        ident: &Ident<'_>,
        _: &str,
        _: &str,
        issued: Timestamp,
        opts: &TransformOptions,
    ) -> Result<Self, TransformError> {
        create_observation(
            template,
            &group.to_group(),
            &ident.to_resolved(),
            issued,
            opts,
        )
    }
    fn to_value(&self) -> Result<Value, TransformError> {
        Ok(self.clone())
    }
    fn from_value(_: &str, v: Value) -> Result<Self, TransformError> {
        Ok(v)
    }
}

/// The text path's per-batch state.
struct JsonCtx<'t> {
    /// `issued` as a JSON string literal.
    issued: String,
    /// Prepared parts per template and measurement type (the code text is the group's type,
    /// which may differ in case from the template's), most recently used first.
    prepared: Vec<(&'t CodeValueFhirTemplate, String, Prepared)>,
    /// Length of the last Observation written: the next one's capacity.
    last_len: usize,
}

impl Repr for ObservationJson {
    type Ctx<'t> = JsonCtx<'t>;
    fn ctx<'t>(issued: Timestamp) -> JsonCtx<'t> {
        JsonCtx {
            issued: issued_json(issued),
            prepared: Vec::new(),
            last_len: 512,
        }
    }
    fn create<'t>(
        ctx: &mut JsonCtx<'t>,
        template: &'t CodeValueFhirTemplate,
        group: &GroupView<'_>,
        effective: &Effective,
        ident: &Ident<'_>,
        identifier: &str,
        id: &str,
        _: Timestamp,
        _: &TransformOptions,
    ) -> Result<Self, TransformError> {
        let type_name = group.type_name();
        let found = ctx
            .prepared
            .iter()
            .position(|(t, ty, _)| std::ptr::eq(*t, template) && str_eq(ty, type_name));
        let k = match found {
            Some(k) => k,
            None => {
                ctx.prepared.push((
                    template,
                    type_name.to_owned(),
                    Prepared::new(template, type_name),
                ));
                ctx.prepared.len() - 1
            }
        };
        if k > 0 {
            // Most recently used first: a batch's groups come sorted by device, then type.
            ctx.prepared.swap(0, k);
        }
        let prepared = &ctx.prepared[0].2;
        let mut json = String::with_capacity(ctx.last_len + 64);
        write_observation(
            &mut json,
            template,
            prepared,
            group,
            &Ids {
                patient: &ident.patient,
                device: &ident.device,
                encounter: ident.encounter,
                identifier,
                id,
            },
            effective,
            &ctx.issued,
        )?;
        ctx.last_len = json.len();
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

/// Hasher for the batch's Observation digests (SHA-256 output: already uniform).
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut w = [0u8; 8];
        let n = bytes.len().min(8);
        w[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(w);
    }
    fn finish(&self) -> u64 {
        self.0
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
    let mut ctx = O::ctx(issued);
    let period_of = |t: &str| fhir.get(t).map(effective_period_interval);
    let grouped = group_spans(measurements, &period_of);
    for e in &grouped.errors {
        let (type_name, device_id, reason) = match e {
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
    // Observations of this batch by id (its SHA-256): a later group with the same identifier
    // (two readings in one second) merges into the earlier one, as it would on the server.
    // `out.observations` in first-touched order, and where each id is in it.
    let mut position: HashMap<[u8; 32], usize, BuildHasherDefault<DigestHasher>> =
        HashMap::with_capacity_and_hasher(grouped.len(), Default::default());
    out.observations.reserve(grouped.len());
    let mut seen_patients = HashSet::new();
    let mut seen_devices = HashSet::new();
    let mut identifier = String::with_capacity(128);
    let mut last_template: Option<(&str, Option<&CodeValueFhirTemplate>)> = None;
    for g in grouped.iter() {
        let template = match last_template {
            Some((ty, t)) if str_eq(ty, g.type_name()) => t,
            _ => {
                let t = fhir.get(g.type_name());
                last_template = Some((g.type_name(), t));
                t
            }
        };
        let Some(template) = template else {
            continue;
        };
        let ident = match resolve(&g, identity) {
            Ok(i) => i,
            Err(message) => {
                out.errors.push(err(&g, "identity_not_defined", message));
                continue;
            }
        };
        if identity == OfflineIdentity::Create {
            if let Some(p) = g.patient_id() {
                if !seen_patients.contains(&*ident.patient) {
                    if let Ok(r) = create_mode_patient_resource(p) {
                        seen_patients.insert(ident.patient.to_string());
                        out.patients.push(r);
                    }
                }
            }
            if !seen_devices.contains(&*ident.device) {
                if let Ok(r) = create_mode_device_resource(None, g.device_id(), &ident.patient) {
                    seen_devices.insert(ident.device.to_string());
                    out.devices.push(r);
                }
            }
        }
        let effective = Effective::new(g.start, g.end);
        identifier.clear();
        write_identifier(
            &mut identifier,
            &ident.patient,
            &ident.device,
            g.type_name(),
            g.segment_with(&effective).as_str(),
            opts,
        );
        let digest = observation_digest(&identifier);
        let hex = hex_bytes(&digest);
        // Only ASCII hex digits.
        let id = std::str::from_utf8(&hex).unwrap_or_default();
        let prior = match position.get(&digest).and_then(|&k| out.observations.get(k)) {
            Some(v) => v.to_value().map(Some),
            None => Ok(existing(id)),
        };
        let result = match prior {
            Err(e) => Err(e),
            Ok(None) => O::create(
                &mut ctx,
                template,
                &g,
                &effective,
                &ident,
                &identifier,
                id,
                issued,
                opts,
            )
            .map(Some),
            Ok(Some(prev)) => {
                merge_observation(template, &g.to_group(), &prev).and_then(|m| match m {
                    MergeOutcome::Unchanged => Ok(None),
                    MergeOutcome::Changed(v) => O::from_value(id, v).map(Some),
                })
            }
        };
        match result {
            Ok(Some(v)) => match position.get(&digest).copied() {
                Some(k) => {
                    if let Some(slot) = out.observations.get_mut(k) {
                        *slot = v;
                    }
                }
                None => {
                    position.insert(digest, out.observations.len());
                    out.observations.push(v);
                }
            },
            Ok(None) => out.unchanged += 1,
            Err(e) => out.errors.push(err(&g, "transform_error", e.to_string())),
        }
    }
    out
}

fn err(g: &GroupView<'_>, reason: &'static str, message: String) -> BatchError {
    BatchError {
        measurement_indices: g.source_indices().to_vec(),
        type_name: g.type_name().to_owned(),
        device_id: g.device_id().to_owned(),
        reason,
        message,
    }
}

/// The resolved ids of a group, borrowed from it where they are the message's own.
struct Ident<'g> {
    patient: Cow<'g, str>,
    device: Cow<'g, str>,
    encounter: Option<&'g str>,
}

impl Ident<'_> {
    fn to_resolved(&self) -> ResolvedIdentity {
        ResolvedIdentity {
            patient_fhir_id: self.patient.to_string(),
            device_fhir_id: self.device.to_string(),
            encounter_fhir_id: self.encounter.map(str::to_owned),
        }
    }
}

fn resolve<'g>(g: &GroupView<'g>, identity: OfflineIdentity) -> Result<Ident<'g>, String> {
    match identity {
        OfflineIdentity::Create => {
            let patient = g.patient_id().unwrap_or("");
            let patient_fhir_id = create_mode_patient_id(patient)
                .map_err(|e| format!("{e} (Create mode needs the message's patient id)"))?;
            let device_fhir_id =
                create_mode_device_id(None, g.device_id()).map_err(|e| e.to_string())?;
            Ok(Ident {
                patient: Cow::Owned(patient_fhir_id),
                device: Cow::Owned(device_fhir_id),
                encounter: g.encounter_id(),
            })
        }
        OfflineIdentity::Passthrough => Ok(Ident {
            patient: Cow::Borrowed(
                g.patient_id()
                    .ok_or_else(|| "no patient id in the message".to_owned())?,
            ),
            device: Cow::Borrowed(g.device_id()),
            encounter: g.encounter_id(),
        }),
    }
}
