//! A sink worker: reads the log from the sink's cursor, normalizes, groups, transforms,
//! delivers, then acknowledges (or dead-letters) every record of the batch.
//!
//! Retries: a delivery that fails as a whole (the server unreachable, 429, auth...) is retried
//! with exponential back-off and nothing of it is acknowledged. A sink can also report single
//! records as failed (`Delivered::retry`: the server answered a 5xx about their resource) or
//! not attempted (`Delivered::skipped`); the rest of the batch is then acknowledged
//! out of order (`Store::ack_seqs`) and only those records stay pending. A failed record is
//! *held*: left out of the next batch, then retried on its own back-off, so it never holds up
//! the other devices. Its failures count only while other records are being delivered (a
//! round that delivered something, or since its previous attempt); after
//! `dead_letter_after_attempts` counted failures (FHIR sink, 0 = never) it is dead-lettered
//! with the server's text. A round that delivers nothing and has a failure backs off like a
//! failed batch and counts nothing; if it had records other than held ones (the server
//! failing for everything) the sink also reports failing (not ready past `unready_after`),
//! and nothing is ever dead-lettered that way. A round of held records alone leaves the
//! sink's health as it was. Held state is in memory: after a restart the count starts again.

use super::eventhubs_sink;
use super::outbox_sink;
use super::prepare::{prepare, Dead};
use super::{now_ms, Shared};
use crate::buffer::Seq;
use crate::config::{PipelineConfig, SinkConfig, SinkKind};
use crate::mapping::Timestamp;
use crate::pipeline::batch::OfflineIdentity;
use crate::sinks::outbox::Outbox;
use crate::telemetry::events;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The sink-specific part of a worker.
enum Delivery {
    Outbox {
        outbox: Arc<Mutex<Outbox>>,
        identity: OfflineIdentity,
    },
    /// Event Hubs: the forwarder lives across batches.
    EventHubs(Arc<eventhubs_sink::EventHubsDelivery>),
    Fhir {
        sink: Arc<crate::sinks::fhir::FhirSink>,
    },
}

/// Errors that stop a worker (the agent then exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("sink {sink}: {message}")]
    Fatal { sink: String, message: String },
}

/// Starts a worker task once the shared state exists.
pub type StartWorker = Box<
    dyn FnOnce(
            Arc<Shared>,
            PipelineConfig,
            watch::Receiver<bool>,
        ) -> tokio::task::JoinHandle<Result<(), WorkerError>>
        + Send,
>;

/// Opens what a sink needs.
pub fn open_sink(cfg: &SinkConfig) -> Result<StartWorker, String> {
    let name = cfg.name.clone();
    let unready_after = cfg.unready_after;
    let give_up_after = match &cfg.kind {
        SinkKind::Fhir(f) => f.dead_letter_after_attempts,
        _ => 0,
    };
    let delivery = match &cfg.kind {
        SinkKind::Outbox(o) => {
            let outbox = Outbox::open(&o.dir, o.max_file_bytes)
                .map_err(|e| format!("cannot open the outbox at {}: {e}", o.dir.display()))?;
            Delivery::Outbox {
                outbox: Arc::new(Mutex::new(outbox)),
                identity: if o.create_identities {
                    OfflineIdentity::Create
                } else {
                    OfflineIdentity::Passthrough
                },
            }
        }
        SinkKind::EventHubs(e) => {
            Delivery::EventHubs(Arc::new(eventhubs_sink::EventHubsDelivery::open(&name, e)?))
        }
        SinkKind::Fhir(f) => Delivery::Fhir {
            sink: Arc::new(crate::sinks::fhir::FhirSink::new(
                name.clone(),
                (**f).clone(),
            )),
        },
    };
    // A sink with its own group window (Event Hubs `linger_secs`) uses it instead of the
    // pipeline's flush interval.
    let window = match &delivery {
        Delivery::EventHubs(eh) => eh.linger(),
        _ => None,
    };
    Ok(Box::new(move |shared, mut pipeline, stop| {
        if let Some(w) = window {
            pipeline.flush_interval = w;
        }
        if let Delivery::Fhir { sink } = &delivery {
            fhir_startup(sink.clone(), shared.clone(), unready_after, stop.clone());
        }
        tokio::spawn(run_worker(
            name,
            unready_after,
            give_up_after,
            delivery,
            shared,
            pipeline,
            stop,
        ))
    }))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A record left pending after the server failed on it (see the module doc).
#[derive(Debug)]
struct Held {
    /// Failed attempts, and those made while other records were being delivered.
    attempts: u32,
    counted: u32,
    /// `progress_rounds` at its last attempt.
    mark: u64,
    not_before: tokio::time::Instant,
}

#[allow(clippy::too_many_arguments)]
async fn run_worker(
    sink: String,
    unready_after: Duration,
    give_up_after: u32,
    delivery: Delivery,
    shared: Arc<Shared>,
    pipeline: PipelineConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let mut attempt: u32 = 0;
    let mut held: std::collections::HashMap<Seq, Held> = std::collections::HashMap::new();
    // Rounds that delivered something; and whether the last round left records unattempted
    // (then the next one leaves every held record out, so those go first).
    let mut progress_rounds: u64 = 0;
    let mut isolate = false;
    // Messages no template matched since the last log line about them (one a minute at most).
    let mut unmatched_since_log: u64 = 0;
    let mut unmatched_logged: Option<tokio::time::Instant> = None;
    loop {
        shared.beat(&sink);
        let stopping = *stop.borrow();
        let store = shared.store.clone();
        let s = sink.clone();
        let limit = pipeline.max_events_per_flush;
        // Read past the held records so a full batch of others is still possible.
        let want = limit.saturating_add(held.len());
        let records = blocking(move || lock(&store).read_pending(&s, want)).await;
        let mut records = match records {
            Ok(r) => r,
            Err(e) => {
                return Err(WorkerError::Fatal {
                    sink,
                    message: format!("reading the log: {e}"),
                })
            }
        };
        if records.len() < want {
            // Everything pending was read: forget held records that left the log.
            let seen: std::collections::HashSet<Seq> = records.iter().map(|r| r.seq).collect();
            held.retain(|seq, _| seen.contains(seq));
        }
        let now = tokio::time::Instant::now();
        records.retain(|r| {
            held.get(&r.seq)
                .is_none_or(|h| !isolate && h.not_before <= now)
        });
        records.truncate(limit);
        if records.is_empty() {
            isolate = false;
            if stopping {
                return Ok(());
            }
            tokio::select! {
                _ = shared.appended.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // Group window: wait until the oldest record is flush_interval old, or the batch is full.
        if !stopping && records.len() < pipeline.max_events_per_flush {
            let oldest = records
                .iter()
                .map(|r| match &r.body {
                    crate::buffer::RecordBody::Reading(n) => n.receive_time_ms,
                    crate::buffer::RecordBody::Gap(g) => g.time_ms,
                })
                .min()
                .unwrap_or_else(now_ms);
            let due = oldest + pipeline.flush_interval.as_millis() as i64;
            let wait = due - now_ms();
            if wait > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        }
        isolate = false;
        // A batch of held records only says nothing about the server as a whole.
        let fresh = records.iter().any(|r| !held.contains_key(&r.seq));
        let mappings = shared.templates.get();
        let prepared = prepare(&records, &mappings);
        shared.saw_devices(
            prepared
                .measurements
                .iter()
                .map(|m| (m.device_id.as_str(), m.ingestion_time.unix_ticks() / 10_000)),
        );
        events::stage_received(&shared.metrics, "normalize", records.len() as u64);
        events::stage_emitted(
            &shared.metrics,
            "normalize",
            prepared.measurements.len() as u64,
        );
        if prepared.gap_dropped > 0 {
            events::gap_seen(&shared.metrics, &sink, prepared.gap_dropped);
        }
        // A raw Event Hubs sink forwards messages as they are: matching is not its concern.
        let maps = !matches!(&delivery, Delivery::EventHubs(eh) if eh.is_raw());
        if maps && prepared.unmatched > 0 {
            unmatched_since_log += prepared.unmatched as u64;
            let due = unmatched_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            let log = due.then(|| std::mem::take(&mut unmatched_since_log));
            if due {
                unmatched_logged = Some(tokio::time::Instant::now());
            }
            events::messages_unmatched(&shared.metrics, &sink, prepared.unmatched as u64, log);
        }
        let issued = Timestamp::from_unix_millis(now_ms())
            .unwrap_or_else(|| Timestamp::from_unix_millis(0).expect("epoch"));
        let result = match &delivery {
            Delivery::Outbox { outbox, identity } => {
                let outbox = outbox.clone();
                let identity = *identity;
                let mappings = mappings.clone();
                blocking(move || {
                    let mut o = lock(&outbox);
                    outbox_sink::deliver(&mut o, identity, &prepared, &mappings, issued)
                        .map(|d| (d, prepared))
                })
                .await
                .map_err(|e| (e.to_string(), None))
            }
            Delivery::EventHubs(eh) => {
                let mut prepared = prepared;
                match eh.store_epoch(&shared.store).await {
                    Ok(epoch) => eh
                        .deliver(&records, &mut prepared, &epoch, &shared.metrics)
                        .await
                        .map(|d| (d, prepared))
                        .map_err(|e| (e, None)),
                    Err(e) => Err((e, None)),
                }
            }
            Delivery::Fhir { sink } => sink
                .deliver(&prepared, &mappings, issued, &shared.metrics)
                .await
                .map(|d| (d, prepared))
                .map_err(|e| (e.message, e.retry_after)),
        };
        let (mut delivered, prepared) = match result {
            Ok(x) => x,
            Err((error, retry_after)) => {
                attempt += 1;
                events::delivery_retry(&shared.metrics, &sink, &error, attempt);
                shared.sink_failing(&sink, unready_after, true);
                // A server's Retry-After is honoured (up to 10 min) when longer than the back-off.
                let wait = backoff(attempt).max(
                    retry_after
                        .unwrap_or_default()
                        .min(Duration::from_secs(600)),
                );
                // Wait in short steps so the worker keeps beating (the watchdog must not kill an
                // agent that is merely waiting for its server to come back).
                let until = tokio::time::Instant::now() + wait;
                while tokio::time::Instant::now() < until && !*stop.borrow() {
                    shared.beat(&sink);
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_secs(2))) => {}
                        _ = stop.changed() => {}
                    }
                }
                if *stop.borrow() {
                    return Ok(());
                }
                continue;
            }
        };
        let mut dead: Vec<Dead> = prepared.dead.clone();
        dead.extend(std::mem::take(&mut delivered.dead));
        dead.sort_by_key(|d| d.seq);
        dead.dedup_by_key(|d| d.seq);
        // Progress: some reading with measurements was delivered (not dead, not left pending).
        let not_done: std::collections::HashSet<Seq> = dead
            .iter()
            .map(|d| d.seq)
            .chain(delivered.retry.iter().map(|r| r.seq))
            .chain(delivered.skipped.iter().copied())
            .collect();
        let progress = prepared
            .measurement_seq
            .iter()
            .any(|q| !not_done.contains(q));
        // Records the server failed on: hold them, count the attempt, maybe give up.
        let mut pending: std::collections::HashSet<Seq> = std::collections::HashSet::new();
        let now = tokio::time::Instant::now();
        let mut first_failure: Option<(String, String, u32)> = None;
        for r in std::mem::take(&mut delivered.retry) {
            if dead.iter().any(|d| d.seq == r.seq) {
                continue;
            }
            let h = held.entry(r.seq).or_insert(Held {
                attempts: 0,
                counted: 0,
                mark: progress_rounds,
                not_before: now,
            });
            h.attempts += 1;
            if progress || progress_rounds > h.mark {
                h.counted += 1;
            }
            h.mark = progress_rounds + u64::from(progress);
            h.not_before = now + backoff(h.attempts);
            first_failure.get_or_insert((r.reason.clone(), r.error.clone(), h.attempts));
            if give_up_after > 0 && h.counted >= give_up_after {
                held.remove(&r.seq);
                dead.push(Dead {
                    error: format!(
                        "{} (gave up after {give_up_after} failed attempts while other readings were delivered)",
                        r.error
                    ),
                    ..r
                });
            } else {
                pending.insert(r.seq);
            }
        }
        dead.sort_by_key(|d| d.seq);
        for seq in &delivered.skipped {
            if !dead.iter().any(|d| d.seq == *seq) {
                pending.insert(*seq);
            }
        }
        if progress {
            progress_rounds += 1;
        }
        isolate = !delivered.skipped.is_empty();
        // Nothing was delivered and something failed: back off as for a failed batch (nothing
        // counted towards giving up). With records other than held ones in the batch, the
        // server looks down (or fails for everything): report the sink failing.
        let stalled = !progress && !pending.is_empty();
        if stalled {
            attempt += 1;
        }
        if stalled && fresh {
            let error = first_failure
                .as_ref()
                .map_or("a request of the batch failed", |f| f.1.as_str());
            events::delivery_retry(&shared.metrics, &sink, error, attempt);
            shared.sink_failing(&sink, unready_after, true);
        } else {
            if let Some((reason, error, n)) = &first_failure {
                events::delivery_record_retry(&shared.metrics, &sink, reason, error, *n);
            }
            // A round of held records that failed again changes nothing about the sink's health.
            if progress || fresh {
                if attempt > 0 {
                    events::delivery_recovered(&shared.metrics, &sink);
                    attempt = 0;
                    // The server is back: held records need not wait out their back-off.
                    for h in held.values_mut() {
                        h.not_before = now;
                    }
                }
                shared.sink_failing(&sink, unready_after, false);
            }
        }
        events::stage_received(
            &shared.metrics,
            "transform",
            prepared.measurements.len() as u64,
        );
        events::stage_emitted(&shared.metrics, "transform", delivered.observations as u64);
        events::delivered(
            &shared.metrics,
            &sink,
            delivered.written as u64,
            delivered.unchanged as u64,
        );
        for d in &dead {
            events::stage_failed(&shared.metrics, &sink, d.stage, &d.reason, &d.error);
        }
        let store = shared.store.clone();
        let s = sink.clone();
        let last: Seq = prepared.last_seq;
        let done: Vec<Seq> = records
            .iter()
            .map(|r| r.seq)
            .filter(|q| !pending.contains(q) && !dead.iter().any(|d| d.seq == *q))
            .collect();
        for q in dead.iter().map(|d| d.seq).chain(done.iter().copied()) {
            held.remove(&q);
        }
        // A cumulative ack only when no record of the log below `last` is left pending
        // (held records were left out of this batch); else the batch's records one by one.
        let done = (!pending.is_empty() || !held.is_empty()).then_some(done);
        let acked = blocking(move || -> Result<(), crate::buffer::StoreError> {
            let mut st = lock(&store);
            for d in &dead {
                st.dead_letter_record(&s, d.seq, d.stage, &d.reason, &d.error, now_ms())?;
            }
            match &done {
                Some(done) => st.ack_seqs(&s, done),
                None => st.ack(&s, last),
            }
        })
        .await;
        if let Err(e) = acked {
            return Err(WorkerError::Fatal {
                sink,
                message: format!("acknowledging in the log: {e}"),
            });
        }
        shared.delivered_batch();
        if stalled && !wait_backoff(&shared, &sink, &mut stop, backoff(attempt)).await {
            return Ok(());
        }
    }
}

/// Waits `wait` in short steps so the worker keeps beating; false when stopping.
async fn wait_backoff(
    shared: &Shared,
    sink: &str,
    stop: &mut watch::Receiver<bool>,
    wait: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until && !*stop.borrow() {
        shared.beat(sink);
        tokio::select! {
            _ = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_secs(2))) => {}
            _ = stop.changed() => {}
        }
    }
    !*stop.borrow()
}

fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(8)).min(30_000);
    // Jitter without a RNG dependency: spread by the sub-second clock.
    let jitter = (now_ms().rem_euclid(1000) as u64 * base) / 4000;
    Duration::from_millis(base + jitter)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A FHIR sink's startup: registers its identity cache with the admin endpoint, then runs the
/// server check (`GET metadata`, token, one authenticated request) until it passes, marking the
/// sink failing meanwhile (not ready past `unready_after`); never exits the agent.
fn fhir_startup(
    sink: Arc<crate::sinks::fhir::FhirSink>,
    shared: Arc<Shared>,
    unready_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    lock(&shared.identity_caches).push((sink.name().to_owned(), sink.identity_cache()));
    tokio::spawn(async move {
        let mut attempt: u32 = 0;
        loop {
            match sink.ensure_ready(&shared.metrics).await {
                Ok(_) => {
                    if attempt > 0 {
                        shared.sink_failing(sink.name(), unready_after, false);
                    }
                    return;
                }
                Err(_) => {
                    attempt += 1;
                    shared.sink_failing(sink.name(), unready_after, true);
                }
            }
            let wait = backoff(attempt).min(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    });
}
