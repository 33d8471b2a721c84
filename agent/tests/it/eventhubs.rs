//! Event Hubs forwarding over the SDK's real AMQP path, against the local fake Event Hubs
//! (`tests/eventhubs-fake/`, python-qpid-proton), plus an optional live test.
//!
//! Each test starts its own fake on a free port (`run.sh --port 0`, which creates the fake's
//! venv on first use), points the forwarder at it with a custom endpoint
//! `amqp://127.0.0.1:<port>` and a dummy connection string, and asserts on the JSON lines the
//! fake records for every event it accepts. The tests skip, with a message, only when python3
//! is missing. The live test runs only when `EVENTHUBS_CONNECTION_STRING` is set.

use iomt_agent::mapping::{Measurement, Timestamp};
use iomt_agent::sinks::eventhubs::{
    normalized_events, normalized_groups, raw_event, Auth, EventHubsConfig, EventHubsForwarder,
    ForwardErrorKind, OutEvent, PartitionKeyMode, PinnedForwarder, Secret,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CONNECTION_STRING: &str =
    "Endpoint=sb://ward7.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0";
const HUB: &str = "vitals";
/// Upper bound for one test body (the fake's first start may also build its venv, which is
/// outside this bound).
const TEST_LIMIT: Duration = Duration::from_secs(30);

// ---- the fake ------------------------------------------------------------------------------

fn python_available() -> bool {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    Command::new(python)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

macro_rules! require_python {
    () => {
        if !python_available() {
            eprintln!(
                "SKIPPED: python3 is not installed; the Event Hubs tests need it for tests/eventhubs-fake"
            );
            return;
        }
    };
}

fn fake_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/eventhubs-fake")
}

/// A running fake Event Hubs; killed on drop.
struct Fake {
    child: Child,
    port: u16,
    control: Option<String>,
    log: PathBuf,
}

static FAKE_COUNT: AtomicUsize = AtomicUsize::new(0);

impl Fake {
    /// Starts the fake with extra CLI arguments on a free port.
    fn start(args: &[&str]) -> Fake {
        Self::start_on(0, args, None)
    }

    /// Starts the fake on `port` (0: any free port), appending to `log` if given.
    fn start_on(port: u16, args: &[&str], log: Option<PathBuf>) -> Fake {
        let log = log.unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "iomt-eh-fake-{}-{}.jsonl",
                std::process::id(),
                FAKE_COUNT.fetch_add(1, Ordering::SeqCst)
            ))
        });
        let mut child = Command::new("bash")
            .arg(fake_dir().join("run.sh"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--control-port")
            .arg("0")
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning tests/eventhubs-fake/run.sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The first start may build the venv (python-qpid-proton from source, ~1-2 min).
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut port = None;
        let mut control = None;
        while port.is_none() || control.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the fake printed LISTENING and CONTROL in time");
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            } else if let Some(addr) = line.strip_prefix("CONTROL ") {
                control = Some(addr.to_string());
            }
        }
        Fake {
            child,
            port: port.expect("LISTENING carries a port"),
            control,
            log,
        }
    }

    fn endpoint(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    /// Every record the fake wrote so far.
    fn records(&self) -> Vec<Value> {
        read_records(&self.log)
    }

    /// The events the fake accepted, in acceptance order.
    fn events(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == "event")
            .collect()
    }

    /// Calls the control API (`POST` when `body` is given).
    fn control(&self, path: &str, body: Option<&Value>) -> Value {
        let addr = self.control.as_deref().expect("control port");
        let mut stream = TcpStream::connect(addr).expect("connect to the control port");
        let request = match body {
            Some(b) => {
                let b = b.to_string();
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                )
            }
            None => format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        };
        stream.write_all(request.as_bytes()).expect("write request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).expect("control answers JSON")
    }

    fn stop(mut self) -> PathBuf {
        self.kill();
        self.log.clone()
    }

    /// Kills the fake (it may already have exited) and reaps it.
    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_records(log: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fake log lines are JSON"))
        .collect()
}

/// Waits until `f` is true or `limit` passes (for assertions on what the fake records).
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

// ---- helpers -------------------------------------------------------------------------------

fn config(fake: &Fake) -> EventHubsConfig {
    let mut c = EventHubsConfig::new(Auth::ConnectionString(Secret::new(CONNECTION_STRING)));
    c.hub = Some(HUB.to_string());
    c.custom_endpoint = Some(fake.endpoint());
    c.send_timeout = Duration::from_millis(1500);
    c.open_timeout = Duration::from_secs(3);
    c.store_epoch = Some(3);
    c
}

fn b64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 alphabet") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn body(record: &Value) -> Vec<u8> {
    b64(record["body_b64"].as_str().expect("binary body"))
}

fn seq_of(record: &Value) -> u64 {
    record["application_properties"]["iomt-edge-seq"]
        .as_u64()
        .expect("every event carries iomt-edge-seq")
}

/// Per partition key, the seqs in the order the fake accepted them.
fn seqs_by_key(events: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut map: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        let key = e["partition_key"].as_str().unwrap_or_default().to_string();
        map.entry(key).or_default().push(seq_of(e));
    }
    map
}

/// Readings from three beds, interleaved, seq 1..=n, as raw envelopes.
fn raw_events(n: u64, beds: &[&str]) -> Vec<OutEvent> {
    (1..=n)
        .map(|seq| {
            let bed = beds[(seq as usize) % beds.len()];
            let env = json!({
                "Body": {"hr": 60 + seq, "bed": bed},
                "Properties": {"topic": format!("ward7/{bed}"), "n": seq},
                "SystemProperties": {"iothub-connection-device-id": bed},
            });
            raw_event(&env, bed, seq).expect("valid envelope")
        })
        .collect()
}

fn measurement(device: &str, value: u64, second: u64) -> Measurement {
    let t = Timestamp::parse_rfc3339(&format!("2024-03-15T08:30:{:02}Z", second % 60))
        .expect("valid time");
    Measurement {
        type_name: "heartrate".into(),
        occurrence_time: t,
        ingestion_time: t,
        device_id: device.into(),
        patient_id: Some(format!("patient-{device}")),
        encounter_id: None,
        correlation_id: None,
        properties: vec![("hr".into(), value.to_string())],
    }
}

async fn limited<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("the test finished within its time limit")
}

// ---- tests ---------------------------------------------------------------------------------

/// The agent's way to send (see `sinks::eventhubs::pinned`): called from a multi-threaded
/// runtime, hundreds of one-event batches each settle on the first try. (The same sends made
/// straight from a multi-threaded runtime lose a disposition every few dozen sends with
/// fe2o3-amqp 0.16.2, each costing a send timeout and a rebuild.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_forwarder_sends_hundreds_of_batches_from_a_multi_threaded_runtime_without_a_rebuild(
) {
    require_python!();
    let fake = Fake::start(&[]);
    let mut cfg = config(&fake);
    cfg.max_batch_events = 1;
    let fwd = PinnedForwarder::start("test", cfg).expect("valid config");
    let beds: Vec<String> = (1..=50).map(|i| format!("bed-{i}")).collect();
    let beds: Vec<&str> = beds.iter().map(String::as_str).collect();
    let events = raw_events(600, &beds);
    for chunk in events.chunks(100) {
        let report = limited(fwd.send(chunk.to_vec()))
            .await
            .expect("send succeeds");
        assert_eq!(report.rebuilds, 0, "no send timeout: {report:?}");
        assert_eq!(report.batches, 100, "one event per batch");
    }
    assert_eq!(fwd.rebuilds_total(), 0);
    assert!(fwd.is_connected());
    let got = fake.events();
    assert_eq!(got.len(), 600, "every event once");
    for (key, seqs) in seqs_by_key(&got) {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "events of {key} arrive in order");
    }
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn raw_events_arrive_once_in_order_per_device_with_key_and_seq() {
    require_python!();
    let fake = Fake::start(&[]);
    let mut cfg = config(&fake);
    cfg.max_batch_events = 4; // several batches per device
    let mut fwd = EventHubsForwarder::new(cfg).expect("valid config");
    let events = raw_events(30, &["bed-1", "bed-2", "bed-3"]);
    let sent = events.clone();
    let report = limited(fwd.send(events)).await.expect("send succeeds");

    assert!(report.rejected.is_empty());
    let mut delivered = report.delivered.clone();
    delivered.sort_unstable();
    assert_eq!(delivered, (1..=30).collect::<Vec<_>>());
    assert_eq!(report.batches, 9, "3 devices x 10 events in batches of 4");

    let got = fake.events();
    assert_eq!(got.len(), 30, "every event arrives once");
    for (key, seqs) in seqs_by_key(&got) {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "events of {key} arrive in order");
        assert_eq!(seqs.len(), 10);
    }
    for record in &got {
        let seq = seq_of(record);
        let original = &sent[(seq - 1) as usize];
        assert_eq!(record["partition_key"], original.partition_key.as_str());
        assert_eq!(body(record), original.body, "body of seq {seq}");
        assert_eq!(record["application_properties"]["iomt-edge-epoch"], 3);
        assert_eq!(
            record["application_properties"]["topic"],
            format!("ward7/{}", original.partition_key)
        );
        assert_eq!(record["application_properties"]["n"], seq.to_string());
        assert_eq!(record["content_type"], "application/json");
        assert_eq!(record["batch"], true);
        assert_eq!(
            record["target"],
            "amqps://ward7.servicebus.windows.net/vitals"
        );
    }
    let cbs: Vec<Value> = fake
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "cbs")
        .collect();
    assert!(!cbs.is_empty(), "the client authorised through CBS");
    assert_eq!(cbs[0]["type"], "servicebus.windows.net:sastoken");
    assert_eq!(
        cbs[0]["name"],
        "amqps://ward7.servicebus.windows.net/vitals"
    );
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn normalized_events_and_gzip_groups_round_trip() {
    require_python!();
    let fake = Fake::start(&[]);
    let mut fwd = EventHubsForwarder::new(config(&fake)).expect("valid config");
    let records: Vec<(u64, Vec<Measurement>)> = (1..=6)
        .map(|seq| {
            (
                seq,
                vec![
                    measurement("monitor-a", 70 + seq, seq),
                    measurement("monitor-b", 90 + seq, seq),
                ],
            )
        })
        .collect();

    // One JSON event per measurement.
    let singles = normalized_events(&records, PartitionKeyMode::DeviceId).expect("build");
    let report = limited(fwd.send(singles)).await.expect("send singles");
    assert_eq!(report.delivered.len(), 12);
    let got = fake.events();
    assert_eq!(got.len(), 12);
    for record in &got {
        let seq = seq_of(record);
        let index = record["application_properties"]["iomt-edge-index"]
            .as_u64()
            .expect("index property");
        let expected = records[(seq - 1) as usize].1[index as usize].to_normalized_json();
        let actual: Value = serde_json::from_slice(&body(record)).expect("JSON body");
        assert_eq!(actual, expected);
        assert_eq!(record["partition_key"], expected["DeviceId"]);
    }
    for (key, seqs) in seqs_by_key(&got) {
        assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "order of {key}");
    }

    // Gzip measurement groups: one event per partition key, at most 4 measurements each.
    let groups = normalized_groups(&records, PartitionKeyMode::DeviceId, 4).expect("build");
    assert_eq!(groups.len(), 4, "2 devices x ceil(6/4)");
    let report = limited(fwd.send(groups)).await.expect("send groups");
    assert_eq!(report.delivered.len(), 4);
    let got: Vec<Value> = fake.events().into_iter().skip(12).collect();
    assert_eq!(got.len(), 4);
    let mut decoded: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in &got {
        assert_eq!(record["content_type"], "application/gzip");
        assert_eq!(
            record["application_properties"]["IsMeasurementGroup"], true,
            "a boolean, as the connector casts it with (bool)"
        );
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(&body(record)[..])
            .read_to_end(&mut json)
            .expect("gzip body");
        let array: Vec<Value> = serde_json::from_slice(&json).expect("JSON array");
        let key = record["partition_key"].as_str().expect("key").to_string();
        decoded.entry(key).or_default().extend(array);
    }
    for device in ["monitor-a", "monitor-b"] {
        let expected: Vec<Value> = records
            .iter()
            .flat_map(|(_, ms)| ms.iter().filter(|m| m.device_id == device))
            .map(Measurement::to_normalized_json)
            .collect();
        assert_eq!(decoded[device], expected, "group content of {device}");
    }
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn endpoint_dies_mid_delivery_send_times_out_client_rebuilt_nothing_lost() {
    require_python!();
    // The 2nd event delivery is never settled: the fake drops that connection without an
    // AMQP close and keeps listening.
    let fake = Fake::start(&["--die-at", "2"]);
    let mut cfg = config(&fake);
    cfg.max_batch_events = 5;
    let mut fwd = EventHubsForwarder::new(cfg).expect("valid config");
    let started = Instant::now();
    let report = limited(fwd.send(raw_events(15, &["bed-9"])))
        .await
        .expect("the batch is resent on a rebuilt client");
    let took = started.elapsed();

    assert!(report.rebuilds >= 1, "client rebuilt: {report:?}");
    assert_eq!(fwd.rebuilds_total(), u64::from(report.rebuilds));
    assert_eq!(report.delivered, (1..=15).collect::<Vec<_>>());
    assert!(
        took >= Duration::from_millis(1400),
        "the lost send was cut by the send timeout, took {took:?}"
    );
    let records = fake.records();
    assert!(records.iter().any(|r| r["kind"] == "die"));
    let got = fake.events();
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 15, "nothing lost: {seqs:?}");
    // Duplicates are allowed (at-least-once) but must be whole resends, detectable by seq;
    // keeping the first of each seq gives the original order.
    let mut seen = HashSet::new();
    let first_seen: Vec<u64> = seqs.iter().copied().filter(|s| seen.insert(*s)).collect();
    assert_eq!(first_seen, (1..=15).collect::<Vec<_>>());
    let connections: HashSet<u64> = got
        .iter()
        .filter_map(|r| r["connection"].as_u64())
        .collect();
    assert!(connections.len() >= 2, "events came over a new connection");
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn endpoint_process_exits_then_comes_back_later_sends_deliver_everything() {
    require_python!();
    let fake = Fake::start(&["--die-at", "1", "--die-mode", "exit"]);
    let port = fake.port;
    let mut cfg = config(&fake);
    cfg.send_timeout = Duration::from_millis(1000);
    cfg.open_timeout = Duration::from_millis(1000);
    let mut fwd = EventHubsForwarder::new(cfg).expect("valid config");
    let events = raw_events(6, &["bed-1", "bed-2"]);

    let err = limited(fwd.send(events.clone()))
        .await
        .expect_err("the endpoint is gone");
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(
            err.kind,
            ForwardErrorKind::Timeout | ForwardErrorKind::Connection
        ),
        "{err}"
    );
    assert!(err.partial.delivered.is_empty());
    assert!(!fwd.is_connected(), "the hung client was dropped");
    let log = fake.stop();

    // The endpoint comes back on the same port; the caller sends the kept events again.
    let fake = Fake::start_on(port, &[], Some(log));
    let report = limited(fwd.send(events))
        .await
        .expect("delivered after return");
    let mut delivered = report.delivered.clone();
    delivered.sort_unstable();
    assert_eq!(delivered, (1..=6).collect::<Vec<_>>());
    let got = fake.events();
    let unique: HashSet<u64> = got.iter().map(seq_of).collect();
    assert_eq!(unique.len(), 6);
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn too_large_events_are_rejected_per_event_and_the_others_delivered() {
    require_python!();
    // The service rejects (amqp:link:message-size-exceeded) any delivery holding a body over
    // 1000 bytes, so the batch with the big event is rejected as a whole; and the link's
    // max-message-size is 8 KiB, so a 20 KB event does not even fit an empty batch.
    let fake = Fake::start(&["--reject-larger-than", "1000", "--max-message-size", "8192"]);
    let mut fwd = EventHubsForwarder::new(config(&fake)).expect("valid config");
    let mut events = raw_events(8, &["bed-4"]);
    events[2].body = vec![b'x'; 2000]; // seq 3: rejected by the service
    events[5].body = vec![b'y'; 20_000]; // seq 6: too large for the link
    let report = limited(fwd.send(events))
        .await
        .expect("send settles every event");

    let mut rejected: Vec<(u64, &str)> = report
        .rejected
        .iter()
        .map(|r| (r.seq, r.condition.as_str()))
        .collect();
    rejected.sort_unstable();
    assert_eq!(
        rejected,
        vec![
            (3, "amqp:link:message-size-exceeded"),
            (6, "amqp:link:message-size-exceeded")
        ]
    );
    assert!(report.rejected.iter().all(|r| r.partition_key == "bed-4"));
    assert_eq!(report.delivered, vec![1, 2, 4, 5, 7, 8]);
    let got: Vec<u64> = fake.events().iter().map(seq_of).collect();
    assert_eq!(got, vec![1, 2, 4, 5, 7, 8], "the others flow, in order");
    let settled: Vec<Value> = fake
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "settled")
        .collect();
    assert!(
        settled
            .iter()
            .any(|r| r["outcome"] == "reject" && r["events"].as_u64() > Some(1)),
        "the first rejection was of a whole batch: {settled:?}"
    );
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn stalled_endpoint_times_out_as_transient_and_recovers() {
    require_python!();
    let fake = Fake::start(&["--stall-at", "1"]);
    let mut cfg = config(&fake);
    cfg.send_timeout = Duration::from_millis(1000);
    cfg.attempts_per_batch = 1;
    let mut fwd = EventHubsForwarder::new(cfg).expect("valid config");
    let events = raw_events(3, &["bed-5"]);

    let started = Instant::now();
    let err = limited(fwd.send(events.clone()))
        .await
        .expect_err("nothing is settled");
    assert_eq!(err.kind, ForwardErrorKind::Timeout, "{err}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!fwd.is_connected(), "the client was dropped");
    assert!(fake.events().is_empty());

    // The endpoint resumes; the kept events go out on a rebuilt client.
    let stats = fake.control("/unstall", Some(&json!({})));
    assert_eq!(stats["stalled"], false);
    let report = limited(fwd.send(events))
        .await
        .expect("delivered after the stall");
    assert_eq!(report.delivered, vec![1, 2, 3]);
    assert_eq!(report.rebuilds, 1);
    assert!(wait_for(Duration::from_secs(2), || {
        let seqs: HashSet<u64> = fake.events().iter().map(seq_of).collect();
        seqs == HashSet::from([1, 2, 3])
    }));
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn connection_dropped_while_idle_next_send_still_delivers() {
    require_python!();
    let fake = Fake::start(&[]);
    let mut fwd = EventHubsForwarder::new(config(&fake)).expect("valid config");
    let events = raw_events(4, &["bed-2"]);
    let first = limited(fwd.send(events[..2].to_vec()))
        .await
        .expect("first send");
    assert_eq!(first.delivered, vec![1, 2]);

    // The endpoint drops the idle connection (no AMQP close), as a NAT or firewall would.
    // Observed with SDK 0.16: the next send does not notice the dead socket and hangs until
    // the send timeout; the forwarder then rebuilds the client (cf. minghuaw/fe2o3-amqp#200).
    let stats = fake.control("/drop", Some(&json!({})));
    assert!(stats.get("error").is_none(), "{stats}");
    assert!(wait_for(Duration::from_secs(2), || {
        fake.control("/stats", None)["open_connections"] == 0
    }));
    let second = limited(fwd.send(events[2..].to_vec()))
        .await
        .expect("delivered over a new connection");
    assert_eq!(second.delivered, vec![3, 4]);
    let got: Vec<u64> = fake.events().iter().map(seq_of).collect();
    assert_eq!(got, vec![1, 2, 3, 4]);
    let connections: HashSet<u64> = fake
        .events()
        .iter()
        .filter_map(|r| r["connection"].as_u64())
        .collect();
    assert_eq!(connections.len(), 2);
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn endpoint_down_for_a_while_errors_are_transient_then_everything_is_delivered() {
    require_python!();
    let fake = Fake::start(&[]);
    let mut cfg = config(&fake);
    cfg.send_timeout = Duration::from_millis(1000);
    cfg.open_timeout = Duration::from_millis(1000);
    let mut fwd = EventHubsForwarder::new(cfg).expect("valid config");
    let events = raw_events(6, &["bed-1", "bed-3"]);
    let report = limited(fwd.send(events[..2].to_vec())).await.expect("up");
    assert_eq!(report.delivered.len(), 2);

    let stats = fake.control("/down", Some(&json!({})));
    assert_eq!(stats["down"], true);
    // The backlog grows while the endpoint is down; every attempt fails transiently.
    for _ in 0..2 {
        let err = limited(fwd.send(events[2..].to_vec()))
            .await
            .expect_err("down");
        assert!(err.is_transient(), "{err}");
        assert!(err.partial.delivered.is_empty(), "{err:?}");
    }
    let stats = fake.control("/up", Some(&json!({})));
    assert_eq!(stats["down"], false);
    let report = limited(fwd.send(events[2..].to_vec()))
        .await
        .expect("delivered after the endpoint returned");
    let mut delivered = report.delivered.clone();
    delivered.sort_unstable();
    assert_eq!(delivered, vec![3, 4, 5, 6]);
    let seqs: HashSet<u64> = fake.events().iter().map(seq_of).collect();
    assert_eq!(seqs, (1..=6).collect::<HashSet<_>>());
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn a_busy_rejection_is_retried_by_the_sdk_and_delivered() {
    require_python!();
    // The first delivery is rejected with com.microsoft:server-busy, later ones accepted.
    let fake = Fake::start(&[
        "--outcome",
        "reject",
        "--outcome-first",
        "1",
        "--reject-condition",
        "com.microsoft:server-busy",
    ]);
    let mut fwd = EventHubsForwarder::new(config(&fake)).expect("valid config");
    let report = limited(fwd.send(raw_events(3, &["bed-3"])))
        .await
        .expect("retried and delivered");
    assert_eq!(report.delivered, vec![1, 2, 3]);
    assert!(report.rejected.is_empty());
    assert_eq!(report.rebuilds, 0, "a busy answer needs no new client");
    let got: Vec<u64> = fake.events().iter().map(seq_of).collect();
    assert_eq!(got, vec![1, 2, 3]);
    assert!(fake
        .records()
        .iter()
        .any(|r| r["kind"] == "settled" && r["condition"] == "com.microsoft:server-busy"));
    limited(fwd.close()).await.expect("clean close");
}

#[tokio::test]
async fn unauthorized_rejection_is_not_transient_and_keeps_the_events() {
    require_python!();
    let fake = Fake::start(&[
        "--outcome",
        "reject",
        "--reject-condition",
        "amqp:unauthorized-access",
    ]);
    let mut fwd = EventHubsForwarder::new(config(&fake)).expect("valid config");
    let err = limited(fwd.send(raw_events(2, &["bed-6"])))
        .await
        .expect_err("rejected");
    assert_eq!(err.kind, ForwardErrorKind::Unauthorized, "{err}");
    assert!(!err.is_transient());
    assert_eq!(err.condition.as_deref(), Some("amqp:unauthorized-access"));
    assert!(err.partial.delivered.is_empty() && err.partial.rejected.is_empty());
    assert!(fake.events().is_empty());
}

#[tokio::test]
async fn an_undescribed_rejection_is_not_per_event_and_keeps_the_events() {
    require_python!();
    // A rejection without an error condition says nothing about which event is at fault, so
    // nothing is dead-lettered.
    let fake = Fake::start(&["--outcome", "reject", "--reject-condition", ""]);
    let mut fwd = EventHubsForwarder::new(config(&fake)).expect("valid config");
    let err = limited(fwd.send(raw_events(3, &["bed-6"])))
        .await
        .expect_err("rejected");
    assert_eq!(err.kind, ForwardErrorKind::Rejected, "{err}");
    assert!(!err.is_transient());
    assert!(err.partial.rejected.is_empty() && err.partial.delivered.is_empty());
    assert!(fake.events().is_empty());
}

#[tokio::test]
async fn nothing_listening_is_a_transient_connection_error() {
    require_python!();
    // Take a port, then free it, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut cfg = EventHubsConfig::new(Auth::ConnectionString(Secret::new(CONNECTION_STRING)));
    cfg.hub = Some(HUB.into());
    cfg.custom_endpoint = Some(format!("amqp://127.0.0.1:{port}"));
    cfg.open_timeout = Duration::from_secs(3);
    let mut fwd = EventHubsForwarder::new(cfg).expect("valid config");
    let err = limited(fwd.send(raw_events(1, &["bed-7"])))
        .await
        .expect_err("refused");
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.kind, ForwardErrorKind::Connection, "{err}");
}

/// Pins a limit of SDK 0.16: `ProducerClient::send_batch` returns `Ok` for the `Modified`
/// outcome, so the forwarder reports the event delivered although the endpoint did not store
/// it. Event Hubs answers `Accepted` or `Rejected`, so this matters only for other brokers. If
/// this test fails, the SDK now reports it: make the forwarder treat it as a failure.
#[tokio::test]
async fn known_gap_modified_outcome_is_reported_as_delivered_by_sdk_0_16() {
    require_python!();
    let fake = Fake::start(&["--modify-property", "n=1"]);
    let mut fwd = EventHubsForwarder::new(config(&fake)).expect("valid config");
    let report = limited(fwd.send(raw_events(1, &["bed-8"])))
        .await
        .expect("the SDK says Ok");
    assert_eq!(report.delivered, vec![1]);
    assert!(
        fake.events().is_empty(),
        "but the endpoint did not accept it"
    );
    assert!(fake
        .records()
        .iter()
        .any(|r| r["kind"] == "settled" && r["outcome"] == "modify"));
}

/// Live check against a real namespace; runs only when `EVENTHUBS_CONNECTION_STRING` is set
/// (`EVENTHUB_NAME` too, unless the string has `EntityPath`). Sends three tagged events under
/// one partition key and requires Event Hubs to accept them; it does not read them back.
#[tokio::test]
async fn live_send_to_a_real_namespace() {
    let Ok(cs) = std::env::var("EVENTHUBS_CONNECTION_STRING") else {
        eprintln!("SKIPPED: live Event Hubs test; set EVENTHUBS_CONNECTION_STRING (and EVENTHUB_NAME) to run it");
        return;
    };
    let mut cfg = EventHubsConfig::new(Auth::ConnectionString(Secret::new(cs)));
    cfg.hub = std::env::var("EVENTHUB_NAME").ok();
    if std::env::var("EVENTHUBS_WEBSOCKET").is_ok() {
        cfg.transport = iomt_agent::sinks::eventhubs::Transport::WebSocket;
    }
    let mut fwd = EventHubsForwarder::new(cfg).expect("valid config");
    let marker = format!(
        "iomt-edge-live-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let events: Vec<OutEvent> = (1..=3)
        .map(|seq| {
            let env = json!({"Body": {"marker": marker, "n": seq}, "Properties": {}});
            raw_event(&env, &marker, seq).expect("valid envelope")
        })
        .collect();
    let report = tokio::time::timeout(Duration::from_secs(90), fwd.send(events))
        .await
        .expect("live send finished")
        .expect("Event Hubs accepted the events");
    assert_eq!(report.delivered, vec![1, 2, 3]);
    fwd.close().await.expect("clean close");
}

// ---- the running agent with an Event Hubs sink (simulator → log → sink → fake) ------------

use crate::harness::{
    admin_get, agent_bin, check_exactly_once, free_port, metric, repo, terminate,
};

/// Env var the test configs name for the connection string (a secret reference).
const CS_ENV: &str = "IOMT_TEST_EH_CONNECTION_STRING";

/// A scratch directory for one agent run.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iomt-ehsink-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A ward config: a simulator with one device of each kind producing `readings` readings
/// every `interval` seconds per device, the Event Hubs sink `cloud` (with `extra` keys) and,
/// when `outbox` is set, an outbox sink too.
fn agent_config(
    dir: &std::path::Path,
    fake: &Fake,
    readings: u64,
    interval: f64,
    extra: &str,
    outbox: bool,
) -> PathBuf {
    let r = repo();
    let outbox = if outbox {
        "[[sinks]]\ntype = \"outbox\"\nname = \"outbox\"\nunready_after_secs = 1\n"
    } else {
        ""
    };
    let text = format!(
        r#"ward = "test"
[agent]
state_dir = "{dir}/state"
[mapping]
device = "{dev}"
fhir = "{fhir}"
watch = false
[buffer]
commit_interval_ms = 50
[pipeline]
flush_interval_secs = 0.2
[[sources]]
type = "simulator"
name = "sim"
heart_rate_monitors = 1
pulse_oximeters = 1
bp_cuffs = 1
thermometers = 1
interval_secs = {interval}
max_readings = {readings}
ack_log = "{dir}/ack.jsonl"
[[sinks]]
type = "eventhubs"
name = "cloud"
hub = "{HUB}"
custom_endpoint = "{endpoint}"
send_timeout_secs = 1.5
unready_after_secs = 1
linger_secs = 0.2
max_batch_events = 8
auth = {{ type = "connection_string", secret = {{ env = "{CS_ENV}" }} }}
{extra}
{outbox}"#,
        dir = dir.display(),
        dev = r.join("templates/vitals.device.json").display(),
        fhir = r.join("templates/vitals.fhir.json").display(),
        endpoint = fake.endpoint(),
    );
    let p = dir.join("ward.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

/// Starts the agent binary with the connection string in its environment.
fn start_agent(config: &std::path::Path, admin_port: u16, env: Option<&str>) -> Child {
    let log = config.with_file_name("agent.stderr");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--config"])
        .arg(config)
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
            "--progress-secs",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .env_remove(CS_ENV)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("stderr file"));
    if let Some(cs) = env {
        cmd.env(CS_ENV, cs);
    }
    cmd.spawn().expect("start iomt-agent")
}

/// The bodies the simulator acknowledged (stored durably), in order.
fn acked(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("ack.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Unique seqs the fake accepted.
fn unique_seqs(fake: &Fake) -> HashSet<u64> {
    fake.events().iter().map(seq_of).collect()
}

fn ready(port: u16) -> Option<bool> {
    admin_get(port, "/readyz").map(|r| r.starts_with("HTTP/1.1 200"))
}

fn pending(port: u16, sink: &str) -> Option<f64> {
    metric(
        port,
        &format!("iomt_buffer_pending_records{{sink=\"{sink}\"}}"),
    )
}

/// Sum of a counter's lines that contain every one of `parts`.
fn counter_sum(port: u16, name: &str, parts: &[&str]) -> f64 {
    admin_get(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until the agent has stored `n` readings and the fake holds `n - excluded` unique
/// seqs, the `cloud` sink having nothing pending.
fn wait_delivered(dir: &std::path::Path, fake: &Fake, port: u16, n: usize, limit: Duration) {
    // The backlog gauge is refreshed once a second: read it only after a refresh that
    // follows the last stored reading.
    let ok = wait_for(limit, || acked(dir).len() == n) && {
        std::thread::sleep(Duration::from_millis(1200));
        wait_for(limit, || pending(port, "cloud") == Some(0.0))
    };
    assert!(
        ok,
        "not drained: acked {}, pending {:?}, at the fake {} (stderr: {})",
        acked(dir).len(),
        pending(port, "cloud"),
        unique_seqs(fake).len(),
        std::fs::read_to_string(dir.join("agent.stderr")).unwrap_or_default()
    );
}

/// Checks the raw events at the fake: one body per acknowledged reading (duplicates only as
/// whole resends of a seq), each with the device id as partition key, in order per device,
/// all with one 32-hex-digit store epoch.
fn check_raw(fake: &Fake, acked: &[Value], skip: &dyn Fn(&Value) -> bool) {
    let events = fake.events();
    let mut by_seq: BTreeMap<u64, Value> = BTreeMap::new();
    let mut epochs = HashSet::new();
    let mut last_per_key: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        let seq = seq_of(e);
        let body: Value = serde_json::from_slice(&body(e)).expect("JSON body");
        let key = e["partition_key"].as_str().expect("partition key");
        assert_eq!(key, body["deviceId"].as_str().expect("deviceId"));
        if let Some(prev) = by_seq.insert(seq, body.clone()) {
            assert_eq!(prev, body, "a duplicate of seq {seq} is a whole resend");
            continue;
        }
        let last = last_per_key.entry(key.to_string()).or_insert(0);
        assert!(seq > *last, "{key}: seq {seq} after {last}");
        *last = seq;
        epochs.insert(
            e["application_properties"]["iomt-edge-epoch"]
                .as_str()
                .expect("epoch is a string")
                .to_string(),
        );
    }
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    let epoch = epochs.into_iter().next().unwrap_or_default();
    assert!(
        epoch.len() == 32 && epoch.chars().all(|c| c.is_ascii_hexdigit()),
        "{epoch}"
    );
    let mut got: Vec<String> = by_seq.values().map(Value::to_string).collect();
    let mut want: Vec<String> = acked
        .iter()
        .filter(|b| !skip(b))
        .map(Value::to_string)
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "one event per acknowledged reading");
    assert_eq!(got, want);
}

#[test]
fn agent_forwards_raw_readings_once_in_order_with_the_device_as_partition_key() {
    require_python!();
    let fake = Fake::start(&[]);
    let dir = scratch("raw");
    let cfg = agent_config(&dir, &fake, 40, 0.1, "payload = \"raw\"", false);
    let port = free_port();
    let mut agent = start_agent(&cfg, port, Some(CONNECTION_STRING));
    wait_delivered(&dir, &fake, port, 40, Duration::from_secs(60));
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    let acked = acked(&dir);
    assert_eq!(acked.len(), 40);
    check_raw(&fake, &acked, &|_| false);
    let devices: HashSet<String> = fake
        .events()
        .iter()
        .filter_map(|e| e["partition_key"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(devices.len(), 4, "four simulated devices: {devices:?}");
}

#[test]
fn agent_forwards_normalized_measurements_each_once() {
    require_python!();
    let fake = Fake::start(&[]);
    let dir = scratch("normalized");
    let cfg = agent_config(&dir, &fake, 24, 0.1, "payload = \"normalized\"", false);
    let port = free_port();
    let mut agent = start_agent(&cfg, port, Some(CONNECTION_STRING));
    wait_delivered(&dir, &fake, port, 24, Duration::from_secs(60));
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));

    // What the device template makes of the acknowledged readings.
    let dev = iomt_agent::mapping::load_device_mapping(
        &std::fs::read_to_string(repo().join("templates/vitals.device.json")).expect("template"),
    )
    .into_result()
    .expect("valid template");
    let t = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").expect("time");
    let project = |m: &Value| {
        json!([
            m["DeviceId"],
            m["Type"],
            m["OccurrenceTimeUtc"],
            m["PatientId"],
            m["Properties"]
        ])
        .to_string()
    };
    let mut want: Vec<String> = Vec::new();
    for b in acked(&dir) {
        let ms = dev.normalize(json!({"Body": b}), t).expect("normalizes");
        want.extend(ms.iter().map(|m| project(&m.to_normalized_json())));
    }
    let mut seen: BTreeMap<(u64, u64), Value> = BTreeMap::new();
    let mut last_per_key: BTreeMap<String, u64> = BTreeMap::new();
    for e in fake.events() {
        let seq = seq_of(&e);
        let index = e["application_properties"]["iomt-edge-index"]
            .as_u64()
            .expect("index");
        let m: Value = serde_json::from_slice(&body(&e)).expect("JSON");
        assert_eq!(e["partition_key"], m["DeviceId"]);
        assert_eq!(e["content_type"], "application/json");
        let key = m["DeviceId"].as_str().unwrap_or_default().to_string();
        // A resent batch (at-least-once after a transient error) repeats events a consumer has
        // seen; it drops them by (seq, index). What is left must be in order per device.
        if let Some(prev) = seen.get(&(seq, index)) {
            assert_eq!(prev, &m, "a duplicate is a whole resend");
            continue;
        }
        let last = last_per_key.entry(key.clone()).or_insert(0);
        assert!(seq >= *last, "{key}: seq {seq} after {last}");
        *last = seq;
        seen.insert((seq, index), m.clone());
    }
    let mut got: Vec<String> = seen.values().map(project).collect();
    got.sort();
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(got, want, "every measurement once");
}

#[test]
fn agent_dead_letters_an_event_hubs_rejection_and_the_others_flow() {
    require_python!();
    // Bodies over 220 bytes are rejected with amqp:link:message-size-exceeded, as Event Hubs
    // rejects a too large event; with the simulator that is the blood pressure readings.
    const LIMIT: usize = 220;
    let fake = Fake::start(&["--reject-larger-than", "220"]);
    let dir = scratch("rejected");
    let cfg = agent_config(&dir, &fake, 24, 0.1, "payload = \"raw\"", false);
    let port = free_port();
    let mut agent = start_agent(&cfg, port, Some(CONNECTION_STRING));
    wait_delivered(&dir, &fake, port, 24, Duration::from_secs(60));
    let big = |b: &Value| serde_json::to_vec(b).map_or(0, |v| v.len()) > LIMIT;
    let acked = acked(&dir);
    let rejected = acked.iter().filter(|b| big(b)).count();
    assert!(
        rejected > 0 && rejected < acked.len(),
        "the test needs both sizes: {:?}",
        acked
            .iter()
            .map(|b| serde_json::to_vec(b).map_or(0, |v| v.len()))
            .collect::<Vec<_>>()
    );
    let dead = counter_sum(
        port,
        "iomt_sink_dead_lettered_total",
        &["sink=\"cloud\"", "reason=\"eventhubs_rejected\""],
    );
    assert_eq!(dead, rejected as f64);
    assert_eq!(metric(port, "iomt_dlq_records"), Some(rejected as f64));
    assert_eq!(ready(port), Some(true), "a rejection is not a failing sink");
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    check_raw(&fake, &acked, &big);
}

#[test]
fn outbox_and_event_hubs_sinks_keep_their_own_cursor_backlog_and_readiness() {
    require_python!();
    let fake = Fake::start(&[]);
    // Event Hubs is unreachable from the start.
    assert_eq!(fake.control("/down", Some(&json!({})))["down"], true);
    let dir = scratch("both");
    // One reading per device and second: Observation ids have a one-second resolution
    // (upstream), so faster readings would amend Observations and defeat the outbox check.
    let cfg = agent_config(&dir, &fake, 32, 1.0, "payload = \"raw\"", true);
    let port = free_port();
    let mut agent = start_agent(&cfg, port, Some(CONNECTION_STRING));

    // The outbox keeps up while the Event Hubs backlog grows and the agent turns unready.
    let mut first_backlog = None;
    assert!(
        wait_for(Duration::from_secs(30), || {
            let p = pending(port, "cloud").unwrap_or(0.0);
            if p > 0.0 && first_backlog.is_none() {
                first_backlog = Some(p);
            }
            first_backlog.is_some_and(|f| p > f) && ready(port) == Some(false)
        }),
        "backlog {first_backlog:?}, ready {:?}",
        ready(port)
    );
    let reason = admin_get(port, "/readyz").unwrap_or_default();
    assert!(reason.contains("sink cloud"), "{reason}");
    assert!(!reason.contains("sink outbox"), "{reason}");
    // The outbox's cursor moves on while the cloud's is stuck. (Its pending count is not
    // always zero when sampled: readings keep arriving every second.)
    assert!(
        wait_for(Duration::from_secs(15), || {
            let (o, c) = (
                pending(port, "outbox").unwrap_or(f64::MAX),
                pending(port, "cloud").unwrap_or(0.0),
            );
            metric(port, "iomt_sink_delivered_total{sink=\"outbox\"}").unwrap_or(0.0) > 0.0
                && o * 2.0 < c
        }),
        "the outbox drains on its own cursor: outbox {:?}, cloud {:?}",
        pending(port, "outbox"),
        pending(port, "cloud")
    );
    assert!(pending(port, "cloud").unwrap_or(0.0) > 0.0);
    assert!(fake.events().is_empty());

    // Event Hubs comes back: everything is delivered, the agent is ready again.
    assert_eq!(fake.control("/up", Some(&json!({})))["down"], false);
    wait_delivered(&dir, &fake, port, 32, Duration::from_secs(60));
    assert!(wait_for(Duration::from_secs(5), || ready(port) == Some(true)));
    assert_eq!(pending(port, "outbox"), Some(0.0));
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    let acked = acked(&dir);
    check_raw(&fake, &acked, &|_| false);
    check_exactly_once(&dir.join("ack.jsonl"), &dir.join("state/outbox"))
        .expect("the outbox has every reading once");
}

#[test]
fn a_missing_event_hubs_secret_is_a_configuration_error() {
    require_python!();
    let fake = Fake::start(&[]);
    let dir = scratch("nosecret");
    let cfg = agent_config(&dir, &fake, 4, 0.1, "", false);
    let mut agent = start_agent(&cfg, free_port(), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = agent.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(78));
    let err = std::fs::read_to_string(dir.join("agent.stderr")).unwrap_or_default();
    assert!(err.contains(CS_ENV), "{err}");
    assert!(fake.events().is_empty());
}

#[test]
fn event_hubs_down_mid_stream_backlog_grows_unready_then_everything_is_delivered() {
    require_python!();
    let fake = Fake::start(&[]);
    let dir = scratch("down");
    let cfg = agent_config(&dir, &fake, 48, 0.5, "payload = \"raw\"", false);
    let port = free_port();
    let mut agent = start_agent(&cfg, port, Some(CONNECTION_STRING));
    assert!(
        wait_for(Duration::from_secs(30), || !fake.events().is_empty()),
        "first events delivered"
    );
    assert_eq!(fake.control("/down", Some(&json!({})))["down"], true);
    let delivered_before = unique_seqs(&fake).len();
    let mut first_backlog = None;
    assert!(
        wait_for(Duration::from_secs(30), || {
            let p = pending(port, "cloud").unwrap_or(0.0);
            if p > 0.0 && first_backlog.is_none() {
                first_backlog = Some(p);
            }
            first_backlog.is_some_and(|f| p > f) && ready(port) == Some(false)
        }),
        "backlog {first_backlog:?}, ready {:?}",
        ready(port)
    );
    assert!(counter_sum(port, "iomt_sink_retried_total", &["sink=\"cloud\""]) >= 1.0);
    assert_eq!(metric(port, "iomt_sink_failing{sink=\"cloud\"}"), Some(1.0));
    assert_eq!(
        unique_seqs(&fake).len(),
        delivered_before,
        "nothing while down"
    );
    assert_eq!(fake.control("/up", Some(&json!({})))["down"], false);
    wait_delivered(&dir, &fake, port, 48, Duration::from_secs(60));
    assert!(wait_for(Duration::from_secs(5), || ready(port) == Some(true)));
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    check_raw(&fake, &acked(&dir), &|_| false);
}

/// Regression: fe2o3-amqp 0.16.2 registers a delivery as unsettled only after handing its
/// transfer to the session engine, so on a multi-threaded runtime a fast endpoint's settled
/// disposition can arrive first and be dropped; the send then hangs until the send timeout
/// rebuilds the client (the backlog drain stalled every few dozen sends). The agent runs its
/// forwarder on a dedicated single-threaded runtime, where that cannot happen: a backlog of
/// several hundred readings, sent one event per batch, drains without a single rebuild.
#[test]
fn a_backlog_of_hundreds_drains_without_a_send_timeout_or_client_rebuild() {
    require_python!();
    let fake = Fake::start(&[]);
    let dir = scratch("backlog");
    let cfg = agent_config(&dir, &fake, 400, 0.01, "payload = \"raw\"", false);
    let text = std::fs::read_to_string(&cfg).expect("read config");
    assert!(text.contains("max_batch_events = 8"));
    std::fs::write(
        &cfg,
        text.replace("max_batch_events = 8", "max_batch_events = 1"),
    )
    .expect("write config");
    let port = free_port();
    let mut agent = start_agent(&cfg, port, Some(CONNECTION_STRING));
    wait_delivered(&dir, &fake, port, 400, Duration::from_secs(90));
    let rebuilds = metric(port, "iomt_eventhubs_client_rebuilds_total{sink=\"cloud\"}");
    let retries = counter_sum(port, "iomt_sink_retried_total", &["sink=\"cloud\""]);
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    let stderr = std::fs::read_to_string(dir.join("agent.stderr")).unwrap_or_default();
    assert_eq!(rebuilds, Some(0.0), "no client rebuild (stderr: {stderr})");
    assert_eq!(retries, 0.0, "no failed delivery (stderr: {stderr})");
    check_raw(&fake, &acked(&dir), &|_| false);
    // One event per delivery: hundreds of sends, each settled on the first try.
    let deliveries: HashSet<u64> = fake
        .events()
        .iter()
        .filter_map(|e| e["delivery"].as_u64())
        .collect();
    assert!(deliveries.len() >= 400, "{} deliveries", deliveries.len());
    assert_eq!(unique_seqs(&fake).len(), fake.events().len(), "no resend");
}

/// Runs `openssl` with `args` in `dir`; false when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A throw-away CA (`ca.pem`) and a server certificate for 127.0.0.1 it signed (`leaf.pem`,
/// `leaf.key`) in `dir`; false when openssl is missing or fails.
fn test_certificates(dir: &std::path::Path) -> bool {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=iomt-edge test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    ) && openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ) && openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    )
}

/// AMQP over WebSockets: the SDK always dials `wss://<custom endpoint host:port>/$servicebus/
/// websocket/` with TLS and the `amqp` subprotocol, so the fake gets a TLS WebSocket front
/// (`tests/eventhubs-fake/wss_proxy.py`) with a throw-away CA the agent trusts through
/// `SSL_CERT_FILE`. Everything arrives once, in order per device; with the system's CAs only,
/// the TLS handshake fails (the certificate is really checked) and nothing is delivered.
#[test]
fn agent_forwards_over_amqp_websockets_with_tls() {
    require_python!();
    let dir = scratch("websocket");
    if !test_certificates(&dir) {
        eprintln!("SKIPPED: openssl is not installed (scripts/install-test-deps.sh installs it)");
        return;
    }
    let fake = Fake::start(&[]);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut proxy = KillOnDrop(
        Command::new(python)
            .arg(fake_dir().join("wss_proxy.py"))
            .args(["--cert", "leaf.pem", "--key", "leaf.key", "--target"])
            .arg(format!("127.0.0.1:{}", fake.port))
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wss_proxy.py"),
    );
    let mut first = String::new();
    BufReader::new(proxy.0.stdout.take().expect("piped stdout"))
        .read_line(&mut first)
        .expect("the proxy prints LISTENING");
    let wss_port: u16 = first
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("LISTENING carries a port");
    let run = |name: &str, ca: Option<&std::path::Path>, readings: u64| {
        let run_dir = dir.join(name);
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let cfg = agent_config(
            &run_dir,
            &fake,
            readings,
            0.05,
            "payload = \"raw\"\ntransport = \"websocket\"",
            false,
        );
        let text = std::fs::read_to_string(&cfg).expect("read config");
        std::fs::write(
            &cfg,
            text.replace(&fake.endpoint(), &format!("amqp://127.0.0.1:{wss_port}")),
        )
        .expect("write config");
        let port = free_port();
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "--config"])
            .arg(&cfg)
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .args(["--progress-secs", "0"])
            .env("RUST_LOG", "warn")
            .env(CS_ENV, CONNECTION_STRING)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(run_dir.join("agent.stderr")).expect("stderr"));
        match ca {
            Some(ca) => cmd.env("SSL_CERT_FILE", ca),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        (run_dir, port, cmd.spawn().expect("start iomt-agent"))
    };

    // Without the test CA: the handshake fails, nothing arrives, the sink is failing.
    let (untrusted, port, mut agent) = run("untrusted", None, 8);
    assert!(
        wait_for(Duration::from_secs(30), || {
            counter_sum(port, "iomt_sink_retried_total", &["sink=\"cloud\""]) >= 1.0
        }),
        "the untrusted handshake failed"
    );
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    let err = std::fs::read_to_string(untrusted.join("agent.stderr")).unwrap_or_default();
    assert!(err.contains("certificate"), "{err}");
    assert!(fake.events().is_empty(), "nothing delivered without trust");

    // With the test CA: everything, over the WebSocket.
    let ca = dir.join("ca.pem");
    let (trusted, port, mut agent) = run("trusted", Some(&ca), 40);
    wait_delivered(&trusted, &fake, port, 40, Duration::from_secs(60));
    let (code, _) = terminate(&mut agent);
    assert_eq!(code, Some(0));
    drop(proxy);
    check_raw(&fake, &acked(&trusted), &|_| false);
}

/// A child process killed (and reaped) when the test ends, also on a failed assertion.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}
