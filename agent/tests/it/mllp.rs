//! HL7 v2 over MLLP, end to end with the real agent: a test client sends PCD-01 messages over
//! TCP and reads one ACK per message; the Observations appear in the outbox with LOINC, MDC
//! and UCUM codes; malformed messages get AR/CE with the reason and affect nothing else; an
//! ACKed message survives a SIGKILL right after its ACK.

use crate::device_support::{
    assert_each_once, codes, outbox, wait_for, wait_metric, wait_observations, ward_config, Agent,
};
use crate::harness::{free_port, metric, terminate};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const MSH: &str = "MSH|^~\\&|EDGEGW^0012340000000001^EUI-64|WARD7|||20240315083000+0100||ORU^R01^ORU_R01|{ID}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO";

/// A PCD-01 message (device-protocols.md §4.3) with control id `id` and observation minute
/// `mm` (so that two messages give different Observations).
fn pcd01(id: &str, mm: &str) -> String {
    let t = format!("2024031508{mm}58+0100");
    [
        MSH.replace("{ID}", id),
        "PID|||123456^^^HOSP^MR||Doe^Jane^^^^^L".into(),
        "PV1||I|WARD7^^BED12".into(),
        format!("OBR|1|{id}^EDGEGW|{id}^EDGEGW|182777000^monitoring of patient^SCT|||20240315083000+0100"),
        "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0012340000000001^EUI-64".into(),
        format!("OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R|||{t}"),
        format!("OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100||||R|||{t}"),
        format!("OBX|4|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|71|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||{t}"),
        format!("OBX|5|NM|150488^MDC_BLD_PERF_INDEX^MDC|1.2.1.3|2.4|262688^MDC_DIM_PERCENT^MDC|||||R|||{t}"),
        format!("OBX|6|NM|150301^MDC_PRESS_CUFF_SYS^MDC|1.3.1.1|128|266016^MDC_DIM_MMHG^MDC|||||R|||{t}"),
        format!("OBX|7|NM|150302^MDC_PRESS_CUFF_DIA^MDC|1.3.1.2|82|266016^MDC_DIM_MMHG^MDC|||||R|||{t}"),
        format!("OBX|8|NM|150344^MDC_TEMP^MDC|1.4.1.1|37.1|268192^MDC_DIM_DEGC^MDC|||||R|||{t}"),
    ]
    .join("\r")
        + "\r"
}

/// Observations per message above: HR, SpO2, PR, PI, BP, temperature.
const PER_MESSAGE: usize = 6;

fn frame(msg: &str) -> Vec<u8> {
    let mut f = vec![0x0B];
    f.extend(msg.as_bytes());
    f.extend([0x1C, 0x0D]);
    f
}

struct Client(TcpStream);

impl Client {
    fn connect(port: u16) -> Client {
        let s = wait_for(10, "the MLLP listener", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client(s)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// Reads one MLLP-framed ACK; returns its segments.
    fn ack(&mut self) -> Vec<String> {
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(&[0x1C, 0x0D]) {
            let n = self.0.read(&mut b).expect("an ACK before the timeout");
            assert!(n == 1, "connection closed before the ACK; got {buf:?}");
            buf.push(b[0]);
        }
        let start = buf.iter().position(|b| *b == 0x0B).expect("start block");
        String::from_utf8_lossy(&buf[start + 1..buf.len() - 2])
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Sends a message and returns (MSA-1, MSA-2, MSA-3).
    fn exchange(&mut self, msg: &str) -> (String, String, String) {
        self.send(&frame(msg));
        let segs = self.ack();
        let msa = segs
            .iter()
            .find(|s| s.starts_with("MSA|"))
            .expect("MSA segment")
            .clone();
        let f: Vec<&str> = msa.split('|').collect();
        (
            f[1].into(),
            f.get(2).unwrap_or(&"").to_string(),
            f.get(3).unwrap_or(&"").to_string(),
        )
    }
}

#[test]
fn pcd01_over_tcp_acks_after_commit_and_maps_to_observations() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let sources = format!(
        "[[sources]]\ntype = \"mllp\"\nname = \"monitors\"\nlisten = \"127.0.0.1:{port}\"\n"
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
    let mut c = Client::connect(port);

    // A valid message: accept-level ACK (enhanced mode, MSH-15 = AL) naming it.
    let (code, id, _) = c.exchange(&pcd01("MSG00001", "20"));
    assert_eq!((code.as_str(), id.as_str()), ("CA", "MSG00001"));
    // A bad number: CE with the reason; garbage that is not HL7: AR; bytes outside any
    // frame: no answer (no MSH), dead-lettered.
    let (code, id, reason) =
        c.exchange(&pcd01("MSG00002", "21").replace("|97|262688", "|9x7|262688"));
    assert_eq!((code.as_str(), id.as_str()), ("CE", "MSG00002"));
    assert!(reason.contains("9x7"), "{reason}");
    c.send(b"noise outside any frame\r\n");
    let (code, _, reason) = c.exchange("this is not HL7");
    assert_eq!(code, "AR");
    assert!(reason.contains("MSH"), "{reason}");
    // The connection still works; a resend of message 1 is acknowledged again (dedup).
    let (code, _, _) = c.exchange(&pcd01("MSG00003", "22"));
    assert_eq!(code, "CA");
    let (code, _, _) = c.exchange(&pcd01("MSG00001", "20"));
    assert_eq!(code, "CA");
    // Two messages in one write, a second connection in parallel.
    let mut c2 = Client::connect(port);
    c2.send(
        &[
            frame(&pcd01("MSG00004", "23")),
            frame(&pcd01("MSG00005", "24")),
        ]
        .concat(),
    );
    assert_eq!(
        c2.ack().iter().find(|s| s.starts_with("MSA")).unwrap(),
        "MSA|CA|MSG00004"
    );
    assert_eq!(
        c2.ack().iter().find(|s| s.starts_with("MSA")).unwrap(),
        "MSA|CA|MSG00005"
    );

    let obs = wait_observations(&state.join("outbox"), 4 * PER_MESSAGE, 30);
    assert_eq!(
        obs.len(),
        4 * PER_MESSAGE,
        "messages 1, 3, 4, 5; the bad one maps nothing"
    );
    assert_each_once(&state.join("outbox"));
    let spo2: Vec<_> = obs
        .values()
        .filter(|o| codes(o).contains(&"150456".to_owned()))
        .collect();
    assert_eq!(spo2.len(), 4);
    assert!(codes(spo2[0]).starts_with(&["2708-6".to_owned(), "59408-5".to_owned()]));
    assert_eq!(spo2[0]["valueQuantity"]["code"], "%");
    assert!(
        obs.values()
            .any(|o| codes(o).contains(&"61006-3".to_owned())),
        "perfusion index (Mindray alias 150488)"
    );
    let (patients, _) = outbox(&state.join("outbox"), "Patient");
    assert_eq!(patients.len(), 1);
    wait_metric(
        admin,
        "iomt_source_decode_failed_total{source=\"monitors\",reason=\"hl7_error\"}",
        1.0,
        10,
    );
    wait_metric(
        admin,
        "iomt_source_decode_failed_total{source=\"monitors\",reason=\"hl7_rejected\"}",
        1.0,
        10,
    );
    wait_metric(
        admin,
        "iomt_source_decode_failed_total{source=\"monitors\",reason=\"mllp_garbage\"}",
        1.0,
        10,
    );
    assert_eq!(
        metric(admin, "iomt_source_duplicates_total{source=\"monitors\"}"),
        Some(1.0)
    );

    // An ACK means the message is on disk: SIGKILL right after it loses nothing.
    let (code, _, _) = c.exchange(&pcd01("MSG00006", "25"));
    assert_eq!(code, "CA");
    agent.kill().unwrap();
    agent.wait().unwrap();
    let mut agent = Agent::start(&cfg, admin);
    let obs = wait_observations(&state.join("outbox"), 5 * PER_MESSAGE, 30);
    assert_eq!(obs.len(), 5 * PER_MESSAGE);
    assert_each_once(&state.join("outbox"));
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    eprintln!("mllp test took {:?}", t0.elapsed());
}

#[test]
fn mllp_over_a_serial_port_acks_on_the_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_serial::SerialPort;
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
            "[[sources]]\ntype = \"mllp\"\nname = \"serial-monitor\"\npath = \"{path}\"\nbaud = 115200\n"
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
        tokio::task::spawn_blocking(move || {
            wait_metric(admin, "iomt_source_connected{source=\"serial-monitor\"}", 1.0, 15)
        })
        .await
        .unwrap();
        AsyncWriteExt::write_all(&mut master, &frame(&pcd01("SER0001", "30")))
            .await
            .unwrap();
        let mut ack = Vec::new();
        let mut b = [0u8; 256];
        while !ack.ends_with(&[0x1C, 0x0D]) {
            let n = tokio::time::timeout(Duration::from_secs(10), AsyncReadExt::read(&mut master, &mut b))
                .await
                .expect("an ACK on the port")
                .unwrap();
            ack.extend_from_slice(&b[..n]);
        }
        let text = String::from_utf8_lossy(&ack);
        assert!(text.contains("\rMSA|CA|SER0001\r"), "{text:?}");
        let outbox = state.join("outbox");
        let obs = tokio::task::spawn_blocking(move || wait_observations(&outbox, PER_MESSAGE, 20))
            .await
            .unwrap();
        assert_eq!(obs.len(), PER_MESSAGE);
        stop_tx.send(()).ok();
        agent.await.unwrap().expect("clean shutdown");
    });
}
