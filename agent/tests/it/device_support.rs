//! Helpers for the device-source tests (MQTT, serial, MLLP): ward configs with the driver
//! templates and an outbox, waiting on metrics, and reading the outbox.

use crate::harness::{metric, repo};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A ward config with `sources` (TOML `[[sources]]` tables), the driver templates and an
/// outbox under `state_dir`.
pub fn ward_config(
    dir: &Path,
    file: &str,
    state_dir: &Path,
    commit: &str,
    sources: &str,
) -> std::path::PathBuf {
    let r = repo();
    let text = format!(
        r#"ward = "W7"
[agent]
state_dir = "{state}"
[mapping]
device = "{dev}"
fhir = "{fhir}"
watch = false
[buffer]
{commit}
[pipeline]
flush_interval_secs = 0.2
{sources}
[[sinks]]
type = "outbox"
name = "outbox"
"#,
        state = state_dir.display(),
        dev = r.join("templates/drivers.device.json").display(),
        fhir = r.join("templates/drivers.fhir.json").display(),
    );
    let p = dir.join(file);
    std::fs::write(&p, text).expect("write config");
    p
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `secs` seconds with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a metric line starting with `prefix` reaches `at_least`.
pub fn wait_metric(port: u16, prefix: &str, at_least: f64, secs: u64) {
    wait_for(secs, prefix, || {
        metric(port, prefix).filter(|v| *v >= at_least).map(|_| ())
    });
}

/// Every resource in the outbox files `<Type>-*.ndjson`, by id, with how often each id was
/// written.
pub fn outbox(dir: &Path, resource_type: &str) -> (HashMap<String, Value>, HashMap<String, usize>) {
    let mut last = HashMap::new();
    let mut counts = HashMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (last, counts);
    };
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("{resource_type}-"))
            })
        })
        .collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            *counts.entry(id.clone()).or_default() += 1;
            last.insert(id, v);
        }
    }
    (last, counts)
}

/// Waits until the outbox holds `n` distinct Observations; returns them.
pub fn wait_observations(dir: &Path, n: usize, secs: u64) -> HashMap<String, Value> {
    wait_for(secs, &format!("{n} Observations in the outbox"), || {
        let (obs, _) = outbox(dir, "Observation");
        (obs.len() >= n).then_some(obs)
    })
}

/// The LOINC/MDC codes of an Observation.
pub fn codes(o: &Value) -> Vec<String> {
    o["code"]["coding"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts no Observation id was written twice.
pub fn assert_each_once(dir: &Path) {
    let (_, counts) = outbox(dir, "Observation");
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "Observations written more than once: {dups:?}"
    );
}

/// The agent process, SIGKILLed if a test panics before stopping it (no stray agents).
pub struct Agent(pub std::process::Child);

impl Agent {
    pub fn start(config: &Path, admin_port: u16) -> Agent {
        Agent(crate::harness::start(config, admin_port))
    }
}

impl std::ops::Deref for Agent {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}
