//! Settings of the FHIR sink (`[[sinks]] type = "fhir"`) and the pure helpers the client needs:
//! back-off with jitter, `Retry-After` parsing, ETag → version id.
//!
//! Invariants: nothing here does I/O or reads the clock (the current time and the random draw
//! are parameters); secrets are references ([`SecretRef`]), resolved only when a token is
//! fetched, so a rotated secret file is picked up without a restart.

use crate::config::SecretRef;
use std::path::PathBuf;
use std::time::Duration;

/// How Device, Patient and Encounter are found (upstream `ResourceIdentityServiceType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// Device by identifier, Patient from `Device.patient` (upstream default).
    Lookup,
    /// As Lookup; a missing Device or Patient is created with upstream's deterministic ids.
    Create,
    /// As Lookup, and the message must carry an encounter id that resolves.
    LookupWithEncounter,
}

impl IdentityMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMode::Lookup => "lookup",
            IdentityMode::Create => "create",
            IdentityMode::LookupWithEncounter => "lookup_with_encounter",
        }
    }
}

/// How the sink authenticates to the FHIR server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FhirAuth {
    /// No `Authorization` header (a local or network-protected server).
    None,
    /// A static bearer token.
    Bearer { token: SecretRef },
    /// OAuth 2.0 client credentials (`client_secret_post`), e.g. Microsoft Entra ID for Azure
    /// Health Data Services. Either `scope` (v2 endpoints: `https://<fhir>/.default`) or
    /// `resource` (v1 endpoints) is sent when set.
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: SecretRef,
        scope: Option<String>,
        resource: Option<String>,
    },
}

/// The validated FHIR sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirSinkConfig {
    /// FHIR base URL (`https://host/fhir`), without a trailing slash.
    pub url: String,
    pub auth: FhirAuth,
    /// Extra trusted CA certificates (PEM bundle), added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub identity: IdentityMode,
    /// System of the Device identifier (`Device?identifier=system|deviceId`); none = any system.
    pub device_identifier_system: Option<String>,
    /// Create mode: the system of the Patient identifier it searches and writes. Upstream
    /// writes none (`{"value": patientId}`); the Patient id stays `sha256("_" + patientId)`
    /// either way, so ids remain upstream's.
    pub patient_identifier_system: Option<String>,
    /// When the message carries a patient id, require that the Device's Patient has it as an
    /// identifier value (or as its id); otherwise the records are dead-lettered as
    /// `patient_device_mismatch`. Upstream ignores the message patient in Lookup mode.
    pub verify_patient: bool,
    /// Absolute lifetime of a resolved identity in the cache.
    pub identity_cache_ttl: Duration,
    /// Most identities cached (oldest evicted first).
    pub identity_cache_entries: usize,
    /// Most Observations cached (upstream: 5,000 for 1 h).
    pub observation_cache_entries: usize,
    pub observation_cache_ttl: Duration,
    /// Timeout of one HTTP request (connect + answer).
    pub request_timeout: Duration,
    /// Retries of one request after a network error, 5xx, 408 or 429, before the batch is
    /// given back to the worker (which retries it with its own back-off).
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Re-read / re-merge rounds after a 409 or 412 (upstream: 2).
    pub conflict_retries: u32,
    /// Requests in flight at once for one batch (distinct Observations only).
    pub concurrency: usize,
    /// Send the searches and writes of a batch as FHIR `batch` Bundles.
    pub batch_bundle: bool,
    /// Most entries in one batch Bundle.
    pub bundle_max_entries: usize,
    /// Shorten Observation identifiers longer than 128 characters (for servers that index only
    /// that many); off by default because it changes identifiers away from upstream's. See
    /// `pipeline::transform` for the exact short form.
    pub short_identifiers: bool,
    /// A reading whose Observation (or identity lookup) the server keeps answering with a 5xx
    /// is dead-lettered after this many failed attempts made while other readings were being
    /// delivered (0: never, retry forever). Attempts while nothing is delivered (the server
    /// down) do not count.
    pub dead_letter_after_attempts: u32,
}

impl FhirSinkConfig {
    /// Defaults for `url`, no auth, Lookup.
    pub fn new(url: impl Into<String>) -> Self {
        FhirSinkConfig {
            url: url.into().trim_end_matches('/').to_owned(),
            auth: FhirAuth::None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            identity: IdentityMode::Lookup,
            device_identifier_system: None,
            patient_identifier_system: None,
            verify_patient: true,
            identity_cache_ttl: Duration::from_secs(300),
            identity_cache_entries: 10_000,
            observation_cache_entries: 5_000,
            observation_cache_ttl: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(30),
            max_retries: 3,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            conflict_retries: 2,
            short_identifiers: false,
            concurrency: 4,
            batch_bundle: false,
            bundle_max_entries: 100,
            dead_letter_after_attempts: 10,
        }
    }
}

/// Back-off before retry `attempt` (1-based): `initial × 2^(attempt−1)`, capped at `max`, plus
/// up to 25 % jitter from `draw` (any u64; a random draw in practice).
pub fn backoff(attempt: u32, initial: Duration, max: Duration, draw: u64) -> Duration {
    let base = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let quarter = base.as_millis() as u64 / 4;
    let jitter = if quarter == 0 {
        0
    } else {
        draw % (quarter + 1)
    };
    base + Duration::from_millis(jitter)
}

/// Parses `Retry-After`: delay-seconds, or an HTTP-date compared with `now_unix_ms`. A date in
/// the past gives zero; anything unparsable gives `None`.
pub fn parse_retry_after(value: &str, now_unix_ms: i64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = date.timestamp_millis() - now_unix_ms;
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// The version id in an ETag: `W/"3"` → `3`, `"3"` → `3`, `3` → `3`. Opaque otherwise.
pub fn version_from_etag(etag: &str) -> Option<String> {
    let t = etag.trim();
    let t = t
        .strip_prefix("W/")
        .or_else(|| t.strip_prefix("w/"))
        .unwrap_or(t);
    let t = t.trim_matches('"');
    (!t.is_empty()).then(|| t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_a_quarter() {
        let i = Duration::from_millis(200);
        let m = Duration::from_secs(5);
        assert_eq!(backoff(1, i, m, 0), Duration::from_millis(200));
        assert_eq!(backoff(2, i, m, 0), Duration::from_millis(400));
        assert_eq!(backoff(3, i, m, 0), Duration::from_millis(800));
        assert_eq!(backoff(30, i, m, 0), Duration::from_secs(5));
        for draw in [1u64, 49, 50, 51, u64::MAX] {
            let b = backoff(1, i, m, draw);
            assert!(b >= i && b <= Duration::from_millis(250), "{b:?}");
        }
        assert_eq!(backoff(0, i, m, 0), i);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("7", 0), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", 0), Some(Duration::ZERO));
        // 1994-11-06T08:49:37Z = 784111777 s.
        let now = 784_111_777_000 - 3_000;
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 10_000),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("-1", 0), None);
    }

    #[test]
    fn etag_versions_are_opaque() {
        assert_eq!(version_from_etag("W/\"3\"").as_deref(), Some("3"));
        assert_eq!(version_from_etag("\"abc-d\"").as_deref(), Some("abc-d"));
        assert_eq!(version_from_etag("7").as_deref(), Some("7"));
        assert_eq!(version_from_etag("W/\"\""), None);
    }
}
