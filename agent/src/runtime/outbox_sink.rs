//! The outbox sink's delivery: transform offline and write NDJSON.

use super::prepare::{Dead, Prepared};
use super::templates::Mappings;
use crate::mapping::Timestamp;
use crate::pipeline::batch::{transform_batch_json, OfflineIdentity};
use crate::pipeline::transform::TransformOptions;
use crate::sinks::outbox::{Outbox, OutboxError, SerializedResource};

/// What one delivery did.
#[derive(Debug, Default)]
pub struct Delivered {
    pub written: usize,
    pub unchanged: usize,
    pub observations: usize,
    pub dead: Vec<Dead>,
    /// Records a request for which failed on the server (a 5xx about that resource) while the
    /// rest of the batch was handled: not acknowledged; the worker retries them on their own
    /// back-off (and may give up on them, see `runtime::worker`). `reason`/`error` say why.
    pub retry: Vec<Dead>,
    /// Records not attempted because an earlier request of the batch failed: not
    /// acknowledged, retried with the next batch, no attempt counted.
    pub skipped: Vec<crate::buffer::Seq>,
}

/// Transforms and writes a prepared batch. An `Err` is transient (disk): nothing was
/// acknowledged, the batch will be retried.
pub fn deliver(
    outbox: &mut Outbox,
    identity: OfflineIdentity,
    prepared: &Prepared,
    mappings: &Mappings,
    issued: Timestamp,
) -> Result<Delivered, OutboxError> {
    let mut d = Delivered::default();
    let Some(fhir) = &mappings.fhir else {
        // Without a FHIR mapping there is nothing to write; every measurement is dead-lettered
        // so that nothing disappears silently (validate refuses such a config anyway).
        let mut seqs: Vec<_> = prepared.measurement_seq.clone();
        seqs.dedup();
        for seq in seqs {
            d.dead.push(Dead {
                seq,
                stage: "transform",
                reason: "no_fhir_mapping".into(),
                error: "no FHIR mapping is configured".into(),
            });
        }
        return Ok(d);
    };
    let mut lookup_err = None;
    let out = transform_batch_json(
        fhir,
        &prepared.measurements,
        identity,
        issued,
        &TransformOptions::default(),
        &mut |id| match outbox.get("Observation", id) {
            Ok(v) => v,
            Err(e) => {
                lookup_err = Some(e);
                None
            }
        },
    );
    if let Some(e) = lookup_err {
        return Err(e);
    }
    for e in &out.errors {
        let mut seqs: Vec<_> = e
            .measurement_indices
            .iter()
            .filter_map(|&i| prepared.measurement_seq.get(i).copied())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        for seq in seqs {
            d.dead.push(Dead {
                seq,
                stage: "transform",
                reason: e.reason.to_owned(),
                error: e.message.clone(),
            });
        }
    }
    d.observations = out.observations.len();
    // Patients and Devices (Create mode, one per id) as `Value`s; Observations already as text.
    let mut resources: Vec<SerializedResource> =
        Vec::with_capacity(out.patients.len() + out.devices.len() + out.observations.len());
    for r in out.patients.iter().chain(&out.devices) {
        resources.push(SerializedResource::from_value(r)?);
    }
    resources.extend(out.observations.into_iter().map(|o| SerializedResource {
        rtype: "Observation".to_owned(),
        id: o.id,
        json: o.json,
    }));
    let report = outbox.write_serialized(resources)?;
    d.written = report.written;
    d.unchanged = report.unchanged + out.unchanged;
    Ok(d)
}
