//! The serial source task: reader (port → decoder → records) and storer (records → log).

use super::config::{FlowControl, Parity, PortSettings, SerialConfig, SerialProtocol};
use crate::buffer::NewRecord;
use crate::runtime::{now_ms, Shared};
use crate::sources::envelope::envelope;
use crate::sources::ingest::{
    dead_letter, jitter, received_at, set_health, sleep_or_stop, store_many,
};
use crate::telemetry::events;
use iomt_drivers::serial::SerialError;
use iomt_drivers::DecodeError;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio_serial::SerialPortBuilderExt;

/// Items waiting for the log, at most (about 2.7 h of a 1 Hz oximeter).
pub const MAX_HELD: usize = 10_000;

/// Longest raw span kept for one result (longer runs of garbage keep their tail).
const MAX_SPAN: usize = (1 << 20) + 64;

/// Opens a serial port with its line settings (non-blocking, exclusive).
pub fn open_port(p: &PortSettings) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    let data_bits = match p.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match p.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let stop_bits = if p.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let flow = match p.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(p.path.to_string_lossy(), p.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow)
        .open_native_async()
}

/// Attributes the bytes read to the decoder's results, so that each record or dead letter
/// carries exactly the bytes of its frame or line.
///
/// Feed every byte with [`RawSpans::push`] and the decoder in the same order, one byte at a
/// time; when the decoder returns results, [`RawSpans::take`] splits the bytes seen since the
/// previous results among them. Nonin Format 8 results consume known sizes (a frame 4 bytes,
/// garbage `skipped`, a truncated frame `got`), and what is left (the start of the next frame)
/// stays; a line result takes the whole line, without its terminators.
#[derive(Debug)]
pub struct RawSpans {
    binary: bool,
    span: Vec<u8>,
    /// Bytes dropped from the front of `span` because it grew past the limit.
    dropped: usize,
    /// After an over-long line: bytes up to the next terminator belong to no result.
    skipping_line: bool,
}

impl RawSpans {
    /// For `protocol`.
    pub fn new(protocol: SerialProtocol) -> Self {
        RawSpans {
            binary: protocol == SerialProtocol::Nonin8,
            span: Vec::new(),
            dropped: 0,
            skipping_line: false,
        }
    }

    /// One byte read.
    pub fn push(&mut self, b: u8) {
        if self.skipping_line {
            if b == b'\r' || b == b'\n' {
                self.skipping_line = false;
            }
            return;
        }
        if self.span.len() >= MAX_SPAN {
            let cut = MAX_SPAN / 2;
            self.span.drain(..cut);
            self.dropped += cut;
        }
        self.span.push(b);
    }

    fn take_front(&mut self, n: usize) -> Vec<u8> {
        let from_dropped = n.min(self.dropped);
        self.dropped -= from_dropped;
        let n = (n - from_dropped).min(self.span.len());
        self.span.drain(..n).collect()
    }

    /// The raw bytes of each result, in order.
    pub fn take(&mut self, results: &[Result<Value, DecodeError>]) -> Vec<Vec<u8>> {
        if !self.binary {
            let mut out = Vec::with_capacity(results.len());
            for r in results {
                if matches!(r, Err(DecodeError::Serial(SerialError::LineTooLong { .. }))) {
                    self.skipping_line = true;
                }
                let all = std::mem::take(&mut self.span);
                self.dropped = 0;
                let start = all
                    .iter()
                    .position(|b| *b != b'\r' && *b != b'\n')
                    .unwrap_or(all.len());
                let end = all
                    .iter()
                    .rposition(|b| *b != b'\r' && *b != b'\n')
                    .map_or(start, |e| e + 1);
                out.push(all[start..end.max(start)].to_vec());
            }
            return out;
        }
        results
            .iter()
            .map(|r| {
                let n = match r {
                    Err(DecodeError::Serial(SerialError::Garbage { skipped, .. })) => *skipped,
                    Err(DecodeError::Serial(SerialError::Truncated { got, .. })) => *got,
                    Ok(_)
                    | Err(DecodeError::Serial(
                        SerialError::BadSync { .. } | SerialError::ReservedBits { .. },
                    )) => 4,
                    Err(_) => self.span.len() + self.dropped,
                };
                self.take_front(n)
            })
            .collect()
    }

    /// Bytes not yet attributed (a frame in progress).
    pub fn pending(&self) -> usize {
        self.span.len() + self.dropped
    }
}

/// The dead-letter reason code of a serial decode error.
pub fn reason_code(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Serial(s) => match s {
            SerialError::Garbage { .. } => "garbage",
            SerialError::Truncated { .. } => "truncated",
            SerialError::BadSync { .. } | SerialError::ReservedBits { .. } => "bad_frame",
            SerialError::LineTooLong { .. } => "line_too_long",
            SerialError::NotADataLine { .. } => "not_a_data_line",
            SerialError::BadValue { .. } => "bad_value",
            SerialError::Json { .. } => "not_json",
        },
        _ => "decode_error",
    }
}

/// What the reader hands to the storer.
#[derive(Debug)]
enum Item {
    Record(NewRecord),
    Dead {
        reason: &'static str,
        error: String,
        raw: Vec<u8>,
    },
}

/// Builds the log record of one decoded body.
pub(super) fn record(
    name: &str,
    cfg: &SerialConfig,
    body: Value,
    raw: Vec<u8>,
    now: i64,
) -> NewRecord {
    let mut props = Map::new();
    props.insert("source".into(), Value::from(name));
    props.insert("protocol".into(), Value::from(cfg.protocol.name()));
    props.insert(
        "port".into(),
        Value::from(cfg.port.path.to_string_lossy().into_owned()),
    );
    props.insert("deviceId".into(), Value::from(cfg.device_id.as_str()));
    if let Some(p) = &cfg.patient_id {
        props.insert("patientId".into(), Value::from(p.as_str()));
    }
    if let Some(b) = &cfg.bed {
        props.insert("bed".into(), Value::from(b.as_str()));
    }
    let env = envelope(body, props, &cfg.device_id, received_at(now));
    NewRecord {
        source: name.to_owned(),
        // A serial device never resends: nothing to recognise.
        dedup_key: None,
        receive_time_ms: now,
        device_time_ms: None,
        payload: raw,
        envelope: env.to_string(),
    }
}

/// Runs until the stop signal.
pub async fn run(
    name: String,
    cfg: SerialConfig,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::channel::<Item>(MAX_HELD);
    let storer = tokio::spawn(storer(name.clone(), shared.clone(), rx, stop.clone()));
    reader(&name, &cfg, &shared, tx, stop).await;
    // The reader dropped its sender: the storer stores what is queued, then ends.
    storer.await.ok();
}

async fn reader(
    name: &str,
    cfg: &SerialConfig,
    shared: &Arc<Shared>,
    tx: mpsc::Sender<Item>,
    mut stop: watch::Receiver<bool>,
) {
    let path = cfg.port.path.display().to_string();
    let mut attempt = 0u32;
    let mut in_outage = false;
    loop {
        if *stop.borrow() {
            return;
        }
        match open_port(&cfg.port) {
            Ok(port) => {
                attempt = 0;
                events::source_connected(&shared.metrics, name, &path);
                set_health(
                    shared,
                    name,
                    true,
                    format!("reading {path} ({})", cfg.protocol.name()),
                );
                let Some(err) = read_until_lost(name, cfg, shared, port, &tx, &mut stop).await
                else {
                    return;
                };
                let d = cfg.port.reopen.delay(0, jitter());
                events::source_disconnected(
                    &shared.metrics,
                    name,
                    &err,
                    d.as_millis() as u64,
                    true,
                );
                in_outage = true;
                set_health(shared, name, false, format!("{path}: {err}; reopening"));
                if sleep_or_stop(d, &mut stop).await {
                    return;
                }
            }
            Err(e) => {
                let d = cfg.port.reopen.delay(attempt, jitter());
                attempt = attempt.saturating_add(1);
                events::source_disconnected(
                    &shared.metrics,
                    name,
                    &e.to_string(),
                    d.as_millis() as u64,
                    !in_outage,
                );
                in_outage = true;
                set_health(
                    shared,
                    name,
                    false,
                    format!("cannot open {path}: {e}; retrying"),
                );
                if sleep_or_stop(d, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Reads until the port is lost (returns why) or the stop signal (returns `None`).
async fn read_until_lost(
    name: &str,
    cfg: &SerialConfig,
    shared: &Arc<Shared>,
    mut port: tokio_serial::SerialStream,
    tx: &mpsc::Sender<Item>,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    let mut decoder = match iomt_drivers::decoder(cfg.protocol.name()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(source = name, error = %e, "No decoder for the configured protocol.");
            return None;
        }
    };
    let mut spans = RawSpans::new(cfg.protocol);
    let mut buf = vec![0u8; 4096];
    let emit = |results: Vec<Result<Value, DecodeError>>, spans: &mut RawSpans| {
        let raws = spans.take(&results);
        for (r, raw) in results.into_iter().zip(raws) {
            let item = match r {
                Ok(body) => {
                    events::source_message_in(&shared.metrics, name);
                    Item::Record(record(name, cfg, body, raw, now_ms()))
                }
                Err(e) => Item::Dead {
                    reason: reason_code(&e),
                    error: e.to_string(),
                    raw,
                },
            };
            if tx.try_send(item).is_err() {
                events::reading_dropped(&shared.metrics, name, "buffer_full");
            }
        }
    };
    loop {
        let read = tokio::select! {
            r = port.read(&mut buf) => r,
            _ = stop.changed() => return None,
        };
        let n = match read {
            Ok(0) => {
                emit(decoder.finish(), &mut spans);
                return Some("end of input (device unplugged or hung up)".into());
            }
            Ok(n) => n,
            Err(e) => {
                emit(decoder.finish(), &mut spans);
                return Some(e.to_string());
            }
        };
        for &b in &buf[..n] {
            spans.push(b);
            let results = decoder.push(&[b]);
            if !results.is_empty() {
                emit(results, &mut spans);
            }
        }
    }
}

/// Commits queued items in order: consecutive records share a group commit; a refused batch
/// (log full) is retried, keeping the order.
async fn storer(
    name: String,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Item>,
    mut stop: watch::Receiver<bool>,
) {
    let mut queue: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    let mut healthy = true;
    loop {
        if queue.is_empty() {
            let mut got = Vec::new();
            if rx.recv_many(&mut got, 256).await == 0 {
                return;
            }
            queue.extend(got);
        }
        let mut failure: Option<String> = None;
        while failure.is_none() {
            let Some(front) = queue.front() else { break };
            if matches!(front, Item::Dead { .. }) {
                let Some(Item::Dead { reason, error, raw }) = queue.pop_front() else {
                    break;
                };
                if let Err(e) =
                    dead_letter(&shared, &name, reason, error.clone(), raw.clone(), None).await
                {
                    queue.push_front(Item::Dead { reason, error, raw });
                    failure = Some(format!("cannot store a dead letter: {e}"));
                }
                continue;
            }
            let mut recs = Vec::new();
            while let Some(Item::Record(_)) = queue.front() {
                if let Some(Item::Record(r)) = queue.pop_front() {
                    recs.push(r);
                }
            }
            let results = store_many(&shared, recs.clone()).await;
            // Keep the first refused reading and everything after it, in order.
            if let Some(i) = results.iter().position(Result::is_err) {
                let why = match &results[i] {
                    Err(e) => e.to_string(),
                    Ok(_) => String::new(),
                };
                for r in recs.into_iter().skip(i).rev() {
                    queue.push_front(Item::Record(r));
                }
                failure = Some(why);
            }
        }
        match failure {
            None => {
                if !healthy {
                    healthy = true;
                    set_health(&shared, &name, true, "storing readings again");
                }
            }
            Some(why) => {
                healthy = false;
                set_health(
                    &shared,
                    &name,
                    false,
                    format!("cannot store readings ({why}); holding {}", queue.len()),
                );
                if *stop.borrow() {
                    return;
                }
                // Take in what the reader queued meanwhile, so it never blocks.
                while let Ok(item) = rx.try_recv() {
                    queue.push_back(item);
                    if queue.len() > MAX_HELD {
                        queue.pop_back();
                        events::reading_dropped(&shared.metrics, &name, "buffer_full");
                    }
                }
                if sleep_or_stop(Duration::from_millis(500), &mut stop).await {
                    return;
                }
            }
        }
    }
}
