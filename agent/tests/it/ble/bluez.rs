//! The BLE source for real: the `iomt-agent` binary runs a btleplug session against a BlueZ
//! played by python-dbusmock's `bluez5` template on a **private** D-Bus bus (its own
//! `dbus-daemon`, its own config file), with three fake peripherals added by
//! `tests/ble-mock/fake_sensors.py`. The bus address reaches only the spawned processes
//! (`Command::env`); this test process's environment is never changed.
//!
//! Scenario: scan → admit the strap (by address) and the cuff (by service + allowed
//! prefix), never the stranger → the strap's first two connects fail → connect, discover,
//! read Device Information, subscribe → notifications → the strap drops its link after 3,
//! the agent reconnects and gets the other 3 → the cuff uploads 2 stored measurements, drops
//! the link, and after the reconnect uploads its whole memory (3) again. Expected: 6 heart
//! rates and 3 blood pressures in the outbox, each exactly once; 2 duplicates recognised by
//! the log; 9 readings stored.
//!
//! Needs `dbus-daemon` and the venv from `tests/ble-mock/setup-venv.sh` (both installed by
//! `scripts/install-test-deps.sh`); `BLE_MOCK_PYTHON` overrides the interpreter.

use crate::harness::{admin_get, agent_bin, free_port, metric, repo, terminate};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Child processes, killed and reaped in reverse order on drop (also when the test fails).
struct Procs(Vec<(&'static str, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some((_, mut c)) = self.0.pop() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

fn mock_python() -> PathBuf {
    if let Ok(p) = std::env::var("BLE_MOCK_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo().join("tests/ble-mock/.venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run tests/ble-mock/setup-venv.sh (scripts/install-test-deps.sh does)",
        p.display()
    );
    p
}

/// Starts a private bus from its own config file; returns it and its address.
fn private_bus(dir: &Path) -> (Child, String) {
    let conf = dir.join("bus.conf");
    let sock = dir.join("bus.sock");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            sock.display()
        ),
    )
    .expect("write bus config");
    let mut bus = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--nopidfile", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon (apt-get install dbus-daemon)");
    let mut line = String::new();
    BufReader::new(bus.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("dbus-daemon prints its address");
    let address = line.trim().to_owned();
    assert!(address.starts_with("unix:"), "bus address {address:?}");
    (bus, address)
}

/// Follows a child's output lines into a shared buffer.
fn follow(out: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().expect("lines").push(line);
        }
    });
    lines
}

fn config(dir: &Path) -> PathBuf {
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
commit_interval_ms = 20
[pipeline]
flush_interval_secs = 0.2
[[sources]]
type = "ble"
name = "ble"
adapter = "hci0"
connect_timeout_secs = 10
reconnect_min_secs = 0.2
reconnect_max_secs = 1
link_check_secs = 1
[[sources.devices]]
address = "C0:FF:EE:00:18:0D"
profile = "heart_rate"
device_id = "hr-bed-12"
patient_id = "patient-0042"
bed = "12"
[[sources.devices]]
profile = "blood_pressure"
allow = ["C0:FF:EE"]
patient_id = "patient-0042"
write_current_time = true
[[sinks]]
type = "outbox"
name = "outbox"
"#,
        state = dir.join("state").display(),
        dev = r.join("templates/ble.device.json").display(),
        fhir = r.join("templates/ble.fhir.json").display(),
    );
    let p = dir.join("ble.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

/// Observations in the outbox, by id, with how often each id was written.
fn outbox_observations(outbox: &Path) -> (Vec<Value>, HashMap<String, usize>) {
    let mut all = Vec::new();
    let mut counts = HashMap::new();
    let Ok(rd) = std::fs::read_dir(outbox) else {
        return (all, counts);
    };
    for e in rd.flatten() {
        let p = e.path();
        if !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("Observation-"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&p).unwrap_or_default().lines() {
            // A line being written may be incomplete: skip it, the next poll sees it.
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                *counts
                    .entry(v["id"].as_str().unwrap_or_default().to_owned())
                    .or_insert(0) += 1;
                all.push(v);
            }
        }
    }
    (all, counts)
}

fn has_code(o: &Value, code: &str) -> bool {
    o["code"]["coding"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["code"] == code))
}

fn heart_rates(obs: &[Value]) -> Vec<i64> {
    let mut v: Vec<i64> = obs
        .iter()
        .filter(|o| has_code(o, "147842"))
        .filter_map(|o| o["valueQuantity"]["value"].as_i64())
        .collect();
    v.sort_unstable();
    v
}

fn systolics(obs: &[Value]) -> Vec<i64> {
    let mut v: Vec<i64> = obs
        .iter()
        .filter(|o| has_code(o, "150020"))
        .filter_map(|o| {
            o["component"]
                .as_array()?
                .iter()
                .find(|c| has_code(c, "150021"))?["valueQuantity"]["value"]
                .as_i64()
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn ble_source_against_bluez_on_dbus() {
    let t0 = Instant::now();
    let python = mock_python();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let mut procs = Procs(Vec::new());
    let (bus, address) = private_bus(dir);
    procs.0.push(("dbus-daemon", bus));
    let mock = Command::new(&python)
        .args(["-m", "dbusmock", "--template", "bluez5"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python -m dbusmock");
    procs.0.push(("dbusmock", mock));
    let mut fake = Command::new(&python)
        .arg(repo().join("tests/ble-mock/fake_sensors.py"))
        .args(["--hr", "6", "--hr-drop", "3", "--hr-fail", "2", "--bp", "3"])
        // Over a second apart: the connector's Observation identity has a resolution of one
        // second, so faster readings of one device would merge into one Observation.
        .args(["--hr-interval-ms", "1100"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("fake_sensors.py");
    let fake_lines = follow(fake.stdout.take().expect("stdout"));
    procs.0.push(("fake sensors", fake));

    let cfg = config(dir);
    let port = free_port();
    let mut agent = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
            "--progress-secs",
            "0",
        ])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iomt-agent");
    let agent_err = follow(agent.stderr.take().expect("stderr"));
    let outbox = dir.join("state/outbox");
    let diagnostics = |why: &str| {
        format!(
            "{why}\n--- fake ---\n{}\n--- /status ---\n{}\n--- agent stderr ---\n{}",
            fake_lines.lock().expect("lines").join("\n"),
            admin_get(port, "/status").unwrap_or_default(),
            agent_err.lock().expect("stderr").join("\n"),
        )
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = agent.try_wait().expect("try_wait") {
            panic!("{}", diagnostics(&format!("the agent exited: {status}")));
        }
        let (obs, _) = outbox_observations(&outbox);
        if heart_rates(&obs).len() >= 6 && systolics(&obs).len() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            diagnostics("the readings did not all arrive in 60 s")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give a wrongly duplicated reading time to show up before judging.
    std::thread::sleep(Duration::from_millis(1500));
    let (obs, counts) = outbox_observations(&outbox);
    let fake_out = fake_lines.lock().expect("lines").join("\n");

    // Every heart rate exactly once, across two failed connects and a link drop.
    assert_eq!(
        heart_rates(&obs),
        [60, 67, 74, 81, 88, 95],
        "{}",
        diagnostics("heart rates")
    );
    // Every blood pressure exactly once, although the cuff sent two of them twice.
    assert_eq!(systolics(&obs), [120, 121, 122], "{}", diagnostics("BP"));
    let dup_ids: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup_ids.is_empty(),
        "Observation ids written twice: {dup_ids:?}\n{}",
        obs.iter()
            .filter(|o| dup_ids.iter().any(|(id, _)| o["id"] == id.as_str()))
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The log stored 9 readings and recognised the 2 resent ones.
    let m = |name: &str| metric(port, name).unwrap_or(-1.0);
    assert_eq!(m("iomt_source_received_total{source=\"ble\"}"), 9.0);
    assert_eq!(m("iomt_source_duplicates_total{source=\"ble\"}"), 2.0);
    let ble_metrics = admin_get(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("iomt_ble") || l.starts_with("iomt_source"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        m("iomt_ble_connect_failures_total{source=\"ble\"}") == 2.0,
        "{ble_metrics}\n{}",
        diagnostics("connect failures")
    );
    assert!(
        m("iomt_ble_link_losses_total{source=\"ble\"}") >= 2.0,
        "{ble_metrics}"
    );
    // The strap failed twice, then connected twice (before and after the drop); the cuff
    // connected twice too.
    assert!(
        fake_out.contains("connected C0:FF:EE:00:18:0D connect 2")
            && !fake_out.contains("connected C0:FF:EE:00:18:0D connect 3")
            && fake_out.contains("connected C0:FF:EE:00:18:10 connect 2")
            && !fake_out.contains("connected C0:FF:EE:00:18:10 connect 3"),
        "{fake_out}"
    );
    // Never a connect to the device the config does not admit.
    assert!(!fake_out.contains("UNEXPECTED"), "{fake_out}");
    assert!(fake_out.contains("device C0:FF:EF:00:00:01"), "{fake_out}");
    // The strap's Observations carry the configured patient and are effective at receive
    // time; the cuff's are effective at its own (gateway-set) clock.
    let hr = obs.iter().find(|o| has_code(o, "147842")).expect("hr");
    assert!(hr["subject"]["reference"]
        .as_str()
        .is_some_and(|s| s.starts_with("Patient/")));
    let bp = obs.iter().find(|o| has_code(o, "150020")).expect("bp");
    assert!(bp["effectivePeriod"]["start"]
        .as_str()
        .is_some_and(|s| s.starts_with("2024-03-15T08:3")));
    // Per-device health on /status.
    let status: Value = admin_get(port, "/status")
        .and_then(|s| s.split("\r\n\r\n").nth(1).map(str::to_owned))
        .and_then(|b| serde_json::from_str(&b).ok())
        .expect("status JSON");
    assert_eq!(status["sources"]["ble/hr-bed-12"]["ok"], true, "{status}");
    assert_eq!(
        status["sources"]["ble/C0-FF-EE-00-18-10"]["ok"], true,
        "{status}"
    );

    let (code, took) = terminate(&mut agent);
    assert_eq!(code, Some(0), "{}", diagnostics("clean shutdown"));
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    eprintln!("ble bluez test: {:?}", t0.elapsed());
}
