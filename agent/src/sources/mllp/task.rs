//! The MLLP source task: listener (or serial port), per-connection framing, store, ACK.

use super::config::{DeviceIdFrom, MllpConfig, MllpTransport, PatientIdFrom};
use crate::buffer::{dedup_key, NewRecord};
use crate::mapping::Timestamp;
use crate::runtime::{now_ms, Shared};
use crate::sources::envelope::envelope;
use crate::sources::ingest::{dead_letter, jitter, received_at, set_health, sleep_or_stop, store};
use crate::sources::serial::open_port;
use crate::telemetry::events;
use iomt_drivers::hl7::ack::{build_ack_frame, AckCode, AckOptions, MessageHeader};
use iomt_drivers::hl7::message::Message;
use iomt_drivers::hl7::mllp::{MllpDecoder, MAX_FRAME};
use iomt_drivers::hl7::pcd01::oru_bodies;
use iomt_drivers::hl7::Hl7Error;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Binds the TCP listener (at start, so that a taken port stops the agent with a clear
/// error); `None` for MLLP over serial.
pub async fn bind(cfg: &MllpConfig) -> Result<Option<TcpListener>, String> {
    match &cfg.transport {
        MllpTransport::Tcp { listen } => TcpListener::bind(listen)
            .await
            .map(Some)
            .map_err(|e| format!("cannot listen for MLLP on {listen}: {e}")),
        MllpTransport::Serial(_) => Ok(None),
    }
}

/// An HL7 TS in UTC (`YYYYMMDDHHMMSS+0000`) for the ACK's MSH-7.
pub fn hl7_timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y%m%d%H%M%S+0000")
        .to_string()
}

/// What to do with one de-framed message.
#[derive(Debug)]
pub enum Processed {
    /// Valid: store this record, then ACK accept.
    Store {
        record: NewRecord,
        header: MessageHeader,
        demo: bool,
    },
    /// Malformed: dead-letter the raw message with `reason`, then ACK with the error.
    Reject {
        header: MessageHeader,
        error: Hl7Error,
        reason: &'static str,
    },
}

fn first_non_empty<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_owned)
}

fn device_id(cfg: &MllpConfig, msg: &Message, bodies: &[Value]) -> Option<String> {
    let msh3 = || {
        let f = msg.msh().field(3);
        first_non_empty([f.component(2), f.component(1)])
    };
    let fixed = || cfg.device_id.clone();
    match cfg.device_id_from {
        DeviceIdFrom::Obx18 => bodies
            .iter()
            .find_map(|b| b["device_id"].as_str().map(str::to_owned))
            .or_else(msh3)
            .or_else(fixed),
        DeviceIdFrom::Msh3 => msh3().or_else(fixed),
        DeviceIdFrom::Fixed => fixed(),
    }
}

fn patient_id(cfg: &MllpConfig, msg: &Message) -> Option<String> {
    match cfg.patient_id_from {
        PatientIdFrom::Pid3 => msg.segment("PID").and_then(|pid| {
            let ids = pid.field(3);
            first_non_empty((0..ids.repetitions()).map(|r| ids.get(r, 1, 1)))
        }),
        PatientIdFrom::Pv1 => msg.segment("PV1").and_then(|pv1| {
            let pl = pv1.field(3);
            let parts: Vec<&str> = (1..=3)
                .map(|c| pl.component(c).trim())
                .filter(|p| !p.is_empty())
                .collect();
            (!parts.is_empty()).then(|| parts.join("/"))
        }),
        PatientIdFrom::None => None,
    }
}

/// Decides what to do with one message (no I/O; `now` is the receive time).
pub fn process_message(
    name: &str,
    cfg: &MllpConfig,
    payload: &[u8],
    peer: &str,
    now: i64,
) -> Processed {
    let msg = match Message::parse(payload) {
        Ok(m) => m,
        Err(error) => {
            return Processed::Reject {
                header: MessageHeader::default(),
                error,
                reason: "hl7_rejected",
            }
        }
    };
    let header = MessageHeader::from_message(&msg);
    let bodies = match oru_bodies(&msg) {
        Ok(b) => b,
        Err(error) => {
            let reason = if error.is_reject() {
                "hl7_rejected"
            } else {
                "hl7_error"
            };
            return Processed::Reject {
                header,
                error,
                reason,
            };
        }
    };
    let Some(device) = device_id(cfg, &msg, &bodies) else {
        return Processed::Reject {
            header,
            error: Hl7Error::MissingField { field: "OBX-18" },
            reason: "no_device_id",
        };
    };
    let demo = bodies.iter().any(|b| b["demo"] == Value::Bool(true));
    let device_time_ms = bodies
        .iter()
        .find_map(|b| b["timestamp"].as_str().and_then(Timestamp::parse_rfc3339))
        .map(|t| t.datetime().timestamp_millis());
    let mut props = Map::new();
    props.insert("source".into(), Value::from(name));
    props.insert("protocol".into(), Value::from("hl7v2"));
    props.insert("peer".into(), Value::from(peer));
    props.insert(
        "messageControlId".into(),
        Value::from(header.control_id.as_str()),
    );
    if let Some(p) = patient_id(cfg, &msg) {
        props.insert("patientId".into(), Value::from(p));
    }
    props.insert("demo".into(), Value::Bool(demo));
    let env = envelope(Value::Array(bodies), props, &device, received_at(now));
    Processed::Store {
        record: NewRecord {
            source: name.to_owned(),
            dedup_key: Some(dedup_key::hl7(&header.control_id)),
            receive_time_ms: now,
            device_time_ms,
            payload: payload.to_vec(),
            envelope: env.to_string(),
        },
        header,
        demo,
    }
}

/// The ACK frame for a message (accept when `error` is `None`).
pub fn ack_frame(
    cfg: &MllpConfig,
    header: &MessageHeader,
    error: Option<&Hl7Error>,
    now: i64,
) -> (AckCode, Vec<u8>) {
    let code = AckCode::choose(header, error);
    let control_id = if header.control_id.is_empty() {
        format!("ACK{now}")
    } else {
        format!("ACK{}", header.control_id)
    };
    let ts = hl7_timestamp(now);
    let opts = AckOptions {
        sending_application: &cfg.ack_sending_application,
        sending_facility: &cfg.ack_sending_facility,
        timestamp: &ts,
        control_id: &control_id,
    };
    (code, build_ack_frame(header, code, error, &opts))
}

/// Runs until the stop signal. `listener` comes from [`bind`] (TCP); `None` reads the
/// configured serial port.
pub async fn run(
    name: String,
    cfg: MllpConfig,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    listener: Option<TcpListener>,
) {
    let cfg = Arc::new(cfg);
    match (listener, &cfg.transport) {
        (Some(l), _) => serve_tcp(name, cfg.clone(), shared, stop, l).await,
        (None, MllpTransport::Serial(_)) => serve_serial(name, cfg.clone(), shared, stop).await,
        (None, MllpTransport::Tcp { listen }) => {
            tracing::error!(source = %name, %listen, "MLLP source started without its listener.");
        }
    }
}

async fn serve_tcp(
    name: String,
    cfg: Arc<MllpConfig>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    listener: TcpListener,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let open = Arc::new(AtomicUsize::new(0));
    events::source_connected(&shared.metrics, &name, &addr);
    set_health(&shared, &name, true, format!("listening on {addr}"));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "Accepting an MLLP connection failed.");
                    if sleep_or_stop(Duration::from_millis(200), &mut stop).await {
                        return;
                    }
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        stream.set_nodelay(true).ok();
        let (name, cfg, shared, stop, open, addr) = (
            name.clone(),
            cfg.clone(),
            shared.clone(),
            stop.clone(),
            open.clone(),
            addr.clone(),
        );
        tokio::spawn(async move {
            let n = open.fetch_add(1, Ordering::Relaxed) + 1;
            set_health(
                &shared,
                &name,
                true,
                format!("listening on {addr}, {n} connections"),
            );
            let peer = peer.to_string();
            if let Err(e) = serve_stream(&name, &cfg, &shared, stream, &peer, stop).await {
                tracing::debug!(source = %name, %peer, error = %e, "MLLP connection ended.");
            }
            let n = open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            set_health(
                &shared,
                &name,
                true,
                format!("listening on {addr}, {n} connections"),
            );
            drop(permit);
        });
    }
}

async fn serve_serial(
    name: String,
    cfg: Arc<MllpConfig>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let MllpTransport::Serial(port) = &cfg.transport else {
        return;
    };
    let path = port.path.display().to_string();
    let mut attempt = 0u32;
    let mut in_outage = false;
    loop {
        if *stop.borrow() {
            return;
        }
        match open_port(port) {
            Ok(stream) => {
                attempt = 0;
                events::source_connected(&shared.metrics, &name, &path);
                set_health(&shared, &name, true, format!("reading MLLP on {path}"));
                let err =
                    match serve_stream(&name, &cfg, &shared, stream, &path, stop.clone()).await {
                        Ok(()) if *stop.borrow() => return,
                        Ok(()) => "end of input (device unplugged or hung up)".to_owned(),
                        Err(e) => e,
                    };
                let d = port.reopen.delay(0, jitter());
                events::source_disconnected(
                    &shared.metrics,
                    &name,
                    &err,
                    d.as_millis() as u64,
                    true,
                );
                in_outage = true;
                set_health(&shared, &name, false, format!("{path}: {err}; reopening"));
                if sleep_or_stop(d, &mut stop).await {
                    return;
                }
            }
            Err(e) => {
                let d = port.reopen.delay(attempt, jitter());
                attempt = attempt.saturating_add(1);
                events::source_disconnected(
                    &shared.metrics,
                    &name,
                    &e.to_string(),
                    d.as_millis() as u64,
                    !in_outage,
                );
                in_outage = true;
                set_health(
                    &shared,
                    &name,
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

/// Serves one connection (or port) until EOF, an I/O error, the idle timeout or the stop
/// signal. Messages are handled in order; each ACK is written after its commit.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    name: &str,
    cfg: &MllpConfig,
    shared: &Arc<Shared>,
    mut stream: S,
    peer: &str,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut mllp = MllpDecoder::default();
    let mut span: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(cfg.idle_timeout, stream.read(&mut buf)) => match r {
                Ok(r) => r,
                Err(_) => return Err(format!("idle for {:?}", cfg.idle_timeout)),
            },
            _ = stop.changed() => return Ok(()),
        };
        let n = match read {
            Ok(0) => {
                for r in mllp.finish() {
                    if let Err(e) = r {
                        framing_error(name, shared, e, std::mem::take(&mut span)).await;
                    }
                }
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => return Err(e.to_string()),
        };
        for &b in &buf[..n] {
            if span.len() <= MAX_FRAME + 16 {
                span.push(b);
            }
            for r in mllp.push(&[b]) {
                let raw = std::mem::take(&mut span);
                match r {
                    Ok(payload) => {
                        let Some(ack) = handle(name, cfg, shared, &payload, peer, &mut stop).await
                        else {
                            return Ok(()); // stopping before the commit: no ACK
                        };
                        stream.write_all(&ack).await.map_err(|e| e.to_string())?;
                        stream.flush().await.map_err(|e| e.to_string())?;
                    }
                    Err(e) => framing_error(name, shared, e, raw).await,
                }
            }
        }
    }
}

async fn framing_error(name: &str, shared: &Arc<Shared>, e: Hl7Error, raw: Vec<u8>) {
    let reason = match e {
        Hl7Error::Garbage { .. } => "mllp_garbage",
        Hl7Error::Truncated { .. } => "mllp_truncated",
        Hl7Error::FrameTooLong { .. } => "mllp_too_long",
        _ => "mllp_framing",
    };
    if let Err(err) = dead_letter(shared, name, reason, e.to_string(), raw, None).await {
        tracing::error!(source = name, error = %err, "Cannot store a dead letter for bad MLLP framing.");
    }
}

/// Stores (or dead-letters) one message and returns its ACK frame; `None` when stopping
/// before the commit (no ACK: the sender will resend).
async fn handle(
    name: &str,
    cfg: &MllpConfig,
    shared: &Arc<Shared>,
    payload: &[u8],
    peer: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<u8>> {
    events::source_message_in(&shared.metrics, name);
    let (header, error) = match process_message(name, cfg, payload, peer, now_ms()) {
        Processed::Store {
            record,
            header,
            demo,
        } => {
            let mut failing = false;
            loop {
                match store(shared, record.clone()).await {
                    Ok(_) => break,
                    Err(e) => {
                        failing = true;
                        set_health(
                            shared,
                            name,
                            false,
                            format!("cannot store a message ({e}); its ACK is withheld"),
                        );
                        if sleep_or_stop(Duration::from_millis(500), stop).await {
                            return None;
                        }
                    }
                }
            }
            if failing {
                set_health(shared, name, true, "storing messages again");
            }
            if demo {
                events::source_demo_data(&shared.metrics, name);
            }
            (header, None)
        }
        Processed::Reject {
            header,
            error,
            reason,
        } => {
            loop {
                match dead_letter(
                    shared,
                    name,
                    reason,
                    error.to_string(),
                    payload.to_vec(),
                    None,
                )
                .await
                {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(source = name, error = %e, "Cannot store a dead letter; its ACK is withheld.");
                        if sleep_or_stop(Duration::from_millis(500), stop).await {
                            return None;
                        }
                    }
                }
            }
            (header, Some(error))
        }
    };
    let (code, frame) = ack_frame(cfg, &header, error.as_ref(), now_ms());
    events::hl7_ack_sent(&shared.metrics, name, code.as_str());
    Some(frame)
}
