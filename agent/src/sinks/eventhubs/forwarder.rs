//! The Event Hubs forwarder: sends [`OutEvent`]s through the official SDK's `ProducerClient`
//! with the guarantees the agent's store-and-forward log needs.
//!
//! * Events are grouped by partition key (keys in order of first appearance, events in input
//!   order) and sent key by key with `create_batch(partition_key)` / `try_add_event_data` /
//!   `send_batch`, so each device's events stay in order.
//! * Every SDK call that touches the network (open, create-batch, send-batch) runs under a
//!   timeout: a send in flight when the connection drops never returns on its own in SDK 0.16.
//!   On a timeout or a connection-class error the client is dropped (closed in the background)
//!   and rebuilt, and the same events are tried again, up to `attempts_per_batch` times per
//!   batch within one call.
//! * An event is reported delivered only after `send_batch` returned `Ok` for its batch. The
//!   caller deletes a record from its log only when all of its events are delivered or
//!   rejected; everything else is sent again later (at-least-once: a batch whose outcome was
//!   lost may arrive twice, marked by the same `iomt-edge-seq`/`iomt-edge-epoch`).
//! * A batch rejected with an event-level condition (`amqp:link:message-size-exceeded`, decode
//!   or argument errors) is split into single events, so only the offending event is reported
//!   rejected (permanent, for the dead letter) and the others flow. An event too large for an
//!   empty batch is rejected without being sent.
//! * Any other failure ends the call with a [`ForwardError`] carrying what was delivered so
//!   far; [`ForwardError::is_transient`] says whether a plain retry with back-off can help.
//!
//! Known limit (SDK 0.16): `ProducerClient::send_batch` returns `Ok` for the AMQP `Modified`
//! and `Released` outcomes (it only logs a warning), so those cannot be told apart from
//! `Accepted` here. Event Hubs itself answers with `Accepted` or `Rejected`.

use super::config::{Auth, EventHubsConfig, Transport};
use super::payload::{OutEvent, PropertyValue, EPOCH_PROPERTY, SEQ_PROPERTY};
use azure_core::credentials::TokenCredential;
use azure_core_amqp::error::AmqpErrorKind;
use azure_core_amqp::AmqpError;
use azure_messaging_eventhubs::error::ErrorKind as EhErrorKind;
use azure_messaging_eventhubs::models::{AmqpSimpleValue, AmqpTransport, EventData};
use azure_messaging_eventhubs::{
    EventDataBatchOptions, EventHubsError, ProducerClient, RetryOptions,
};
use std::sync::Arc;
use std::time::Duration;

/// What one `send` call achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// `seq` of every event Event Hubs accepted, in send order (one entry per event, so a seq
    /// shared by several events appears several times).
    pub delivered: Vec<u64>,
    /// Events Event Hubs will never accept as they are; dead-letter them.
    pub rejected: Vec<RejectedEvent>,
    /// `send_batch` calls that succeeded.
    pub batches: usize,
    /// Times the client was dropped and rebuilt during the call.
    pub rebuilds: u32,
}

/// An event rejected for good, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedEvent {
    pub seq: u64,
    pub partition_key: String,
    /// The AMQP error condition, e.g. `amqp:link:message-size-exceeded`.
    pub condition: String,
    pub reason: String,
}

/// Why a `send` call stopped (the events not in `partial` were not delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardErrorKind {
    #[error("event hubs send timed out")]
    Timeout,
    #[error("event hubs connection failed")]
    Connection,
    #[error("event hubs is busy")]
    Busy,
    #[error("event hubs refused the credentials")]
    Unauthorized,
    #[error("event hub not found or disabled")]
    NotFound,
    #[error("event hubs rejected the send")]
    Rejected,
    #[error("invalid event hubs configuration")]
    Config,
    #[error("event hubs error")]
    Other,
}

impl ForwardErrorKind {
    /// True when retrying the same events later (with back-off) can succeed without anyone
    /// changing anything: timeouts, connection failures, throttling and unclassified errors.
    /// False when an operator must act (credentials, hub name, configuration, a rejection that
    /// is not about one event); the events must still be kept.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ForwardErrorKind::Timeout
                | ForwardErrorKind::Connection
                | ForwardErrorKind::Busy
                | ForwardErrorKind::Other
        )
    }
}

/// A failed `send`: what went wrong, and what was delivered or rejected before it did.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ForwardError {
    pub kind: ForwardErrorKind,
    pub detail: String,
    /// Condition of the AMQP error behind it, when there was one.
    pub condition: Option<String>,
    pub partial: SendReport,
}

impl ForwardError {
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

/// One failed attempt, before it becomes a [`ForwardError`].
#[derive(Debug, Clone)]
struct Failure {
    kind: ForwardErrorKind,
    /// The condition says the batch's content is at fault (split it, reject the event).
    event_level: bool,
    condition: Option<String>,
    detail: String,
    /// Drop and rebuild the client before the next attempt.
    rebuild: bool,
}

impl Failure {
    fn timeout(what: &str, after: Duration) -> Self {
        Failure {
            kind: ForwardErrorKind::Timeout,
            event_level: false,
            condition: None,
            detail: format!("{what} did not finish within {} ms", after.as_millis()),
            rebuild: true,
        }
    }

    fn config(detail: String) -> Self {
        Failure {
            kind: ForwardErrorKind::Config,
            event_level: false,
            condition: None,
            detail,
            rebuild: false,
        }
    }

    fn into_error(self, partial: SendReport) -> ForwardError {
        ForwardError {
            kind: self.kind,
            detail: self.detail,
            condition: self.condition,
            partial,
        }
    }
}

/// The result of one successful attempt at the head of a partition key's events.
enum Outcome {
    /// The first `n` events were accepted.
    Sent(usize),
    /// The first event does not fit in an empty batch.
    FirstTooLarge,
    /// The first event could not be serialized into the batch.
    FirstUnserializable(String),
    /// The batch of the first `n` events was rejected for an event-level reason.
    EventLevel {
        n: usize,
        condition: String,
        detail: String,
    },
}

/// Forwards events to one event hub. Not `Clone`: one forwarder owns one client.
pub struct EventHubsForwarder {
    config: EventHubsConfig,
    credential: Option<Arc<dyn TokenCredential>>,
    client: Option<ProducerClient>,
    opened_once: bool,
    rebuilds_total: u64,
}

impl std::fmt::Debug for EventHubsForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHubsForwarder")
            .field("config", &self.config)
            .field("connected", &self.client.is_some())
            .field("rebuilds_total", &self.rebuilds_total)
            .finish_non_exhaustive()
    }
}

impl EventHubsForwarder {
    /// Validates the configuration and builds the Entra ID credential if one is configured.
    /// Does no network I/O: the client opens on the first `send` (or [`Self::connect`]).
    pub fn new(config: EventHubsConfig) -> Result<Self, ForwardError> {
        let fail = |d: String| Failure::config(d).into_error(SendReport::default());
        config.validate().map_err(fail)?;
        let credential: Option<Arc<dyn TokenCredential>> = match &config.auth {
            Auth::ConnectionString(_) => None,
            Auth::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => {
                let cred = azure_identity::ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    azure_core::credentials::Secret::new(secret.expose().to_string()),
                    None,
                )
                .map_err(|e| fail(format!("client secret credential: {e}")))?;
                Some(cred)
            }
            Auth::ManagedIdentity { client_id } => {
                let options = azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                };
                let cred = azure_identity::ManagedIdentityCredential::new(Some(options))
                    .map_err(|e| fail(format!("managed identity credential: {e}")))?;
                Some(cred)
            }
            Auth::Credential(cred) => Some(cred.clone()),
        };
        Ok(EventHubsForwarder {
            config,
            credential,
            client: None,
            opened_once: false,
            rebuilds_total: 0,
        })
    }

    pub fn config(&self) -> &EventHubsConfig {
        &self.config
    }

    /// Whether a client is currently open (it is dropped after a timeout or connection error).
    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// Clients rebuilt since this forwarder was created (not counting the first open).
    pub fn rebuilds_total(&self) -> u64 {
        self.rebuilds_total
    }

    /// Sets the store epoch sent as `iomt-edge-epoch` with every later event.
    pub fn set_store_epoch(&mut self, epoch: Option<u64>) {
        self.config.store_epoch = epoch;
    }

    /// Opens the client now if it is not open (useful for readiness checks at start-up).
    pub async fn connect(&mut self) -> Result<(), ForwardError> {
        let mut rebuilds = 0;
        self.ensure_client(&mut rebuilds)
            .await
            .map_err(|f| f.into_error(SendReport::default()))
    }

    /// Closes the client, waiting at most `open_timeout` for the service to answer. An error
    /// only means the close was not confirmed; the client is gone either way.
    pub async fn close(mut self) -> Result<(), ForwardError> {
        let Some(client) = self.client.take() else {
            return Ok(());
        };
        let limit = self.config.open_timeout;
        match tokio::time::timeout(limit, client.close()).await {
            Err(_) => {
                Err(Failure::timeout("closing the client", limit).into_error(SendReport::default()))
            }
            Ok(Err(e)) => Err(classify(&e).into_error(SendReport::default())),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends `events`; see the module documentation for the guarantees.
    pub async fn send(&mut self, events: Vec<OutEvent>) -> Result<SendReport, ForwardError> {
        let mut report = SendReport::default();
        for (key, group) in group_by_key(events) {
            let mut rest: &[OutEvent] = &group;
            while !rest.is_empty() {
                match self.send_head(&key, rest, &mut report).await {
                    Ok(consumed) => rest = rest.get(consumed..).unwrap_or(&[]),
                    Err(f) => return Err(f.into_error(report)),
                }
            }
        }
        Ok(report)
    }

    /// Sends a batch from the head of `events` (one partition key); returns how many events it
    /// settled (delivered or rejected), at least 1.
    async fn send_head(
        &mut self,
        key: &str,
        events: &[OutEvent],
        report: &mut SendReport,
    ) -> Result<usize, Failure> {
        match self.attempt(key, events, report).await? {
            Outcome::Sent(n) => {
                report.batches += 1;
                report
                    .delivered
                    .extend(events.iter().take(n).map(|e| e.seq));
                Ok(n.max(1))
            }
            Outcome::FirstTooLarge => {
                reject_first(
                    report,
                    events,
                    "amqp:link:message-size-exceeded",
                    "the event does not fit in an empty batch (link max-message-size or max_batch_bytes)",
                );
                Ok(1)
            }
            Outcome::FirstUnserializable(detail) => {
                reject_first(report, events, "iomt-edge:serialization", &detail);
                Ok(1)
            }
            Outcome::EventLevel {
                n,
                condition,
                detail,
            } => {
                if n <= 1 {
                    reject_first(report, events, &condition, &detail);
                    return Ok(1);
                }
                // Which event is at fault is unknown: send them one by one.
                for i in 0..n {
                    let single = events.get(i..=i).unwrap_or(&[]);
                    match self.attempt(key, single, report).await? {
                        Outcome::Sent(_) => {
                            report.batches += 1;
                            report.delivered.extend(single.iter().map(|e| e.seq));
                        }
                        Outcome::FirstTooLarge => reject_first(
                            report,
                            single,
                            "amqp:link:message-size-exceeded",
                            "the event does not fit in an empty batch",
                        ),
                        Outcome::FirstUnserializable(d) => {
                            reject_first(report, single, "iomt-edge:serialization", &d)
                        }
                        Outcome::EventLevel {
                            condition, detail, ..
                        } => reject_first(report, single, &condition, &detail),
                    }
                }
                Ok(n)
            }
        }
    }

    /// Up to `attempts_per_batch` tries at a batch from the head of `events`, rebuilding the
    /// client in between when the failure calls for it.
    async fn attempt(
        &mut self,
        key: &str,
        events: &[OutEvent],
        report: &mut SendReport,
    ) -> Result<Outcome, Failure> {
        let mut last: Option<Failure> = None;
        for _ in 0..self.config.attempts_per_batch {
            if let Err(f) = self.ensure_client(&mut report.rebuilds).await {
                let give_up = !f.kind.is_transient();
                last = Some(f);
                if give_up {
                    break;
                }
                continue;
            }
            let Some(client) = self.client.as_ref() else {
                continue;
            };
            match attempt_once(client, &self.config, key, events).await {
                Ok(outcome) => return Ok(outcome),
                Err(f) => {
                    if f.rebuild {
                        self.drop_client();
                    }
                    let give_up = !f.kind.is_transient();
                    last = Some(f);
                    if give_up {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Failure::config("no attempt was made".to_string())))
    }

    async fn ensure_client(&mut self, rebuilds: &mut u32) -> Result<(), Failure> {
        if self.client.is_some() {
            return Ok(());
        }
        let timeout = self.config.open_timeout;
        let client = match tokio::time::timeout(timeout, self.open()).await {
            Err(_) => return Err(Failure::timeout("opening the client", timeout)),
            Ok(Err(f)) => return Err(f),
            Ok(Ok(client)) => client,
        };
        if self.opened_once {
            *rebuilds += 1;
            self.rebuilds_total += 1;
        }
        self.opened_once = true;
        self.client = Some(client);
        Ok(())
    }

    async fn open(&self) -> Result<ProducerClient, Failure> {
        let cfg = &self.config;
        let retry = cfg.sdk_retry;
        let mut builder = ProducerClient::builder()
            .with_transport(match cfg.transport {
                Transport::Tcp => AmqpTransport::Tcp,
                Transport::WebSocket => AmqpTransport::WebSocket,
            })
            .with_retry_options(RetryOptions {
                initial_delay: sdk_duration(retry.initial_delay),
                max_delay: sdk_duration(retry.max_delay),
                max_total_elapsed: sdk_duration(retry.max_total_elapsed),
                max_retries: retry.max_retries,
            });
        if let Some(id) = &cfg.application_id {
            builder = builder.with_application_id(id.clone());
        }
        if let Some(endpoint) = &cfg.custom_endpoint {
            builder = builder.with_custom_endpoint(endpoint.clone());
        }
        let result = match (&cfg.auth, &self.credential) {
            (Auth::ConnectionString(cs), _) => {
                builder
                    .open_with_connection_string(cs.expose(), cfg.hub.as_deref())
                    .await
            }
            (_, Some(credential)) => {
                let namespace = cfg.namespace.as_deref().unwrap_or_default().trim();
                let hub = cfg.hub.as_deref().unwrap_or_default().trim();
                builder.open(namespace, hub, credential.clone()).await
            }
            (_, None) => {
                return Err(Failure::config(
                    "no credential for Entra ID authentication".to_string(),
                ))
            }
        };
        result.map_err(|e| {
            let mut f = classify(&e);
            // Opening failed: there is no client to drop, and a parse error is configuration.
            f.rebuild = false;
            if f.kind == ForwardErrorKind::Other && is_connection_string_problem(&e) {
                f.kind = ForwardErrorKind::Config;
            }
            f.detail = format!("opening the client: {}", f.detail);
            f
        })
    }

    /// Drops the client; closes it in the background (a close on a dead connection can hang,
    /// so it gets two seconds).
    fn drop_client(&mut self) {
        if let Some(client) = self.client.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    // Best effort: the client is being replaced, its close result is moot.
                    tokio::time::timeout(Duration::from_secs(2), client.close())
                        .await
                        .ok();
                });
            }
        }
    }
}

/// One try: create a batch for `key`, fill it from the head of `events`, send it.
async fn attempt_once(
    client: &ProducerClient,
    cfg: &EventHubsConfig,
    key: &str,
    events: &[OutEvent],
) -> Result<Outcome, Failure> {
    let options = EventDataBatchOptions {
        partition_key: (!key.is_empty()).then(|| key.to_string()),
        partition_id: None,
        max_size_in_bytes: cfg.max_batch_bytes,
    };
    let batch =
        match tokio::time::timeout(cfg.send_timeout, client.create_batch(Some(options))).await {
            Err(_) => return Err(Failure::timeout("create_batch", cfg.send_timeout)),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(batch)) => batch,
        };
    let mut n = 0usize;
    for event in events.iter().take(cfg.max_batch_events) {
        match batch.try_add_event_data(event_data(event, cfg.store_epoch), None) {
            Ok(true) => n += 1,
            Ok(false) => break,
            Err(e) if n == 0 => return Ok(Outcome::FirstUnserializable(e.to_string())),
            Err(_) => break,
        }
    }
    if n == 0 {
        return Ok(Outcome::FirstTooLarge);
    }
    match tokio::time::timeout(cfg.send_timeout, client.send_batch(batch, None)).await {
        Err(_) => Err(Failure::timeout("send_batch", cfg.send_timeout)),
        Ok(Ok(())) => Ok(Outcome::Sent(n)),
        Ok(Err(e)) => {
            let f = classify(&e);
            if f.event_level {
                Ok(Outcome::EventLevel {
                    n,
                    condition: f.condition.unwrap_or_default(),
                    detail: f.detail,
                })
            } else {
                Err(f)
            }
        }
    }
}

fn reject_first(report: &mut SendReport, events: &[OutEvent], condition: &str, reason: &str) {
    if let Some(e) = events.first() {
        report.rejected.push(RejectedEvent {
            seq: e.seq,
            partition_key: e.partition_key.clone(),
            condition: condition.to_string(),
            reason: reason.to_string(),
        });
    }
}

/// Groups events by partition key: keys in order of first appearance, events in input order.
fn group_by_key(events: Vec<OutEvent>) -> Vec<(String, Vec<OutEvent>)> {
    let mut groups: Vec<(String, Vec<OutEvent>)> = Vec::new();
    for event in events {
        match groups.iter_mut().find(|(k, _)| *k == event.partition_key) {
            Some((_, list)) => list.push(event),
            None => groups.push((event.partition_key.clone(), vec![event])),
        }
    }
    groups
}

/// The SDK event for an [`OutEvent`], with the sequence (and epoch) properties.
fn event_data(event: &OutEvent, epoch: Option<u64>) -> EventData {
    let mut builder = EventData::builder().with_body(event.body.clone());
    if let Some(ct) = &event.content_type {
        builder = builder.with_content_type(ct.clone());
    }
    for (name, value) in &event.properties {
        builder = builder.add_property(name.clone(), amqp_value(value));
    }
    builder = builder.add_property(SEQ_PROPERTY.to_string(), AmqpSimpleValue::ULong(event.seq));
    if let Some(epoch) = epoch {
        builder = builder.add_property(EPOCH_PROPERTY.to_string(), AmqpSimpleValue::ULong(epoch));
    }
    builder.build()
}

fn amqp_value(value: &PropertyValue) -> AmqpSimpleValue {
    match value {
        PropertyValue::String(s) => AmqpSimpleValue::String(s.clone()),
        PropertyValue::Bool(b) => AmqpSimpleValue::Boolean(*b),
        PropertyValue::Long(v) => AmqpSimpleValue::Long(*v),
        PropertyValue::ULong(v) => AmqpSimpleValue::ULong(*v),
        PropertyValue::Double(v) => AmqpSimpleValue::Double(*v),
    }
}

fn sdk_duration(d: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::milliseconds(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// AMQP conditions that blame the message, not the link or the service.
const EVENT_LEVEL_CONDITIONS: &[&str] = &[
    "amqp:link:message-size-exceeded",
    "amqp:decode-error",
    "amqp:invalid-field",
    "com.microsoft:argument-error",
    "com.microsoft:argument-out-of-range",
];

/// Classifies an AMQP error condition (the string form, e.g. `amqp:unauthorized-access`).
fn classify_condition(condition: &str) -> (ForwardErrorKind, bool, bool) {
    // (kind, event_level, rebuild)
    if EVENT_LEVEL_CONDITIONS.contains(&condition) {
        return (ForwardErrorKind::Rejected, true, false);
    }
    match condition {
        "amqp:unauthorized-access" => (ForwardErrorKind::Unauthorized, false, true),
        "amqp:not-found" | "amqp:resource-deleted" | "com.microsoft:entity-disabled" => {
            (ForwardErrorKind::NotFound, false, true)
        }
        "com.microsoft:server-busy"
        | "amqp:resource-limit-exceeded"
        | "com.microsoft:timeout"
        | "com.microsoft:operation-cancelled"
        | "com.microsoft:entity-updated"
        | "amqp:internal-error" => (ForwardErrorKind::Busy, false, false),
        "amqp:connection:forced"
        | "amqp:connection:framing-error"
        | "amqp:connection:redirect"
        | "amqp:link:detach-forced"
        | "amqp:link:stolen"
        | "amqp:link:redirect"
        | "amqp:link:transfer-limit-exceeded"
        | "amqp:illegal-state"
        | "proton:io" => (ForwardErrorKind::Connection, false, true),
        _ => (ForwardErrorKind::Rejected, false, false),
    }
}

fn from_condition(condition: String, description: Option<&str>) -> Failure {
    let (kind, event_level, rebuild) = classify_condition(&condition);
    let detail = match description {
        Some(d) if !d.is_empty() => format!("{condition}: {d}"),
        _ => condition.clone(),
    };
    Failure {
        kind,
        event_level,
        condition: Some(condition),
        detail,
        rebuild,
    }
}

/// Classifies an SDK error into a [`Failure`].
fn classify(error: &EventHubsError) -> Failure {
    let detail = error.to_string();
    let plain = |kind: ForwardErrorKind, rebuild: bool| Failure {
        kind,
        event_level: false,
        condition: None,
        detail: detail.clone(),
        rebuild,
    };
    match &error.kind {
        EhErrorKind::SendRejected(Some(described)) => from_condition(
            described.condition.to_string(),
            described.description.as_deref(),
        ),
        EhErrorKind::SendRejected(None) => plain(ForwardErrorKind::Rejected, false),
        EhErrorKind::InvalidBatchSize { .. } => plain(ForwardErrorKind::Config, false),
        EhErrorKind::AmqpError(amqp) => {
            classify_amqp(amqp).unwrap_or_else(|| plain(ForwardErrorKind::Other, true))
        }
        EhErrorKind::SendNotAccepted(_) => plain(ForwardErrorKind::Rejected, false),
        EhErrorKind::AzureCore(core) => {
            classify_chain(core).unwrap_or_else(|| plain(ForwardErrorKind::Other, true))
        }
        EhErrorKind::SimpleMessage(msg) if msg.contains("rejected") => {
            plain(ForwardErrorKind::Rejected, false)
        }
        _ => plain(ForwardErrorKind::Other, true),
    }
}

/// Classifies an AMQP error, looking through `AzureCore` wrappers; `None` if nothing known.
fn classify_amqp(error: &AmqpError) -> Option<Failure> {
    let connection = |detail: String| Failure {
        kind: ForwardErrorKind::Connection,
        event_level: false,
        condition: None,
        detail,
        rebuild: true,
    };
    match error.kind() {
        AmqpErrorKind::AmqpDescribedError(d) => Some(from_condition(
            d.condition.to_string(),
            d.description.as_deref(),
        )),
        AmqpErrorKind::SendRejected => Some(Failure {
            kind: ForwardErrorKind::Rejected,
            event_level: false,
            condition: None,
            detail: error.to_string(),
            rebuild: false,
        }),
        AmqpErrorKind::ConnectionClosedByRemote(_)
        | AmqpErrorKind::ConnectionDetachedByRemote(_)
        | AmqpErrorKind::ConnectionDropped(_)
        | AmqpErrorKind::FramingError(_)
        | AmqpErrorKind::IdleTimeoutElapsed(_)
        | AmqpErrorKind::SessionClosedByRemote(_)
        | AmqpErrorKind::SessionDetachedByRemote(_)
        | AmqpErrorKind::LinkClosedByRemote(_)
        | AmqpErrorKind::LinkDetachedByRemote(_)
        | AmqpErrorKind::LinkStateError(_)
        | AmqpErrorKind::DetachError(_)
        | AmqpErrorKind::TransferLimitExceeded(_)
        | AmqpErrorKind::TransportImplementationError(_) => Some(connection(error.to_string())),
        AmqpErrorKind::AzureCore(core) => classify_chain(core),
        _ => None,
    }
}

/// Walks an error's source chain for an AMQP error or an I/O error.
fn classify_chain(error: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    for _ in 0..16 {
        let current = cause?;
        if let Some(amqp) = current.downcast_ref::<AmqpError>() {
            if !matches!(amqp.kind(), AmqpErrorKind::AzureCore(_)) {
                if let Some(f) = classify_amqp(amqp) {
                    return Some(f);
                }
            }
        }
        if let Some(eh) = current.downcast_ref::<EventHubsError>() {
            if !matches!(
                eh.kind,
                EhErrorKind::AzureCore(_) | EhErrorKind::AmqpError(_)
            ) {
                return Some(classify(eh));
            }
        }
        if current.downcast_ref::<std::io::Error>().is_some() {
            return Some(Failure {
                kind: ForwardErrorKind::Connection,
                event_level: false,
                condition: None,
                detail: error.to_string(),
                rebuild: true,
            });
        }
        if let Some(core) = current.downcast_ref::<azure_core::Error>() {
            if matches!(core.kind(), azure_core::error::ErrorKind::Io) {
                return Some(Failure {
                    kind: ForwardErrorKind::Connection,
                    event_level: false,
                    condition: None,
                    detail: error.to_string(),
                    rebuild: true,
                });
            }
            if matches!(core.kind(), azure_core::error::ErrorKind::Credential) {
                return Some(Failure {
                    kind: ForwardErrorKind::Unauthorized,
                    event_level: false,
                    condition: None,
                    detail: error.to_string(),
                    rebuild: true,
                });
            }
        }
        cause = current.source();
    }
    None
}

fn is_connection_string_problem(error: &EventHubsError) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("connection string")
        || text.contains("event hub name")
        || text.contains("entitypath")
        || text.contains("endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, seq: u64) -> OutEvent {
        OutEvent {
            partition_key: key.into(),
            body: vec![],
            content_type: None,
            properties: vec![],
            seq,
        }
    }

    #[test]
    fn grouping_keeps_first_appearance_and_input_order() {
        let groups = group_by_key(vec![
            ev("b", 1),
            ev("a", 2),
            ev("b", 3),
            ev("", 4),
            ev("a", 5),
        ]);
        let shape: Vec<(String, Vec<u64>)> = groups
            .into_iter()
            .map(|(k, v)| (k, v.iter().map(|e| e.seq).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("b".to_string(), vec![1, 3]),
                ("a".to_string(), vec![2, 5]),
                (String::new(), vec![4]),
            ]
        );
    }

    #[test]
    fn conditions_are_classified() {
        let (k, event_level, _) = classify_condition("amqp:link:message-size-exceeded");
        assert_eq!(k, ForwardErrorKind::Rejected);
        assert!(event_level);
        let (k, event_level, _) = classify_condition("amqp:unauthorized-access");
        assert_eq!(k, ForwardErrorKind::Unauthorized);
        assert!(!event_level && !k.is_transient());
        assert!(classify_condition("com.microsoft:server-busy")
            .0
            .is_transient());
        assert!(classify_condition("amqp:connection:forced").2);
        assert!(!classify_condition("amqp:not-allowed").0.is_transient());
        assert!(!classify_condition("amqp:not-found").0.is_transient());
    }

    #[test]
    fn sdk_errors_are_classified() {
        let described = azure_core_amqp::AmqpDescribedError::new(
            "amqp:link:message-size-exceeded".parse().unwrap(),
            Some("too big".into()),
            Default::default(),
        );
        let err = EventHubsError::from(AmqpError::from(AmqpErrorKind::AmqpDescribedError(
            described,
        )));
        let f = classify(&err);
        assert!(f.event_level);
        assert_eq!(
            f.condition.as_deref(),
            Some("amqp:link:message-size-exceeded")
        );
        assert!(f.detail.contains("too big"));

        let dropped = EventHubsError::from(AmqpError::from(AmqpErrorKind::ConnectionDropped(
            "gone".into(),
        )));
        let f = classify(&dropped);
        assert_eq!(f.kind, ForwardErrorKind::Connection);
        assert!(f.rebuild && f.kind.is_transient());

        let io = azure_core::Error::new(
            azure_core::error::ErrorKind::Io,
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        );
        let f = classify(&EventHubsError::from(EhErrorKind::AzureCore(io)));
        assert_eq!(f.kind, ForwardErrorKind::Connection);
    }

    #[test]
    fn event_data_carries_seq_epoch_and_typed_properties() {
        let mut e = ev("k", 42);
        e.body = b"x".to_vec();
        e.content_type = Some("application/json".into());
        e.properties = vec![("IsMeasurementGroup".into(), true.into())];
        let data = event_data(&e, Some(7));
        let props = data.properties().unwrap();
        assert_eq!(props.get(SEQ_PROPERTY), Some(&AmqpSimpleValue::ULong(42)));
        assert_eq!(props.get(EPOCH_PROPERTY), Some(&AmqpSimpleValue::ULong(7)));
        assert_eq!(
            props.get("IsMeasurementGroup"),
            Some(&AmqpSimpleValue::Boolean(true))
        );
        assert_eq!(data.body(), Some(&b"x"[..]));
        assert_eq!(data.content_type(), Some("application/json"));
        let data = event_data(&e, None);
        assert!(!data.properties().unwrap().contains_key(EPOCH_PROPERTY));
    }
}
