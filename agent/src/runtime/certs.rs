//! Expiry of the TLS material the ward config names, for `iomt-agent status`, the admin
//! `/status` JSON, the `iomt_tls_certificate_expiry_seconds` gauge and a warning in the log.
//!
//! Which files: the FHIR sinks' `ca_file` (extra CA bundle) and `client_cert` (mutual TLS
//! chain), and the MQTT sources' `ca_file` and `client_cert_file`. Private keys are not
//! certificates and are not read here. An MQTT source with TLS on and no `ca_file` uses the
//! system bundle (`/etc/ssl/certs/ca-certificates.crt`), which the distribution's
//! `ca-certificates` package maintains: it is not reported (it always holds some certificate
//! close to its end, which would be a false alarm).
//!
//! Invariants:
//! - The files are read when the agent starts, on reload (SIGHUP) and every
//!   [`REREAD_EVERY`] ([`CertWatch::refresh`]), so the report describes the files on disk.
//!   The MQTT source reads its files once at start; the FHIR sink at start and again after a
//!   TLS failure. So a replaced certificate is in use after a restart (FHIR: also after its
//!   next TLS failure); the operator docs say "restart".
//! - A file is logged when its state changes (the first read counts as a change): a warning
//!   for `expiring`, `expired` and `unreadable`, so an agent that runs for months warns on
//!   the day a certificate enters its last 30 days.
//! - A file with several certificates (a CA bundle, a chain) is reported by the one that
//!   expires first: its subject CN and not-after, with the number of certificates.
//! - [`inspect_pem`] and everything that judges a report take the time as a parameter and do
//!   no I/O; only [`load`] (and [`CertWatch::refresh`] through it) reads files.
//! - States: `expired` when not-after is now or past, `expiring` when fewer than
//!   [`EXPIRING_WITHIN_SECS`] (30 days) remain, `ok` otherwise, `unreadable` when the file
//!   cannot be read or holds no parsable PEM certificate (with the reason).

use crate::config::{Config, SinkKind, SourceKind};
use crate::telemetry::{events, Metrics};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::DirectoryString;
use x509_cert::Certificate;

/// A certificate with fewer seconds than this before its not-after is `expiring` (30 days).
pub const EXPIRING_WITHIN_SECS: i64 = 30 * 86_400;

/// How often a running agent re-reads the certificate files.
pub const REREAD_EVERY: Duration = Duration::from_secs(60);

/// The system CA bundle an MQTT source uses when `ca_file` is not set (not reported).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What a certificate file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// A FHIR sink's `ca_file`.
    FhirCaBundle,
    /// A FHIR sink's `client_cert` (mutual TLS).
    FhirClientCert,
    /// An MQTT source's `ca_file`.
    MqttCaBundle,
    /// An MQTT source's `client_cert_file` (mutual TLS).
    MqttClientCert,
}

impl CertRole {
    /// The metric label value and JSON `role` (`fhir_ca_bundle`...).
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::FhirCaBundle => "fhir_ca_bundle",
            CertRole::FhirClientCert => "fhir_client_cert",
            CertRole::MqttCaBundle => "mqtt_ca_bundle",
            CertRole::MqttClientCert => "mqtt_client_cert",
        }
    }

    /// The config key that names the file.
    pub fn config_key(self) -> &'static str {
        match self {
            CertRole::FhirCaBundle | CertRole::MqttCaBundle => "ca_file",
            CertRole::FhirClientCert => "client_cert",
            CertRole::MqttClientCert => "client_cert_file",
        }
    }
}

/// A certificate file named by the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    /// The sink or source that uses it.
    pub component: String,
    pub role: CertRole,
    pub path: PathBuf,
}

/// The certificate files the config names, in config order (sources, then sinks).
pub fn tls_files(cfg: &Config) -> Vec<TlsFile> {
    let mut out = Vec::new();
    let mut push = |component: &str, role, path: &PathBuf| {
        out.push(TlsFile {
            component: component.to_owned(),
            role,
            path: path.clone(),
        })
    };
    for s in &cfg.sources {
        if let SourceKind::Mqtt(m) = &s.kind {
            if let Some(tls) = &m.tls {
                if tls.ca_file.as_os_str() != SYSTEM_BUNDLE {
                    push(&s.name, CertRole::MqttCaBundle, &tls.ca_file);
                }
                if let Some(c) = &tls.client_cert_file {
                    push(&s.name, CertRole::MqttClientCert, c);
                }
            }
        }
    }
    for s in &cfg.sinks {
        if let SinkKind::Fhir(f) = &s.kind {
            if let Some(c) = &f.ca_file {
                push(&s.name, CertRole::FhirCaBundle, c);
            }
            if let Some(c) = &f.client_cert {
                push(&s.name, CertRole::FhirClientCert, c);
            }
        }
    }
    out
}

/// What a readable certificate file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Certificates in the file.
    pub count: usize,
    /// Subject common name of the certificate that expires first (`None` when it has none).
    pub subject_cn: Option<String>,
    /// Its not-after, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// Why a certificate file cannot be reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot read the file: {0}")]
    Read(String),
    #[error("no PEM certificate in the file")]
    NoCertificate,
    #[error("bad PEM: {0}")]
    Pem(String),
    #[error("certificate {index} is not valid X.509: {message}")]
    Der { index: usize, message: String },
}

fn directory_string(d: &DirectoryString) -> String {
    match d {
        DirectoryString::PrintableString(s) => s.as_str().to_owned(),
        DirectoryString::TeletexString(s) => s.as_str().to_owned(),
        DirectoryString::Utf8String(s) => s.clone(),
        DirectoryString::BmpString(s) => s.to_string(),
    }
}

/// Parses a PEM file's certificates (other PEM sections, such as keys, are skipped) and
/// returns the one that expires first. No I/O, no clock.
pub fn inspect_pem(pem: &[u8]) -> Result<CertSummary, CertError> {
    let mut first: Option<(i64, Option<String>)> = None;
    let mut count = 0usize;
    for (i, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let der = der.map_err(|e| CertError::Pem(e.to_string()))?;
        let cert = Certificate::from_der(der.as_ref()).map_err(|e| CertError::Der {
            index: i + 1,
            message: e.to_string(),
        })?;
        count += 1;
        let tbs = cert.tbs_certificate();
        let not_after = i64::try_from(tbs.validity().not_after.to_unix_duration().as_secs())
            .unwrap_or(i64::MAX);
        if first.as_ref().is_none_or(|(t, _)| not_after < *t) {
            let cn = tbs
                .subject()
                .common_name()
                .ok()
                .flatten()
                .map(|d| directory_string(&d));
            first = Some((not_after, cn));
        }
    }
    let (not_after_unix, subject_cn) = first.ok_or(CertError::NoCertificate)?;
    Ok(CertSummary {
        count,
        subject_cn,
        not_after_unix,
    })
}

/// The state of one file at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    Ok,
    /// Fewer than [`EXPIRING_WITHIN_SECS`] left.
    Expiring,
    Expired,
    Unreadable,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Ok => "ok",
            CertState::Expiring => "expiring",
            CertState::Expired => "expired",
            CertState::Unreadable => "unreadable",
        }
    }
}

/// One file's report: what was found when the agent started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertReport {
    pub file: TlsFile,
    pub result: Result<CertSummary, CertError>,
}

impl CertReport {
    /// Seconds from `now_unix` to the not-after (negative once expired); `None` if unreadable.
    pub fn seconds_remaining(&self, now_unix: i64) -> Option<i64> {
        self.result
            .as_ref()
            .ok()
            .map(|s| s.not_after_unix.saturating_sub(now_unix))
    }

    /// The state at `now_unix`.
    pub fn state(&self, now_unix: i64) -> CertState {
        match self.seconds_remaining(now_unix) {
            None => CertState::Unreadable,
            Some(s) if s <= 0 => CertState::Expired,
            Some(s) if s < EXPIRING_WITHIN_SECS => CertState::Expiring,
            Some(_) => CertState::Ok,
        }
    }

    /// The not-after in RFC 3339 (UTC, seconds); `None` if unreadable.
    pub fn not_after_rfc3339(&self) -> Option<String> {
        let s = self.result.as_ref().ok()?;
        chrono::DateTime::<chrono::Utc>::from_timestamp(s.not_after_unix, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    /// The `/status` JSON entry at `now_unix`. `days_remaining` counts whole days, rounded
    /// toward zero (negative once expired: `-2` is "expired 2 days ago").
    pub fn to_json(&self, now_unix: i64) -> Value {
        let secs = self.seconds_remaining(now_unix);
        let summary = self.result.as_ref().ok();
        json!({
            "component": self.file.component,
            "role": self.file.role.as_str(),
            "config_key": self.file.role.config_key(),
            "path": self.file.path.display().to_string(),
            "state": self.state(now_unix).as_str(),
            "subject_cn": summary.and_then(|s| s.subject_cn.clone()),
            "not_after": self.not_after_rfc3339(),
            "seconds_remaining": secs,
            "days_remaining": secs.map(|s| s / 86_400),
            "certificates": summary.map(|s| s.count),
            "reason": self.result.as_ref().err().map(|e| e.to_string()),
        })
    }
}

/// Reads and inspects every file (the only I/O here).
pub fn load(files: Vec<TlsFile>) -> Vec<CertReport> {
    files
        .into_iter()
        .map(|file| {
            let result = std::fs::read(&file.path)
                .map_err(|e| CertError::Read(e.to_string()))
                .and_then(|b| inspect_pem(&b));
            CertReport { file, result }
        })
        .collect()
}

/// The configured certificate files and their latest reports, shared by the runtime.
#[derive(Debug)]
pub struct CertWatch {
    files: Vec<TlsFile>,
    /// The latest reports and the state last logged for each file (same order as `files`).
    latest: Mutex<(Vec<CertReport>, Vec<Option<CertState>>)>,
}

impl CertWatch {
    /// Watches `files`; nothing is read until [`CertWatch::refresh`].
    pub fn new(files: Vec<TlsFile>) -> Self {
        let n = files.len();
        CertWatch {
            files,
            latest: Mutex::new((Vec::new(), vec![None; n])),
        }
    }

    /// Re-reads every file (blocking file I/O), logs the files whose state changed since the
    /// last log, and sets the gauges.
    pub fn refresh(&self, m: &Metrics, now_unix: i64) {
        let reports = load(self.files.clone());
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.1.resize(reports.len(), None);
        for (r, logged) in reports.iter().zip(latest.1.iter_mut()) {
            let state = r.state(now_unix);
            if *logged != Some(state) {
                *logged = Some(state);
                log(r, state, now_unix);
            }
        }
        latest.0 = reports;
        drop(latest);
        self.update(m, now_unix);
    }

    /// Sets the expiry gauges at `now_unix` from the latest reports (no I/O), and logs a file
    /// whose state changed with the passing time (`ok` → `expiring` → `expired`).
    pub fn update(&self, m: &Metrics, now_unix: i64) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let (reports, logged) = &mut *latest;
        m.clear_gauge("iomt_tls_certificate_expiry_seconds");
        for (r, logged) in reports.iter().zip(logged.iter_mut()) {
            if let Some(secs) = r.seconds_remaining(now_unix) {
                events::tls_certificate_expiry(m, &r.file.component, r.file.role.as_str(), secs);
            }
            let state = r.state(now_unix);
            if *logged != Some(state) {
                *logged = Some(state);
                log(r, state, now_unix);
            }
        }
    }

    /// The `/status` entries at `now_unix`.
    pub fn to_json(&self, now_unix: i64) -> Vec<Value> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.0.iter().map(|r| r.to_json(now_unix)).collect()
    }
}

fn log(r: &CertReport, state: CertState, now_unix: i64) {
    let detail = match &r.result {
        Ok(s) => format!(
            "CN={} not after {} ({} days, {} certificate{})",
            s.subject_cn.as_deref().unwrap_or("-"),
            r.not_after_rfc3339().as_deref().unwrap_or("-"),
            s.not_after_unix.saturating_sub(now_unix) / 86_400,
            s.count,
            if s.count == 1 {
                ""
            } else {
                "s, earliest shown"
            }
        ),
        Err(e) => e.to_string(),
    };
    events::tls_certificate_checked(
        &r.file.component,
        r.file.role.as_str(),
        &r.file.path.display().to_string(),
        state.as_str(),
        &detail,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// A fixed "now" for the tests: 2026-06-01T00:00:00Z.
    const NOW: i64 = 1_780_272_000;

    /// A self-signed certificate with this CN, valid until `not_after` (Unix seconds).
    fn cert(cn: &str, not_after: i64) -> String {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_owned());
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(u64::try_from(not_after).unwrap());
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().pem()
    }

    fn report(pem: &str) -> CertReport {
        CertReport {
            file: TlsFile {
                component: "fhir".into(),
                role: CertRole::FhirCaBundle,
                path: "/x/ca.pem".into(),
            },
            result: inspect_pem(pem.as_bytes()),
        }
    }

    #[test]
    fn states_follow_not_after() {
        let fine = report(&cert("fine", NOW + 400 * DAY));
        let soon = report(&cert("soon", NOW + 10 * DAY));
        let gone = report(&cert("gone", NOW - 3 * DAY));
        assert_eq!(fine.state(NOW), CertState::Ok);
        assert_eq!(soon.state(NOW), CertState::Expiring);
        assert_eq!(gone.state(NOW), CertState::Expired);
        assert_eq!(fine.seconds_remaining(NOW), Some(400 * DAY));
        assert_eq!(gone.seconds_remaining(NOW), Some(-3 * DAY));
        // The 30-day threshold: exactly 30 days left is ok, one second less is expiring.
        let edge = report(&cert("edge", NOW + 30 * DAY));
        assert_eq!(edge.state(NOW), CertState::Ok);
        assert_eq!(edge.state(NOW + 1), CertState::Expiring);
        assert_eq!(edge.state(NOW + 30 * DAY), CertState::Expired);
    }

    #[test]
    fn json_has_subject_not_after_and_days() {
        let r = report(&cert("iomt-test-ca", NOW + 10 * DAY + 3600));
        let j = r.to_json(NOW);
        assert_eq!(j["state"], "expiring");
        assert_eq!(j["subject_cn"], "iomt-test-ca");
        assert_eq!(j["not_after"], "2026-06-11T01:00:00Z");
        assert_eq!(j["days_remaining"], 10);
        assert_eq!(j["seconds_remaining"], 10 * DAY + 3600);
        assert_eq!(j["certificates"], 1);
        assert_eq!(j["role"], "fhir_ca_bundle");
        assert_eq!(j["component"], "fhir");
        assert!(j["reason"].is_null());
        let gone = report(&cert("gone", NOW - 3600)).to_json(NOW);
        assert_eq!(gone["state"], "expired");
        assert_eq!(gone["days_remaining"], 0, "rounded toward zero");
        let gone = report(&cert("gone", NOW - 2 * DAY - 3600)).to_json(NOW);
        assert_eq!(
            gone["days_remaining"], -2,
            "expired 2 days (and an hour) ago"
        );
    }

    #[test]
    fn a_bundle_reports_its_earliest_expiry_and_count() {
        let bundle = format!(
            "{}{}{}",
            cert("late", NOW + 900 * DAY),
            cert("early", NOW + 10 * DAY),
            cert("middle", NOW + 100 * DAY)
        );
        let s = inspect_pem(bundle.as_bytes()).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.subject_cn.as_deref(), Some("early"));
        assert_eq!(s.not_after_unix, NOW + 10 * DAY);
    }

    #[test]
    fn keys_are_skipped_and_garbage_is_unreadable() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let both = format!("{key}{}", cert("leaf", NOW + 50 * DAY));
        assert_eq!(inspect_pem(both.as_bytes()).unwrap().count, 1);
        assert_eq!(inspect_pem(key.as_bytes()), Err(CertError::NoCertificate));
        assert_eq!(
            inspect_pem(b"not a certificate"),
            Err(CertError::NoCertificate)
        );
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            matches!(
                inspect_pem(bad.as_bytes()),
                Err(CertError::Der { index: 1, .. })
            ),
            "{:?}",
            inspect_pem(bad.as_bytes())
        );
        let r = report(bad);
        assert_eq!(r.state(NOW), CertState::Unreadable);
        let j = r.to_json(NOW);
        assert_eq!(j["state"], "unreadable");
        assert!(j["not_after"].is_null() && j["days_remaining"].is_null());
        assert!(
            j["reason"].as_str().unwrap().contains("not valid X.509"),
            "{j}"
        );
    }

    #[test]
    fn load_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.pem");
        std::fs::write(&ok, cert("ok", NOW + 100 * DAY)).unwrap();
        let files = vec![
            TlsFile {
                component: "broker".into(),
                role: CertRole::MqttClientCert,
                path: ok,
            },
            TlsFile {
                component: "fhir".into(),
                role: CertRole::FhirCaBundle,
                path: dir.path().join("missing.pem"),
            },
        ];
        let r = load(files);
        assert_eq!(r[0].state(NOW), CertState::Ok);
        assert_eq!(r[1].state(NOW), CertState::Unreadable);
        assert!(
            matches!(&r[1].result, Err(CertError::Read(m)) if m.contains("No such file")),
            "{:?}",
            r[1].result
        );
    }

    #[test]
    fn the_watch_rereads_files_and_gauges_follow_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert("old", NOW + 40 * DAY)).unwrap();
        let w = CertWatch::new(vec![TlsFile {
            component: "fhir".into(),
            role: CertRole::FhirCaBundle,
            path: path.clone(),
        }]);
        let m = Metrics::new(false);
        let gauge = |m: &Metrics| {
            m.gauge(
                "iomt_tls_certificate_expiry_seconds",
                &[("component", "fhir"), ("role", "fhir_ca_bundle")],
            )
        };
        assert!(w.to_json(NOW).is_empty(), "nothing read before refresh");
        w.refresh(&m, NOW);
        assert_eq!(gauge(&m), Some((40 * DAY) as f64));
        assert_eq!(w.to_json(NOW)[0]["state"], "ok");
        // Time passes without a re-read: the gauge and the state follow.
        w.update(&m, NOW + 15 * DAY);
        assert_eq!(gauge(&m), Some((25 * DAY) as f64));
        assert_eq!(w.to_json(NOW + 15 * DAY)[0]["state"], "expiring");
        // The file is replaced: the next refresh reports the new one.
        std::fs::write(&path, cert("new", NOW + 400 * DAY)).unwrap();
        w.refresh(&m, NOW + 15 * DAY);
        let j = &w.to_json(NOW + 15 * DAY)[0];
        assert_eq!(j["subject_cn"], "new");
        assert_eq!(j["state"], "ok");
        assert_eq!(gauge(&m), Some((385 * DAY) as f64));
        // Removed: unreadable, and its gauge series is gone.
        std::fs::remove_file(&path).unwrap();
        w.refresh(&m, NOW + 15 * DAY);
        assert_eq!(w.to_json(NOW + 15 * DAY)[0]["state"], "unreadable");
        assert_eq!(gauge(&m), None);
    }

    #[test]
    fn tls_files_come_from_fhir_and_mqtt_settings() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cli.pem", "cli.key", "mq-ca.pem", "mq-cli.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let text = r##"
[mapping]
device = "dev.json"
[[sources]]
type = "mqtt"
name = "broker"
host = "127.0.0.1"
client_id = "gw"
ca_file = "mq-ca.pem"
client_cert_file = "mq-cli.pem"
client_key = { file = "cli.key" }
subscriptions = [{ filter = "#" }]
[[sources]]
type = "mqtt"
name = "system-ca"
host = "127.0.0.1"
client_id = "gw2"
tls = true
subscriptions = [{ filter = "#" }]
[[sinks]]
type = "fhir"
name = "fhir"
url = "https://fhir.example"
ca_file = "ca.pem"
client_cert = "cli.pem"
client_key = "cli.key"
"##;
        std::fs::write(
            dir.path().join("dev.json"),
            r#"{"templateType":"CollectionContent","template":[]}"#,
        )
        .unwrap();
        let p = dir.path().join("ward.toml");
        std::fs::write(&p, text).unwrap();
        let cfg = crate::config::load_file(&p).unwrap_or_else(|e| panic!("{e:?}"));
        let got: Vec<(String, &str, PathBuf)> = tls_files(&cfg)
            .into_iter()
            .map(|f| (f.component, f.role.as_str(), f.path))
            .collect();
        let d = dir.path();
        assert_eq!(
            got,
            vec![
                ("broker".into(), "mqtt_ca_bundle", d.join("mq-ca.pem")),
                ("broker".into(), "mqtt_client_cert", d.join("mq-cli.pem")),
                ("fhir".into(), "fhir_ca_bundle", d.join("ca.pem")),
                ("fhir".into(), "fhir_client_cert", d.join("cli.pem")),
            ]
        );
    }
}
