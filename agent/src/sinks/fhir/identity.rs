//! Identity resolution against the FHIR server (modes `lookup`, `create`,
//! `lookup_with_encounter`, as upstream's `R4DeviceAndPatient*IdentityService`), and the
//! bounded identity cache that follows bed moves.
//!
//! Resolution of one message key `(deviceId, patientId?, encounterId?)`:
//! 1. Device by `GET Device?identifier=[system|]deviceId` (exact identifier matches only; 0 →
//!    `device_not_found`, >1 → `multiple_resources_found`).
//! 2. Patient from `Device.patient` (a relative `Patient/{id}`, else `patient_not_found`).
//!    With `verify_patient` (default) and a patient id in the message, the Patient is read and
//!    must carry that id as an identifier value (any system) or as its logical id, else
//!    `patient_device_mismatch`: the reading is not written to another patient's chart.
//!    Upstream ignores the message patient in Lookup mode; `verify_patient = false` restores
//!    that.
//! 3. Create mode, when the Device or its Patient is missing: the Patient is found by
//!    `GET Patient?identifier=patientId` (no system, as upstream, unless
//!    `patient_identifier_system` is set: then that system is searched and written) or written
//!    with `PUT Patient/{sha256("_"+patientId)}`; the Device is written with
//!    `PUT Device/{sha256(system+"_"+deviceId)}` linked to it, or, when it exists without a
//!    patient, linked with `PUT` + `If-Match`. A Device linked to another patient is never
//!    re-linked (step 2 reports the mismatch). A missing message patient id is
//!    `identity_not_defined`.
//! 4. Encounter, when the message has one (required in `lookup_with_encounter`):
//!    `GET Encounter?identifier=encounterId` (no system), 0 → `encounter_not_found`.
//!    Deviation: upstream's Create mode skips the encounter on the resolution that created the
//!    Device; here it is always resolved.
//!
//! The cache key is the whole message key, so a monitor moved to another bed (new patient id)
//! or a new encounter resolves afresh. Entries live for an absolute TTL (default 5 min, upstream
//! 2 h sliding), the cache holds at most `capacity` entries (oldest first out), failures are
//! never cached, and [`IdentityCache::invalidate`] drops everything or one device's entries
//! (admin `POST /identity/invalidate`). The cache takes the current instant as a parameter.

use super::client::{Ctx, FhirClient, FhirError};
use super::config::IdentityMode;
use crate::pipeline::identity::{
    create_mode_device_id, create_mode_device_resource, create_mode_patient_id,
    create_mode_patient_resource, patient_id_from_reference, ResolvedIdentity,
};
use crate::telemetry::events;
use reqwest::Method;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most search result pages followed.
const MAX_PAGES: usize = 20;

/// The identity-relevant part of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    pub device: String,
    pub patient: Option<String>,
    pub encounter: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<IdentityKey, (ResolvedIdentity, Instant)>,
    /// Insertion order, for eviction; entries whose instant no longer matches are stale.
    order: VecDeque<(IdentityKey, Instant)>,
}

/// Resolved identities, bounded, with an absolute TTL and explicit invalidation.
#[derive(Debug)]
pub struct IdentityCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl IdentityCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        IdentityCache {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached identity, if present and younger than the TTL.
    pub fn get(&self, key: &IdentityKey, now: Instant) -> Option<ResolvedIdentity> {
        let mut g = self.lock();
        match g.map.get(key) {
            Some((v, at)) if now.saturating_duration_since(*at) < self.ttl => Some(v.clone()),
            Some(_) => {
                g.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches an identity, evicting expired entries, then the oldest, to stay within capacity.
    pub fn insert(&self, key: IdentityKey, value: ResolvedIdentity, now: Instant) {
        let mut g = self.lock();
        let ttl = self.ttl;
        if g.map.len() >= self.capacity && !g.map.contains_key(&key) {
            g.map
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        }
        while g.map.len() >= self.capacity && !g.map.contains_key(&key) {
            let Some((k, at)) = g.order.pop_front() else {
                break;
            };
            if g.map.get(&k).is_some_and(|(_, a)| *a == at) {
                g.map.remove(&k);
            }
        }
        g.order.push_back((key.clone(), now));
        g.map.insert(key, (value, now));
        // Keep the order queue from growing without bound under re-inserts.
        if g.order.len() > self.capacity * 2 {
            let Inner { map, order } = &mut *g;
            order.retain(|(k, at)| map.get(k).is_some_and(|(_, a)| a == at));
        }
    }

    /// Drops every entry (`None`) or those of one device; returns how many were dropped.
    pub fn invalidate(&self, device: Option<&str>) -> usize {
        let mut g = self.lock();
        let before = g.map.len();
        match device {
            None => {
                g.map.clear();
                g.order.clear();
            }
            Some(d) => g.map.retain(|k, _| k.device != d),
        }
        before - g.map.len()
    }

    /// Entries held (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an identity could not be resolved.
#[derive(Debug, Clone)]
pub enum IdentityFailure {
    /// Retrying the same message gives the same answer: dead-letter it.
    Permanent { reason: String, message: String },
    /// The server is unavailable or refused us: retry the batch later.
    Transient(FhirError),
}

fn permanent(reason: &str, message: impl Into<String>) -> IdentityFailure {
    IdentityFailure::Permanent {
        reason: reason.to_owned(),
        message: message.into(),
    }
}

/// A client answer that is not a success, as a failure: 400/422 are permanent for the
/// message, the rest transient.
fn status_failure(e: FhirError) -> IdentityFailure {
    match &e {
        FhirError::Status { status, .. } if matches!(status, 400 | 422) => {
            IdentityFailure::Permanent {
                reason: format!("http_{status}"),
                message: e.to_string(),
            }
        }
        _ => IdentityFailure::Transient(e),
    }
}

/// What a resolution did.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub identity: ResolvedIdentity,
    /// Patient/Device resources written (Create mode).
    pub written: usize,
    pub cached: bool,
}

/// Resolves identities for one sink.
#[derive(Debug)]
pub struct IdentityResolver {
    pub mode: IdentityMode,
    pub device_system: Option<String>,
    /// Create mode: system of the Patient identifier (none: as upstream).
    pub patient_system: Option<String>,
    pub verify_patient: bool,
    pub conflict_retries: u32,
    pub cache: Arc<IdentityCache>,
}

fn non_blank(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.trim().is_empty())
}

/// True when `resource.identifier` has `value` (and `system`, when given).
fn has_identifier(resource: &Value, system: Option<&str>, value: &str) -> bool {
    resource["identifier"].as_array().is_some_and(|ids| {
        ids.iter().any(|i| {
            i["value"].as_str() == Some(value)
                && system.is_none_or(|s| i["system"].as_str() == Some(s))
        })
    })
}

/// Searches `type?identifier=token`, following `next` links, and keeps exact matches.
pub async fn search_by_identifier(
    client: &FhirClient,
    ctx: Ctx<'_>,
    resource_type: &str,
    system: Option<&str>,
    value: &str,
) -> Result<Vec<Value>, FhirError> {
    let token = match system {
        Some(s) => format!("{s}|{value}"),
        None => value.to_owned(),
    };
    let mut path = client.search_path(resource_type, &[("identifier", &token)]);
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let r = client
            .send(ctx, "search", Method::GET, &path, None, None)
            .await?;
        if !r.ok() {
            return Err(r.error("GET", &path));
        }
        let bundle = r.json()?;
        out.extend(matches_in(&bundle, resource_type, system, value));
        let next = bundle["link"].as_array().and_then(|links| {
            links
                .iter()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_owned)
        });
        match next {
            Some(n) if !n.is_empty() => path = n,
            _ => break,
        }
    }
    Ok(out)
}

/// The resources of a searchset Bundle of `resource_type` with exactly this identifier.
pub fn matches_in(
    bundle: &Value,
    resource_type: &str,
    system: Option<&str>,
    value: &str,
) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| &e["resource"])
                .filter(|r| r["resourceType"] == resource_type && has_identifier(r, system, value))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

impl IdentityResolver {
    /// Resolves `key`, from the cache when possible.
    pub async fn resolve(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        key: &IdentityKey,
    ) -> Result<Resolved, IdentityFailure> {
        if let Some(identity) = self.cache.get(key, Instant::now()) {
            events::fhir_identity_cache(ctx.metrics, ctx.sink, true);
            return Ok(Resolved {
                identity,
                written: 0,
                cached: true,
            });
        }
        events::fhir_identity_cache(ctx.metrics, ctx.sink, false);
        let r = self.resolve_uncached(client, ctx, key).await?;
        self.cache
            .insert(key.clone(), r.identity.clone(), Instant::now());
        Ok(r)
    }

    async fn resolve_uncached(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        key: &IdentityKey,
    ) -> Result<Resolved, IdentityFailure> {
        if key.device.trim().is_empty() {
            return Err(permanent(
                "identity_not_defined",
                "the message has no device id",
            ));
        }
        if self.mode == IdentityMode::LookupWithEncounter && non_blank(&key.encounter).is_none() {
            return Err(permanent(
                "identity_not_defined",
                "identity mode lookup_with_encounter needs the message's encounter id",
            ));
        }
        let system = self
            .device_system
            .as_deref()
            .filter(|s| !s.trim().is_empty());
        let mut written = 0;
        let devices = search_by_identifier(client, ctx, "Device", system, &key.device)
            .await
            .map_err(status_failure)?;
        let token = match system {
            Some(s) => format!("{s}|{}", key.device),
            None => key.device.clone(),
        };
        if devices.len() > 1 {
            return Err(permanent(
                "multiple_resources_found",
                format!("{} Devices have the identifier {token}", devices.len()),
            ));
        }
        let (device_id, patient_id) = match devices.into_iter().next() {
            Some(device) => {
                let device_id = device["id"].as_str().unwrap_or("").to_owned();
                let reference = device["patient"]["reference"].as_str();
                match reference.and_then(patient_id_from_reference) {
                    Some(p) => {
                        let p = p.to_owned();
                        self.verify(client, ctx, key, &device_id, &p).await?;
                        (device_id, p)
                    }
                    None if self.mode == IdentityMode::Create && reference.is_none() => {
                        let (p, w) = self.ensure_patient(client, ctx, key).await?;
                        written += w;
                        written += self.link_device(client, ctx, device, &p).await?;
                        (device_id, p)
                    }
                    None => {
                        return Err(permanent(
                            "patient_not_found",
                            match reference {
                                None => format!("Device/{device_id} has no patient"),
                                Some(r) => format!(
                                    "Device/{device_id}'s patient reference {r:?} is not a relative Patient/id reference"
                                ),
                            },
                        ))
                    }
                }
            }
            None if self.mode == IdentityMode::Create => {
                let (p, w) = self.ensure_patient(client, ctx, key).await?;
                written += w;
                let id = create_mode_device_id(system, &key.device)
                    .map_err(|e| permanent("identity_not_defined", e.to_string()))?;
                let body = create_mode_device_resource(system, &key.device, &p)
                    .map_err(|e| permanent("identity_not_defined", e.to_string()))?;
                let path = format!("Device/{id}");
                let r = client
                    .send(ctx, "create", Method::PUT, &path, Some(&body), None)
                    .await
                    .map_err(IdentityFailure::Transient)?;
                if !r.ok() {
                    return Err(status_failure(r.error("PUT", &path)));
                }
                written += 1;
                (id, p)
            }
            None => {
                return Err(permanent(
                    "device_not_found",
                    format!("no Device has the identifier {token}"),
                ))
            }
        };
        let encounter_fhir_id = match non_blank(&key.encounter) {
            None => None,
            Some(e) => {
                let found = search_by_identifier(client, ctx, "Encounter", None, e)
                    .await
                    .map_err(status_failure)?;
                match found.len() {
                    0 => {
                        return Err(permanent(
                            "encounter_not_found",
                            format!("no Encounter has the identifier {e}"),
                        ))
                    }
                    1 => found[0]["id"].as_str().map(str::to_owned),
                    n => {
                        return Err(permanent(
                            "multiple_resources_found",
                            format!("{n} Encounters have the identifier {e}"),
                        ))
                    }
                }
            }
        };
        Ok(Resolved {
            identity: ResolvedIdentity {
                patient_fhir_id: patient_id,
                device_fhir_id: device_id,
                encounter_fhir_id,
            },
            written,
            cached: false,
        })
    }

    /// With `verify_patient`, the linked Patient must carry the message's patient id.
    async fn verify(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        key: &IdentityKey,
        device_id: &str,
        patient_id: &str,
    ) -> Result<(), IdentityFailure> {
        let Some(p) = non_blank(&key.patient).filter(|_| self.verify_patient) else {
            return Ok(());
        };
        if p == patient_id || create_mode_patient_id(p).is_ok_and(|h| h == patient_id) {
            return Ok(());
        }
        let path = format!("Patient/{patient_id}");
        let r = client
            .send(ctx, "read", Method::GET, &path, None, None)
            .await
            .map_err(IdentityFailure::Transient)?;
        match r.status {
            404 | 410 => {
                return Err(permanent(
                    "patient_not_found",
                    format!(
                        "Device/{device_id} links to Patient/{patient_id}, which does not exist"
                    ),
                ))
            }
            s if !(200..300).contains(&s) => return Err(status_failure(r.error("GET", &path))),
            _ => {}
        }
        let patient = r.json().map_err(IdentityFailure::Transient)?;
        if has_identifier(&patient, None, p) {
            Ok(())
        } else {
            Err(permanent(
                "patient_device_mismatch",
                format!(
                    "Device/{device_id} is linked to Patient/{patient_id}, which does not carry the message's patient id; \
                     update Device.patient (bed move?) or set verify_patient = false"
                ),
            ))
        }
    }

    /// Create mode: the message's Patient, found by identifier or created. Returns its id and
    /// the number of resources written.
    async fn ensure_patient(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        key: &IdentityKey,
    ) -> Result<(String, usize), IdentityFailure> {
        let Some(p) = non_blank(&key.patient) else {
            return Err(permanent(
                "identity_not_defined",
                "identity mode create needs the message's patient id to create the Patient",
            ));
        };
        let system = self
            .patient_system
            .as_deref()
            .filter(|s| !s.trim().is_empty());
        let found = search_by_identifier(client, ctx, "Patient", system, p)
            .await
            .map_err(status_failure)?;
        match found.len() {
            1 => {
                return Ok((found[0]["id"].as_str().unwrap_or("").to_owned(), 0));
            }
            0 => {}
            n => {
                return Err(permanent(
                    "multiple_resources_found",
                    format!("{n} Patients have the identifier {p}"),
                ))
            }
        }
        let mut body = create_mode_patient_resource(p)
            .map_err(|e| permanent("identity_not_defined", e.to_string()))?;
        if let Some(s) = system {
            body["identifier"] = serde_json::json!([{"system": s.trim(), "value": p.trim()}]);
        }
        let id = body["id"].as_str().unwrap_or("").to_owned();
        let path = format!("Patient/{id}");
        let r = client
            .send(ctx, "create", Method::PUT, &path, Some(&body), None)
            .await
            .map_err(IdentityFailure::Transient)?;
        if !r.ok() {
            return Err(status_failure(r.error("PUT", &path)));
        }
        Ok((id, 1))
    }

    /// Create mode: links an existing Device that has no patient, with `If-Match`; on a
    /// conflict re-reads it, and reports a mismatch if someone linked another patient meanwhile.
    async fn link_device(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        mut device: Value,
        patient_id: &str,
    ) -> Result<usize, IdentityFailure> {
        let id = device["id"].as_str().unwrap_or("").to_owned();
        let path = format!("Device/{id}");
        for _ in 0..=self.conflict_retries {
            match device["patient"]["reference"].as_str() {
                None => {}
                Some(r) if patient_id_from_reference(r) == Some(patient_id) => return Ok(0),
                Some(r) => {
                    return Err(permanent(
                        "patient_device_mismatch",
                        format!(
                            "Device/{id} was linked to {r} meanwhile, not to Patient/{patient_id}"
                        ),
                    ))
                }
            }
            let version = device["meta"]["versionId"].as_str().map(str::to_owned);
            if let Some(o) = device.as_object_mut() {
                o.insert(
                    "patient".into(),
                    serde_json::json!({"reference": format!("Patient/{patient_id}")}),
                );
            }
            let r = client
                .send(
                    ctx,
                    "update",
                    Method::PUT,
                    &path,
                    Some(&device),
                    version.as_deref(),
                )
                .await
                .map_err(IdentityFailure::Transient)?;
            match r.status {
                s if (200..300).contains(&s) => return Ok(1),
                409 | 412 => {
                    events::fhir_conflict(ctx.metrics, ctx.sink);
                    let r = client
                        .send(ctx, "read", Method::GET, &path, None, None)
                        .await
                        .map_err(IdentityFailure::Transient)?;
                    if !r.ok() {
                        return Err(status_failure(r.error("GET", &path)));
                    }
                    device = r.json().map_err(IdentityFailure::Transient)?;
                }
                _ => return Err(status_failure(r.error("PUT", &path))),
            }
        }
        Err(IdentityFailure::Transient(FhirError::Unavailable {
            message: format!("linking Device/{id} kept conflicting with another writer"),
            retry_after: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(d: &str, p: Option<&str>) -> IdentityKey {
        IdentityKey {
            device: d.into(),
            patient: p.map(Into::into),
            encounter: None,
        }
    }

    fn ident(p: &str) -> ResolvedIdentity {
        ResolvedIdentity {
            patient_fhir_id: p.into(),
            device_fhir_id: "d".into(),
            encounter_fhir_id: None,
        }
    }

    #[test]
    fn cache_expires_after_the_ttl() {
        let c = IdentityCache::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        c.insert(key("a", Some("p1")), ident("P1"), t0);
        assert_eq!(
            c.get(&key("a", Some("p1")), t0 + Duration::from_secs(9)),
            Some(ident("P1"))
        );
        assert_eq!(
            c.get(&key("a", Some("p1")), t0 + Duration::from_secs(10)),
            None
        );
        assert!(c.is_empty(), "expired entry removed on access");
    }

    #[test]
    fn a_bed_move_is_a_different_key() {
        let c = IdentityCache::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        c.insert(key("a", Some("p1")), ident("P1"), t0);
        assert_eq!(c.get(&key("a", Some("p2")), t0), None);
        assert_eq!(c.get(&key("a", None), t0), None);
    }

    #[test]
    fn cache_is_bounded_oldest_first_and_prefers_expired() {
        let c = IdentityCache::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for (i, d) in ["a", "b", "c"].iter().enumerate() {
            c.insert(key(d, None), ident(d), t0 + Duration::from_secs(i as u64));
        }
        c.insert(key("d", None), ident("d"), t0 + Duration::from_secs(3));
        assert_eq!(c.len(), 3);
        let now = t0 + Duration::from_secs(3);
        assert_eq!(c.get(&key("a", None), now), None, "oldest evicted");
        assert!(c.get(&key("b", None), now).is_some());
        // At t0+10.5 "b" (t0+1) has expired: inserting evicts it, not the older-inserted live ones.
        c.insert(
            key("e", None),
            ident("e"),
            t0 + Duration::from_millis(11_500),
        );
        let now = t0 + Duration::from_millis(11_600);
        assert!(c.get(&key("c", None), now).is_some());
        assert!(c.get(&key("d", None), now).is_some());
        assert!(c.get(&key("e", None), now).is_some());
        // Re-inserting the same key many times keeps the order queue bounded.
        for i in 0..100 {
            c.insert(key("e", None), ident("e"), now + Duration::from_millis(i));
        }
        assert!(c.lock().order.len() <= 6);
    }

    #[test]
    fn invalidate_all_or_one_device() {
        let c = IdentityCache::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        c.insert(key("a", Some("p1")), ident("P1"), t0);
        c.insert(key("a", Some("p2")), ident("P2"), t0);
        c.insert(key("b", None), ident("P3"), t0);
        assert_eq!(c.invalidate(Some("a")), 2);
        assert_eq!(c.invalidate(Some("a")), 0);
        assert!(c.get(&key("b", None), t0).is_some());
        assert_eq!(c.invalidate(None), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn exact_identifier_matches_only() {
        let bundle = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Device", "id": "1", "identifier": [{"system": "s", "value": "MON-1"}]}},
            {"resource": {"resourceType": "Device", "id": "2", "identifier": [{"system": "t", "value": "mon-1"}]}},
            {"resource": {"resourceType": "OperationOutcome"}},
        ]});
        let ids = |v: Vec<Value>| {
            v.iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(matches_in(&bundle, "Device", Some("s"), "MON-1")),
            ["1"]
        );
        assert_eq!(ids(matches_in(&bundle, "Device", None, "MON-1")), ["1"]);
        assert!(matches_in(&bundle, "Device", Some("t"), "MON-1").is_empty());
        assert!(matches_in(&json!({}), "Device", None, "x").is_empty());
    }
}
