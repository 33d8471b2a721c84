//! The FHIR sink's HTTP client: `reqwest` over rustls, bearer auth (static token or OAuth 2.0
//! client credentials), custom CA bundle, optional client certificate, per-request retries.
//!
//! Invariants:
//! - A request is retried here only after a network error, 408, 429, 500, 502, 503 or 504, at
//!   most `max_retries` times, with exponential back-off and jitter; `Retry-After` is honoured
//!   (as the minimum wait) when it is at most [`MAX_INLINE_WAIT`], otherwise the request gives
//!   up at once and the error carries the hint for the worker, which waits while still
//!   listening for shutdown. Every other status is returned to the caller as a [`Response`].
//! - A 401 invalidates the cached token and the request is sent once more with a fresh one;
//!   a second 401 (or a 403) is an [`FhirError::Auth`].
//! - OAuth tokens are cached until shortly before they expire ([`refresh_margin`]); one fetch
//!   at a time. Secrets are resolved when a token is fetched, never logged.
//! - `next` links are followed only on the configured origin, so a token is never sent
//!   elsewhere.
//! - Logs never carry bodies (they can hold patient data); errors quote the server's
//!   OperationOutcome, which goes to the dead-letter store.

use super::config::{backoff, parse_retry_after, version_from_etag, FhirAuth, FhirSinkConfig};
use crate::config::{resolve_secret, SecretRef};
use crate::telemetry::{events, Metrics};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest `Retry-After` (or back-off) waited inside one request; longer hints go back to the
/// worker, which can be stopped while it waits.
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(5);

/// FHIR JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FhirError {
    /// The server could not be reached or answered 408/429/502/503/504: retry later.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The token endpoint refused the client, or the server refused the token.
    #[error("{message}")]
    Auth { message: String },
    /// Local setup: TLS files, the TLS handshake, a URL that is not a FHIR server.
    #[error("{message}")]
    Setup { message: String },
    /// The server answered a status the caller did not expect (4xx other than 401/403/408/429),
    /// or 500 after the request's own retries.
    #[error("{method} {path} answered {status}: {outcome}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        /// The OperationOutcome as text (or the start of the body).
        outcome: String,
    },
}

impl FhirError {
    /// The retry hint of an [`FhirError::Unavailable`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FhirError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True when the server answered this one request with a 5xx (after the request's own
    /// retries): the server is up but failed on this resource. Network errors, timeouts,
    /// 408/429/502/503/504, auth and TLS problems are about the server as a whole and are not.
    pub fn is_server_error_for_request(&self) -> bool {
        matches!(self, FhirError::Status { status, .. } if *status >= 500)
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FhirError::Unavailable { .. } => "unavailable",
            FhirError::Auth { .. } => "auth",
            FhirError::Setup { .. } => "setup",
            FhirError::Status { .. } => "status",
        }
    }
}

/// An answer from the server.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Version id from the `ETag` header.
    pub version: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    /// True for 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (`Null` when empty).
    pub fn json(&self) -> Result<Value, FhirError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| FhirError::Unavailable {
            message: format!(
                "the FHIR server answered {} with a body that is not JSON ({e}): {}",
                self.status,
                snippet(&self.body)
            ),
            retry_after: None,
        })
    }

    /// This answer as an error of `method path`.
    pub fn error(&self, method: &'static str, path: &str) -> FhirError {
        FhirError::Status {
            method,
            path: path.to_owned(),
            status: self.status,
            outcome: outcome_text_of(&self.body),
        }
    }
}

/// A method as the `&'static str` of [`FhirError::Status`].
fn method_name(m: &Method) -> &'static str {
    [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::PATCH,
    ]
    .iter()
    .zip(["GET", "PUT", "POST", "DELETE", "PATCH"])
    .find(|(k, _)| *k == m)
    .map_or("request", |(_, n)| n)
}

/// The OperationOutcome in a body as one line: `severity code: text [expression]; …`, or the
/// start of the body when it is not an OperationOutcome.
pub fn outcome_text_of(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v["resourceType"] == "OperationOutcome" => outcome_text(&v),
        _ if body.is_empty() => "(no body)".into(),
        _ => snippet(body),
    }
}

/// An OperationOutcome as one line.
pub fn outcome_text(oo: &Value) -> String {
    let Some(issues) = oo["issue"].as_array() else {
        return "OperationOutcome without issues".into();
    };
    let parts: Vec<String> = issues
        .iter()
        .map(|i| {
            let text = i["diagnostics"]
                .as_str()
                .or_else(|| i["details"]["text"].as_str())
                .unwrap_or("");
            let expr: Vec<&str> = i["expression"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut s = format!(
                "{} {}: {text}",
                i["severity"].as_str().unwrap_or("error"),
                i["code"].as_str().unwrap_or("unknown")
            );
            if !expr.is_empty() {
                s.push_str(&format!(" [{}]", expr.join(", ")));
            }
            s
        })
        .collect();
    parts.join("; ")
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s: String = s.chars().take(300).collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where metrics go, and under which sink name.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub metrics: &'a Metrics,
    pub sink: &'a str,
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// How long before expiry a token is refreshed: a tenth of its lifetime, between 5 s and 5 min,
/// and never more than half of it.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10)
        .clamp(Duration::from_secs(5), Duration::from_secs(300))
        .min(lifetime / 2)
}

/// The FHIR HTTP client of one sink.
pub struct FhirClient {
    http: reqwest::Client,
    base: String,
    origin: String,
    auth: FhirAuth,
    token: tokio::sync::Mutex<Option<Token>>,
    max_retries: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
    rng: AtomicU64,
}

impl std::fmt::Debug for FhirClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn read_file(what: &str, p: &PathBuf) -> Result<Vec<u8>, FhirError> {
    std::fs::read(p).map_err(|e| FhirError::Setup {
        message: format!("cannot read the {what} {}: {e}", p.display()),
    })
}

impl FhirClient {
    /// Builds the client: reads the CA bundle and the client certificate (errors are
    /// [`FhirError::Setup`]). Does not contact the server.
    pub fn new(cfg: &FhirSinkConfig) -> Result<Self, FhirError> {
        let url = Url::parse(&cfg.url).map_err(|e| FhirError::Setup {
            message: format!("the FHIR url '{}' is not a URL: {e}", cfg.url),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FhirError::Setup {
                message: format!("the FHIR url '{}' must be http or https", cfg.url),
            });
        }
        let mut b = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("iomt-edge/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(cfg.concurrency.max(1) * 2);
        if let Some(ca) = &cfg.ca_file {
            let pem = read_file("CA bundle (ca_file)", ca)?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| FhirError::Setup {
                    message: format!("the CA bundle {} is not PEM: {e}", ca.display()),
                })?;
            if certs.is_empty() {
                return Err(FhirError::Setup {
                    message: format!("the CA bundle {} holds no certificate", ca.display()),
                });
            }
            b = b.tls_certs_merge(certs);
        }
        match (&cfg.client_cert, &cfg.client_key) {
            (Some(c), Some(k)) => {
                let mut pem = read_file("client certificate (client_cert)", c)?;
                pem.push(b'\n');
                pem.extend(read_file("client key (client_key)", k)?);
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| FhirError::Setup {
                    message: format!(
                        "the client certificate {} and key {} are not a usable PEM pair: {e}",
                        c.display(),
                        k.display()
                    ),
                })?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(FhirError::Setup {
                    message: "client_cert and client_key go together".into(),
                })
            }
        }
        let http = b.build().map_err(|e| FhirError::Setup {
            message: format!("cannot set up the HTTP client: {}", chain(&e)),
        })?;
        let origin = url.origin().ascii_serialization();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(FhirClient {
            http,
            base: cfg.url.trim_end_matches('/').to_owned(),
            origin,
            auth: cfg.auth.clone(),
            token: tokio::sync::Mutex::new(None),
            max_retries: cfg.max_retries,
            backoff_initial: cfg.backoff_initial,
            backoff_max: cfg.backoff_max,
            rng: AtomicU64::new(seed | 1),
        })
    }

    /// The FHIR base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn draw(&self) -> u64 {
        // splitmix64 step; good enough for jitter.
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `base/path` where `path` is relative (`Observation?identifier=…`); an absolute URL on
    /// the configured origin is used as is.
    fn url_of(&self, path: &str) -> Result<Url, FhirError> {
        let text = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        };
        let url = Url::parse(&text).map_err(|e| FhirError::Setup {
            message: format!("bad request URL {text}: {e}"),
        })?;
        if url.origin().ascii_serialization() != self.origin {
            return Err(FhirError::Setup {
                message: format!(
                    "the server pointed at another origin ({}); not following it",
                    url.origin().ascii_serialization()
                ),
            });
        }
        Ok(url)
    }

    /// A search URL: `type?name=value&…` with the values percent-encoded.
    pub fn search_path(&self, resource_type: &str, params: &[(&str, &str)]) -> String {
        let mut u = Url::parse("http://x/").expect("invariant: static URL parses");
        u.set_path(resource_type);
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
        }
        format!("{}?{}", resource_type, u.query().unwrap_or(""))
    }

    /// The bearer token to send, if any (cached). `stale`: a token the server just refused;
    /// it is replaced unless another request already did (one fetch for many 401s).
    async fn bearer(&self, ctx: Ctx<'_>, stale: Option<&str>) -> Result<Option<String>, FhirError> {
        let refused = |t: &Token| stale == Some(t.value.as_str());
        match &self.auth {
            FhirAuth::None => Ok(None),
            FhirAuth::Bearer { token } => {
                let mut t = self.token.lock().await;
                if t.as_ref().is_none_or(refused) {
                    let value = secret(token).map_err(|m| FhirError::Auth {
                        message: format!("cannot read the bearer token: {m}"),
                    })?;
                    *t = Some(Token {
                        value,
                        refresh_at: Instant::now() + Duration::from_secs(86_400 * 365),
                    });
                }
                Ok(t.as_ref().map(|t| t.value.clone()))
            }
            FhirAuth::OAuth2 { .. } => {
                let mut t = self.token.lock().await;
                let fresh = t
                    .as_ref()
                    .is_some_and(|t| !refused(t) && Instant::now() < t.refresh_at);
                if !fresh {
                    *t = None;
                    let (value, lifetime) = self.fetch_token(ctx).await?;
                    let refresh_at =
                        Instant::now() + lifetime.saturating_sub(refresh_margin(lifetime));
                    *t = Some(Token { value, refresh_at });
                }
                Ok(t.as_ref().map(|t| t.value.clone()))
            }
        }
    }

    async fn fetch_token(&self, ctx: Ctx<'_>) -> Result<(String, Duration), FhirError> {
        let FhirAuth::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
            resource,
        } = &self.auth
        else {
            return Err(FhirError::Setup {
                message: "no OAuth configuration".into(),
            });
        };
        let secret_value = secret(client_secret).map_err(|m| FhirError::Auth {
            message: format!("cannot read the OAuth client secret: {m}"),
        })?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret_value.as_str()),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let body = form_encode(&form);
        let mut attempt = 0u32;
        loop {
            let sent = self
                .http
                .post(token_url.as_str())
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(body.clone())
                .send()
                .await;
            let (status, headers, bytes) = match sent {
                Ok(r) => {
                    let status = r.status();
                    let headers = r.headers().clone();
                    match r.bytes().await {
                        Ok(b) => (status, headers, b.to_vec()),
                        Err(e) => {
                            events::fhir_request(ctx.metrics, ctx.sink, "token", "network");
                            return Err(FhirError::Unavailable {
                                message: format!(
                                    "reading the token endpoint's answer failed: {}",
                                    chain(&e)
                                ),
                                retry_after: None,
                            });
                        }
                    }
                }
                Err(e) => {
                    events::fhir_request(ctx.metrics, ctx.sink, "token", "network");
                    let err = transport_error(&e, &format!("the token endpoint {token_url}"));
                    if matches!(err, FhirError::Unavailable { .. }) && attempt < self.max_retries {
                        attempt += 1;
                        self.pause(attempt, None).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            events::fhir_request(
                ctx.metrics,
                ctx.sink,
                "token",
                status_label(status.as_u16()),
            );
            if status.is_success() {
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| FhirError::Auth {
                    message: format!(
                        "the token endpoint {token_url} answered {status} without a JSON token ({e})"
                    ),
                })?;
                let Some(tok) = v["access_token"].as_str().filter(|t| !t.is_empty()) else {
                    return Err(FhirError::Auth {
                        message: format!(
                            "the token endpoint {token_url} answered without an access_token"
                        ),
                    });
                };
                // expires_in is a number (RFC 6749) or a string (Entra ID v1).
                let secs = v["expires_in"]
                    .as_u64()
                    .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(300);
                events::fhir_token_issued(ctx.metrics, ctx.sink);
                return Ok((tok.to_owned(), Duration::from_secs(secs)));
            }
            let retryable = matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504);
            if retryable && attempt < self.max_retries {
                attempt += 1;
                let hint = retry_after_of(&headers);
                if hint.is_none_or(|h| h <= MAX_INLINE_WAIT) {
                    self.pause(attempt, hint).await;
                    continue;
                }
            }
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let detail = match (v["error"].as_str(), v["error_description"].as_str()) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e.to_owned(),
                _ => snippet(&bytes),
            };
            return Err(if retryable {
                FhirError::Unavailable {
                    message: format!("the token endpoint {token_url} answered {status}: {detail}"),
                    retry_after: retry_after_of(&headers),
                }
            } else {
                FhirError::Auth {
                    message: format!(
                        "the token endpoint {token_url} refused the client credentials ({status}, {detail}); check client_id and client_secret"
                    ),
                }
            });
        }
    }

    async fn pause(&self, attempt: u32, hint: Option<Duration>) {
        let b = backoff(attempt, self.backoff_initial, self.backoff_max, self.draw());
        // Callers pass only hints up to MAX_INLINE_WAIT.
        tokio::time::sleep(hint.map_or(b, |h| h.max(b))).await;
    }

    /// Sends one request (retrying as the module doc says). `op` labels the metrics.
    pub async fn send(
        &self,
        ctx: Ctx<'_>,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Response, FhirError> {
        self.send_inner(ctx, op, method, path, body, if_match, true)
            .await
    }

    /// `GET metadata` without credentials first (most servers serve it publicly).
    pub async fn send_anonymous(&self, ctx: Ctx<'_>, path: &str) -> Result<Response, FhirError> {
        self.send_inner(ctx, "metadata", Method::GET, path, None, None, false)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_inner(
        &self,
        ctx: Ctx<'_>,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        authenticate: bool,
    ) -> Result<Response, FhirError> {
        let url = self.url_of(path)?;
        let payload = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| FhirError::Setup {
                message: format!("cannot serialise the request body: {e}"),
            })?),
            None => None,
        };
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            let token = if authenticate {
                self.bearer(ctx, None).await?
            } else {
                None
            };
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header("accept", FHIR_JSON);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            if let Some(p) = &payload {
                req = req
                    .header("content-type", FHIR_JSON)
                    .header("prefer", "return=representation")
                    .body(p.clone());
            }
            if let Some(v) = if_match {
                let hv =
                    HeaderValue::from_str(&format!("W/\"{v}\"")).map_err(|_| FhirError::Setup {
                        message: format!("version id {v:?} cannot be sent in If-Match"),
                    })?;
                req = req.header("if-match", hv);
            }
            let what = format!("{} {}", method.as_str(), url.path());
            let sent = req.send().await;
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    events::fhir_request(ctx.metrics, ctx.sink, op, "network");
                    let err = transport_error(&e, &format!("the FHIR server ({what})"));
                    if matches!(err, FhirError::Unavailable { .. }) && attempt < self.max_retries {
                        attempt += 1;
                        self.pause(attempt, None).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = r.status();
            let headers = r.headers().clone();
            let bytes = match r.bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    events::fhir_request(ctx.metrics, ctx.sink, op, "network");
                    if attempt < self.max_retries {
                        attempt += 1;
                        self.pause(attempt, None).await;
                        continue;
                    }
                    return Err(FhirError::Unavailable {
                        message: format!("reading the answer to {what} failed: {}", chain(&e)),
                        retry_after: None,
                    });
                }
            };
            events::fhir_request(ctx.metrics, ctx.sink, op, status_label(status.as_u16()));
            match status {
                StatusCode::UNAUTHORIZED if authenticate && !refreshed && token.is_some() => {
                    refreshed = true;
                    self.bearer(ctx, token.as_deref()).await?;
                    continue;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if authenticate => {
                    let why = headers
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default();
                    return Err(FhirError::Auth {
                        message: format!(
                            "the FHIR server refused {} for {what}: {}{why}; {}",
                            if token.is_some() { "the access token" } else { "the request without a token" },
                            status,
                            match &self.auth {
                                FhirAuth::None => "configure [sinks.auth]",
                                FhirAuth::Bearer { .. } => "check the bearer token",
                                FhirAuth::OAuth2 { .. } => "check the app registration's role on the FHIR service and the scope/resource",
                            }
                        ),
                    });
                }
                s if matches!(s.as_u16(), 408 | 429 | 500 | 502 | 503 | 504) => {
                    let hint = retry_after_of(&headers);
                    if attempt < self.max_retries && hint.is_none_or(|h| h <= MAX_INLINE_WAIT) {
                        attempt += 1;
                        self.pause(attempt, hint).await;
                        continue;
                    }
                    if s == StatusCode::INTERNAL_SERVER_ERROR {
                        // The server is up and failed on this request: an answer about this
                        // request (the sink may isolate it), not the server being unavailable.
                        return Err(FhirError::Status {
                            method: method_name(&method),
                            path: path.to_owned(),
                            status: s.as_u16(),
                            outcome: outcome_text_of(&bytes),
                        });
                    }
                    return Err(FhirError::Unavailable {
                        message: format!(
                            "the FHIR server answered {s} to {what}: {}",
                            outcome_text_of(&bytes)
                        ),
                        retry_after: hint,
                    });
                }
                _ => {
                    let version = headers
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .and_then(version_from_etag);
                    return Ok(Response {
                        status: status.as_u16(),
                        version,
                        body: bytes,
                    });
                }
            }
        }
    }

    /// Startup check: `GET metadata` (a CapabilityStatement, FHIR 4.0.x), then, with auth, one
    /// authenticated search so that a wrong token shows up now. Returns the server's FHIR
    /// version and software name for the log.
    pub async fn check(&self, ctx: Ctx<'_>) -> Result<String, FhirError> {
        let r = match self.send_anonymous(ctx, "metadata").await {
            Ok(r) if r.status == 401 && !matches!(self.auth, FhirAuth::None) => {
                self.send(ctx, "metadata", Method::GET, "metadata", None, None)
                    .await?
            }
            Ok(r) => r,
            Err(FhirError::Unavailable {
                message,
                retry_after,
            }) => {
                return Err(FhirError::Unavailable {
                    message: format!("cannot reach the FHIR server at {}: {message}", self.base),
                    retry_after,
                })
            }
            Err(e) => return Err(e),
        };
        if !r.ok() {
            return Err(FhirError::Setup {
                message: format!(
                    "GET {}/metadata answered {}: {}; is sinks.url the FHIR base URL?",
                    self.base,
                    r.status,
                    outcome_text_of(&r.body)
                ),
            });
        }
        let cs = r.json().map_err(|_| FhirError::Setup {
            message: format!(
                "{} is not a FHIR server: GET metadata did not return JSON ({})",
                self.base,
                snippet(&r.body)
            ),
        })?;
        if cs["resourceType"] != "CapabilityStatement" {
            return Err(FhirError::Setup {
                message: format!(
                    "{} is not a FHIR R4 server: GET metadata returned {} instead of a CapabilityStatement",
                    self.base,
                    cs["resourceType"].as_str().unwrap_or("something else")
                ),
            });
        }
        let version = cs["fhirVersion"].as_str().unwrap_or("unknown").to_owned();
        let software = cs["software"]["name"].as_str().unwrap_or("").to_owned();
        if !matches!(self.auth, FhirAuth::None) {
            let path = self.search_path("Device", &[("_count", "1")]);
            let r = self
                .send(ctx, "check", Method::GET, &path, None, None)
                .await?;
            if !r.ok() {
                return Err(r.error("GET", &path));
            }
        }
        Ok(if software.is_empty() {
            format!("FHIR {version}")
        } else {
            format!("FHIR {version}, {software}")
        })
    }
}

fn secret(s: &SecretRef) -> Result<String, String> {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    resolve_secret(s, &|k| std::env::var(k).ok(), creds.as_deref())
}

fn retry_after_of(h: &HeaderMap) -> Option<Duration> {
    let v = h.get("retry-after")?.to_str().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    parse_retry_after(v, now)
}

/// A status as a bounded metric label.
pub fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        410 => "410",
        412 => "412",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn transport_error(e: &reqwest::Error, target: &str) -> FhirError {
    let text = chain(e);
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("unknownissuer")
    {
        return FhirError::Setup {
            message: format!(
                "TLS with {target} failed: {text}; check the server certificate, ca_file and client_cert/client_key"
            ),
        };
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    FhirError::Unavailable {
        message: format!("{target}: {what}: {text}"),
        retry_after: None,
    }
}

/// `application/x-www-form-urlencoded`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut u = Url::parse("http://x/").expect("invariant: static URL parses");
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    u.query().unwrap_or("").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcome_text_lists_issues() {
        let oo = json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "Missing required property", "expression": ["Observation.status"]},
            {"severity": "warning", "code": "processing", "details": {"text": "odd"}}
        ]});
        assert_eq!(
            outcome_text(&oo),
            "error invalid: Missing required property [Observation.status]; warning processing: odd"
        );
        assert_eq!(
            outcome_text_of(b"<html><body>Bad   gateway</body></html>"),
            "<html><body>Bad gateway</body></html>"
        );
        assert_eq!(outcome_text_of(b""), "(no body)");
    }

    #[test]
    fn search_paths_are_encoded() {
        let c = FhirClient::new(&FhirSinkConfig::new("http://127.0.0.1:1/fhir/")).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:1/fhir");
        assert_eq!(
            c.search_path("Device", &[("identifier", "urn:sys|a b&c")]),
            "Device?identifier=urn%3Asys%7Ca+b%26c"
        );
        assert_eq!(
            c.url_of("Observation/x").unwrap().as_str(),
            "http://127.0.0.1:1/fhir/Observation/x"
        );
        assert!(c.url_of("http://elsewhere:1/fhir/Observation").is_err());
        assert!(c
            .url_of("http://127.0.0.1:1/fhir/Observation?_offset=2")
            .is_ok());
    }

    #[test]
    fn setup_errors_are_clear() {
        let mut cfg = FhirSinkConfig::new("ftp://x");
        assert!(matches!(
            FhirClient::new(&cfg),
            Err(FhirError::Setup { .. })
        ));
        cfg.url = "http://x".into();
        cfg.ca_file = Some("/nonexistent/ca.pem".into());
        let e = FhirClient::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("cannot read the CA bundle"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        cfg.ca_file = Some(p);
        let e = FhirClient::new(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("holds no certificate") || e.contains("not PEM"),
            "{e}"
        );
        cfg.ca_file = None;
        cfg.client_cert = Some("/x".into());
        assert!(FhirClient::new(&cfg).is_err());
    }

    #[test]
    fn only_a_5xx_answer_is_about_the_request() {
        let st = |status| FhirError::Status {
            method: method_name(&Method::PUT),
            path: "Observation/x".into(),
            status,
            outcome: "boom".into(),
        };
        assert!(st(500).is_server_error_for_request());
        assert!(st(501).is_server_error_for_request());
        assert!(!st(404).is_server_error_for_request());
        assert_eq!(st(500).to_string(), "PUT Observation/x answered 500: boom");
        assert!(!FhirError::Unavailable {
            message: "503".into(),
            retry_after: None
        }
        .is_server_error_for_request());
        assert!(!FhirError::Auth {
            message: "x".into()
        }
        .is_server_error_for_request());
        assert_eq!(method_name(&Method::GET), "GET");
        assert_eq!(method_name(&Method::OPTIONS), "request");
    }

    #[test]
    fn refresh_margin_is_bounded() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            form_encode(&[("a", "b c"), ("s", "x/.default")]),
            "a=b+c&s=x%2F.default"
        );
    }
}
