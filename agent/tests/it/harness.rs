//! Running the real `iomt-agent` binary in tests: configs, start, kill, drain, and the
//! "every acknowledged reading is in the outbox exactly once" check.

use iomt_agent::mapping::{load_device_mapping, load_fhir_mapping, Timestamp};
use iomt_agent::pipeline::batch::{transform_batch, OfflineIdentity};
use iomt_agent::pipeline::transform::TransformOptions;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iomt-agent"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Parameters of a simulated ward.
#[derive(Debug, Clone)]
pub struct Ward {
    pub per_kind: u32,
    pub ack_log: PathBuf,
    pub state_dir: PathBuf,
    pub seed: u64,
}

/// Writes a config for `ward` into `dir` and returns its path.
pub fn write_config(dir: &Path, name: &str, ward: &Ward) -> PathBuf {
    let r = repo();
    let text = format!(
        r#"ward = "test"
[agent]
state_dir = "{state}"
[mapping]
device = "{dev}"
fhir = "{fhir}"
watch = false
[buffer]
commit_interval_ms = 50
[pipeline]
flush_interval_secs = 0.2
max_events_per_flush = 500
[[sources]]
type = "simulator"
name = "sim"
heart_rate_monitors = {n}
pulse_oximeters = {n}
bp_cuffs = {n}
thermometers = {n}
interval_secs = 1
seed = {seed}
ack_log = "{ack}"
[[sinks]]
type = "outbox"
name = "outbox"
"#,
        state = ward.state_dir.display(),
        dev = r.join("templates/vitals.device.json").display(),
        fhir = r.join("templates/vitals.fhir.json").display(),
        n = ward.per_kind,
        seed = ward.seed,
        ack = ward.ack_log.display(),
    );
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// Starts the agent.
pub fn start(config: &Path, admin_port: u16) -> Child {
    Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(config)
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
            "--progress-secs",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iomt-agent")
}

/// GET on the admin endpoint; `None` if not answering.
pub fn admin_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A metric's value from `/metrics`.
pub fn metric(port: u16, line_prefix: &str) -> Option<f64> {
    let text = admin_get(port, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends SIGTERM and waits; returns the exit code and how long it took.
pub fn terminate(child: &mut Child) -> (Option<i32>, Duration) {
    let t0 = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -TERM failed");
    let status = child.wait().expect("wait");
    (status.code(), t0.elapsed())
}

/// Runs the agent with no devices on `state_dir` until the outbox sink has nothing pending,
/// then stops it with SIGTERM. Returns the shutdown time.
pub fn drain(dir: &Path, state_dir: &Path, ack_log: &Path) -> Duration {
    let ward = Ward {
        per_kind: 0,
        ack_log: ack_log.with_extension("drain"),
        state_dir: state_dir.to_owned(),
        seed: 1,
    };
    let cfg = write_config(dir, "drain.toml", &ward);
    drain_config(&cfg)
}

/// As [`drain`], with a given config (whose sources produce nothing).
pub fn drain_config(cfg: &Path) -> Duration {
    drain_config_then(cfg, |_| {})
}

/// [`drain_config`], calling `inspect` with the admin port once drained, before the shutdown.
pub fn drain_config_then(cfg: &Path, inspect: impl FnOnce(u16)) -> Duration {
    let port = free_port();
    let mut child = start(cfg, port);
    let t0 = Instant::now();
    let mut zero_seen = 0;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("the agent exited during the drain ({status}): {err}");
        }
        match metric(port, "iomt_buffer_pending_records{sink=\"outbox\"}") {
            Some(0.0) => {
                zero_seen += 1;
                if zero_seen >= 2 {
                    break;
                }
            }
            _ => zero_seen = 0,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the outbox did not drain in 120 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    inspect(port);
    let (code, took) = terminate(&mut child);
    assert_eq!(code, Some(0), "clean shutdown exits 0");
    took
}

/// What the check found.
#[derive(Debug)]
#[allow(dead_code)] // printed with {:?}
pub struct CheckReport {
    pub acked_readings: usize,
    pub expected_observations: usize,
    pub outbox_observations: usize,
}

/// Every reading in the ack log must have its Observations in the outbox, each Observation
/// id exactly once.
pub fn check_exactly_once(ack_log: &Path, outbox: &Path) -> Result<CheckReport, String> {
    let r = repo();
    let dev = load_device_mapping(
        &std::fs::read_to_string(r.join("templates/vitals.device.json")).unwrap(),
    )
    .into_result()
    .unwrap();
    let fhir =
        load_fhir_mapping(&std::fs::read_to_string(r.join("templates/vitals.fhir.json")).unwrap())
            .into_result()
            .unwrap();
    let t = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let mut measurements = Vec::new();
    let mut acked = 0;
    if let Ok(f) = std::fs::File::open(ack_log) {
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|e| e.to_string())?;
            let Ok(body) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            acked += 1;
            let ms = dev
                .normalize(json!({"Body": body}), t)
                .map_err(|e| format!("{e:?}"))?;
            measurements.extend(ms);
        }
    }
    let out = transform_batch(
        &fhir,
        &measurements,
        OfflineIdentity::Create,
        t,
        &TransformOptions::default(),
        &mut |_| None,
    );
    if !out.errors.is_empty() {
        return Err(format!(
            "expected observations could not be computed: {:?}",
            out.errors[0]
        ));
    }
    let expected: HashSet<String> = out
        .observations
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox)
        .map_err(|e| format!("{}: {e}", outbox.display()))?
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("Observation-"))
        })
        .collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(&f)
            .map_err(|e| e.to_string())?
            .lines()
        {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("{}: bad line {line:?}: {e}", f.display()))?;
            *counts
                .entry(v["id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} acknowledged Observations missing from the outbox (of {}), e.g. {}",
            missing.len(),
            expected.len(),
            missing[0]
        ));
    }
    let dups: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    if !dups.is_empty() {
        return Err(format!(
            "{} Observation ids written more than once, e.g. {} x{}",
            dups.len(),
            dups[0].0,
            dups[0].1
        ));
    }
    Ok(CheckReport {
        acked_readings: acked,
        expected_observations: expected.len(),
        outbox_observations: counts.len(),
    })
}

/// splitmix64: reproducible random numbers for kill and cut times.
pub fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
