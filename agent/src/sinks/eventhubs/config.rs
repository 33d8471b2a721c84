//! Configuration of the Event Hubs sink: where the namespace is, how to authenticate, the
//! transport, the timeouts and the batching policy; plus the pure helpers the send loop needs
//! (when to flush a pending batch, how long to back off).
//!
//! Invariants: nothing here does I/O or reads the clock (ages and random draws are parameters);
//! secrets never appear in `Debug` output.

use azure_core::credentials::TokenCredential;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A secret string (connection string, client secret). `Debug` prints `Secret(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is handed to the SDK.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the forwarder authenticates (every send path is authorised through CBS put-token).
#[derive(Clone)]
pub enum Auth {
    /// `Endpoint=sb://<ns>/;SharedAccessKeyName=..;SharedAccessKey=..[;EntityPath=<hub>]`. The SDK
    /// signs and refreshes SAS tokens itself; a pre-made `SharedAccessSignature=` cannot be
    /// refreshed and stops working when it expires.
    ConnectionString(Secret),
    /// Entra ID service principal with a client secret (scope `https://eventhubs.azure.net/.default`).
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: Secret,
    },
    /// Managed identity: system-assigned when `client_id` is `None`, else the user-assigned
    /// identity with that client id.
    ManagedIdentity { client_id: Option<String> },
    /// Any other `TokenCredential` (workload identity, developer tools, tests).
    Credential(Arc<dyn TokenCredential>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::ConnectionString(_) => f.write_str("ConnectionString(***)"),
            Auth::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            Auth::ManagedIdentity { client_id } => f
                .debug_struct("ManagedIdentity")
                .field("client_id", client_id)
                .finish(),
            Auth::Credential(_) => f.write_str("Credential(..)"),
        }
    }
}

/// AMQP transport: TCP (5671, TLS) or WebSockets (443, `wss://`), for firewalls that only let
/// HTTPS out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    WebSocket,
}

/// The SDK's own retry policy inside one send. Our send timeout wraps it, so it is kept
/// shorter than the SDK default (8 retries, 60 s total), which would outlast the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdkRetry {
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_total_elapsed: Duration,
}

impl Default for SdkRetry {
    fn default() -> Self {
        SdkRetry {
            max_retries: 3,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_total_elapsed: Duration::from_secs(20),
        }
    }
}

/// The Event Hubs sink's settings.
#[derive(Debug, Clone)]
pub struct EventHubsConfig {
    /// Fully qualified namespace (`ward7.servicebus.windows.net`). Required for Entra ID auth;
    /// ignored with a connection string, whose `Endpoint` names the namespace.
    pub namespace: Option<String>,
    /// Event hub name; may be `None` with a connection string that carries `EntityPath`.
    pub hub: Option<String>,
    /// Where the socket goes instead of the namespace host (`amqp://127.0.0.1:5672` sends
    /// plaintext to a local test endpoint, `amqps://host:5671` a private endpoint). Token
    /// audiences and link addresses keep the namespace.
    pub custom_endpoint: Option<String>,
    pub auth: Auth,
    pub transport: Transport,
    /// Upper bound for one create-batch or send-batch call (a send in flight when the
    /// connection drops never returns on its own).
    pub send_timeout: Duration,
    /// Upper bound for opening the client (connect, SASL, AMQP open).
    pub open_timeout: Duration,
    /// Tries per batch within one `send` call; between tries the client is dropped and rebuilt.
    pub attempts_per_batch: u32,
    /// At most this many events in one batch (Event Hubs also caps a batch by bytes).
    pub max_batch_events: usize,
    /// Byte cap for a batch, below the link's `max-message-size` (None: the link's).
    pub max_batch_bytes: Option<u64>,
    /// How long the caller may hold a partly filled batch before sending it (see
    /// [`EventHubsConfig::should_flush`]).
    pub linger: Duration,
    /// AMQP client application id (shows in the service's diagnostics).
    pub application_id: Option<String>,
    pub sdk_retry: SdkRetry,
    /// The durable store's epoch, sent as `iomt-edge-epoch` with every event when set.
    pub store_epoch: Option<u64>,
}

impl EventHubsConfig {
    /// Defaults: TCP, 30 s timeouts, 2 attempts per batch, 256 events per batch, 1 s linger.
    pub fn new(auth: Auth) -> Self {
        EventHubsConfig {
            namespace: None,
            hub: None,
            custom_endpoint: None,
            auth,
            transport: Transport::Tcp,
            send_timeout: Duration::from_secs(30),
            open_timeout: Duration::from_secs(30),
            attempts_per_batch: 2,
            max_batch_events: 256,
            max_batch_bytes: None,
            linger: Duration::from_secs(1),
            application_id: Some("iomt-edge".to_string()),
            sdk_retry: SdkRetry::default(),
            store_epoch: None,
        }
    }

    /// Checks what can be checked without a network. Returns a description of the first
    /// problem found.
    pub fn validate(&self) -> Result<(), String> {
        match &self.auth {
            Auth::ConnectionString(cs) => {
                if !cs.expose().contains("Endpoint=") {
                    return Err("the connection string has no Endpoint=".to_string());
                }
                if self.hub.is_some() && nonempty(&self.hub).is_none() {
                    return Err("the event hub name is empty".to_string());
                }
            }
            Auth::ClientSecret { .. } | Auth::ManagedIdentity { .. } | Auth::Credential(_) => {
                if nonempty(&self.namespace).is_none() {
                    return Err("Entra ID authentication needs the namespace".to_string());
                }
                if nonempty(&self.hub).is_none() {
                    return Err("Entra ID authentication needs the event hub name".to_string());
                }
            }
        }
        if let Some(ns) = nonempty(&self.namespace) {
            if ns.contains("://") || ns.contains('/') {
                return Err(format!(
                    "namespace {ns:?} must be a host name such as ward7.servicebus.windows.net"
                ));
            }
        }
        if let Some(ep) = &self.custom_endpoint {
            if !(ep.starts_with("amqp://")
                || ep.starts_with("amqps://")
                || ep.starts_with("ws://")
                || ep.starts_with("wss://"))
            {
                return Err(format!(
                    "custom endpoint {ep:?} must start with amqp://, amqps://, ws:// or wss://"
                ));
            }
        }
        if self.send_timeout.is_zero() || self.open_timeout.is_zero() {
            return Err("timeouts must be above zero".to_string());
        }
        if self.attempts_per_batch == 0 {
            return Err("attempts_per_batch must be at least 1".to_string());
        }
        if self.max_batch_events == 0 {
            return Err("max_batch_events must be at least 1".to_string());
        }
        if self.max_batch_bytes == Some(0) {
            return Err("max_batch_bytes must be above zero".to_string());
        }
        Ok(())
    }

    /// Whether the caller should send what it holds now: a full batch goes at once, a partial
    /// one when its oldest event has waited `linger`, nothing when nothing is pending.
    pub fn should_flush(&self, pending: usize, oldest_pending_age: Duration) -> bool {
        pending > 0 && (pending >= self.max_batch_events || oldest_pending_age >= self.linger)
    }
}

fn nonempty(o: &Option<String>) -> Option<&str> {
    o.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Back-off before retrying after a failed `send`: exponential from `base`, capped at `cap`,
/// with "full jitter" (`unit` is a uniform draw from [0, 1), clamped; the caller supplies it).
/// Attempt 0 is the first retry.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(31)));
    let ceiling = exp.min(cap);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ceiling.mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs_config() -> EventHubsConfig {
        let mut c = EventHubsConfig::new(Auth::ConnectionString(Secret::new(
            "Endpoint=sb://ward7.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0",
        )));
        c.hub = Some("vitals".into());
        c
    }

    #[test]
    fn secrets_do_not_leak_in_debug() {
        let c = cs_config();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("c2VjcmV0"), "{dbg}");
        let cs = Auth::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            secret: Secret::new("hunter2"),
        };
        assert!(!format!("{cs:?}").contains("hunter2"));
    }

    #[test]
    fn validate_catches_the_usual_mistakes() {
        assert_eq!(cs_config().validate(), Ok(()));
        let mut c = cs_config();
        c.custom_endpoint = Some("127.0.0.1:5672".into());
        assert!(c.validate().unwrap_err().contains("custom endpoint"));
        let mut c = cs_config();
        c.max_batch_events = 0;
        assert!(c.validate().is_err());
        let mut c = cs_config();
        c.send_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = EventHubsConfig::new(Auth::ManagedIdentity { client_id: None });
        assert!(c.validate().unwrap_err().contains("namespace"));
        c.namespace = Some("amqps://ward7.servicebus.windows.net".into());
        c.hub = Some("vitals".into());
        assert!(c.validate().unwrap_err().contains("host name"));
        c.namespace = Some("ward7.servicebus.windows.net".into());
        assert_eq!(c.validate(), Ok(()));
        let c = EventHubsConfig::new(Auth::ConnectionString(Secret::new("nonsense")));
        assert!(c.validate().is_err());
    }

    #[test]
    fn flush_policy() {
        let mut c = cs_config();
        c.max_batch_events = 16;
        c.linger = Duration::from_millis(500);
        assert!(!c.should_flush(0, Duration::from_secs(9)));
        assert!(!c.should_flush(3, Duration::from_millis(100)));
        assert!(c.should_flush(3, Duration::from_millis(500)));
        assert!(c.should_flush(16, Duration::ZERO));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(10);
        assert_eq!(backoff(0, base, cap, 1.0), base);
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(3, base, cap, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(30, base, cap, 1.0), cap);
        assert_eq!(backoff(u32::MAX, base, cap, 0.999), cap.mul_f64(0.999));
        assert_eq!(backoff(2, base, cap, f64::NAN), Duration::ZERO);
        assert_eq!(backoff(2, base, cap, -3.0), Duration::ZERO);
    }
}
