//! Per-batch delivery to a FHIR server: group → resolve identities → find each Observation
//! (cache, then `GET Observation?identifier=system|value`) → create with
//! `PUT Observation/{deterministic id}` or merge and `PUT` with `If-Match: W/"{versionId}"`.
//!
//! Invariants:
//! - Nothing is written when the merge changes nothing (a replay is a no-op: no new version).
//! - A versioned write that answers 409 or 412 (or 404/410: the resource went away) is retried
//!   after a fresh read and a fresh merge, at most `conflict_retries` times; then the batch is
//!   handed back as transient.
//! - A create (`PUT` without `If-Match`) that answers 200 instead of 201 (and a version other
//!   than `"1"`) overwrote a version another writer created meanwhile. Upstream only counts this (`FHIRResourceContention`);
//!   here the overwritten version is read from the instance history, the batch's groups are
//!   merged into it and the result is written with `If-Match`, so two writers converge.
//! - Outcomes per record: written or unchanged → acknowledged; 400/413/422 from the server,
//!   identity not found, patient/device mismatch, multiple matches, a transform error →
//!   dead-lettered (stage `deliver`, or `transform`) with the OperationOutcome text, while the
//!   other groups of the batch go on; a 500 (after the request's own retries) or another 5xx
//!   answered to the request of one Observation or identity → its records are reported in
//!   `Delivered::retry` (not acknowledged; the worker retries them on their own and may
//!   dead-letter them, see `runtime::worker`), the rest of the batch is acknowledged;
//!   network errors, 408/429/502/503/504, auth and TLS problems → the whole batch is
//!   transient (nothing acknowledged; the worker retries it, and what was already written
//!   comes back as no-ops).
//! - Once one request of a batch fails transiently, no new request of that batch is started;
//!   the records of the Observations not attempted are reported in `Delivered::skipped`.
//! - Several Observations of a batch are written at once (`concurrency`), never two writes of
//!   the same Observation. The reads of a batch (cache, else search) all happen before its
//!   writes.
//! - `batch_bundle = true`: the searches of the cache misses, then the writes, go as FHIR
//!   `batch` Bundles (per-entry outcomes: conflicts and transient entries fall back to single
//!   requests, 400/422 entries are dead-lettered); a server that refuses batch Bundles
//!   turns the option off for this sink, with a warning.

use super::client::{outcome_text, Ctx, FhirClient, FhirError};
use super::config::{version_from_etag, FhirSinkConfig};
use super::identity::{
    matches_in, search_by_identifier, IdentityCache, IdentityFailure, IdentityKey, IdentityResolver,
};
use crate::buffer::Seq;
use crate::mapping::fhir_model::CodeValueFhirTemplate;
use crate::mapping::Timestamp;
use crate::pipeline::group::{
    effective_period_interval, group_measurements, GroupError, ObservationGroup,
};
use crate::pipeline::identity::ResolvedIdentity;
use crate::pipeline::transform::{
    create_observation, merge_observation, observation_id, observation_identifier, MergeOutcome,
    TransformOptions, SERVICE_SYSTEM,
};
use crate::runtime::outbox_sink::Delivered;
use crate::runtime::prepare::{Dead, Prepared};
use crate::runtime::templates::Mappings;
use crate::telemetry::{events, Metrics};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

/// A batch could not be delivered now; nothing of it is acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliverError {
    pub message: String,
    /// The server's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

impl From<FhirError> for DeliverError {
    fn from(e: FhirError) -> Self {
        DeliverError {
            message: e.to_string(),
            retry_after: e.retry_after(),
        }
    }
}

/// A stored Observation as last seen: the resource and its version id.
#[derive(Debug, Clone)]
struct Known {
    resource: Value,
    version: Option<String>,
}

/// Observations by identifier value, bounded, with an absolute TTL (upstream: 5,000 for 1 h).
#[derive(Debug)]
struct ObservationCache {
    ttl: Duration,
    capacity: usize,
    map: Mutex<HashMap<String, (Known, Instant)>>,
}

impl ObservationCache {
    fn get(&self, key: &str) -> Option<Known> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(key) {
            Some((k, at)) if at.elapsed() < self.ttl => Some(k.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: &str, known: Known) {
        if self.capacity == 0 {
            return;
        }
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= self.capacity && !m.contains_key(key) {
            let ttl = self.ttl;
            m.retain(|_, (_, at)| at.elapsed() < ttl);
            if m.len() >= self.capacity {
                if let Some(oldest) = m
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
                {
                    m.remove(&oldest);
                }
            }
        }
        m.insert(key.to_owned(), (known, Instant::now()));
    }

    fn remove(&self, key: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// One Observation to write: every group of the batch with this identifier.
struct Work<'a> {
    identifier: String,
    id: String,
    template: &'a CodeValueFhirTemplate,
    identity: ResolvedIdentity,
    groups: Vec<&'a ObservationGroup>,
}

/// What happened to one Observation.
enum Outcome {
    Created,
    Updated,
    Unchanged,
    /// Permanently refused (dead-letter the groups).
    Dead {
        reason: String,
        message: String,
    },
    Transient(FhirError),
    /// Not attempted: an earlier request of the batch failed transiently.
    Skipped,
}

/// The result of one Observation, plus the groups whose transform failed.
struct ItemResult {
    outcome: Outcome,
    transform_errors: Vec<(usize, String)>,
}

/// The FHIR sink of one `[[sinks]]` entry.
pub struct FhirSink {
    name: String,
    cfg: FhirSinkConfig,
    client: tokio::sync::Mutex<Option<Arc<FhirClient>>>,
    identity: IdentityResolver,
    observations: ObservationCache,
    opts: TransformOptions,
    bundles: AtomicBool,
}

impl std::fmt::Debug for FhirSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirSink")
            .field("name", &self.name)
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

impl FhirSink {
    /// A sink; no I/O until [`FhirSink::ensure_ready`] or the first delivery.
    pub fn new(name: impl Into<String>, cfg: FhirSinkConfig) -> Self {
        let cache = Arc::new(IdentityCache::new(
            cfg.identity_cache_ttl,
            cfg.identity_cache_entries,
        ));
        FhirSink {
            name: name.into(),
            identity: IdentityResolver {
                mode: cfg.identity,
                device_system: cfg.device_identifier_system.clone(),
                patient_system: cfg.patient_identifier_system.clone(),
                verify_patient: cfg.verify_patient,
                conflict_retries: cfg.conflict_retries,
                cache,
            },
            observations: ObservationCache {
                ttl: cfg.observation_cache_ttl,
                capacity: cfg.observation_cache_entries,
                map: Mutex::new(HashMap::new()),
            },
            opts: TransformOptions {
                short_identifiers: cfg.short_identifiers,
            },
            bundles: AtomicBool::new(cfg.batch_bundle),
            client: tokio::sync::Mutex::new(None),
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The identity cache (for `POST /identity/invalidate`).
    pub fn identity_cache(&self) -> Arc<IdentityCache> {
        self.identity.cache.clone()
    }

    /// Builds the client and runs the startup check (`GET metadata`, then one authenticated
    /// request) once; afterwards returns the checked client.
    pub async fn ensure_ready(&self, metrics: &Metrics) -> Result<Arc<FhirClient>, FhirError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let ctx = Ctx {
            metrics,
            sink: &self.name,
        };
        let client = FhirClient::new(&self.cfg);
        let checked = match client {
            Ok(c) => c.check(ctx).await.map(|about| (c, about)),
            Err(e) => Err(e),
        };
        match checked {
            Ok((c, about)) => {
                events::fhir_server_check(metrics, &self.name, &self.cfg.url, Ok(&about));
                let c = Arc::new(c);
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                events::fhir_server_check(metrics, &self.name, &self.cfg.url, Err(&e.to_string()));
                Err(e)
            }
        }
    }

    async fn forget_client(&self) {
        *self.client.lock().await = None;
    }

    /// Delivers one prepared batch. `Err` is transient: nothing of the batch may be acknowledged.
    pub async fn deliver(
        &self,
        prepared: &Prepared,
        mappings: &Mappings,
        issued: Timestamp,
        metrics: &Metrics,
    ) -> Result<Delivered, DeliverError> {
        let client = self.ensure_ready(metrics).await?;
        let ctx = Ctx {
            metrics,
            sink: &self.name,
        };
        let result = self
            .deliver_with(&client, ctx, prepared, mappings, issued)
            .await;
        if let Err(FhirError::Setup { .. }) = &result {
            // TLS or setup trouble: rebuild the client (and re-read its files) next time.
            self.forget_client().await;
        }
        result.map_err(DeliverError::from)
    }

    async fn deliver_with(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        prepared: &Prepared,
        mappings: &Mappings,
        issued: Timestamp,
    ) -> Result<Delivered, FhirError> {
        let mut d = Delivered::default();
        let seqs_of = |indices: &[usize]| -> Vec<Seq> {
            let mut s: Vec<Seq> = indices
                .iter()
                .filter_map(|&i| prepared.measurement_seq.get(i).copied())
                .collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let mut dead = |indices: &[usize], stage: &'static str, reason: &str, error: &str| {
            for seq in seqs_of(indices) {
                d.dead.push(Dead {
                    seq,
                    stage,
                    reason: reason.to_owned(),
                    error: error.to_owned(),
                });
            }
        };
        let Some(fhir) = &mappings.fhir else {
            let all: Vec<usize> = (0..prepared.measurements.len()).collect();
            dead(
                &all,
                "transform",
                "no_fhir_mapping",
                "no FHIR mapping is configured",
            );
            return Ok(d);
        };
        let period_of = |t: &str| fhir.get(t).map(effective_period_interval);
        let (groups, group_errors) = group_measurements(&prepared.measurements, &period_of);
        for e in &group_errors {
            let reason = match e {
                GroupError::NoTemplate { .. } => "no_fhir_template",
                GroupError::CorrelationIdNotDefined { .. } => "correlation_id_missing",
                GroupError::TimeOutOfRange { .. } => "time_out_of_range",
            };
            dead(e.source_indices(), "transform", reason, &e.to_string());
        }

        // Identities: one resolution per distinct message key.
        let mut by_key: BTreeMap<IdentityKey, Vec<usize>> = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            if fhir.get(&g.type_name).is_none() {
                continue;
            }
            by_key
                .entry(IdentityKey {
                    device: g.device_id.clone(),
                    patient: g.patient_id.clone(),
                    encounter: g.encounter_id.clone(),
                })
                .or_default()
                .push(i);
        }
        let abort = AtomicBool::new(false);
        let keys: Vec<&IdentityKey> = by_key.keys().collect();
        let resolutions = bounded(
            keys.iter()
                .map(|k| {
                    let abort = &abort;
                    async move {
                        if abort.load(Ordering::Relaxed) {
                            return None;
                        }
                        let r = self.identity.resolve(client, ctx, k).await;
                        if matches!(r, Err(IdentityFailure::Transient(_))) {
                            abort.store(true, Ordering::Relaxed);
                        }
                        Some(r)
                    }
                })
                .collect(),
            self.cfg.concurrency,
        )
        .await;
        // A transient failure about the server as a whole (not "skipped", not a 5xx about
        // one resource) fails the whole batch.
        if let Some(e) = resolutions.iter().find_map(|r| match r {
            Some(Err(IdentityFailure::Transient(e))) if !e.is_server_error_for_request() => {
                Some(e.clone())
            }
            _ => None,
        }) {
            return Err(e);
        }
        let mut retry: Vec<(Vec<usize>, String, String)> = Vec::new();
        let mut skipped: Vec<usize> = Vec::new();
        let mut identities: HashMap<usize, ResolvedIdentity> = HashMap::new();
        for (key, r) in keys.iter().zip(resolutions) {
            let members = &by_key[*key];
            match r {
                None => {
                    for &gi in members {
                        skipped.extend(&groups[gi].source_indices);
                    }
                }
                Some(Err(IdentityFailure::Transient(e))) => {
                    for &gi in members {
                        retry.push((
                            groups[gi].source_indices.clone(),
                            reason_of(&e),
                            e.to_string(),
                        ));
                    }
                }
                Some(Err(IdentityFailure::Permanent { reason, message })) => {
                    for &gi in members {
                        dead(&groups[gi].source_indices, "deliver", &reason, &message);
                    }
                }
                Some(Ok(res)) => {
                    d.written += res.written;
                    for &gi in members {
                        identities.insert(gi, res.identity.clone());
                    }
                }
            }
        }

        // Observations: every group of the batch with the same identifier is one write.
        let mut works: Vec<Work<'_>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (gi, g) in groups.iter().enumerate() {
            let (Some(template), Some(identity)) = (fhir.get(&g.type_name), identities.get(&gi))
            else {
                continue;
            };
            let identifier = observation_identifier(identity, g, &self.opts);
            match index.get(&identifier) {
                Some(&w) => works[w].groups.push(g),
                None => {
                    index.insert(identifier.clone(), works.len());
                    works.push(Work {
                        id: observation_id(&identifier),
                        identifier,
                        template,
                        identity: identity.clone(),
                        groups: vec![g],
                    });
                }
            }
        }
        d.observations = works.len();

        let results: Vec<ItemResult> = if self.bundles.load(Ordering::Relaxed) && !works.is_empty()
        {
            self.write_bundled(client, ctx, &works, issued, &abort)
                .await?
        } else {
            self.write_all_single(client, ctx, &works, issued, &abort)
                .await
        };

        let mut transient = None;
        for (w, r) in works.iter().zip(results) {
            for (gi, message) in &r.transform_errors {
                if let Some(g) = w.groups.get(*gi) {
                    dead(&g.source_indices, "transform", "transform_error", message);
                }
            }
            match r.outcome {
                Outcome::Created => {
                    d.written += 1;
                    events::fhir_saved(ctx.metrics, ctx.sink, "created");
                }
                Outcome::Updated => {
                    d.written += 1;
                    events::fhir_saved(ctx.metrics, ctx.sink, "updated");
                }
                Outcome::Unchanged => {
                    d.unchanged += 1;
                    events::fhir_saved(ctx.metrics, ctx.sink, "unchanged");
                }
                Outcome::Dead { reason, message } => {
                    for g in &w.groups {
                        dead(&g.source_indices, "deliver", &reason, &message);
                    }
                }
                Outcome::Transient(e) if e.is_server_error_for_request() => {
                    let (reason, error) = (reason_of(&e), e.to_string());
                    for g in &w.groups {
                        retry.push((g.source_indices.clone(), reason.clone(), error.clone()));
                    }
                }
                Outcome::Transient(e) => {
                    transient.get_or_insert(e);
                }
                Outcome::Skipped => {
                    for g in &w.groups {
                        skipped.extend(&g.source_indices);
                    }
                }
            }
        }
        if let Some(e) = transient {
            return Err(e);
        }
        // Per record: dead beats retry beats skipped (a record is done only when every
        // Observation it feeds is).
        let dead_seqs: std::collections::HashSet<Seq> = d.dead.iter().map(|x| x.seq).collect();
        let mut retried: std::collections::HashSet<Seq> = std::collections::HashSet::new();
        for (indices, reason, error) in &retry {
            for seq in seqs_of(indices) {
                if !dead_seqs.contains(&seq) && retried.insert(seq) {
                    d.retry.push(Dead {
                        seq,
                        stage: "deliver",
                        reason: reason.clone(),
                        error: error.clone(),
                    });
                }
            }
        }
        d.skipped = seqs_of(&skipped)
            .into_iter()
            .filter(|s| !dead_seqs.contains(s) && !retried.contains(s))
            .collect();
        Ok(d)
    }

    /// Single requests: first every Observation of the batch is looked up (cache, else
    /// search), then every one is written. Each Observation is still read before it is
    /// written; doing the reads first means they all see the store as it was before the
    /// batch, which is much cheaper on servers whose search cost grows with the store.
    async fn write_all_single(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        works: &[Work<'_>],
        issued: Timestamp,
        abort: &AtomicBool,
    ) -> Vec<ItemResult> {
        let found = bounded(
            works
                .iter()
                .map(|w| async move {
                    if abort.load(Ordering::Relaxed) {
                        return Err(Outcome::Skipped);
                    }
                    if let Some(k) = self.observations.get(&w.identifier) {
                        return Ok(Some(k));
                    }
                    let r = self.find(client, ctx, &w.identifier).await;
                    if matches!(r, Err(Outcome::Transient(_))) {
                        abort.store(true, Ordering::Relaxed);
                    }
                    r
                })
                .collect(),
            self.cfg.concurrency,
        )
        .await;
        bounded(
            works
                .iter()
                .zip(found)
                .map(|(w, f)| async move {
                    match f {
                        Ok(prior) => {
                            self.write_single(client, ctx, w, Some(prior), issued, abort)
                                .await
                        }
                        Err(outcome) => ItemResult {
                            outcome,
                            transform_errors: Vec::new(),
                        },
                    }
                })
                .collect(),
            self.cfg.concurrency,
        )
        .await
    }

    /// The stored Observation with this identifier (exact match), or `None`.
    async fn find(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        identifier: &str,
    ) -> Result<Option<Known>, Outcome> {
        let found =
            search_by_identifier(client, ctx, "Observation", Some(SERVICE_SYSTEM), identifier)
                .await
                .map_err(outcome_of_error)?;
        match found.len() {
            0 => Ok(None),
            1 => {
                let resource = found.into_iter().next().unwrap_or(Value::Null);
                let version = resource["meta"]["versionId"].as_str().map(str::to_owned);
                Ok(Some(Known { resource, version }))
            }
            n => Err(Outcome::Dead {
                reason: "multiple_resources_found".into(),
                message: format!(
                    "{n} Observations have the identifier {SERVICE_SYSTEM}|{identifier}"
                ),
            }),
        }
    }

    /// Writes one Observation with single requests. `prior`: `Some(x)` when the caller already
    /// knows the stored state (`x = None`: absent), `None` to look in the cache, then search.
    async fn write_single(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        w: &Work<'_>,
        prior: Option<Option<Known>>,
        issued: Timestamp,
        abort: &AtomicBool,
    ) -> ItemResult {
        if abort.load(Ordering::Relaxed) {
            return ItemResult {
                outcome: Outcome::Skipped,
                transform_errors: Vec::new(),
            };
        }
        let r = self.write_single_inner(client, ctx, w, prior, issued).await;
        if matches!(r.outcome, Outcome::Transient(_)) {
            abort.store(true, Ordering::Relaxed);
        }
        r
    }

    async fn write_single_inner(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        w: &Work<'_>,
        prior: Option<Option<Known>>,
        issued: Timestamp,
    ) -> ItemResult {
        let mut errors = Vec::new();
        let done = |outcome: Outcome, errors: Vec<(usize, String)>| ItemResult {
            outcome,
            transform_errors: errors,
        };
        let mut current = match prior {
            Some(p) => p,
            None => match self.observations.get(&w.identifier) {
                Some(k) => Some(k),
                None => match self.find(client, ctx, &w.identifier).await {
                    Ok(k) => k,
                    Err(o) => return done(o, errors),
                },
            },
        };
        for round in 0..=self.cfg.conflict_retries {
            let (body, errs) = apply(w, current.as_ref().map(|k| &k.resource), issued, &self.opts);
            errors = errs;
            let Some(body) = body else {
                if let Some(k) = current {
                    self.observations.put(&w.identifier, k);
                }
                return done(Outcome::Unchanged, errors);
            };
            let (path, if_match) = match &current {
                Some(k) => (
                    format!("Observation/{}", k.resource["id"].as_str().unwrap_or(&w.id)),
                    k.version.clone(),
                ),
                None => (format!("Observation/{}", w.id), None),
            };
            let op = if current.is_some() {
                "update"
            } else {
                "create"
            };
            let r = match client
                .send(
                    ctx,
                    op,
                    Method::PUT,
                    &path,
                    Some(&body),
                    if_match.as_deref(),
                )
                .await
            {
                Ok(r) => r,
                Err(e) => return done(outcome_of_error(e), errors),
            };
            match r.status {
                200 | 201 => {
                    let stored = stored_of(&r.body, body, r.version.clone());
                    if current.is_none() && r.status == 200 && !first_version(&stored) {
                        // Created concurrently by another writer and overwritten: repair.
                        events::fhir_contention(ctx.metrics, ctx.sink);
                        match self
                            .repair_overwrite(client, ctx, w, &path, stored, issued)
                            .await
                        {
                            Ok(k) => {
                                self.observations.put(&w.identifier, k);
                                return done(Outcome::Created, errors);
                            }
                            Err(Some(o)) => return done(o, errors),
                            Err(None) => {
                                // The repair lost a race itself: merge into a fresh read.
                                self.observations.remove(&w.identifier);
                                current = match self.find(client, ctx, &w.identifier).await {
                                    Ok(k) => k,
                                    Err(o) => return done(o, errors),
                                };
                                continue;
                            }
                        }
                    }
                    self.observations.put(&w.identifier, stored);
                    return done(
                        if current.is_some() {
                            Outcome::Updated
                        } else {
                            Outcome::Created
                        },
                        errors,
                    );
                }
                s if (200..300).contains(&s) => {
                    let stored = stored_of(&r.body, body, r.version.clone());
                    self.observations.put(&w.identifier, stored);
                    return done(
                        if current.is_some() {
                            Outcome::Updated
                        } else {
                            Outcome::Created
                        },
                        errors,
                    );
                }
                409 | 412 => {}
                404 | 410 if if_match.is_some() => {}
                _ => return done(outcome_of_error(r.error("PUT", &path)), errors),
            }
            // Conflict: someone else wrote (or the resource went away). Re-read, re-merge.
            events::fhir_conflict(ctx.metrics, ctx.sink);
            self.observations.remove(&w.identifier);
            tracing::debug!(
                sink = ctx.sink,
                round,
                status = r.status,
                "Observation write conflict; re-reading."
            );
            current = match self.find(client, ctx, &w.identifier).await {
                Ok(k) => k,
                Err(o) => return done(o, errors),
            };
        }
        done(
            Outcome::Transient(FhirError::Unavailable {
                message: format!(
                    "writing an Observation kept conflicting with another writer ({} retries)",
                    self.cfg.conflict_retries
                ),
                retry_after: None,
            }),
            errors,
        )
    }

    /// After a create overwrote another writer's version: merge this batch's groups into that
    /// version and write the result over ours with `If-Match`. `Err(None)`: a conflict, start
    /// over from a fresh read.
    async fn repair_overwrite(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        w: &Work<'_>,
        path: &str,
        ours: Known,
        issued: Timestamp,
    ) -> Result<Known, Option<Outcome>> {
        let history_path = format!("{path}/_history");
        let r = client
            .send(ctx, "history", Method::GET, &history_path, None, None)
            .await
            .map_err(|e| Some(outcome_of_error(e)))?;
        if !r.ok() {
            tracing::warn!(sink = ctx.sink, status = r.status, "Cannot read the history of an overwritten Observation; keeping this writer's version.");
            return Ok(ours);
        }
        let history = r.json().map_err(|e| Some(outcome_of_error(e)))?;
        let entries: Vec<&Value> = history["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|x| &x["resource"])
                    .filter(|r| r.is_object())
                    .collect()
            })
            .unwrap_or_default();
        // Newest first: ours, then the one we replaced.
        let ours_version = ours.version.clone();
        let previous = entries
            .iter()
            .position(|r| r["meta"]["versionId"].as_str().map(str::to_owned) == ours_version);
        let Some(prev) = previous.and_then(|i| entries.get(i + 1)) else {
            return Ok(ours);
        };
        let (merged, _) = apply(w, Some(prev), issued, &self.opts);
        let body = merged.unwrap_or_else(|| (*prev).clone());
        let r = client
            .send(
                ctx,
                "update",
                Method::PUT,
                path,
                Some(&body),
                ours_version.as_deref(),
            )
            .await
            .map_err(|e| Some(outcome_of_error(e)))?;
        match r.status {
            s if (200..300).contains(&s) => Ok(stored_of(&r.body, body, r.version.clone())),
            409 | 412 => Err(None),
            _ => Err(Some(outcome_of_error(r.error("PUT", path)))),
        }
    }

    /// Bundle mode: searches of the cache misses in batch Bundles, then the writes in batch
    /// Bundles; per-entry outcomes, with single requests as the fallback.
    async fn write_bundled(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        works: &[Work<'_>],
        issued: Timestamp,
        abort: &AtomicBool,
    ) -> Result<Vec<ItemResult>, FhirError> {
        let n = works.len();
        // What we know of each Observation: Some(state) when known, None to ask singly.
        let mut prior: Vec<Option<Option<Known>>> = vec![None; n];
        let mut misses = Vec::new();
        for (i, w) in works.iter().enumerate() {
            match self.observations.get(&w.identifier) {
                Some(k) => prior[i] = Some(Some(k)),
                None => misses.push(i),
            }
        }
        for chunk in misses.chunks(self.cfg.bundle_max_entries.max(1)) {
            let entries: Vec<Value> = chunk
                .iter()
                .map(|&i| {
                    let token = format!("{SERVICE_SYSTEM}|{}", works[i].identifier);
                    json!({"request": {"method": "GET", "url": client.search_path("Observation", &[("identifier", &token)])}})
                })
                .collect();
            let Some(answers) = self
                .send_batch(client, ctx, "bundle_search", entries)
                .await?
            else {
                return Ok(self
                    .all_single(client, ctx, works, prior, issued, abort)
                    .await);
            };
            for (&i, a) in chunk.iter().zip(answers) {
                if status_of(&a) == Some(200) {
                    let found = matches_in(
                        &a["resource"],
                        "Observation",
                        Some(SERVICE_SYSTEM),
                        &works[i].identifier,
                    );
                    // Several matches, or paged results: let the single path report/handle it.
                    if found.len() <= 1
                        && a["resource"]["link"]
                            .as_array()
                            .is_none_or(|l| l.iter().all(|x| x["relation"] != "next"))
                    {
                        prior[i] = Some(found.into_iter().next().map(|resource| {
                            let version = resource["meta"]["versionId"].as_str().map(str::to_owned);
                            Known { resource, version }
                        }));
                    }
                }
            }
        }

        let mut results: Vec<Option<ItemResult>> = (0..n).map(|_| None).collect();
        let mut single: Vec<usize> = Vec::new();
        let mut writes: Vec<(usize, String, Value, bool)> = Vec::new();
        for (i, w) in works.iter().enumerate() {
            let Some(known) = prior[i].clone() else {
                single.push(i);
                continue;
            };
            let (body, errs) = apply(w, known.as_ref().map(|k| &k.resource), issued, &self.opts);
            match body {
                None => {
                    if let Some(k) = known {
                        self.observations.put(&w.identifier, k);
                    }
                    results[i] = Some(ItemResult {
                        outcome: Outcome::Unchanged,
                        transform_errors: errs,
                    });
                }
                Some(body) => {
                    let (url, if_match) = match &known {
                        Some(k) => (
                            format!("Observation/{}", k.resource["id"].as_str().unwrap_or(&w.id)),
                            k.version.clone(),
                        ),
                        None => (format!("Observation/{}", w.id), None),
                    };
                    let mut request = json!({"method": "PUT", "url": url});
                    if let Some(v) = if_match {
                        request["ifMatch"] = Value::String(format!("W/\"{v}\""));
                    }
                    results[i] = Some(ItemResult {
                        outcome: Outcome::Skipped,
                        transform_errors: errs,
                    });
                    writes.push((
                        i,
                        url,
                        json!({"resource": body, "request": request}),
                        known.is_some(),
                    ));
                }
            }
        }
        let mut repairs: Vec<(usize, String, Known)> = Vec::new();
        for chunk in writes.chunks(self.cfg.bundle_max_entries.max(1)) {
            let entries: Vec<Value> = chunk.iter().map(|(_, _, e, _)| e.clone()).collect();
            let Some(answers) = self
                .send_batch(client, ctx, "bundle_write", entries)
                .await?
            else {
                single.extend(chunk.iter().map(|(i, ..)| *i));
                continue;
            };
            for ((i, url, entry, existed), a) in chunk.iter().zip(answers) {
                let w = &works[*i];
                let status = status_of(&a).unwrap_or(0);
                let outcome = match status {
                    s if (200..300).contains(&s) => {
                        let version = a["response"]["etag"]
                            .as_str()
                            .and_then(version_from_etag)
                            .or_else(|| {
                                a["resource"]["meta"]["versionId"]
                                    .as_str()
                                    .map(str::to_owned)
                            });
                        let resource = if a["resource"]["resourceType"] == "Observation" {
                            a["resource"].clone()
                        } else {
                            entry["resource"].clone()
                        };
                        let known = Known { resource, version };
                        if !*existed && s == 200 && !first_version(&known) {
                            // Overwrote a version another writer created meanwhile: repair.
                            events::fhir_contention(ctx.metrics, ctx.sink);
                            repairs.push((*i, url.clone(), known));
                            continue;
                        }
                        self.observations.put(&w.identifier, known);
                        if *existed {
                            Outcome::Updated
                        } else {
                            Outcome::Created
                        }
                    }
                    400 | 413 | 422 => Outcome::Dead {
                        reason: format!("http_{status}"),
                        message: format!(
                            "PUT {url} (batch entry) answered {status}: {}",
                            outcome_text(&a["response"]["outcome"])
                        ),
                    },
                    _ => {
                        // Conflicts and transient entry failures: single requests.
                        self.observations.remove(&w.identifier);
                        single.push(*i);
                        continue;
                    }
                };
                if let Some(r) = results[*i].as_mut() {
                    r.outcome = outcome;
                }
            }
        }
        for (i, path, ours) in repairs {
            let w = &works[i];
            let outcome = match self
                .repair_overwrite(client, ctx, w, &path, ours, issued)
                .await
            {
                Ok(k) => {
                    self.observations.put(&w.identifier, k);
                    Outcome::Created
                }
                Err(Some(o)) => o,
                Err(None) => {
                    single.push(i);
                    continue;
                }
            };
            if let Some(r) = results[i].as_mut() {
                r.outcome = outcome;
            }
        }
        if !single.is_empty() {
            single.sort_unstable();
            single.dedup();
            let redo = bounded(
                single
                    .iter()
                    .map(|&i| self.write_single(client, ctx, &works[i], None, issued, abort))
                    .collect(),
                self.cfg.concurrency,
            )
            .await;
            for (&i, mut r) in single.iter().zip(redo) {
                if let Some(prev) = results[i].take() {
                    if r.transform_errors.is_empty() {
                        r.transform_errors = prev.transform_errors;
                    }
                }
                results[i] = Some(r);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or(ItemResult {
                    outcome: Outcome::Skipped,
                    transform_errors: Vec::new(),
                })
            })
            .collect())
    }

    async fn all_single(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        works: &[Work<'_>],
        prior: Vec<Option<Option<Known>>>,
        issued: Timestamp,
        abort: &AtomicBool,
    ) -> Vec<ItemResult> {
        bounded(
            works
                .iter()
                .zip(prior)
                .map(|(w, p)| self.write_single(client, ctx, w, p, issued, abort))
                .collect(),
            self.cfg.concurrency,
        )
        .await
    }

    /// Posts a `batch` Bundle; `Ok(None)` when the server does not take batch Bundles (the
    /// option is then turned off for this sink).
    async fn send_batch(
        &self,
        client: &FhirClient,
        ctx: Ctx<'_>,
        op: &'static str,
        entries: Vec<Value>,
    ) -> Result<Option<Vec<Value>>, FhirError> {
        let n = entries.len();
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
        let r = client
            .send(ctx, op, Method::POST, "", Some(&bundle), None)
            .await?;
        let answer = if r.ok() { r.json().ok() } else { None };
        let answers = answer.as_ref().and_then(|a| {
            (a["type"] == "batch-response")
                .then(|| a["entry"].as_array().cloned())
                .flatten()
        });
        match answers {
            Some(a) if a.len() == n => Ok(Some(a)),
            _ => {
                if self.bundles.swap(false, Ordering::Relaxed) {
                    events::fhir_bundles_refused(
                        ctx.metrics,
                        ctx.sink,
                        &format!(
                            "POST {} with a batch Bundle answered {}: {}",
                            client.base(),
                            r.status,
                            super::client::outcome_text_of(&r.body)
                        ),
                    );
                }
                Ok(None)
            }
        }
    }
}

/// The dead-letter reason code of a request error (`http_500`, …).
fn reason_of(e: &FhirError) -> String {
    match e {
        FhirError::Status { status, .. } => format!("http_{status}"),
        other => other.kind().to_owned(),
    }
}

/// True when the server says this is the first version (`"1"`): integer-versioning servers
/// then certainly created it, and the overwrite check can be skipped. Other version schemes
/// (opaque ids) always get the check.
fn first_version(k: &Known) -> bool {
    k.version.as_deref() == Some("1")
}

/// The status code of a batch-response entry (`"201 Created"` → 201).
fn status_of(entry: &Value) -> Option<u16> {
    entry["response"]["status"]
        .as_str()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What the server stored: its representation when it sent one, else what we sent with the
/// version from the ETag.
fn stored_of(body: &[u8], sent: Value, version: Option<String>) -> Known {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v["resourceType"] == "Observation" => {
            let version = v["meta"]["versionId"]
                .as_str()
                .map(str::to_owned)
                .or(version);
            Known {
                resource: v,
                version,
            }
        }
        _ => Known {
            resource: sent,
            version,
        },
    }
}

/// A request error as an Observation outcome: 400/413/422 are permanent, the rest transient.
fn outcome_of_error(e: FhirError) -> Outcome {
    match &e {
        FhirError::Status { status, .. } if matches!(status, 400 | 413 | 422) => Outcome::Dead {
            reason: format!("http_{status}"),
            message: e.to_string(),
        },
        _ => Outcome::Transient(e),
    }
}

/// Applies every group of `w` to `prior` (create from the first when absent). Returns the new
/// body when it differs from `prior`, and the transform errors by group index.
fn apply(
    w: &Work<'_>,
    prior: Option<&Value>,
    issued: Timestamp,
    opts: &TransformOptions,
) -> (Option<Value>, Vec<(usize, String)>) {
    let mut current: Option<Value> = prior.cloned();
    let mut changed = false;
    let mut errors = Vec::new();
    for (i, g) in w.groups.iter().enumerate() {
        match &current {
            None => match create_observation(w.template, g, &w.identity, issued, opts) {
                Ok(v) => {
                    current = Some(v);
                    changed = true;
                }
                Err(e) => errors.push((i, e.to_string())),
            },
            Some(c) => match merge_observation(w.template, g, c) {
                Ok(MergeOutcome::Changed(v)) => {
                    current = Some(v);
                    changed = true;
                }
                Ok(MergeOutcome::Unchanged) => {}
                Err(e) => errors.push((i, e.to_string())),
            },
        }
    }
    (if changed { current } else { None }, errors)
}

/// Runs `futs` with at most `limit` polled at once; results in input order.
async fn bounded<F: Future>(futs: Vec<F>, limit: usize) -> Vec<F::Output> {
    let limit = limit.max(1);
    let n = futs.len();
    let mut pending: VecDeque<(usize, F)> = futs.into_iter().enumerate().collect();
    let mut active: Vec<(usize, Pin<Box<F>>)> = Vec::new();
    let mut out: Vec<Option<F::Output>> = (0..n).map(|_| None).collect();
    std::future::poll_fn(|cx| loop {
        while active.len() < limit {
            match pending.pop_front() {
                Some((i, f)) => active.push((i, Box::pin(f))),
                None => break,
            }
        }
        let mut progressed = false;
        let mut k = 0;
        while k < active.len() {
            if let Poll::Ready(v) = active[k].1.as_mut().poll(cx) {
                let (i, _) = active.swap_remove(k);
                out[i] = Some(v);
                progressed = true;
            } else {
                k += 1;
            }
        }
        if active.is_empty() && pending.is_empty() {
            return Poll::Ready(());
        }
        if !progressed {
            return Poll::Pending;
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_keeps_order_and_limit() {
        use std::sync::atomic::AtomicUsize;
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let futs: Vec<_> = (0..10u64)
            .map(|i| {
                let running = &running;
                let peak = &peak;
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10 - i)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                }
            })
            .collect();
        let out = bounded(futs, 3).await;
        assert_eq!(out, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert!(bounded(Vec::<std::future::Ready<u8>>::new(), 2)
            .await
            .is_empty());
    }

    #[test]
    fn batch_entry_status() {
        assert_eq!(
            status_of(&json!({"response": {"status": "201 Created"}})),
            Some(201)
        );
        assert_eq!(
            status_of(&json!({"response": {"status": "412"}})),
            Some(412)
        );
        assert_eq!(status_of(&json!({})), None);
    }

    #[test]
    fn only_client_errors_of_the_request_are_permanent() {
        let st = |status| FhirError::Status {
            method: "PUT",
            path: "Observation/x".into(),
            status,
            outcome: "x".into(),
        };
        assert!(
            matches!(outcome_of_error(st(400)), Outcome::Dead { reason, .. } if reason == "http_400")
        );
        assert!(matches!(outcome_of_error(st(422)), Outcome::Dead { .. }));
        assert!(matches!(outcome_of_error(st(404)), Outcome::Transient(_)));
        assert!(matches!(outcome_of_error(st(405)), Outcome::Transient(_)));
        assert!(matches!(
            outcome_of_error(FhirError::Auth {
                message: "x".into()
            }),
            Outcome::Transient(_)
        ));
    }
}
