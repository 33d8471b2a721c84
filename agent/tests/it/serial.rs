//! Serial sources over pseudo-terminals, end to end:
//! - the real agent opens `socat` pty links by path: a simulated Nonin (Format 8) and Masimo
//!   (ASCII 1) stream readings with garbage and truncated frames in between; the link is
//!   unplugged (socat killed: the agent reads EOF) and replugged (same link names, a new
//!   pty) and the source resumes without a restart;
//! - the runtime in-process on a pty pair (`SerialStream::pair`): Nonin ASCII lines.
//!
//! Readings are written at least one second apart: the connector's Observation ids have
//! one-second resolution, so two readings of a device in one second are one Observation.

use crate::device_support::{
    assert_each_once, codes, wait_for, wait_metric, wait_observations, ward_config, Agent,
};
use crate::harness::{free_port, metric, terminate};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `socat` pty pair: the device writes to `mon`, the agent opens `agent`.
struct PtyLink {
    child: Child,
    mon: PathBuf,
}

impl PtyLink {
    fn start(dir: &Path, name: &str) -> PtyLink {
        let mon = dir.join(format!("{name}-mon"));
        let agent = dir.join(format!("{name}-agent"));
        // Stale links (a socat that was SIGKILLed) would make socat fail.
        std::fs::remove_file(&mon).ok();
        std::fs::remove_file(&agent).ok();
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", mon.display()))
            .arg(format!("pty,raw,echo=0,link={}", agent.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (scripts/install-test-deps.sh installs it)");
        wait_for(10, "socat's links", || {
            (mon.exists() && agent.exists()).then_some(())
        });
        PtyLink { child, mon }
    }

    fn write(&self, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.mon)
            .expect("open the device side");
        f.write_all(bytes).expect("write to the pty");
        f.flush().ok();
    }

    /// Unplug: socat exits (SIGTERM: it removes its links, as a USB adapter's node goes
    /// away) and the agent's side hangs up.
    fn unplug(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .ok();
        self.child.wait().ok();
    }
}

impl Drop for PtyLink {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn nonin8(hr: u16, spo2: u8) -> [u8; 4] {
    [
        0x80 | ((hr >> 7) as u8 & 0x03),
        (hr & 0x7F) as u8,
        spo2 & 0x7F,
        0x00,
    ]
}

fn masimo(spo2: u32, bpm: u32, pi: &str) -> Vec<u8> {
    format!("06/23/24 14:37:54 SN=0000123456 SPO2={spo2:03}% BPM={bpm:03} PI={pi}% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000800\r\n").into_bytes()
}

fn connected(admin: u16, source: &str) -> Option<f64> {
    metric(
        admin,
        &format!("iomt_source_connected{{source=\"{source}\"}}"),
    )
}

#[test]
fn nonin_and_masimo_over_socat_survive_garbage_and_unplug() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let nonin = PtyLink::start(dir.path(), "nonin");
    let masimo_link = PtyLink::start(dir.path(), "masimo");
    let sources = format!(
        r#"[[sources]]
type = "serial"
name = "nonin"
path = "{}"
protocol = "nonin8"
device_id = "nonin-bed12"
patient_id = "patient-12"
reopen_min_secs = 0.05
reopen_max_secs = 0.3
[[sources]]
type = "serial"
name = "masimo"
path = "{}"
protocol = "masimo-ascii"
device_id = "rad97-bed14"
patient_id = "patient-14"
reopen_min_secs = 0.05
reopen_max_secs = 0.3
"#,
        dir.path().join("nonin-agent").display(),
        dir.path().join("masimo-agent").display(),
    );
    let cfg = ward_config(
        dir.path(),
        "ward.toml",
        &state,
        "commit_interval_ms = 50",
        &sources,
    );
    let admin = free_port();
    let mut agent = Agent::start(&cfg, admin);
    wait_metric(admin, "iomt_source_connected{source=\"nonin\"}", 1.0, 15);
    wait_metric(admin, "iomt_source_connected{source=\"masimo\"}", 1.0, 15);

    // A partial first line (as after opening a port mid-line), then readings one second
    // apart with garbage and cut frames between the good ones.
    masimo_link.write(b"37:54 SN=0000123456 SPO2=097%\r\n");
    let junk: [&[u8]; 3] = [&[0x01, 0x02, 0x03], &[0x80, 0x48], &[0x00, 0x7F]];
    for i in 0..3u16 {
        let mut bytes = nonin8(70 + i, 95 + i as u8).to_vec();
        bytes.extend_from_slice(junk[i as usize]);
        nonin.write(&bytes);
        masimo_link.write(&masimo(96 + u32::from(i), 60 + u32::from(i), "02.21"));
        std::thread::sleep(Duration::from_millis(1050));
    }
    // The last junk (a lone 0x00 0x7F) is reported when the next frame starts.
    nonin.write(&nonin8(90, 99));
    // Nonin: 4 readings x (SpO2, pulse rate); Masimo: 3 x (SpO2, pulse rate, PI).
    let obs = wait_observations(&state.join("outbox"), 8 + 9, 20);
    assert_eq!(obs.len(), 17);
    let pi: Vec<_> = obs
        .values()
        .filter(|o| codes(o).contains(&"61006-3".to_owned()))
        .collect();
    assert_eq!(pi.len(), 3);
    assert_eq!(pi[0]["valueQuantity"]["value"], 2.21);
    wait_metric(
        admin,
        "iomt_source_decode_failed_total{source=\"nonin\",reason=\"garbage\"}",
        2.0,
        10,
    );
    wait_metric(
        admin,
        "iomt_source_decode_failed_total{source=\"nonin\",reason=\"truncated\"}",
        1.0,
        10,
    );
    wait_metric(
        admin,
        "iomt_source_decode_failed_total{source=\"masimo\",reason=\"not_a_data_line\"}",
        1.0,
        10,
    );

    // Unplug the Nonin: the source notices, reports it and keeps trying; Masimo goes on.
    nonin.unplug();
    wait_for(10, "the nonin source to report the unplug", || {
        (connected(admin, "nonin") == Some(0.0)).then_some(())
    });
    assert_eq!(connected(admin, "masimo"), Some(1.0));
    std::thread::sleep(Duration::from_millis(600)); // a few failed reopens (logged once)
                                                    // Replug (same link name, a new pty): it resumes without a restart.
    let nonin = PtyLink::start(dir.path(), "nonin");
    wait_for(10, "the nonin source to reopen", || {
        (connected(admin, "nonin") == Some(1.0)).then_some(())
    });
    nonin.write(&nonin8(101, 93));
    std::thread::sleep(Duration::from_millis(1050));
    nonin.write(&nonin8(102, 94));
    let obs = wait_observations(&state.join("outbox"), 17 + 4, 20);
    assert_eq!(obs.len(), 21);
    assert!(obs.values().any(|o| o["valueQuantity"]["value"] == 102));
    assert_each_once(&state.join("outbox"));
    assert!(
        metric(
            admin,
            "iomt_source_connect_failures_total{source=\"nonin\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    drop(masimo_link);
    eprintln!("serial socat test took {:?}", t0.elapsed());
}

#[test]
fn nonin_ascii_on_an_in_process_pty_pair() {
    use tokio::io::AsyncWriteExt;
    use tokio_serial::SerialPort;
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut master, slave) = tokio_serial::SerialStream::pair().expect("a pty pair");
        let path = slave.name().expect("the pty's path");
        drop(slave); // the agent opens it by path
        let sources = format!(
            "[[sources]]\ntype = \"serial\"\nname = \"oxi\"\npath = \"{path}\"\nprotocol = \"nonin-ascii\"\ndevice_id = \"nonin-7500-bed3\"\npatient_id = \"patient-3\"\n"
        );
        let cfg_path = ward_config(dir.path(), "ward.toml", &state, "commit_interval_ms = 50", &sources);
        let cfg = iomt_agent::config::load_file(&cfg_path).expect("valid config");
        let admin = free_port();
        let opts = iomt_agent::runtime::RunOptions {
            admin_addr: Some(format!("127.0.0.1:{admin}").parse().unwrap()),
            ..Default::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(iomt_agent::runtime::run(cfg, opts, async {
            stop_rx.await.ok();
        }));
        tokio::task::spawn_blocking(move || wait_metric(admin, "iomt_source_connected{source=\"oxi\"}", 1.0, 15))
            .await
            .unwrap();
        AsyncWriteExt::write_all(&mut master, b"NONIN 7500 SW 1.2\r\nSPO2=097 HR=072\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1050)).await;
        AsyncWriteExt::write_all(&mut master, b"SPO2=--- HR=---\r\n\x01\x02garbage\r\nSPO2=095 HR=101*\r\n").await.unwrap();
        let outbox = state.join("outbox");
        let obs = tokio::task::spawn_blocking(move || wait_observations(&outbox, 4, 20)).await.unwrap();
        assert_eq!(obs.len(), 4, "two readings x (SpO2, pulse rate); the --- reading maps nothing");
        assert!(obs.values().any(|o| o["valueQuantity"]["value"] == 101));
        wait_metric(admin, "iomt_source_decode_failed_total{source=\"oxi\",reason=\"not_a_data_line\"}", 2.0, 10);
        stop_tx.send(()).ok();
        agent.await.unwrap().expect("clean shutdown");
    });
    assert_each_once(&state.join("outbox"));
    eprintln!("serial pty-pair test took {:?}", t0.elapsed());
}
