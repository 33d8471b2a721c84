//! The MQTT source task: the event-loop poller (connect, back-off, subscribe, forward) and
//! the processor (envelope, durable commit, then PUBACK).

use super::client::{self, AckGate, AckHandle, Client, Conn, Polled, Prepared};
use super::config::MqttConfig;
use crate::buffer::{dedup_key, NewRecord};
use crate::runtime::{now_ms, Shared};
use crate::sources::envelope::envelope;
use crate::sources::ingest::{
    dead_letter, jitter, received_at, set_health, sleep_or_stop, store_many,
};
use crate::telemetry::events;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// PUBLISHes waiting to be processed, at most. QoS 1 traffic is bounded by the broker's
/// in-flight window; QoS 0 beyond this is dropped and counted.
const QUEUE: usize = 1024;

/// A PUBLISH as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// The connection it came in on ([`AckGate`]).
    pub epoch: u64,
    /// What its PUBACK needs (`None` in tests).
    pub ack: Option<AckHandle>,
}

/// What to do with a PUBLISH.
#[derive(Debug, Clone)]
pub enum Item {
    /// Store it.
    Record(NewRecord),
    /// Dead-letter it (its payload), with a reason code.
    Dead { reason: &'static str, error: String },
}

/// The device id for a topic: segment `segment` (0-based, `/`-separated) when it exists and
/// is not empty, else `fallback`.
pub fn device_id_for_topic(topic: &str, segment: Option<usize>, fallback: &str) -> String {
    segment
        .and_then(|i| topic.split('/').nth(i))
        .filter(|s| !s.is_empty())
        .unwrap_or(fallback)
        .to_owned()
}

/// Decides what to do with a PUBLISH (no I/O; `now` is the receive time).
pub fn build_item(name: &str, cfg: &MqttConfig, r: &Received, now: i64) -> Item {
    let body = match serde_json::from_slice::<Value>(&r.payload) {
        Ok(v) => v,
        Err(e) if !cfg.wrap_non_json => {
            return Item::Dead {
                reason: "not_json",
                error: format!("the payload is not JSON: {e}"),
            }
        }
        Err(_) => match std::str::from_utf8(&r.payload) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => {
                return Item::Dead {
                    reason: "not_text",
                    error: "the payload is neither JSON nor UTF-8 text".into(),
                }
            }
        },
    };
    let mut props = Map::new();
    props.insert("topic".into(), Value::from(r.topic.as_str()));
    props.insert("qos".into(), Value::from(r.qos));
    props.insert("retain".into(), Value::from(r.retain));
    for (k, v) in &r.user_properties {
        if !matches!(
            k.as_str(),
            "topic" | "qos" | "retain" | "source" | "protocol"
        ) {
            props.insert(k.clone(), Value::from(v.as_str()));
        }
    }
    props.insert("source".into(), Value::from(name));
    props.insert("protocol".into(), Value::from("mqtt"));
    let device = device_id_for_topic(&r.topic, cfg.device_id_topic_segment, &cfg.device_id);
    let env = envelope(body, props, &device, received_at(now));
    Item::Record(NewRecord {
        source: name.to_owned(),
        dedup_key: (r.qos >= 1).then(|| dedup_key::mqtt(&cfg.client_id, r.pkid)),
        receive_time_ms: now,
        device_time_ms: None,
        payload: r.payload.clone(),
        envelope: env.to_string(),
    })
}

/// Runs until the stop signal.
pub async fn run(
    name: String,
    cfg: MqttConfig,
    prepared: Prepared,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let (client, conn) = client::start(prepared);
    let gate = Arc::new(AckGate::default());
    let (tx, rx) = mpsc::channel::<Received>(QUEUE);
    let cfg = Arc::new(cfg);
    let poller = tokio::spawn(poll_loop(
        name.clone(),
        cfg.clone(),
        client.clone(),
        conn,
        gate.clone(),
        tx,
        shared.clone(),
        stop.clone(),
    ));
    process_loop(&name, &cfg, &client, &gate, rx, &shared, stop).await;
    poller.await.ok();
}

#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    name: String,
    cfg: Arc<MqttConfig>,
    client: Client,
    mut conn: Conn,
    gate: Arc<AckGate>,
    tx: mpsc::Sender<Received>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let mut attempt = 0u32;
    let mut first_connack = true;
    let mut in_outage = false;
    let mut connected = false;
    let mut epoch = gate.current();
    loop {
        let polled = tokio::select! {
            p = conn.poll(epoch) => p,
            _ = stop.changed() => {
                if connected {
                    disconnect(&client, &mut conn, epoch).await;
                }
                return;
            }
        };
        match polled {
            Ok(Polled::ConnAck { session_present }) => {
                epoch = gate.advance(|| {});
                attempt = 0;
                in_outage = false;
                connected = true;
                events::source_connected(&shared.metrics, &name, &addr);
                set_health(
                    &shared,
                    &name,
                    true,
                    format!("connected to {addr} (session present: {session_present})"),
                );
                if first_connack || !session_present {
                    for s in &cfg.subscriptions {
                        if let Err(e) = client.try_subscribe(&s.filter, s.qos) {
                            tracing::error!(source = %name, filter = %s.filter, error = %e, "Cannot queue a subscription.");
                        }
                    }
                }
                first_connack = false;
            }
            Ok(Polled::Publish(r)) => {
                events::source_message_in(&shared.metrics, &name);
                if r.qos == 0 {
                    if tx.try_send(*r).is_err() {
                        events::reading_dropped(&shared.metrics, &name, "queue_full");
                    }
                } else {
                    tokio::select! {
                        sent = tx.send(*r) => if sent.is_err() { return },
                        _ = stop.changed() => return,
                    }
                }
            }
            Ok(Polled::SubAck { refused }) if refused > 0 => {
                tracing::error!(source = %name, refused, "The broker refused subscriptions (check the ACL and the filters).");
                set_health(
                    &shared,
                    &name,
                    false,
                    format!("connected to {addr}, but the broker refused {refused} subscriptions"),
                );
            }
            Ok(_) => {}
            Err(e) => {
                connected = false;
                // New epoch and drop the PUBACKs still queued, in one step: the broker resends
                // every unacknowledged PUBLISH on the next connection.
                epoch = gate.advance(|| conn.clean());
                let d = cfg
                    .reconnect
                    .delay(attempt, jitter())
                    .max(client::MIN_RECONNECT);
                attempt = attempt.saturating_add(1);
                events::source_disconnected(
                    &shared.metrics,
                    &name,
                    &e,
                    d.as_millis() as u64,
                    !in_outage,
                );
                in_outage = true;
                set_health(
                    &shared,
                    &name,
                    false,
                    format!("{addr}: {e}; reconnecting in {} ms", d.as_millis()),
                );
                if sleep_or_stop(d, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Sends DISCONNECT (after the PUBACKs queued before it) and polls until it is out.
async fn disconnect(client: &Client, conn: &mut Conn, epoch: u64) {
    client.try_disconnect();
    let done = tokio::time::timeout(Duration::from_millis(1000), async {
        loop {
            match conn.poll(epoch).await {
                Ok(Polled::Disconnected) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if done.is_err() {
        tracing::debug!("The DISCONNECT was not confirmed within 1 s.");
    }
}

fn ack(name: &str, client: &Client, gate: &AckGate, r: &Received) {
    if r.qos == 0 {
        return;
    }
    let Some(h) = &r.ack else { return };
    let sent = gate.if_current(r.epoch, || {
        if let Err(e) = client.try_ack(h) {
            tracing::warn!(source = name, error = %e, "Cannot queue a PUBACK; the broker will resend.");
        }
    });
    if !sent {
        tracing::debug!(
            source = name,
            pkid = r.pkid,
            "Not acknowledged: the connection changed; the broker resends it."
        );
    }
}

async fn process_loop(
    name: &str,
    cfg: &MqttConfig,
    client: &Client,
    gate: &AckGate,
    mut rx: mpsc::Receiver<Received>,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut queue: VecDeque<Received> = VecDeque::new();
    let mut healthy = true;
    loop {
        if queue.is_empty() {
            let mut got = Vec::new();
            let n = tokio::select! {
                n = rx.recv_many(&mut got, 256) => n,
                _ = stop.changed() => return,
            };
            if n == 0 {
                return;
            }
            queue.extend(got);
        }
        let now = now_ms();
        let items: Vec<Item> = queue
            .iter()
            .map(|r| build_item(name, cfg, r, now))
            .collect();
        let mut done = 0usize;
        let mut failure: Option<String> = None;
        while done < items.len() && failure.is_none() {
            match &items[done] {
                Item::Dead { reason, error } => {
                    let r = &queue[done];
                    match dead_letter(shared, name, reason, error.clone(), r.payload.clone(), None)
                        .await
                    {
                        Ok(()) => {
                            ack(name, client, gate, r);
                            done += 1;
                        }
                        Err(e) => failure = Some(format!("cannot store a dead letter: {e}")),
                    }
                }
                Item::Record(_) => {
                    let recs: Vec<NewRecord> = items[done..]
                        .iter()
                        .map_while(|i| match i {
                            Item::Record(r) => Some(r.clone()),
                            Item::Dead { .. } => None,
                        })
                        .collect();
                    for result in store_many(shared, recs).await {
                        match result {
                            Ok(_) => {
                                ack(name, client, gate, &queue[done]);
                                done += 1;
                            }
                            Err(e) => {
                                // It and everything after it stay unacknowledged, in order.
                                failure = Some(e.to_string());
                                break;
                            }
                        }
                    }
                }
            }
        }
        queue.drain(..done);
        match failure {
            None => {
                if !healthy {
                    healthy = true;
                    set_health(shared, name, true, "storing readings again");
                }
            }
            Some(why) => {
                healthy = false;
                set_health(
                    shared,
                    name,
                    false,
                    format!(
                        "cannot store readings ({why}); {} unacknowledged, the broker holds the rest",
                        queue.len()
                    ),
                );
                if sleep_or_stop(Duration::from_millis(500), &mut stop).await {
                    return;
                }
            }
        }
    }
}
