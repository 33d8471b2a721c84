//! MQTT subscriber source (rumqttc; MQTT 3.1.1 and 5; TLS with rustls; password auth).
//!
//! Delivery chain (at least once, end to end):
//! - Persistent session (`clean_session = false`; MQTT 5: `clean_start = false` **and** a
//!   session expiry, without which the broker drops the session) under a stable client id:
//!   the broker keeps the subscriptions and queues QoS 1 messages while the agent is down.
//! - **Manual acks**: a QoS 1 PUBLISH is acknowledged (PUBACK) only after its reading — or,
//!   for a payload that can never be mapped, its dead letter — is durably committed. A crash
//!   between receive and commit means the broker redelivers it; the dedup key
//!   `mqtt:<client id>:<packet id>` (QoS 1 only; the store compares the payload too)
//!   recognises a redelivery of a reading that was committed but not yet acknowledged.
//! - PUBACKs are sent in the order the PUBLISHes arrived; a reading the log refuses (full)
//!   is held and retried, and it and everything after it stay unacknowledged (back-pressure:
//!   the broker stops at its in-flight limit).
//! - An ack is only sent on the connection its PUBLISH came in on ([`AckGate`]): after a
//!   reconnect the broker resends unacknowledged messages itself, and a stale PUBACK could
//!   acknowledge a different message that reuses the packet id.
//!
//! The event loop is polled in its own task and never waits for the log (rumqttc#1025);
//! after a connection error it waits with capped exponential back-off and jitter (rumqttc's
//! `poll` would retry at once). Subscriptions are sent on the first connection of the process
//! (a changed config takes effect) and whenever the broker has no session for us.
//!
//! Envelope: `Body` = the payload as JSON (any JSON value); a payload that is not JSON is
//! dead-lettered with reason `not_json`, or wrapped as a JSON string with `wrap_non_json`.
//! `Properties` = `topic`, `qos`, `retain`, the MQTT 5 user properties (which cannot override
//! those three), `source`, `protocol`; `SystemProperties` = the device id (topic segment
//! `device_id_topic_segment`, else `device_id`) and the receive time.

mod client;
mod config;
mod task;

#[cfg(test)]
mod tests;

pub use client::{prepare, AckGate, Prepared};
pub use config::{check_filter, MqttConfig, MqttTls, MqttVersion, Subscription};
pub use task::{build_item, device_id_for_topic, run, Item, Received};
