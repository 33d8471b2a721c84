//! The FHIR sink against a real FHIR R4 server: the project's Medplum-based test server
//! (`tests/fhir-server/start.sh --port 0`), the real `iomt-agent` binary, the built-in
//! simulator. Every resource the agent writes is read back and checked (ids and identifiers by
//! upstream's formula, values, SampledData slots, references, codes, units), validated with
//! `tests/fhir-server/validate.sh`, replayed without new versions, and put through an outage,
//! rejections, a write race, OAuth expiry and a wrong secret.
//!
//! Outage: the test server keeps its data in memory, so "restart" here is: freeze the server
//! (every request answers 503), export its store (`/$test/export`), stop the process, keep the
//! simulator going, start a new server on the same port and PUT the exported resources back
//! (their version ids restart at 1, which the agent must cope with), then let the agent drain.

use crate::harness::{admin_get, agent_bin, free_port, metric, repo, terminate};
use iomt_agent::mapping::{load_device_mapping, Measurement, Timestamp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVICE_SYSTEM: &str = "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/";
const DEVSYS: &str = "urn:iomt-edge:test:device";
const MRNSYS: &str = "urn:iomt-edge:test:mrn";
const UCUM: &str = "http://unitsofmeasure.org";

fn server_dir() -> PathBuf {
    repo().join("tests/fhir-server")
}

/// Polls `f` every 100 ms until it is true or `limit` passes.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// A running test server (stopped on drop, by its PID).
struct Server {
    child: Option<Child>,
    port: u16,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Self::start_on(0, args)
    }

    fn start_on(port: u16, args: &[&str]) -> Server {
        let mut child = Command::new(server_dir().join("start.sh"))
            .args(["--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tests/fhir-server/start.sh");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).ok();
            tx.send(line).ok();
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the FHIR test server printed LISTENING");
        let port: u16 = line
            .trim()
            .strip_prefix("LISTENING 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from start.sh: {line:?}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Server {
            child: Some(child),
            port,
            rt,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn req(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}/{}", self.base(), path.trim_start_matches('/'));
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(m, &url);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        self.rt.block_on(async {
            let resp = r
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    fn get(&self, path: &str) -> Value {
        let (s, v) = self.req("GET", path, None);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    fn put(&self, resource: &Value) {
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        let (s, v) = self.req("PUT", &path, Some(resource));
        assert!(s == 200 || s == 201, "PUT {path}: {s} {v}");
    }

    fn fail(&self, rule: Value) {
        let (s, v) = self.req("POST", "$test/fail", Some(&rule));
        assert_eq!(s, 201, "{v}");
    }

    fn export(&self) -> Vec<Value> {
        let url = format!("{}/$test/export", self.base());
        let text = self.rt.block_on(async {
            self.http
                .get(&url)
                .send()
                .await
                .expect("export")
                .text()
                .await
                .expect("export body")
        });
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("NDJSON"))
            .collect()
    }

    fn of_type(&self, t: &str) -> Vec<Value> {
        self.export()
            .into_iter()
            .filter(|r| r["resourceType"] == t)
            .collect()
    }

    fn stats(&self) -> Value {
        self.get("$test/stats")
    }

    /// Runs `validate.sh --server` (fhirkit + the project checks); returns (exit code, output).
    fn validate(&self) -> (i32, String) {
        let out = Command::new(server_dir().join("validate.sh"))
            .args(["--server", &self.base()])
            .output()
            .expect("validate.sh");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .ok();
            c.wait().ok();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real agent binary, with its stderr collected.
struct Agent {
    child: Child,
    admin: u16,
    log: Arc<Mutex<String>>,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        let admin = free_port();
        let mut child = crate::harness::start(config, admin);
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let a = Agent { child, admin, log };
        assert!(
            wait_for(Duration::from_secs(20), || admin_get(a.admin, "/livez")
                .is_some()),
            "the agent's admin endpoint did not come up: {}",
            a.log()
        );
        a
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn metric(&self, prefix: &str) -> f64 {
        metric(self.admin, prefix).unwrap_or(0.0)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits until the source stored `n` readings and the sink has nothing pending. The
    /// pending gauge is refreshed once a second, so only a reading taken more than a second
    /// after the n-th reading was stored counts.
    fn drained(&mut self, sink: &str, n: u64, limit: Duration) {
        let pending = format!("iomt_buffer_pending_records{{sink=\"{sink}\"}}");
        let mut all_stored: Option<Instant> = None;
        let ok = wait_for(limit, || {
            if all_stored.is_none() && self.metric("iomt_source_received_total") >= n as f64 {
                all_stored = Some(Instant::now());
            }
            all_stored.is_some_and(|t| t.elapsed() > Duration::from_millis(1200))
                && metric(self.admin, &pending) == Some(0.0)
        });
        assert!(
            ok,
            "not drained: received {} pending {:?}\n{}",
            self.metric("iomt_source_received_total"),
            metric(self.admin, &pending),
            self.log()
        );
    }

    fn stop(mut self) -> (Option<i32>, String) {
        let (code, _) = terminate(&mut self.child);
        std::thread::sleep(Duration::from_millis(50));
        (code, self.log())
    }
}

/// `templates/vitals.fhir.json` with heart rate as hourly SampledData (1 s slots).
fn hourly_heart_rate_template(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("templates/vitals.fhir.json")).unwrap();
    let mut t: Value = serde_json::from_str(&text).unwrap();
    for entry in t["template"].as_array_mut().unwrap() {
        let inner = &mut entry["template"];
        if inner["typeName"] == "heartrate" {
            inner["periodInterval"] = json!(60);
            inner["value"] = json!({
                "valueType": "SampledData",
                "valueName": "heartRate",
                "defaultPeriod": 1000,
                "unit": "/min"
            });
        }
    }
    let p = dir.join("fhir-hourly-hr.json");
    std::fs::write(&p, serde_json::to_string_pretty(&t).unwrap()).unwrap();
    p
}

struct Sim {
    hr: u32,
    spo2: u32,
    bp: u32,
    temp: u32,
    max: u64,
    interval: f64,
}

/// A ward config with the simulator and the given `[[sinks]]` TOML.
fn config(dir: &Path, name: &str, fhir_template: &Path, sim: &Sim, sinks: &str) -> PathBuf {
    let text = format!(
        r#"[agent]
state_dir = "{state}"
[mapping]
device = "{dev}"
fhir = "{fhir}"
watch = false
[buffer]
commit_interval_ms = 50
[pipeline]
flush_interval_secs = 0.3
max_events_per_flush = 500
[[sources]]
type = "simulator"
name = "sim"
heart_rate_monitors = {hr}
pulse_oximeters = {spo2}
bp_cuffs = {bp}
thermometers = {temp}
interval_secs = {interval}
max_readings = {max}
ack_log = "{ack}"
{sinks}
"#,
        state = dir.join("state").display(),
        dev = repo().join("templates/vitals.device.json").display(),
        fhir = fhir_template.display(),
        hr = sim.hr,
        spo2 = sim.spo2,
        bp = sim.bp,
        temp = sim.temp,
        interval = sim.interval,
        max = sim.max,
        ack = dir.join("acked.ndjson").display(),
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Device ids and their patients (bed numbers), in the simulator's order.
fn sim_devices(sim: &Sim) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bed = 0;
    for (tag, n) in [
        ("hr", sim.hr),
        ("spo2", sim.spo2),
        ("bp", sim.bp),
        ("temp", sim.temp),
    ] {
        for i in 1..=n {
            bed += 1;
            out.push((format!("sim-{tag}-{i:03}"), format!("sim-patient-{bed:03}")));
        }
    }
    out
}

/// Lookup mode: the hospital's Patient and Device resources (ids unlike the message ids).
fn provision(server: &Server, devices: &[(String, String)]) -> BTreeMap<String, (String, String)> {
    let mut ids = BTreeMap::new();
    for (i, (device, patient)) in devices.iter().enumerate() {
        let pid = format!("pat{i}");
        let did = format!("dev{i}");
        server.put(&json!({"resourceType": "Patient", "id": pid,
            "identifier": [{"system": MRNSYS, "value": patient}]}));
        server.put(
            &json!({"resourceType": "Device", "id": did, "status": "active",
            "identifier": [{"system": DEVSYS, "value": device}],
            "patient": {"reference": format!("Patient/{pid}")}}),
        );
        ids.insert(device.clone(), (pid, did));
    }
    ids
}

/// The acknowledged readings, normalized (the device mapping is tested elsewhere).
fn acked_measurements(dir: &Path) -> Vec<Measurement> {
    let dev = load_device_mapping(
        &std::fs::read_to_string(repo().join("templates/vitals.device.json")).unwrap(),
    )
    .into_result()
    .unwrap();
    let t = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let text = std::fs::read_to_string(dir.join("acked.ndjson")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| {
            let body: Value = serde_json::from_str(l).unwrap();
            dev.normalize(json!({ "Body": body }), t).unwrap()
        })
        .collect()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn seg(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y%m%d%H%M%SZ").to_string()
}

/// What the server must hold, computed here from the readings and upstream's formulas:
/// identifier value → (id, type, device, the (time, value) samples).
#[derive(Debug, Default)]
struct Expected {
    obs: BTreeMap<String, (String, String, String, BTreeMap<i64, String>)>,
}

/// `ids(device) = (patient FHIR id, device FHIR id)`; `hourly` types use hourly windows.
fn expected(
    ms: &[Measurement],
    ids: &dyn Fn(&Measurement) -> (String, String),
    hourly: &[&str],
) -> Expected {
    use chrono::{Duration as D, DurationRound};
    let mut e = Expected::default();
    for m in ms {
        let (pid, did) = ids(m);
        let t = m.occurrence_time.datetime();
        let segment = if hourly.contains(&m.type_name.as_str()) {
            let start = t.duration_trunc(D::hours(1)).unwrap();
            format!("{}.{}", seg(start), seg(start + D::seconds(3599)))
        } else {
            format!("{}.{}", seg(t), seg(t))
        };
        let identifier = format!("{pid}.{did}.{}.{segment}", m.type_name);
        let id = sha256_hex(&format!("{SERVICE_SYSTEM}_{identifier}"));
        let entry = e.obs.entry(identifier).or_insert((
            id,
            m.type_name.clone(),
            m.device_id.clone(),
            BTreeMap::new(),
        ));
        let value = m
            .properties
            .first()
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        entry.3.insert(t.timestamp_millis(), value);
    }
    e
}

/// The SampledData token rule: decimals or E/L/U separated by single spaces.
fn tokens_well_formed(data: &str) -> bool {
    let re = regex::Regex::new(
        r"^(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|E|L|U)( (-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|E|L|U))*$",
    )
    .unwrap();
    re.is_match(data)
}

fn same_number(a: &str, b: &Value) -> bool {
    match (a.parse::<f64>(), b.as_f64()) {
        (Ok(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => false,
    }
}

/// Checks every Observation on the server against `exp` and the FHIR template: the set of
/// identifiers and ids, values (SampledData slot by slot), references, codes, category, units.
fn check_observations(server: &Server, exp: &Expected, template: &Path, hourly: &[&str]) {
    let tpl: Value = serde_json::from_str(&std::fs::read_to_string(template).unwrap()).unwrap();
    let tpl_of = |t: &str| {
        tpl["template"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["template"])
            .find(|x| x["typeName"] == t)
            .cloned()
            .unwrap()
    };
    let obs = server.of_type("Observation");
    let got: BTreeMap<String, &Value> = obs
        .iter()
        .map(|o| (o["identifier"][0]["value"].as_str().unwrap().to_owned(), o))
        .collect();
    assert_eq!(got.len(), obs.len(), "one Observation per identifier");
    let want: BTreeSet<&String> = exp.obs.keys().collect();
    let have: BTreeSet<&String> = got.keys().collect();
    assert_eq!(
        want.difference(&have).count() + have.difference(&want).count(),
        0,
        "missing {:?}\nunexpected {:?}",
        want.difference(&have).take(3).collect::<Vec<_>>(),
        have.difference(&want).take(3).collect::<Vec<_>>()
    );
    for (identifier, (id, type_name, _device, samples)) in &exp.obs {
        let o = got[identifier];
        let t = tpl_of(type_name);
        assert_eq!(o["id"], *id, "id = sha256(system_identifier)");
        assert_eq!(
            o["identifier"],
            json!([{"system": SERVICE_SYSTEM, "value": identifier}])
        );
        assert!(
            o["status"] == "final" || o["status"] == "amended",
            "{}",
            o["status"]
        );
        // References resolve and agree with the Device's patient.
        let subject = o["subject"]["reference"].as_str().unwrap();
        let device = o["device"]["reference"].as_str().unwrap();
        let d = server.get(device);
        server.get(subject);
        assert_eq!(
            d["patient"]["reference"], subject,
            "Observation.subject is Device.patient"
        );
        // Codes: the template's, then the service coding; category as the template says.
        let mut codes: Vec<Value> = t["codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| json!({"system": c["system"], "code": c["code"], "display": c["display"]}))
            .collect();
        codes.push(json!({"system": SERVICE_SYSTEM, "code": type_name, "display": type_name}));
        assert_eq!(o["code"]["coding"], json!(codes), "{type_name}");
        assert_eq!(o["code"]["text"], *type_name);
        assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(
            o["category"][0]["coding"][0]["system"],
            "http://terminology.hl7.org/CodeSystem/observation-category"
        );
        if hourly.contains(&type_name.as_str()) {
            let sd = &o["valueSampledData"];
            let data = sd["data"].as_str().unwrap();
            assert!(
                tokens_well_formed(data),
                "bad SampledData tokens: {data:.80}"
            );
            assert_eq!(sd["period"], json!(1000));
            assert_eq!(sd["dimensions"], json!(1));
            // Upstream's origin, exactly: value 0 and the template's unit, no UCUM system or
            // code (docs/decisions/0005-sampleddata-origin-upstream-shape.md).
            assert_eq!(
                sd["origin"],
                json!({"value": 0, "unit": t["value"]["unit"]}),
                "SampledData origin in upstream's shape"
            );
            let tokens: Vec<&str> = data.split(' ').collect();
            assert_eq!(tokens.len(), 3600, "one token per second of the hour");
            let start = Timestamp::parse_rfc3339(o["effectivePeriod"]["start"].as_str().unwrap())
                .unwrap()
                .datetime()
                .timestamp_millis();
            for (i, tok) in tokens.iter().enumerate() {
                let at = start + i as i64 * 1000;
                match samples.get(&at) {
                    Some(v) => assert!(
                        same_number(v, &json!(tok.parse::<f64>().unwrap_or(f64::NAN))),
                        "slot {i}: {tok} != {v}"
                    ),
                    None => assert_eq!(*tok, "E", "slot {i} has no reading"),
                }
            }
        } else if let Some(v) = t.get("value").filter(|v| v.is_object()) {
            let q = &o["valueQuantity"];
            assert_eq!(samples.len(), 1);
            assert!(
                same_number(samples.values().next().unwrap(), &q["value"]),
                "{q}"
            );
            assert_eq!(q["system"], v["system"]);
            assert_eq!(q["system"], UCUM);
            assert_eq!(q["code"], v["code"]);
            assert_eq!(q["unit"], v["unit"]);
        } else {
            // Blood pressure: components with UCUM mm[Hg].
            let comps = o["component"].as_array().unwrap();
            assert_eq!(comps.len(), t["components"].as_array().unwrap().len());
            for c in comps {
                assert_eq!(c["valueQuantity"]["system"], UCUM);
                assert_eq!(c["valueQuantity"]["code"], "mm[Hg]");
            }
        }
    }
}

/// Observation id → meta.versionId.
fn versions(server: &Server) -> BTreeMap<String, String> {
    server
        .of_type("Observation")
        .iter()
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_owned(),
                o["meta"]["versionId"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Errors and warnings of `validate.sh` (notes, the documented accepted deviations, are
/// asserted separately with [`validation_notes`]).
fn unexpected_validation_issues(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.trim_start().starts_with("error") || l.trim_start().starts_with("warning"))
        .map(str::to_owned)
        .collect()
}

/// The `note` lines of `validate.sh`.
fn validation_notes(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.trim_start().starts_with("note"))
        .map(str::to_owned)
        .collect()
}

fn sink_toml(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\ntype = \"fhir\"\nname = \"{name}\"\nurl = \"{url}\"\ndevice_identifier_system = \"{DEVSYS}\"\nunready_after_secs = 1\nbackoff_initial_secs = 0.05\nbackoff_max_secs = 0.5\n{extra}\n"
    )
}

#[test]
fn end_to_end_lookup_mode_then_replay_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let sim = Sim {
        hr: 2,
        spo2: 1,
        bp: 1,
        temp: 1,
        max: 5 * 8,
        interval: 1.0,
    };
    let ids = provision(&server, &sim_devices(&sim));
    let template = hourly_heart_rate_template(dir.path());
    // "replay" points nowhere during the first run, so it keeps every record for the replay.
    let sinks =
        sink_toml("fhir", &server.base(), "") + &sink_toml("replay", "http://127.0.0.1:9", "");
    let cfg = config(dir.path(), "run.toml", &template, &sim, &sinks);
    let mut agent = Agent::start(&cfg);
    agent.drained("fhir", sim.max, Duration::from_secs(60));
    let written =
        agent.metric("iomt_fhir_resources_saved_total{sink=\"fhir\",outcome=\"created\"}");
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    let ms = acked_measurements(dir.path());
    assert_eq!(
        ms.len(),
        (2 * 2 + 2 + 1 + 1) * 8,
        "8 measurements per tick, 8 ticks"
    );
    let exp = expected(&ms, &|m| ids[&m.device_id].clone(), &["heartrate"]);
    check_observations(&server, &exp, &template, &["heartrate"]);
    assert!(
        written >= exp.obs.len() as f64,
        "created {written} < {}",
        exp.obs.len()
    );
    // Per device and type: Quantity types one Observation per reading, hourly heart rate one
    // per hour (two if the run crossed an hour boundary).
    let per_type = |t: &str| exp.obs.values().filter(|o| o.1 == t).count();
    assert_eq!(per_type("respiratoryrate"), 16);
    assert!(
        (2..=4).contains(&per_type("heartrate")),
        "{}",
        per_type("heartrate")
    );
    // Everything passes fhirkit and the project checks. The SampledData origin is upstream's
    // `{value: 0, unit}` (no UCUM system/code): the checks accept that shape by decision 0005
    // (the unit must still be the vital sign's UCUM code) and say so with one note per
    // SampledData Observation, and nothing else.
    let (vcode, vout) = server.validate();
    let bad = unexpected_validation_issues(&vout);
    assert!(
        bad.is_empty(),
        "validate.sh found problems:\n{}",
        bad.join("\n")
    );
    let notes = validation_notes(&vout);
    assert_eq!(notes.len(), per_type("heartrate"), "{vout}");
    for n in &notes {
        assert!(
            n.contains("Observation.valueSampledData.origin")
                && n.contains("as microsoft/iomt-fhir writes it"),
            "{n}"
        );
    }
    assert_eq!(vcode, 0, "{vout}");
    assert!(
        vout.contains(&format!("validated {} resource(s)", 2 * 5 + exp.obs.len())),
        "{vout}"
    );

    // Replay the same log through a second sink (batch Bundle searches): no writes.
    let before = versions(&server);
    let puts_before = server.stats()["byMethod"]["PUT"].clone();
    let sinks = sink_toml("replay", &server.base(), "batch_bundle = true");
    let none = Sim {
        hr: 0,
        spo2: 0,
        bp: 0,
        temp: 0,
        max: 0,
        interval: 1.0,
    };
    let cfg = config(dir.path(), "replay.toml", &template, &none, &sinks);
    let mut agent = Agent::start(&cfg);
    agent.drained("replay", 0, Duration::from_secs(60));
    let unchanged =
        agent.metric("iomt_fhir_resources_saved_total{sink=\"replay\",outcome=\"unchanged\"}");
    let changed = agent
        .metric("iomt_fhir_resources_saved_total{sink=\"replay\",outcome=\"created\"}")
        + agent.metric("iomt_fhir_resources_saved_total{sink=\"replay\",outcome=\"updated\"}");
    let bundles = agent
        .metric("iomt_fhir_requests_total{sink=\"replay\",op=\"bundle_search\",status=\"200\"}");
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(changed, 0.0, "a replay writes nothing");
    assert!(unchanged >= exp.obs.len() as f64, "unchanged {unchanged}");
    assert!(bundles >= 1.0, "the replay searched with batch Bundles");
    assert_eq!(versions(&server), before, "no new versions");
    assert_eq!(
        server.stats()["byMethod"]["PUT"],
        puts_before,
        "no PUT at all"
    );
    let one = exp.obs.values().find(|o| o.1 == "heartrate").unwrap();
    let hist = server.get(&format!("Observation/{}/_history", one.0));
    assert_eq!(
        hist["entry"].as_array().unwrap().len(),
        before[&one.0].parse::<usize>().unwrap(),
        "history length = version count"
    );
}

/// Dead letters of a state dir: (reason, stage, device id from the payload, error).
fn dead_letters(state: &Path) -> Vec<(String, String, String, String)> {
    use iomt_agent::buffer::{Store, StoreConfig};
    let store = Store::open(state.join("log.sqlite"), &StoreConfig::default(), 0)
        .expect("open the log")
        .store;
    store
        .dlq_list(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|d| {
            let full = store.dlq_show(d.id).unwrap().unwrap();
            let body: Value = serde_json::from_slice(&full.entry.payload).unwrap_or(Value::Null);
            assert_eq!(d.sink.as_deref(), Some("fhir"));
            (
                d.reason,
                d.stage,
                body["deviceId"].as_str().unwrap_or("").to_owned(),
                d.error,
            )
        })
        .collect()
}

#[test]
fn rejections_and_unknown_identities_are_dead_lettered_while_other_devices_flow() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let sim = Sim {
        hr: 2,
        spo2: 1,
        bp: 1,
        temp: 1,
        max: 5 * 4,
        interval: 1.0,
    };
    let devices = sim_devices(&sim);
    // hr-001, hr-002, temp-001 are known; spo2-001 has no Device; bp-001's Device belongs to
    // another patient.
    let known: Vec<(String, String)> = devices
        .iter()
        .filter(|(d, _)| d.contains("-hr-") || d.contains("-temp-"))
        .cloned()
        .collect();
    let ids = provision(&server, &known);
    server.put(&json!({"resourceType": "Patient", "id": "other",
        "identifier": [{"system": MRNSYS, "value": "someone-else"}]}));
    server.put(
        &json!({"resourceType": "Device", "id": "bp", "status": "active",
        "identifier": [{"system": DEVSYS, "value": "sim-bp-001"}],
        "patient": {"reference": "Patient/other"}}),
    );
    server.fail(
        json!({"status": 400, "resourceType": "Observation", "method": "PUT",
        "device": format!("{DEVSYS}|sim-hr-002"), "note": "rejected for the test"}),
    );
    let template = repo().join("templates/vitals.fhir.json");
    let cfg = config(
        dir.path(),
        "run.toml",
        &template,
        &sim,
        &sink_toml("fhir", &server.base(), ""),
    );
    let mut agent = Agent::start(&cfg);
    agent.drained("fhir", sim.max, Duration::from_secs(60));
    let http400 = agent.metric("iomt_sink_dead_lettered_total{sink=\"fhir\",reason=\"http_400\"}");
    assert!(agent.alive());
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    let dead = dead_letters(&dir.path().join("state"));
    let by: BTreeMap<(String, String), usize> = dead.iter().fold(BTreeMap::new(), |mut m, d| {
        *m.entry((d.0.clone(), d.2.clone())).or_default() += 1;
        m
    });
    let want: BTreeMap<(String, String), usize> = [
        (("http_400".to_owned(), "sim-hr-002".to_owned()), 4),
        (
            ("device_not_found".to_owned(), "sim-spo2-001".to_owned()),
            4,
        ),
        (
            (
                "patient_device_mismatch".to_owned(),
                "sim-bp-001".to_owned(),
            ),
            4,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        by, want,
        "every reading of the three devices, once, with its reason"
    );
    assert_eq!(http400, 4.0);
    for (reason, stage, _, error) in &dead {
        assert_eq!(stage, "deliver");
        match reason.as_str() {
            "http_400" => assert!(
                error.contains("answered 400")
                    && error.contains("injected by /$test/fail")
                    && error.contains("rejected for the test"),
                "the OperationOutcome text is kept: {error}"
            ),
            "device_not_found" => {
                assert!(error.contains(&format!("{DEVSYS}|sim-spo2-001")), "{error}")
            }
            _ => assert!(
                error.contains("Device/bp is linked to Patient/other"),
                "{error}"
            ),
        }
    }
    // The other devices flowed: every reading of hr-001 and temp-001 is on the server.
    let ms: Vec<Measurement> = acked_measurements(dir.path())
        .into_iter()
        .filter(|m| ids.contains_key(&m.device_id) && m.device_id != "sim-hr-002")
        .collect();
    let exp = expected(&ms, &|m| ids[&m.device_id].clone(), &[]);
    assert_eq!(exp.obs.len(), 4 * 2 + 4);
    check_observations(&server, &exp, &template, &[]);
    // Each rejected Observation was tried once (not retried), nothing was sent for the others.
    let stats = server.stats();
    assert_eq!(
        stats["byMethodTypeStatus"]["PUT Observation 400"],
        json!(8),
        "{stats}"
    );
    assert_eq!(
        stats["byMethodTypeStatus"]["PUT Observation 201"],
        json!(12),
        "{stats}"
    );
    let (vcode, vout) = server.validate();
    assert_eq!(vcode, 0, "{vout}");
}

/// Observations on the server by device reference.
fn observations_of(server: &Server, device_ref: &str) -> usize {
    server
        .of_type("Observation")
        .iter()
        .filter(|o| o["device"]["reference"] == device_ref)
        .count()
}

#[test]
fn a_resource_the_server_keeps_failing_is_retried_then_dead_lettered_while_others_flow() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let sim = Sim {
        hr: 3,
        spo2: 0,
        bp: 0,
        temp: 0,
        max: 3 * 20,
        interval: 1.0,
    };
    let ids = provision(&server, &sim_devices(&sim));
    let bad = "sim-hr-002";
    let bad_ref = format!("Device/{}", ids[bad].1);
    // A server bug triggered by one device's Observations: every PUT of them answers 500.
    server.fail(
        json!({"status": 500, "resourceType": "Observation", "method": "PUT",
        "device": format!("{DEVSYS}|{bad}"), "note": "server bug for the test"}),
    );
    let template = repo().join("templates/vitals.fhir.json");
    let cfg = config(
        dir.path(),
        "run.toml",
        &template,
        &sim,
        &sink_toml("fhir", &server.base(), "dead_letter_after_attempts = 3"),
    );
    let mut agent = Agent::start(&cfg);
    let others_on_server = |server: &Server| -> (usize, usize) {
        let ms: Vec<Measurement> = acked_measurements(dir.path())
            .into_iter()
            .filter(|m| m.device_id != bad)
            .collect();
        let want = expected(&ms, &|m| ids[&m.device_id].clone(), &[]);
        let have: BTreeSet<String> = server
            .of_type("Observation")
            .iter()
            .map(|o| o["identifier"][0]["value"].as_str().unwrap().to_owned())
            .collect();
        (
            want.obs.keys().filter(|k| have.contains(*k)).count(),
            want.obs.len(),
        )
    };
    // The failing readings are retried, then dead-lettered, while the simulator still runs.
    let http500 = "iomt_sink_dead_lettered_total{sink=\"fhir\",reason=\"http_500\"}";
    assert!(
        wait_for(Duration::from_secs(30), || agent.metric(http500) >= 1.0),
        "nothing dead-lettered: {}",
        agent.log()
    );
    let still_running = agent.metric("iomt_source_received_total") < sim.max as f64;
    assert!(
        still_running,
        "the first give-up came before the simulator finished"
    );
    assert!(
        agent.metric("iomt_sink_record_retries_total{sink=\"fhir\",reason=\"http_500\"}") >= 1.0,
        "{}",
        admin_get(agent.admin, "/metrics").unwrap_or_default()
    );
    // Every reading of the other devices reaches the server while the fault is still on.
    assert!(
        wait_for(Duration::from_secs(60), || {
            let (have, want) = others_on_server(&server);
            agent.metric("iomt_source_received_total") >= sim.max as f64 && have == want
        }),
        "the other devices did not flow: {:?}\n{}",
        others_on_server(&server),
        agent.log()
    );
    assert_eq!(observations_of(&server, &bad_ref), 0);
    // The failing device is not what the sink's health says: ready.
    assert!(
        wait_for(Duration::from_secs(5), || admin_get(agent.admin, "/readyz")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))),
        "{:?}",
        admin_get(agent.admin, "/readyz")
    );
    // Each failed attempt is one PUT answered 500 after the request's own 3 retries.
    let stats = server.stats();
    let puts500 = stats["byMethodTypeStatus"]["PUT Observation 500"]
        .as_u64()
        .unwrap_or(0);
    assert!(puts500 >= 3 * 4, "{stats}");
    // Wait until the give-ups stop growing (the last readings may still be held: only
    // attempts made while other readings are delivered count, and the others are done).
    let mut last = -1.0;
    wait_for(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_secs(2));
        let now = agent.metric(http500);
        let stable = now == last;
        last = now;
        stable
    });
    assert!(agent.alive());
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    let state = dir.path().join("state");
    let dead = dead_letters(&state);
    assert!(!dead.is_empty());
    for (reason, stage, device, error) in &dead {
        assert_eq!(
            (reason.as_str(), stage.as_str(), device.as_str()),
            ("http_500", "deliver", bad)
        );
        assert!(
            error.contains("answered 500")
                && error.contains("server bug for the test")
                && error.contains("gave up after 3 failed attempts"),
            "the server's text and the policy are kept: {error}"
        );
    }
    let bad_readings = acked_measurements(dir.path())
        .iter()
        .filter(|m| m.device_id == bad)
        .count();
    assert!(dead.len() <= bad_readings);

    // The bug is fixed: replay the dead letters, run without the simulator, drain.
    let (s, v) = server.req("DELETE", "$test/fail", None);
    assert_eq!(s, 200, "{v}");
    let out = Command::new(agent_bin())
        .args(["dlq", "replay", "--all", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let replayed: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        replayed["replayed"].as_array().map(Vec::len),
        Some(dead.len()),
        "{replayed}"
    );
    let none = Sim {
        hr: 0,
        spo2: 0,
        bp: 0,
        temp: 0,
        max: 0,
        interval: 1.0,
    };
    let cfg2 = config(
        dir.path(),
        "after.toml",
        &template,
        &none,
        &sink_toml("fhir", &server.base(), "dead_letter_after_attempts = 3"),
    );
    let mut agent = Agent::start(&cfg2);
    agent.drained("fhir", 0, Duration::from_secs(60));
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(dead_letters(&state).is_empty(), "nothing left dead");
    // Every reading of every device is on the server, once, as upstream would write it.
    let ms = acked_measurements(dir.path());
    let exp = expected(&ms, &|m| ids[&m.device_id].clone(), &[]);
    check_observations(&server, &exp, &template, &[]);
    assert!(observations_of(&server, &bad_ref) >= bad_readings);
    let (vcode, vout) = server.validate();
    assert_eq!(vcode, 0, "{vout}");
}

#[test]
fn a_server_failing_for_everything_dead_letters_nothing_and_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let sim = Sim {
        hr: 2,
        spo2: 0,
        bp: 0,
        temp: 0,
        max: 2 * 14,
        interval: 1.0,
    };
    let ids = provision(&server, &sim_devices(&sim));
    // Every Observation write answers 500: nothing is delivered, so no failure may count
    // towards giving up, however low the limit.
    server.fail(json!({"status": 500, "resourceType": "Observation", "method": "PUT"}));
    let template = repo().join("templates/vitals.fhir.json");
    let cfg = config(
        dir.path(),
        "run.toml",
        &template,
        &sim,
        &sink_toml("fhir", &server.base(), "dead_letter_after_attempts = 1"),
    );
    let mut agent = Agent::start(&cfg);
    assert!(
        wait_for(Duration::from_secs(20), || admin_get(
            agent.admin,
            "/readyz"
        )
        .is_some_and(
            |r| r.starts_with("HTTP/1.1 503") && r.contains("sink fhir has been failing")
        )),
        "{:?}",
        admin_get(agent.admin, "/readyz")
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.metric("iomt_sink_failing{sink=\"fhir\"}"), 1.0);
    assert_eq!(
        agent.metric("iomt_sink_dead_lettered_total{sink=\"fhir\",reason=\"http_500\"}"),
        0.0
    );
    assert!(server.stats()["byMethodTypeStatus"]["PUT Observation 500"].as_u64() >= Some(4));
    assert!(agent.metric("iomt_source_received_total") < sim.max as f64);
    // The server is repaired while readings keep coming: everything arrives, nothing is dead.
    let (s, v) = server.req("DELETE", "$test/fail", None);
    assert_eq!(s, 200, "{v}");
    agent.drained("fhir", sim.max, Duration::from_secs(90));
    assert_eq!(agent.metric("iomt_sink_failing{sink=\"fhir\"}"), 0.0);
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(dead_letters(&dir.path().join("state")).is_empty());
    let ms = acked_measurements(dir.path());
    let exp = expected(&ms, &|m| ids[&m.device_id].clone(), &[]);
    check_observations(&server, &exp, &template, &[]);
}

#[test]
fn identity_cache_keeps_a_bed_move_until_invalidated() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let sim = Sim {
        hr: 1,
        spo2: 0,
        bp: 0,
        temp: 0,
        max: 0,
        interval: 1.0,
    };
    let ids = provision(&server, &sim_devices(&sim));
    let (old_patient, device) = ids["sim-hr-001"].clone();
    server.put(&json!({"resourceType": "Patient", "id": "moved",
        "identifier": [{"system": MRNSYS, "value": "bed-7"}]}));
    let extra = "verify_patient = false\nidentity_cache_ttl_secs = 600";
    let template = repo().join("templates/vitals.fhir.json");
    let cfg = config(
        dir.path(),
        "run.toml",
        &template,
        &sim,
        &sink_toml("fhir", &server.base(), extra),
    );
    let agent = Agent::start(&cfg);
    let subjects_after = |server: &Server, after_ms: i64| -> BTreeSet<String> {
        server
            .of_type("Observation")
            .iter()
            .filter(|o| {
                Timestamp::parse_rfc3339(o["effectivePeriod"]["start"].as_str().unwrap())
                    .unwrap()
                    .datetime()
                    .timestamp_millis()
                    > after_ms
            })
            .map(|o| o["subject"]["reference"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(wait_for(Duration::from_secs(20), || server
        .of_type("Observation")
        .len()
        >= 2));
    // The monitor moves to another bed: the hospital re-links the Device.
    server.put(
        &json!({"resourceType": "Device", "id": device, "status": "active",
        "identifier": [{"system": DEVSYS, "value": "sim-hr-001"}],
        "patient": {"reference": "Patient/moved"}}),
    );
    let relinked = chrono::Utc::now().timestamp_millis();
    assert!(
        wait_for(Duration::from_secs(10), || subjects_after(
            &server,
            relinked + 500
        )
        .contains(&format!("Patient/{old_patient}"))),
        "the cached identity is used until it is invalidated"
    );
    let out = Command::new(agent_bin())
        .args([
            "identity",
            "invalidate",
            "--device",
            "sim-hr-001",
            "--admin-addr",
            &format!("127.0.0.1:{}", agent.admin),
        ])
        .output()
        .unwrap();
    let invalidated = chrono::Utc::now().timestamp_millis();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Dropped 1 cached identity of device sim-hr-001"),
        "{stdout}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || subjects_after(
            &server,
            invalidated + 1500
        )
        .contains("Patient/moved")),
        "after the invalidation readings go to the new patient"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let after = subjects_after(&server, invalidated + 1500);
    assert_eq!(after, BTreeSet::from(["Patient/moved".to_owned()]));
    assert_eq!(
        agent.metric("iomt_fhir_identity_invalidations_total{sink=\"fhir\",scope=\"device\"}"),
        1.0
    );
    // All devices, by the admin endpoint directly: answers JSON.
    let answer = {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.admin)).unwrap();
        write!(
            s,
            "POST /identity/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut a = String::new();
        s.read_to_string(&mut a).unwrap();
        a
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"sinks\":[\"fhir\"]") && answer.contains("\"invalidated\":1"),
        "{answer}"
    );
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    // Without a running agent the CLI says so and fails.
    let out = Command::new(agent_bin())
        .args([
            "identity",
            "invalidate",
            "--admin-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(70));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent's admin endpoint")
    );
}

#[test]
fn outage_readings_wait_in_the_log_and_arrive_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&[]);
    let port = server.port;
    let sim = Sim {
        hr: 1,
        spo2: 1,
        bp: 1,
        temp: 0,
        max: 3 * 16,
        interval: 1.0,
    };
    let template = hourly_heart_rate_template(dir.path());
    let extra = format!(
        "identity = \"create\"\npatient_identifier_system = \"{MRNSYS}\"\nbatch_bundle = true"
    );
    let cfg = config(
        dir.path(),
        "run.toml",
        &template,
        &sim,
        &sink_toml("fhir", &server.base(), &extra),
    );
    let mut agent = Agent::start(&cfg);
    assert!(wait_for(Duration::from_secs(20), || server
        .of_type("Observation")
        .len()
        >= 6));
    // Freeze (every request 503), keep what the server holds, stop the process.
    server.fail(json!({"status": 503, "retryAfter": 1}));
    std::thread::sleep(Duration::from_millis(500));
    let kept = server.export();
    server.stop();
    std::thread::sleep(Duration::from_secs(4));
    let pending = agent.metric("iomt_buffer_pending_records{sink=\"fhir\"}");
    assert!(pending >= 3.0, "the backlog shows: {pending}");
    assert_eq!(agent.metric("iomt_sink_failing{sink=\"fhir\"}"), 1.0);
    assert!(agent.metric("iomt_sink_retried_total{sink=\"fhir\"}") >= 1.0);
    let ready = admin_get(agent.admin, "/readyz").unwrap_or_default();
    assert!(
        ready.contains("503") && ready.contains("sink fhir has been failing"),
        "{ready}"
    );
    // Back on the same port, with the data it had. The agent (batch Bundles: POST, and
    // searches: GET) is held off while the data is put back: a write of its landing before
    // the restore of the same Observation would be overwritten by the restore, which a real
    // restart cannot do.
    let server = Server::start_on(port, &[]);
    server.fail(json!({"status": 503, "method": ["GET", "POST"], "retryAfter": 1}));
    for t in ["Patient", "Device", "Observation"] {
        for r in kept.iter().filter(|r| r["resourceType"] == t) {
            server.put(r);
        }
    }
    let (s, v) = server.req("DELETE", "$test/fail", None);
    assert_eq!(s, 200, "{v}");
    agent.drained("fhir", sim.max, Duration::from_secs(60));
    assert_eq!(agent.metric("iomt_sink_failing{sink=\"fhir\"}"), 0.0);
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    let ms = acked_measurements(dir.path());
    assert_eq!(
        ms.len(),
        16 * 5,
        "every reading acknowledged (5 measurements per tick)"
    );
    let ids = |m: &Measurement| {
        (
            sha256_hex(&format!("_{}", m.patient_id.as_deref().unwrap())),
            sha256_hex(&format!("{DEVSYS}_{}", m.device_id)),
        )
    };
    let exp = expected(&ms, &ids, &["heartrate"]);
    check_observations(&server, &exp, &template, &["heartrate"]);
    assert_eq!(server.of_type("Patient").len(), 3);
    assert_eq!(server.of_type("Device").len(), 3);
    let stats = server.stats();
    assert!(
        stats["byMethodType"]["POST Bundle"].as_u64().unwrap_or(0) >= 1,
        "batch Bundles were used: {stats}"
    );
    assert!(dead_letters(&dir.path().join("state")).is_empty());
    let (vcode, vout) = server.validate();
    let bad = unexpected_validation_issues(&vout);
    assert!(
        bad.is_empty(),
        "validate.sh found problems:\n{}",
        bad.join("\n")
    );
    // Only the accepted upstream origin shape, once per hourly heart-rate Observation.
    let notes = validation_notes(&vout);
    assert_eq!(
        notes.len(),
        exp.obs.values().filter(|o| o.1 == "heartrate").count(),
        "{vout}"
    );
    assert!(
        notes
            .iter()
            .all(|n| n.contains("valueSampledData.origin") && n.contains("microsoft/iomt-fhir")),
        "{vout}"
    );
    assert_eq!(vcode, 0, "{vout}");
}

#[test]
fn two_writers_race_and_converge_to_one_merged_observation() {
    use iomt_agent::mapping::{load_fhir_mapping, DeviceMapping};
    use iomt_agent::runtime::prepare::Prepared;
    use iomt_agent::runtime::templates::Mappings;
    use iomt_agent::sinks::fhir::{FhirSink, FhirSinkConfig};
    use iomt_agent::telemetry::Metrics;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let ids = provision(&server, &[("mon-1".to_owned(), "p-1".to_owned())]);
    let template = hourly_heart_rate_template(dir.path());
    let device: DeviceMapping = load_device_mapping(
        &std::fs::read_to_string(repo().join("templates/vitals.device.json")).unwrap(),
    )
    .into_result()
    .unwrap();
    let fhir = load_fhir_mapping(&std::fs::read_to_string(&template).unwrap())
        .into_result()
        .unwrap();
    let mappings = Mappings {
        device,
        fhir: Some(fhir),
    };
    let hour = Timestamp::parse_rfc3339("2026-01-01T10:00:00Z").unwrap();
    let batch = |secs: &[i64]| {
        let mut p = Prepared::default();
        for (i, s) in secs.iter().enumerate() {
            let t =
                Timestamp::from_unix_millis(hour.datetime().timestamp_millis() + s * 1000).unwrap();
            let body = json!({"deviceId": "mon-1", "patientId": "p-1", "type": "heartrate",
                "timestamp": t.format_o(), "values": {"heartRate": 60 + s}});
            let ms = mappings.device.normalize(json!({"Body": body}), t).unwrap();
            p.measurement_seq
                .extend(std::iter::repeat_n(i as u64 + 1, ms.len()));
            p.measurements.extend(ms);
            p.last_seq = i as u64 + 1;
            p.records += 1;
        }
        p
    };
    let mut cfg = FhirSinkConfig::new(server.base());
    cfg.device_identifier_system = Some(DEVSYS.into());
    let a = FhirSink::new("a", cfg.clone());
    let b = FhirSink::new("b", cfg);
    let (ma, mb) = (Metrics::new(false), Metrics::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let round = |sa: &[i64], sb: &[i64]| {
        let (pa, pb) = (batch(sa), batch(sb));
        let (ra, rb) = rt.block_on(async {
            tokio::join!(
                a.deliver(&pa, &mappings, hour, &ma),
                b.deliver(&pb, &mappings, hour, &mb)
            )
        });
        let (ra, rb) = (ra.expect("writer a"), rb.expect("writer b"));
        for r in [&ra, &rb] {
            assert!(
                r.dead.is_empty() && r.retry.is_empty() && r.skipped.is_empty(),
                "{:?} {:?} {:?}",
                r.dead,
                r.retry,
                r.skipped
            );
        }
    };
    // Round 1: both search before either writes (the creates are held 400 ms before the
    // server runs them; holding the searches instead races: a search held just as long as
    // the other writer's could run after that writer's create), so both create; the second
    // create overwrites the first and must repair it.
    server.fail(json!({"action": "delay", "delayMs": 400, "method": "PUT", "resourceType": "Observation", "count": 2}));
    let evens: Vec<i64> = (0..10).map(|i| i * 2).collect();
    let odds: Vec<i64> = (0..10).map(|i| i * 2 + 1).collect();
    round(&evens, &odds);
    let contention = ma.counter("iomt_fhir_contention_total", &[])
        + mb.counter("iomt_fhir_contention_total", &[]);
    assert_eq!(
        contention,
        1,
        "exactly one create overwrote the other: {}",
        server.get("$test/log")
    );
    // Round 2: both merge into cached versions at once: If-Match conflicts (412), re-read, merge.
    server.fail(json!({"action": "delay", "delayMs": 300, "method": "PUT", "resourceType": "Observation", "count": 2}));
    let evens2: Vec<i64> = (10..20).map(|i| i * 2).collect();
    let odds2: Vec<i64> = (10..20).map(|i| i * 2 + 1).collect();
    round(&evens2, &odds2);
    let conflicts =
        ma.counter("iomt_fhir_conflicts_total", &[]) + mb.counter("iomt_fhir_conflicts_total", &[]);
    assert!(
        conflicts >= 1,
        "a stale If-Match was answered 412 and retried"
    );
    let stats = server.stats();
    assert!(
        stats["byMethodTypeStatus"]["PUT Observation 412"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{stats}"
    );

    // One Observation, holding every sample of both writers.
    let all: Vec<i64> = (0..40).collect();
    let (pid, did) = ids["mon-1"].clone();
    let ms = batch(&all).measurements;
    let exp = expected(&ms, &|_| (pid.clone(), did.clone()), &["heartrate"]);
    assert_eq!(exp.obs.len(), 1);
    check_observations(&server, &exp, &template, &["heartrate"]);
    let (identifier, (id, ..)) = exp.obs.iter().next().unwrap();
    let found = server.get(&format!(
        "Observation?identifier={SERVICE_SYSTEM}|{identifier}"
    ));
    assert_eq!(found["total"], json!(1));
    let obs = server.get(&format!("Observation/{id}"));
    assert_eq!(obs["status"], "amended");
    // A third delivery of round 2 changes nothing.
    let before = obs["meta"]["versionId"].clone();
    let p = batch(&evens2);
    let d = rt.block_on(a.deliver(&p, &mappings, hour, &ma)).unwrap();
    assert_eq!((d.written, d.unchanged), (0, 1));
    assert_eq!(
        server.get(&format!("Observation/{id}"))["meta"]["versionId"],
        before
    );
}

#[test]
fn oauth_wrong_secret_is_reported_not_fatal_then_tokens_refresh_after_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--require-auth", "--client-secret", "right-secret"]);
    let secret = dir.path().join("client_secret");
    std::fs::write(&secret, "wrong-secret\n").unwrap();
    let sim = Sim {
        hr: 1,
        spo2: 0,
        bp: 0,
        temp: 0,
        max: 0,
        interval: 1.0,
    };
    let extra = format!(
        "identity = \"create\"\npatient_identifier_system = \"{MRNSYS}\"\n[sinks.auth]\ntype = \"oauth2\"\ntoken_url = \"{}/$test/oauth/token\"\nclient_id = \"iomt-agent\"\nclient_secret = {{ file = \"{}\" }}\nscope = \"system/*.write\"",
        server.base(),
        secret.display()
    );
    let template = repo().join("templates/vitals.fhir.json");
    let cfg = config(
        dir.path(),
        "run.toml",
        &template,
        &sim,
        &sink_toml("fhir", &server.base(), &extra),
    );
    let out = Command::new(agent_bin())
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut agent = Agent::start(&cfg);
    let started = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || agent
            .log()
            .contains("refused the client credentials")),
        "{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
    let ready = admin_get(agent.admin, "/readyz").unwrap_or_default();
    assert!(ready.contains("503"), "not ready: {ready}");
    assert!(agent.alive(), "a wrong secret does not stop the agent");
    assert_eq!(agent.metric("iomt_fhir_server_ok{sink=\"fhir\"}"), 0.0);
    assert!(server.of_type("Observation").is_empty());
    assert!(server.stats()["auth"]["invalidClient"].as_u64().unwrap() >= 1);

    // The operator fixes the secret file; no restart needed.
    std::fs::write(&secret, "right-secret\n").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || server
            .of_type("Observation")
            .len()
            >= 2),
        "{}",
        agent.log()
    );
    assert!(wait_for(Duration::from_secs(5), || admin_get(
        agent.admin,
        "/readyz"
    )
    .unwrap_or_default()
    .contains("200 OK")));
    // Every token is revoked: the next request gets 401, the agent fetches a new token once.
    let (s, _) = server.req("POST", "$test/oauth/expire", None);
    assert_eq!(s, 200);
    let n = server.of_type("Observation").len();
    assert!(
        wait_for(Duration::from_secs(10), || server
            .of_type("Observation")
            .len()
            >= n + 2),
        "{}",
        agent.log()
    );
    let stats = server.stats();
    assert!(stats["auth"]["expired"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["token"]["byStatus"]["200"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert!(agent.alive());
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(dead_letters(&dir.path().join("state")).is_empty());
}

#[test]
fn fhir_sink_config_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[mapping]\ndevice = \"{}\"\nfhir = \"{}\"\n[[sources]]\ntype = \"simulator\"\n",
        repo().join("templates/vitals.device.json").display(),
        repo().join("templates/vitals.fhir.json").display()
    );
    let load = |sinks: &str| {
        iomt_agent::config::load(&format!("{base}{sinks}"), &dir.path().join("w.toml"))
    };
    let cfg = load("[[sinks]]\ntype = \"fhir\"\nurl = \"https://x.fhir.azurehealthcareapis.com/\"\nidentity = \"lookup_with_encounter\"\n[sinks.auth]\ntype = \"oauth2\"\ntoken_url = \"https://login.microsoftonline.com/t/oauth2/v2.0/token\"\nclient_id = \"c\"\nclient_secret = { env = \"S\" }\nscope = \"https://x.fhir.azurehealthcareapis.com/.default\"\n")
        .expect("valid");
    let iomt_agent::config::SinkKind::Fhir(f) = &cfg.sinks[0].kind else {
        panic!()
    };
    assert_eq!(f.url, "https://x.fhir.azurehealthcareapis.com");
    assert_eq!(
        f.identity,
        iomt_agent::sinks::fhir::IdentityMode::LookupWithEncounter
    );
    assert!(!f.batch_bundle);
    assert_eq!(f.identity_cache_ttl, Duration::from_secs(300));
    assert_eq!(f.dead_letter_after_attempts, 10);
    let cfg = load("[[sinks]]\ntype = \"fhir\"\nurl = \"http://127.0.0.1/fhir\"\ndead_letter_after_attempts = 0\n").expect("valid");
    let iomt_agent::config::SinkKind::Fhir(f) = &cfg.sinks[0].kind else {
        panic!()
    };
    assert_eq!(f.dead_letter_after_attempts, 0, "0 = never give up");
    let errs = |sinks: &str| {
        load(sinks)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let e = errs("[[sinks]]\ntype = \"fhir\"\n");
    assert!(
        e.contains("sinks[0].url: the FHIR base URL is required"),
        "{e}"
    );
    let e = errs("[[sinks]]\ntype = \"fhir\"\nurl = \"http://fhir.example\"\nauth = { type = \"bearer\", token = \"inline\" }\nidentity = \"guess\"\nclient_cert = \"c.pem\"\nconcurrency = 0\nbogus = 1\ndead_letter_after_attempts = 5000\n");
    for want in [
        "sinks[0].auth.token: secrets are never written inline",
        "sinks[0].identity: 'guess' is not an identity mode",
        "sinks[0].client_cert: cannot read",
        "sinks[0].client_cert: client_cert and client_key go together",
        "sinks[0].concurrency: must be between 1 and 64",
        "sinks[0].dead_letter_after_attempts: must be between 0 (never) and 1000",
        "sinks[0].bogus: unknown key",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    let e = errs("[[sinks]]\ntype = \"fhir\"\nurl = \"http://fhir.example\"\nauth = { type = \"oauth2\", client_id = \"c\" }\n");
    assert!(
        e.contains("oauth2 needs token_url") && e.contains("oauth2 needs client_secret"),
        "{e}"
    );
    let e = errs("[[sinks]]\ntype = \"fhir\"\nurl = \"http://fhir.example\"\nauth = { type = \"bearer\", token = { env = \"T\" } }\n");
    assert!(
        e.contains("credentials would be sent over plain http"),
        "{e}"
    );
    load("[[sinks]]\ntype = \"fhir\"\nurl = \"http://127.0.0.1:8080/fhir\"\nauth = { type = \"bearer\", token = { env = \"T\" } }\n")
        .expect("plain http to loopback is allowed");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl
/// CLI; `None` when openssl is not installed.
fn test_pki(dir: &Path) -> Option<()> {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=iomt-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
for n in srv cli; do openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj /CN=$n; done
printf "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > srv.ext
printf "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n" > cli.ext
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile srv.ext
openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cli.pem -days 2 -extfile cli.ext
"#;
    Command::new("openssl").arg("version").output().ok()?;
    let ok = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("bash");
    assert!(ok.success(), "making test certificates failed");
    Some(())
}

#[test]
fn tls_custom_ca_and_client_certificate_and_clear_errors() {
    use iomt_agent::sinks::fhir::{FhirClient, FhirError, FhirSinkConfig};
    use iomt_agent::telemetry::Metrics;
    let dir = tempfile::tempdir().unwrap();
    if test_pki(dir.path()).is_none() {
        eprintln!("SKIPPED: the openssl CLI is not installed");
        return;
    }
    let port = free_port();
    // A TLS server that requires a client certificate and is not a FHIR server.
    let mut tls = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "srv.pem",
            "-key",
            "srv.key",
        ])
        .args(["-CAfile", "ca.pem", "-Verify", "1", "-www", "-quiet"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    assert!(wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let m = Metrics::new(false);
    let ctx = iomt_agent::sinks::fhir::client::Ctx {
        metrics: &m,
        sink: "fhir",
    };
    let check =
        |cfg: &FhirSinkConfig| rt.block_on(async { FhirClient::new(cfg)?.check(ctx).await });
    let mut cfg = FhirSinkConfig::new(format!("https://127.0.0.1:{port}"));
    cfg.max_retries = 0;
    // Unknown issuer.
    let e = check(&cfg).unwrap_err();
    assert!(matches!(e, FhirError::Setup { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("TLS with the FHIR server")
            && text.contains("UnknownIssuer")
            && text.contains("ca_file"),
        "{text}"
    );
    // Trusted, but the server wants a client certificate.
    cfg.ca_file = Some(dir.path().join("ca.pem"));
    let text = check(&cfg).unwrap_err().to_string();
    assert!(
        text.contains("TLS") && text.to_lowercase().contains("certificate"),
        "{text}"
    );
    // Mutual TLS works; the server is then found not to be a FHIR server.
    cfg.client_cert = Some(dir.path().join("cli.pem"));
    cfg.client_key = Some(dir.path().join("cli.key"));
    let e = check(&cfg).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, FhirError::Setup { .. }) && text.contains("is not a FHIR server"),
        "{text}"
    );
    // A key that does not parse is reported before any connection.
    cfg.client_key = Some(dir.path().join("ca.srl"));
    let text = check(&cfg).unwrap_err().to_string();
    assert!(text.contains("not a usable PEM pair"), "{text}");
    tls.kill().ok();
    tls.wait().ok();
}
