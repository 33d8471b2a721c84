//! Configuration of the MQTT source (validated in `config/validate.rs`).

use crate::config::SecretRef;
use crate::sources::ingest::Backoff;
use std::path::PathBuf;
use std::time::Duration;

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (the default).
    V311,
    /// MQTT 5.
    V5,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topic filter (`ward7/+/vitals`, `#`).
    pub filter: String,
    /// 0 or 1 (QoS 2 is not offered: QoS 1 with dedup gives the same result, cheaper).
    pub qos: u8,
}

/// TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// PEM CA bundle that signs the broker's certificate (default: the system bundle
    /// `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: PathBuf,
    /// PEM client certificate (mutual TLS), with `client_key`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate (a secret).
    pub client_key: Option<SecretRef>,
}

/// The MQTT subscriber source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host name (must match the certificate with TLS).
    pub host: String,
    pub port: u16,
    pub version: MqttVersion,
    /// Stable, non-empty client id: the broker keeps the session (subscriptions and queued
    /// QoS 1 messages) under it.
    pub client_id: String,
    /// `false` (the default) keeps a persistent session, so readings published while the
    /// agent is down are delivered when it is back. MQTT 5: `clean_start`.
    pub clean_session: bool,
    /// MQTT 5 only: how long the broker keeps the session after a disconnect.
    pub session_expiry: Duration,
    pub keep_alive: Duration,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    pub tls: Option<MqttTls>,
    pub subscriptions: Vec<Subscription>,
    /// 0-based `/`-separated topic segment that holds the device id (`ward7/{device}/vitals`
    /// → 1).
    pub device_id_topic_segment: Option<usize>,
    /// The device id when no segment is configured or the topic has no such segment (default:
    /// the source's name).
    pub device_id: String,
    /// Wrap a payload that is not JSON as a JSON string instead of dead-lettering it.
    pub wrap_non_json: bool,
    /// Wait between reconnect attempts.
    pub reconnect: Backoff,
}

/// Checks an MQTT topic filter: not empty, `#` only as the whole last level, `+` only as a
/// whole level, no NUL (MQTT 3.1.1 §4.7).
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty".into());
    }
    if filter.contains('\0') {
        return Err("a topic filter must not contain NUL".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "'{filter}': '#' must be the whole last level (e.g. ward7/#)"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "'{filter}': '+' must be a whole level (e.g. ward7/+/vitals)"
            ));
        }
    }
    Ok(())
}
