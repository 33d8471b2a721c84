//! What every device source does with a reading, in one place: store it durably (then, and
//! only then, the caller acknowledges its device), dead-letter what can never decode, report
//! health, and wait between reconnect attempts.
//!
//! Invariants:
//! - [`store`] returns `Ok` only after the group commit of the reading (or after recognising it
//!   as a duplicate of a stored one); it counts the reading and wakes the sinks.
//! - [`dead_letter`] returns `Ok` only after the dead letter is committed: a source may
//!   acknowledge a malformed message after it, since it is kept, with its raw bytes.
//! - Log lines never carry payloads or patient ids (the events in `telemetry::events` log).

use crate::buffer::{Appended, NewDeadLetter, NewRecord, StoreError};
use crate::mapping::Timestamp;
use crate::runtime::{now_ms, worker, Shared};
use crate::telemetry::events;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Capped exponential back-off between reconnect (or reopen) attempts, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt` (0-based: the wait after the first failure), doubled
    /// per attempt up to `max`, then shortened by up to a quarter (`jitter` in `0..1`) so that
    /// many gateways do not reconnect in step after a broker restart.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max)
            .max(self.min);
        let cut = base.mul_f64(jitter.clamp(0.0, 1.0) * 0.25);
        base.saturating_sub(cut).max(Duration::from_millis(1))
    }
}

/// A cheap jitter in `0..1` from the clock's nanoseconds (no RNG needed for this).
pub fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(n % 1000) / 1000.0
}

/// Sleeps for `d`, or less if the stop signal comes; returns `true` when stopping.
pub async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Records a source's health for `/readyz` and the status line.
pub fn set_health(shared: &Shared, name: &str, ok: bool, detail: impl Into<String>) {
    shared
        .sources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_owned(), (ok, detail.into()));
}

/// The gateway receive time as a [`Timestamp`] (the envelope's enqueued time).
pub fn received_at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
        .or_else(|| Timestamp::from_unix_millis(0))
        .expect("invariant: the Unix epoch is a valid timestamp")
}

/// Appends one reading through the group committer; resolves after its durable commit.
/// Counts it (`reading_stored`) and wakes the sink workers.
pub async fn store(shared: &Shared, rec: NewRecord) -> Result<Appended, StoreError> {
    let source = rec.source.clone();
    let appended = shared.committer.append(rec).await?;
    events::reading_stored(
        &shared.metrics,
        &source,
        matches!(appended, Appended::Duplicate(_)),
    );
    shared.appended.notify_waiters();
    Ok(appended)
}

/// [`store`] for several readings at once: all are handed to the group committer in order
/// (so they share one commit) and awaited together. Results are in input order.
pub async fn store_many(
    shared: &Shared,
    recs: Vec<NewRecord>,
) -> Vec<Result<Appended, StoreError>> {
    type StoreFuture<'a> = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Appended, StoreError>> + Send + 'a>,
    >;
    let mut futures: Vec<StoreFuture<'_>> = recs
        .into_iter()
        .map(|r| Box::pin(store(shared, r)) as StoreFuture<'_>)
        .collect();
    let mut out: Vec<Option<Result<Appended, StoreError>>> = futures.iter().map(|_| None).collect();
    // Poll every future in order (the first poll of each hands its reading to the committer,
    // so the log keeps the input order), until all have resolved.
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => *slot = Some(r),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.unwrap_or(Err(StoreError::CommitterStopped)))
        .collect()
}

/// Stores input that can never decode in the dead-letter store (stage `decode`), with its raw
/// bytes; resolves after the commit.
pub async fn dead_letter(
    shared: &Arc<Shared>,
    source: &str,
    reason: &str,
    error: String,
    payload: Vec<u8>,
    envelope: Option<String>,
) -> Result<(), StoreError> {
    let store = shared.store.clone();
    let entry = NewDeadLetter {
        seq: None,
        sink: None,
        source: source.to_owned(),
        stage: "decode".into(),
        reason: reason.to_owned(),
        error,
        time_ms: now_ms(),
        payload,
        envelope,
    };
    let result = tokio::task::spawn_blocking(move || worker::lock(&store).dead_letter(entry))
        .await
        .map_err(|e| StoreError::Config(format!("the dead-letter task failed: {e}")))?;
    result?;
    events::source_dead_lettered(&shared.metrics, source, reason);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_only_shortens() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(4, 0.0), Duration::from_millis(1600));
        assert_eq!(b.delay(5, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(2));
        let j = b.delay(5, 1.0);
        assert!(
            j >= Duration::from_millis(1500) && j < Duration::from_secs(2),
            "{j:?}"
        );
        for a in 0..40 {
            assert!(b.delay(a, jitter()) >= Duration::from_millis(75));
        }
    }
}
