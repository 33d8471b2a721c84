//! MQTT source against a real mosquitto (started here, on a loopback port, with TLS from a CA
//! made by openssl and password auth; persistence on):
//! - QoS 1 readings flow to Observations; a non-JSON payload is dead-lettered and later
//!   messages still flow;
//! - messages published while the agent is down arrive after it restarts (persistent session);
//! - SIGKILL between receive and commit (a 10 s commit window holds the readings received but
//!   not committed) leads to redelivery and exactly one Observation each;
//! - a broker restart (persistence) is survived with back-off reconnects;
//! - MQTT 5 with a session expiry keeps the session across an agent restart.

use crate::device_support::{
    assert_each_once, outbox, wait_for, wait_metric, wait_observations, ward_config, Agent,
};
use crate::harness::{free_port, metric, terminate};
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Broker {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/install-test-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Broker {
    /// CA, server certificate for localhost/127.0.0.1, users `agent` and `monitor`, config.
    fn new(dir: &Path) -> Broker {
        let d = |f: &str| dir.join(f).display().to_string();
        let ossl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=Test Ward CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        ossl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        ossl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        run(Command::new("mosquitto_passwd").args([
            "-c",
            "-b",
            &d("passwd"),
            "agent",
            "agent-secret",
        ]));
        run(Command::new("mosquitto_passwd").args([
            "-b",
            &d("passwd"),
            "monitor",
            "monitor-secret",
        ]));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let conf = format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\npersistence true\npersistence_location {data}/\nautosave_interval 1\nmax_queued_messages 1000\nlog_dest file {log}\nconnection_messages true\n{user}listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
            passwd = d("passwd"),
            data = d("data"),
            log = d("mosquitto.log"),
            user = if root { "user root\n" } else { "" },
            ca = d("ca.pem"),
            cert = d("server.pem"),
            key = d("server.key"),
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        std::fs::write(dir.join("agent.pw"), "agent-secret\n").unwrap();
        let mut b = Broker {
            dir: dir.to_owned(),
            port,
            child: None,
        };
        b.start();
        b
    }

    fn start(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/install-test-deps.sh installs it)");
        self.child = Some(child);
        wait_for(10, "mosquitto to listen", || {
            TcpStream::connect(("127.0.0.1", self.port)).ok()
        });
    }

    /// SIGTERM: mosquitto saves its persistence file and exits.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .ok();
            c.wait().ok();
        }
    }

    /// Publishes QoS 1 messages as the `monitor` user and waits for the broker's PUBACKs.
    fn publish(&self, msgs: &[(String, Vec<u8>)]) {
        let mut o = MqttOptions::new(
            format!("monitor-{}", std::process::id()),
            "localhost",
            self.port,
        );
        o.set_credentials("monitor", "monitor-secret")
            .set_keep_alive(Duration::from_secs(5));
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: std::fs::read(self.dir.join("ca.pem")).unwrap(),
            alpn: None,
            client_auth: None,
        }));
        let (client, mut conn) = Client::new(o, 100);
        for (topic, payload) in msgs {
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .unwrap();
        }
        let mut acked = 0;
        while acked < msgs.len() {
            match conn.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("publishing: {other:?}"),
            }
        }
        client.disconnect().ok();
        while let Ok(Ok(ev)) = conn.recv_timeout(Duration::from_secs(2)) {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// Gateway payloads (one SpO2 + pulse-rate reading each) at seconds `secs`.
fn readings(device: &str, secs: std::ops::Range<u32>) -> Vec<(String, Vec<u8>)> {
    secs.map(|s| {
        (
            format!("ward7/{device}/vitals"),
            format!(r#"{{"deviceId":"{device}","patientId":"patient-7","type":"spo2","timestamp":"2026-03-15T07:{:02}:{:02}Z","values":{{"spo2":{},"pulseRate":{}}}}}"#, s / 60, s % 60, 90 + s % 10, 60 + s).into_bytes(),
        )
    })
    .collect()
}

fn mqtt_source(b: &Broker, version: &str, client_id: &str) -> String {
    format!(
        r#"[[sources]]
type = "mqtt"
name = "mqtt"
host = "localhost"
port = {port}
protocol_version = "{version}"
client_id = "{client_id}"
username = "agent"
password = {{ file = "agent.pw" }}
ca_file = "ca.pem"
subscriptions = [ {{ filter = "ward7/+/vitals", qos = 1 }} ]
device_id_topic_segment = 1
reconnect_min_secs = 0.1
reconnect_max_secs = 0.5
"#,
        port = b.port
    )
}

fn connected(admin: u16) -> Option<f64> {
    metric(admin, "iomt_source_connected{source=\"mqtt\"}")
}

fn wait_connected(admin: u16) {
    wait_for(20, "the MQTT source to connect", || {
        (connected(admin) == Some(1.0)).then_some(())
    });
    // The first connection subscribes; give the SUBACK a moment before publishing.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn mqtt_qos1_persistent_session_kill9_and_broker_restart() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    let state = dir.path().join("state");
    let out = state.join("outbox");
    let src = mqtt_source(&broker, "3.1.1", "gw-ward7");
    let normal = ward_config(
        dir.path(),
        "ward.toml",
        &state,
        "commit_interval_ms = 50",
        &src,
    );
    let admin = free_port();

    // 1. Readings flow; a non-JSON payload is dead-lettered and later messages still flow.
    let mut agent = Agent::start(&normal, admin);
    wait_connected(admin);
    let mut msgs = readings("ox-1", 1..4);
    msgs.push(("ward7/ox-1/vitals".into(), b"SPO2=97 HR=72".to_vec()));
    msgs.extend(readings("ox-1", 4..5));
    broker.publish(&msgs);
    wait_observations(&out, 8, 20);
    wait_metric(
        admin,
        "iomt_source_decode_failed_total{source=\"mqtt\",reason=\"not_json\"}",
        1.0,
        10,
    );

    // 2. Published while the agent is down: delivered after it restarts.
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    broker.publish(&readings("ox-1", 5..8));
    let mut agent = Agent::start(&normal, admin);
    wait_observations(&out, 14, 20);

    // 3. SIGKILL between receive and commit: a 10 s commit window holds what was received.
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    let slow = ward_config(
        dir.path(),
        "slow.toml",
        &state,
        "commit_interval_ms = 10000\ncommit_max_records = 1000",
        &src,
    );
    let mut agent = Agent::start(&slow, admin);
    wait_connected(admin);
    broker.publish(&readings("ox-1", 8..11));
    wait_metric(
        admin,
        "iomt_source_messages_in_total{source=\"mqtt\"}",
        3.0,
        10,
    );
    agent.kill().unwrap(); // SIGKILL: received, not committed, not acknowledged
    agent.wait().unwrap();
    assert_eq!(
        outbox(&out, "Observation").0.len(),
        14,
        "nothing of the killed window was delivered"
    );
    let mut agent = Agent::start(&normal, admin);
    wait_observations(&out, 20, 20);
    assert_each_once(&out);

    // 4. Broker restart: the agent reconnects with back-off; the session survives.
    broker.stop();
    wait_for(10, "the source to see the broker go", || {
        (connected(admin) == Some(0.0)).then_some(())
    });
    broker.start();
    wait_connected(admin);
    broker.publish(&readings("ox-2", 11..13));
    let obs = wait_observations(&out, 24, 20);
    assert_eq!(obs.len(), 24);
    assert_each_once(&out);
    assert!(obs.values().all(|o| o["subject"]["reference"]
        .as_str()
        .is_some_and(|s| s.starts_with("Patient/"))));
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    eprintln!("mqtt 3.1.1 test took {:?}", t0.elapsed());
}

#[test]
fn mqtt5_session_expiry_keeps_the_session_across_a_restart() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new(dir.path());
    let state = dir.path().join("state");
    let out = state.join("outbox");
    let cfg = ward_config(
        dir.path(),
        "ward.toml",
        &state,
        "commit_interval_ms = 50",
        &mqtt_source(&broker, "5", "gw-ward7-v5"),
    );
    let admin = free_port();
    let mut agent = Agent::start(&cfg, admin);
    wait_connected(admin);
    broker.publish(&readings("ox-5", 1..2));
    wait_observations(&out, 2, 20);
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    broker.publish(&readings("ox-5", 2..4));
    let mut agent = Agent::start(&cfg, admin);
    wait_observations(&out, 6, 20);
    assert_each_once(&out);
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    eprintln!("mqtt 5 test took {:?}", t0.elapsed());
}
