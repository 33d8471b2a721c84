//! The running agent against bad input, a damaged store and template edits.

use crate::harness::{
    admin_get, agent_bin, drain_config, drain_config_then, free_port, metric, repo, start,
    terminate,
};
use iomt_agent::buffer::{NewRecord, Store, StoreConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn config(dir: &Path, devices: u32, watch: bool) -> std::path::PathBuf {
    let text = format!(
        r#"[agent]
state_dir = "state"
[mapping]
device = "device.json"
fhir = "fhir.json"
watch = {watch}
[buffer]
commit_interval_ms = 50
[pipeline]
flush_interval_secs = 0.1
[[sources]]
type = "simulator"
name = "sim"
heart_rate_monitors = {devices}
pulse_oximeters = 0
bp_cuffs = 0
thermometers = 0
[[sinks]]
type = "outbox"
name = "outbox"
"#
    );
    let p = dir.join("ward.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn copy_templates(dir: &Path) {
    std::fs::copy(
        repo().join("templates/vitals.device.json"),
        dir.join("device.json"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("templates/vitals.fhir.json"),
        dir.join("fhir.json"),
    )
    .unwrap();
}

fn envelope(body: Value) -> String {
    json!({"Body": body, "Properties": {}, "SystemProperties": {}}).to_string()
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(agent_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn outbox_observations(state: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(state.join("outbox")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("Observation-")
        {
            out.extend(
                std::fs::read_to_string(&p)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
    }
    out
}

/// Every dead-letter reason of the normalize and transform stages, each asserted, with good
/// messages around them still delivered; then a template fix and `dlq replay` delivers the
/// message that had failed for the template's sake.
#[test]
fn bad_messages_are_dead_lettered_with_a_reason_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    copy_templates(dir.path());
    // An extra device template for a type the FHIR mapping does not know.
    let mut dev: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("device.json")).unwrap())
            .unwrap();
    let mut extra = dev["template"][0].clone();
    extra["template"]["typeName"] = json!("glucose");
    extra["template"]["typeMatchExpression"] = json!("$..[?(@values.glucose)]");
    extra["template"]["values"] = json!([{"valueName": "glucose", "valueExpression": "$.matchedToken.values.glucose", "required": true}]);
    dev["template"].as_array_mut().unwrap().push(extra);
    std::fs::write(dir.path().join("device.json"), dev.to_string()).unwrap();
    let cfg = config(dir.path(), 0, false);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let good = |dev: &str, t: &str| json!({"deviceId": dev, "patientId": "p1", "timestamp": t, "values": {"heartRate": 70}});
    let cases: Vec<(&str, String)> = vec![
        ("good", envelope(good("d1", "2026-01-01T10:00:00Z"))),
        ("not_json", "{this is not json".to_owned()),
        ("not_json", json!({"Body": null}).to_string()),
        (
            "missing_required",
            envelope(
                json!({"patientId": "p1", "timestamp": "2026-01-01T10:00:00Z", "values": {"heartRate": 70}}),
            ),
        ),
        (
            "bad_timestamp",
            envelope(
                json!({"deviceId": "d2", "patientId": "p1", "timestamp": "yesterday", "values": {"heartRate": 70}}),
            ),
        ),
        (
            "bad_timestamp",
            envelope(
                json!({"deviceId": "d2", "patientId": "p1", "timestamp": 1767261600, "values": {"heartRate": 70}}),
            ),
        ),
        (
            "no_fhir_template",
            envelope(
                json!({"deviceId": "d3", "patientId": "p1", "timestamp": "2026-01-01T10:00:00Z", "values": {"glucose": 5.4}}),
            ),
        ),
        (
            "identity_not_defined",
            envelope(
                json!({"deviceId": "d4", "timestamp": "2026-01-01T10:00:00Z", "values": {"heartRate": 70}}),
            ),
        ),
        // No device template matches a weight: not an error (upstream drops it), but counted.
        (
            "unmatched",
            envelope(
                json!({"deviceId": "d5", "patientId": "p1", "timestamp": "2026-01-01T10:00:00Z", "values": {"weightKg": 80}}),
            ),
        ),
        ("good", envelope(good("d1", "2026-01-01T10:00:01Z"))),
    ];
    {
        let mut store = Store::open(state.join("log.sqlite"), &StoreConfig::default(), 0)
            .unwrap()
            .store;
        store.register_sinks(&["outbox"]).unwrap();
        let recs: Vec<NewRecord> = cases
            .iter()
            .map(|(_, env)| NewRecord {
                source: "test".into(),
                dedup_key: None,
                receive_time_ms: 1_767_261_600_000,
                device_time_ms: None,
                payload: env.clone().into_bytes(),
                envelope: env.clone(),
            })
            .collect();
        store.append_batch(&recs, 1_767_261_600_000).unwrap();
    }
    drain_config_then(&cfg, |port| {
        assert_eq!(
            metric(port, "iomt_normalize_unmatched_total{sink=\"outbox\"}"),
            Some(1.0),
            "the message no template matched is counted"
        );
    });
    // The good readings are delivered.
    let obs = outbox_observations(&state);
    assert_eq!(
        obs.len(),
        2,
        "two good heart-rate readings → two Observations: {obs:#?}"
    );
    // Every bad one is a dead letter with its reason, stage and raw payload.
    let (code, out) = cli(&["dlq", "list", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let list: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let reasons: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = cases
        .iter()
        .map(|(r, _)| *r)
        .filter(|r| *r != "good" && *r != "unmatched")
        .collect();
    assert_eq!(reasons, want, "{list:#}");
    let first = list[0]["id"].as_i64().unwrap();
    let (code, shown) = cli(&[
        "dlq",
        "show",
        &first.to_string(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        shown.contains("{this is not json"),
        "the raw payload is kept: {shown}"
    );
    // Fix the template (glucose gets a FHIR template) and replay: the reading is delivered.
    let mut fhir: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("fhir.json")).unwrap())
            .unwrap();
    let mut g = fhir["template"][0].clone();
    g["template"]["typeName"] = json!("glucose");
    g["template"]["codes"] = json!([{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}]);
    g["template"]["value"] = json!({"valueType": "Quantity", "valueName": "glucose", "unit": "mmol/L", "code": "mmol/L", "system": "http://unitsofmeasure.org"});
    fhir["template"].as_array_mut().unwrap().push(g);
    std::fs::write(dir.path().join("fhir.json"), fhir.to_string()).unwrap();
    let glucose_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "no_fhir_template")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (code, out) = cli(&[
        "dlq",
        "replay",
        &glucose_id.to_string(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    drain_config(&cfg);
    let obs = outbox_observations(&state);
    assert!(
        obs.iter().any(|o| o["code"]["text"] == "glucose"),
        "the replayed reading is delivered"
    );
    let (_, out) = cli(&["dlq", "list", "--config", cfg.to_str().unwrap()]);
    let after: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        after.as_array().unwrap().len(),
        want.len() - 1,
        "the replayed letter left the dead-letter store"
    );
}

/// A damaged store is moved aside; the agent starts on a fresh one, says so, and works.
#[test]
fn a_corrupted_store_is_quarantined_and_the_agent_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    copy_templates(dir.path());
    let cfg = config(dir.path(), 2, false);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("log.sqlite"), vec![0x5Au8; 64 * 1024]).unwrap();
    let port = free_port();
    let mut child = start(&cfg, port);
    let t0 = Instant::now();
    let mut delivered = 0.0;
    while t0.elapsed() < Duration::from_secs(20) {
        delivered = metric(port, "iomt_sink_delivered_total{sink=\"outbox\"}").unwrap_or(0.0);
        if delivered > 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(delivered > 0.0, "readings flow on the fresh store");
    assert_eq!(metric(port, "iomt_store_quarantined"), Some(1.0));
    let ready = admin_get(port, "/readyz").unwrap();
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("quarantined"),
        "{ready}"
    );
    let (code, _) = terminate(&mut child);
    assert_eq!(code, Some(0));
    let moved: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    assert!(
        !moved.is_empty(),
        "the damaged file is kept aside for inspection"
    );
}

/// A template edit is picked up without a restart; a broken edit keeps the previous set.
#[test]
fn templates_reload_on_change_and_a_broken_edit_keeps_the_old_set() {
    let dir = tempfile::tempdir().unwrap();
    copy_templates(dir.path());
    let cfg = config(dir.path(), 1, true);
    let port = free_port();
    let mut child = start(&cfg, port);
    let wait_for = |prefix: &str, at_least: f64| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if metric(port, prefix).unwrap_or(0.0) >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    assert!(wait_for("iomt_sink_delivered_total{sink=\"outbox\"}", 1.0));
    std::thread::sleep(Duration::from_millis(1100)); // mtime resolution
    std::fs::write(dir.path().join("device.json"), "{ not json").unwrap();
    assert!(
        wait_for("iomt_templates_reloads_total{result=\"error\"}", 1.0),
        "the broken edit is reported"
    );
    let before = metric(port, "iomt_sink_delivered_total{sink=\"outbox\"}").unwrap();
    assert!(
        wait_for("iomt_sink_delivered_total{sink=\"outbox\"}", before + 2.0),
        "the previous templates keep working"
    );
    std::thread::sleep(Duration::from_millis(1100));
    copy_templates(dir.path());
    assert!(
        wait_for("iomt_templates_reloads_total{result=\"ok\"}", 1.0),
        "the fixed file is loaded"
    );
    let (code, took) = terminate(&mut child);
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5));
}

/// `validate` reports every problem and exits 78; a good config exits 0.
#[test]
fn validate_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    copy_templates(dir.path());
    let cfg = config(dir.path(), 1, false);
    let (code, out) = cli(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    std::fs::write(
        dir.path().join("bad.toml"),
        "colour = 1\n[mapping]\ndevice = \"nope.json\"\n[[sources]]\ntype = \"x\"\n",
    )
    .unwrap();
    let (code, out) = cli(&[
        "validate",
        "--config",
        dir.path().join("bad.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 78, "{out}");
    for needle in [
        "colour",
        "nope.json",
        "unknown source type 'x'",
        "no sink configured",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in {out}");
    }
}

/// Per-device last-reading age appears only when device labels are switched on, and patient
/// ids never appear in the metrics.
#[test]
fn device_labels_are_opt_in_and_patient_ids_never_appear() {
    for labels in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        copy_templates(dir.path());
        let cfg = config(dir.path(), 1, false);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "[agent]\n",
            &format!("[agent]\nmetrics_device_labels = {labels}\n"),
        );
        std::fs::write(&cfg, text).unwrap();
        let port = free_port();
        let mut child = start(&cfg, port);
        let t0 = Instant::now();
        let mut text = String::new();
        while t0.elapsed() < Duration::from_secs(15) {
            text = admin_get(port, "/metrics").unwrap_or_default();
            if text.contains("iomt_sink_delivered_total{sink=\"outbox\"}")
                && (!labels || text.contains("iomt_device_last_reading_age_seconds{"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        terminate(&mut child);
        assert_eq!(
            text.contains("iomt_device_last_reading_age_seconds{device=\"sim-hr-001\"}"),
            labels,
            "{text}"
        );
        assert!(
            !text.contains("patient"),
            "patient ids must never be metric labels: {text}"
        );
    }
}

/// `status` summarises a running agent and exits 0 when it is ready.
#[test]
fn status_summarises_a_running_agent() {
    let dir = tempfile::tempdir().unwrap();
    copy_templates(dir.path());
    let cfg = config(dir.path(), 1, false);
    let port = free_port();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[agent]\n",
        &format!("[agent]\nadmin_addr = \"127.0.0.1:{port}\"\n"),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut child = Command::new(agent_bin())
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--progress-secs",
            "0",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while metric(port, "iomt_sink_delivered_total{sink=\"outbox\"}").is_none()
        && t0.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out) = cli(&["status", "--config", cfg.to_str().unwrap()]);
    terminate(&mut child);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("READY") && out.contains("sim") && out.contains("sink outbox"),
        "{out}"
    );
    assert!(out.contains("certificates: none configured"), "{out}");
    let (code, out) = cli(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "a stopped agent is reported: {out}");
}

/// Every shipped example validates, and `config example` prints one that does too.
#[test]
fn shipped_examples_validate() {
    let examples = repo().join("examples");
    for e in std::fs::read_dir(&examples).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml")
            && p.file_name().unwrap() != "ward.example.toml"
        {
            let (code, out) = cli(&["validate", "--config", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}", p.display());
        }
    }
    let (code, text) = cli(&["config", "example"]);
    assert_eq!(code, 0);
    // Point the system template paths at the repository's templates, then validate.
    let dir = tempfile::tempdir().unwrap();
    let text = text.replace(
        "/usr/share/iomt-edge/templates",
        repo().join("templates").to_str().unwrap(),
    );
    std::fs::write(dir.path().join("ward.toml"), text).unwrap();
    let (code, out) = cli(&[
        "validate",
        "--config",
        dir.path().join("ward.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
}

/// A self-signed PEM certificate with this CN whose not-after is `secs_from_now` from now
/// (negative: already expired), and its PEM key.
fn pem_cert(cn: &str, secs_from_now: i64) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_owned());
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(1970, 1, 1)
        + Duration::from_secs(u64::try_from(now + secs_from_now).unwrap());
    let key = rcgen::KeyPair::generate().unwrap();
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// `status` (and `/status`, `/metrics`) report the configured TLS files: a CA bundle by its
/// earliest certificate, an expired client certificate.
#[test]
fn status_reports_certificate_expiry() {
    const DAY: i64 = 86_400;
    let dir = tempfile::tempdir().unwrap();
    copy_templates(dir.path());
    let (fine, _) = pem_cert("ward-root-ca", 400 * DAY);
    let (soon, _) = pem_cert("soon-ca", 10 * DAY + 3600);
    std::fs::write(dir.path().join("ca.pem"), format!("{fine}{soon}")).unwrap();
    let (cli_pem, cli_key) = pem_cert("gateway-client", -2 * DAY - 3600);
    std::fs::write(dir.path().join("cli.pem"), cli_pem).unwrap();
    std::fs::write(dir.path().join("cli.key"), cli_key).unwrap();
    let cfg = config(dir.path(), 1, false);
    let port = free_port();
    // Nothing listens on the FHIR port: the sink fails (not ready), the agent runs.
    let fhir_port = free_port();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[agent]\n",
        &format!("[agent]\nadmin_addr = \"127.0.0.1:{port}\"\n"),
    ) + &format!(
        "[[sinks]]\ntype = \"fhir\"\nname = \"fhir\"\nurl = \"http://127.0.0.1:{fhir_port}/fhir\"\nca_file = \"ca.pem\"\nclient_cert = \"cli.pem\"\nclient_key = \"cli.key\"\n"
    );
    std::fs::write(&cfg, text).unwrap();
    let mut child = start(&cfg, port);
    let t0 = Instant::now();
    let mut status = None;
    while status.is_none() && t0.elapsed() < Duration::from_secs(15) {
        status = admin_get(port, "/status");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, out) = cli(&["status", "--config", cfg.to_str().unwrap()]);
    let expiry = metric(
        port,
        "iomt_tls_certificate_expiry_seconds{component=\"fhir\",role=\"fhir_ca_bundle\"}",
    );
    let client_expiry = metric(
        port,
        "iomt_tls_certificate_expiry_seconds{component=\"fhir\",role=\"fhir_client_cert\"}",
    );
    let (_, stderr) = {
        terminate(&mut child);
        let mut e = String::new();
        use std::io::Read;
        child.stderr.take().unwrap().read_to_string(&mut e).ok();
        ((), e)
    };
    let status = status.expect("the admin endpoint answered");
    let body: Value = serde_json::from_str(status.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let certs = body["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{body}");
    let ca = &certs[0];
    assert_eq!(ca["role"], "fhir_ca_bundle");
    assert_eq!(ca["state"], "expiring", "{ca}");
    assert_eq!(
        ca["subject_cn"], "soon-ca",
        "the bundle's earliest expiry: {ca}"
    );
    assert_eq!(ca["certificates"], 2);
    assert_eq!(ca["days_remaining"], 10, "{ca}");
    assert!(ca["not_after"].as_str().unwrap().ends_with('Z'), "{ca}");
    let client = &certs[1];
    assert_eq!(client["role"], "fhir_client_cert");
    assert_eq!(client["state"], "expired", "{client}");
    assert_eq!(client["days_remaining"], -2, "{client}");

    assert!(
        out.contains("certificates (expiring = fewer than 30 days"),
        "{out}"
    );
    assert!(
        out.contains("EXPIRING")
            && out.contains("fhir fhir ca bundle")
            && out.contains("CN=soon-ca"),
        "{out}"
    );
    assert!(out.contains("earliest of 2"), "{out}");
    assert!(
        out.contains("EXPIRED") && out.contains("CN=gateway-client") && out.contains("(-2 days)"),
        "{out}"
    );
    let expiry = expiry.expect("the CA bundle's expiry gauge");
    assert!(
        (10 * DAY - 60..=10 * DAY + 3600).contains(&(expiry as i64)),
        "{expiry}"
    );
    assert!(
        client_expiry.expect("the client gauge") < -(DAY as f64),
        "{client_expiry:?}"
    );
    assert!(
        stderr.contains("TLS certificate expires within 30 days")
            && stderr.contains("TLS certificate has expired"),
        "start-up warnings: {stderr}"
    );
}
