//! `iomt-agent run`: the running agent.
//!
//! Wiring (vector-style topology, one task per component):
//!
//! ```text
//! sources ──append──► GroupCommitter ──► Store (SQLite log) ◄──read/ack── sink workers ──► outbox / FHIR / Event Hubs
//!    ▲  (resolves after fsync; only then          │                           │
//!    │   is the device acknowledged)              └── dead letters ◄──────────┘
//!    └── shutdown (watch) ── admin (/livez /readyz /metrics) ── progress line ── template reload
//! ```
//!
//! Shutdown has two steps (mini-redis): the stop signal tells sources to stop and workers to
//! finish the batch in hand without waiting for the group window; then `run` waits for every
//! task, bounded so that the whole shutdown takes less than 5 s.

pub mod admin;
pub mod certs;
pub mod eventhubs_sink;
pub mod malloc;
pub mod notify;
pub mod ops;
pub mod outbox_sink;
pub mod prepare;
pub mod simulator;
pub mod templates;
pub mod worker;

use crate::buffer::{
    FullPolicy, GroupCommitConfig, GroupCommitter, SharedStore, Store, StoreConfig,
};
use crate::config::{Config, WhenFull};
use crate::telemetry::{events, Metrics};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Milliseconds since the Unix epoch (the runtime's only clock reading for times).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A configuration or template problem (exit code 78: systemd does not restart-loop).
    #[error("{0}")]
    Config(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// State shared by the tasks.
pub struct Shared {
    pub store: SharedStore,
    pub committer: GroupCommitter,
    pub templates: templates::TemplateSet,
    pub metrics: Metrics,
    /// Signalled after readings were stored, to wake the sink workers.
    pub appended: Notify,
    /// Sinks failing since (instant) and their readiness threshold.
    failing: Mutex<HashMap<String, (Option<Instant>, Duration)>>,
    pub quarantined: Option<String>,
    /// Sources' health: name → (ok, detail).
    pub sources: Mutex<HashMap<String, (bool, String)>>,
    batches: std::sync::atomic::AtomicU64,
    /// Last sign of life of each sink worker (the watchdog pings only while all are recent).
    heartbeats: Mutex<HashMap<String, Instant>>,
    /// Receive time (ms) of each device's last reading, for the per-device age metric
    /// (kept only when `agent.metrics_device_labels` is on).
    last_reading: Mutex<HashMap<String, i64>>,
    /// FHIR sinks' identity caches, by sink name (admin `POST /identity/invalidate`).
    pub identity_caches: Mutex<Vec<(String, Arc<crate::sinks::fhir::IdentityCache>)>>,
    /// The configured TLS certificate files and their latest reports (`certs.rs`).
    pub certificates: certs::CertWatch,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Records whether a sink's last delivery failed.
    pub fn sink_failing(&self, sink: &str, threshold: Duration, failing: bool) {
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let e = f.entry(sink.to_owned()).or_insert((None, threshold));
        e.1 = threshold;
        if failing {
            e.0.get_or_insert_with(Instant::now);
        } else {
            e.0 = None;
        }
    }

    /// Readiness: not ready while the store is quarantined or a sink has been failing longer
    /// than its threshold. Returns the reasons.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(q) = &self.quarantined {
            out.push(format!("the durable log was quarantined at start ({q})"));
        }
        let f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        for (sink, (since, threshold)) in f.iter() {
            if let Some(s) = since {
                if s.elapsed() >= *threshold {
                    out.push(format!(
                        "sink {sink} has been failing for {}s",
                        s.elapsed().as_secs()
                    ));
                }
            }
        }
        out
    }

    /// Notes the receive time of devices' readings (no-op unless device labels are on).
    pub fn saw_devices<'a>(&self, readings: impl Iterator<Item = (&'a str, i64)>) {
        if !self.metrics.device_labels {
            return;
        }
        let mut m = self.last_reading.lock().unwrap_or_else(|e| e.into_inner());
        for (device, t) in readings {
            let e = m.entry(device.to_owned()).or_insert(t);
            *e = (*e).max(t);
        }
    }

    /// A worker is alive (called at every loop turn and during waits).
    pub fn beat(&self, worker: &str) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker.to_owned(), Instant::now());
    }

    /// The oldest heartbeat's age (zero with no workers).
    pub fn stalest_beat(&self) -> Duration {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Instant::elapsed)
            .max()
            .unwrap_or_default()
    }

    fn delivered_batch(&self) {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Command-line overrides of the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub state_dir: Option<PathBuf>,
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Print a progress line every this often (None: never).
    pub progress_every: Option<Duration>,
}

fn store_config(cfg: &Config) -> StoreConfig {
    StoreConfig {
        max_bytes: cfg.buffer.max_bytes,
        max_age_ms: Some(cfg.buffer.max_age.as_millis().min(i64::MAX as u128) as i64),
        full_policy: match cfg.buffer.when_full {
            WhenFull::Block => FullPolicy::Block,
            WhenFull::DropOldest => FullPolicy::DropOldest,
        },
        // A small page cache: the log is read and written at its two ends, and the gateway's
        // memory budget is tight (benchmark: RSS with 200 devices, docs/BENCHMARKS.md).
        cache_size_kib: 2048,
        ..StoreConfig::default()
    }
}

/// Runs the agent until `shutdown` resolves (SIGTERM/SIGINT in the binary).
pub async fn run(
    mut cfg: Config,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    if let Some(d) = opts.state_dir {
        for s in &mut cfg.sinks {
            if let crate::config::SinkKind::Outbox(o) = &mut s.kind {
                if o.dir == cfg.state_dir.join("outbox") {
                    o.dir = d.join("outbox");
                }
            }
        }
        cfg.state_dir = d;
    }
    if let Some(a) = opts.admin_addr {
        cfg.admin_addr = a;
    }
    let templates = templates::TemplateSet::new(cfg.mapping.clone()).map_err(|f| {
        RunError::Config(format!(
            "mapping templates failed to load:\n  {}",
            f.lines().join("\n  ")
        ))
    })?;
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
        RunError::Other(format!(
            "cannot create the state directory {}: {e}",
            cfg.state_dir.display()
        ))
    })?;
    let log_path = cfg.state_dir.join("log.sqlite");
    let opened = Store::open(&log_path, &store_config(&cfg), now_ms()).map_err(|e| {
        RunError::Other(format!(
            "cannot open the durable log {}: {e}",
            log_path.display()
        ))
    })?;
    let metrics = Metrics::new(cfg.metrics_device_labels);
    let quarantined = opened
        .quarantined
        .as_ref()
        .map(|q| format!("{}: {}", q.path.display(), q.reason));
    if let Some(q) = &opened.quarantined {
        events::store_quarantined(&metrics, &q.path.display().to_string(), &q.reason);
    }
    let mut store = opened.store;
    let names: Vec<&str> = cfg.sinks.iter().map(|s| s.name.as_str()).collect();
    store
        .register_sinks(&names)
        .map_err(|e| RunError::Other(format!("registering sinks in the log: {e}")))?;
    let store: SharedStore = Arc::new(Mutex::new(store));
    let committer = GroupCommitter::spawn(
        store.clone(),
        GroupCommitConfig {
            max_batch_records: cfg.buffer.commit_max_records,
            max_delay: cfg.buffer.commit_interval,
            ..GroupCommitConfig::default()
        },
    )
    .map_err(|e| RunError::Other(format!("starting the log writer: {e}")))?;
    metrics.set("iomt_up", &[], 1.0);
    let certificates = certs::CertWatch::new(certs::tls_files(&cfg));
    let shared = Arc::new(Shared {
        store,
        committer,
        templates,
        metrics,
        appended: Notify::new(),
        failing: Mutex::new(HashMap::new()),
        quarantined,
        sources: Mutex::new(HashMap::new()),
        batches: Default::default(),
        heartbeats: Mutex::new(HashMap::new()),
        last_reading: Mutex::new(HashMap::new()),
        identity_caches: Mutex::new(Vec::new()),
        certificates,
    });
    shared
        .certificates
        .refresh(&shared.metrics, now_ms() / 1000);

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = admin::serve(cfg.admin_addr, shared.clone(), stop_rx.clone())
        .await
        .map_err(|e| {
            RunError::Other(format!(
                "cannot listen on the admin address {}: {e} (set agent.admin_addr or --admin-addr)",
                cfg.admin_addr
            ))
        })?;
    tracing::info!(addr = %admin.local_addr, "Admin endpoint listening (/livez, /readyz, /metrics).");

    let mut workers = Vec::new();
    for s in &cfg.sinks {
        if let crate::config::SinkKind::EventHubs(e) = &s.kind {
            // A missing secret or an unusable setting is a configuration error (exit 78).
            eventhubs_sink::settings(e, &|k| std::env::var(k).ok(), creds_dir().as_deref())
                .map_err(|m| RunError::Config(format!("sink {}: {m}", s.name)))?;
        }
    }
    for s in &cfg.sinks {
        let start = worker::open_sink(s).map_err(RunError::Other)?;
        workers.push(start(shared.clone(), cfg.pipeline.clone(), stop_rx.clone()));
    }
    let mut sources = Vec::new();
    for s in &cfg.sources {
        match &s.kind {
            crate::config::SourceKind::Simulator(sim) => {
                sources.push(tokio::spawn(simulator::run(
                    s.name.clone(),
                    sim.clone(),
                    shared.clone(),
                    stop_rx.clone(),
                )));
            }
            #[cfg(feature = "ble")]
            crate::config::SourceKind::Ble(ble) => {
                sources.push(tokio::spawn(crate::sources::ble::source::run(
                    s.name.clone(),
                    ble.clone(),
                    shared.clone(),
                    stop_rx.clone(),
                )));
            }
            crate::config::SourceKind::Mqtt(c) => {
                let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
                let prepared =
                    crate::sources::mqtt::prepare(c, &|k| std::env::var(k).ok(), creds.as_deref())
                        .map_err(|e| RunError::Config(format!("source {}: {e}", s.name)))?;
                sources.push(tokio::spawn(crate::sources::mqtt::run(
                    s.name.clone(),
                    c.clone(),
                    prepared,
                    shared.clone(),
                    stop_rx.clone(),
                )));
            }
            // Refused by config validation when the feature is off.
            #[cfg(not(feature = "ble"))]
            crate::config::SourceKind::Ble(_) => {}
            crate::config::SourceKind::Serial(c) => {
                sources.push(tokio::spawn(crate::sources::serial::run(
                    s.name.clone(),
                    c.clone(),
                    shared.clone(),
                    stop_rx.clone(),
                )));
            }
            crate::config::SourceKind::Mllp(c) => {
                let listener = crate::sources::mllp::bind(c)
                    .await
                    .map_err(|e| RunError::Other(format!("source {}: {e}", s.name)))?;
                sources.push(tokio::spawn(crate::sources::mllp::run(
                    s.name.clone(),
                    c.clone(),
                    shared.clone(),
                    stop_rx.clone(),
                    listener,
                )));
            }
        }
    }
    let housekeeping = tokio::spawn(housekeeping(
        shared.clone(),
        opts.progress_every,
        stop_rx.clone(),
    ));
    // systemd: the log is open, templates loaded, sources started.
    if let Err(e) = notify::ready() {
        tracing::warn!(error = %e, "Cannot notify systemd of readiness.");
    }
    notify::status("running").ok();
    tracing::info!(
        ward = cfg.ward.as_deref().unwrap_or("-"),
        sources = cfg.sources.len(),
        sinks = cfg.sinks.len(),
        state_dir = %cfg.state_dir.display(),
        "iomt-agent running."
    );

    tokio::pin!(shutdown);
    let reload = reload_signal();
    tokio::pin!(reload);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = &mut reload => {
                if r.is_none() {
                    continue;
                }
                notify::reloading().ok();
                reload_templates(&shared);
                shared.certificates.refresh(&shared.metrics, now_ms() / 1000);
                notify::ready().ok();
                reload.set(reload_signal());
            }
        }
    }
    notify::stopping().ok();
    tracing::info!("Shutting down: stopping sources, flushing groups, committing cursors.");
    let started = Instant::now();
    // Nobody listening means every task is already gone.
    stop_tx.send(true).ok();
    let deadline = Duration::from_millis(4500);
    for h in sources {
        tokio::time::timeout(deadline.saturating_sub(started.elapsed()), h)
            .await
            .ok();
    }
    let mut failure = None;
    for h in workers {
        match tokio::time::timeout(deadline.saturating_sub(started.elapsed()), h).await {
            Ok(Ok(Err(e))) => failure = Some(RunError::Other(e.to_string())),
            Ok(Err(e)) => failure = Some(RunError::Other(format!("a sink worker panicked: {e}"))),
            _ => {}
        }
    }
    housekeeping.abort();
    admin.task.abort();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Stopped."
    );
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn reload_templates(shared: &Shared) {
    match shared.templates.reload() {
        Ok(()) => events::templates_reloaded(&shared.metrics, true, 0),
        Err(f) => {
            for l in f.lines() {
                tracing::error!(problem = %l, "Template error.");
            }
            events::templates_reloaded(&shared.metrics, false, f.len());
        }
    }
}

#[cfg(unix)]
async fn reload_signal() -> Option<()> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut s) => s.recv().await,
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn reload_signal() -> Option<()> {
    std::future::pending().await
}

/// Periodic work: metrics from the store, purge of delivered records, template file watch,
/// the progress line.
async fn housekeeping(
    shared: Arc<Shared>,
    progress_every: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    let mut last_progress = Instant::now();
    let mut last_received = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        if n.is_multiple_of(2) && shared.templates.changed() {
            reload_templates(&shared);
        }
        let store = shared.store.clone();
        let purge = n.is_multiple_of(5);
        let stats = tokio::task::spawn_blocking(move || {
            let mut s = worker::lock(&store);
            if purge {
                if let Err(e) = s.purge_delivered(now_ms()) {
                    tracing::warn!(error = %e, "Purging delivered records failed; will retry.");
                }
            }
            s.stats()
        })
        .await;
        let Ok(Ok(stats)) = stats else { continue };
        // The watchdog is fed by the pipeline's own progress: the log answered just now, and
        // every sink worker turned its loop recently. A stuck worker or a wedged store stops
        // the pings and systemd restarts the agent.
        if let Some(interval) = notify::watchdog_interval() {
            if shared.stalest_beat() < interval / 2 {
                notify::watchdog().ok();
            } else {
                tracing::error!(
                    stalest_ms = shared.stalest_beat().as_millis() as u64,
                    "A sink worker is stuck; withholding the systemd watchdog ping."
                );
            }
        }
        let m = &shared.metrics;
        let now = now_ms();
        if n.is_multiple_of(certs::REREAD_EVERY.as_secs()) {
            let sh = shared.clone();
            tokio::task::spawn_blocking(move || {
                sh.certificates.refresh(&sh.metrics, now_ms() / 1000)
            })
            .await
            .ok();
        } else {
            shared.certificates.update(m, now / 1000);
        }
        m.set("iomt_buffer_records", &[], stats.records as f64);
        m.set("iomt_buffer_bytes", &[], stats.bytes as f64);
        m.set("iomt_dlq_records", &[], stats.dlq_records as f64);
        m.clear_gauge("iomt_buffer_dropped_records_total");
        for s in &stats.sinks {
            m.set(
                "iomt_buffer_pending_records",
                &[("sink", &s.name)],
                s.pending_records as f64,
            );
            let age = s
                .oldest_pending_receive_ms
                .map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0);
            m.set(
                "iomt_buffer_oldest_pending_age_seconds",
                &[("sink", &s.name)],
                age,
            );
        }
        if m.device_labels {
            let mut last = shared
                .last_reading
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Devices silent for a day drop out of the metric (a bed emptied, a device retired).
            last.retain(|_, t| now - *t < 86_400_000);
            m.clear_gauge("iomt_device_last_reading_age_seconds");
            for (device, t) in last.iter() {
                m.set(
                    "iomt_device_last_reading_age_seconds",
                    &[("device", device)],
                    ((now - t).max(0) as f64) / 1000.0,
                );
            }
        }
        if let Some(every) = progress_every {
            if last_progress.elapsed() >= every {
                let received = m.counter("iomt_source_received_total", &[]);
                let rate =
                    (received - last_received) as f64 / last_progress.elapsed().as_secs_f64();
                last_received = received;
                last_progress = Instant::now();
                let delivered = m.counter("iomt_sink_delivered_total", &[]);
                let pending: u64 = stats
                    .sinks
                    .iter()
                    .map(|s| s.pending_records)
                    .max()
                    .unwrap_or(0);
                let ready = shared.not_ready_reasons();
                eprintln!(
                    "iomt-agent: {received} readings stored ({rate:.1}/s), {delivered} resources delivered, {pending} pending, {} dead letters{}",
                    stats.dlq_records,
                    if ready.is_empty() { String::new() } else { format!(", NOT READY: {}", ready.join("; ")) }
                );
            }
        }
    }
}

/// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), when set.
fn creds_dir() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
}
