//! The rumqttc seam: builds the client for MQTT 3.1.1 or 5 and hides the difference behind
//! [`Conn`] (event loop), [`Client`] (acks, subscribe, disconnect) and [`Received`]
//! (a PUBLISH plus what is needed to acknowledge it).

use super::config::{MqttConfig, MqttVersion};
use super::task::Received;
use crate::config::resolve_secret;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Largest MQTT packet accepted (a larger one makes rumqttc drop the connection).
pub const MAX_PACKET_BYTES: usize = 1 << 20;

/// Requests queued to the event loop at most (acks and subscriptions; never full in
/// practice because the broker's in-flight window bounds the acks).
const REQUEST_CAPACITY: usize = 4096;

/// Options resolved before the source starts (secrets read, certificates loaded), so that a
/// missing secret stops the agent at start with a configuration error.
pub enum Prepared {
    V4(Box<rumqttc::MqttOptions>),
    V5(Box<rumqttc::v5::MqttOptions>),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Prepared::V4(_) => "Prepared::V4",
            Prepared::V5(_) => "Prepared::V5",
        })
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Builds the client options: reads the password, the CA and the client certificate and key.
/// `env` and `credentials_dir` are passed in (tests), as in [`resolve_secret`].
pub fn prepare(
    cfg: &MqttConfig,
    env: &dyn Fn(&str) -> Option<String>,
    credentials_dir: Option<&Path>,
) -> Result<Prepared, String> {
    let password = match &cfg.password {
        Some(s) => {
            Some(resolve_secret(s, env, credentials_dir).map_err(|e| format!("password: {e}"))?)
        }
        None => None,
    };
    let transport = match &cfg.tls {
        None => rumqttc::Transport::tcp(),
        Some(t) => {
            let ca = read(&t.ca_file, "CA file")?;
            let client_auth = match (&t.client_cert_file, &t.client_key) {
                (Some(cert), Some(key)) => Some((
                    read(cert, "client certificate")?,
                    resolve_secret(key, env, credentials_dir)
                        .map_err(|e| format!("client_key: {e}"))?
                        .into_bytes(),
                )),
                _ => None,
            };
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            })
        }
    };
    Ok(match cfg.version {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
            o.set_clean_session(cfg.clean_session)
                .set_manual_acks(true)
                .set_keep_alive(cfg.keep_alive)
                .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
                .set_transport(transport);
            if let Some(u) = &cfg.username {
                o.set_credentials(u, password.unwrap_or_default());
            }
            Prepared::V4(Box::new(o))
        }
        MqttVersion::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
            o.set_clean_start(cfg.clean_session)
                .set_manual_acks(true)
                .set_keep_alive(cfg.keep_alive)
                .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
                .set_transport(transport);
            if !cfg.clean_session {
                // Without an expiry an MQTT 5 broker ends the session at disconnect.
                let secs = cfg.session_expiry.as_secs().min(u64::from(u32::MAX)) as u32;
                o.set_session_expiry_interval(Some(secs));
            }
            if let Some(u) = &cfg.username {
                o.set_credentials(u, password.unwrap_or_default());
            }
            Prepared::V5(Box::new(o))
        }
    })
}

/// What the acknowledgement of a PUBLISH needs.
#[derive(Debug, Clone)]
pub enum AckHandle {
    V4(rumqttc::Publish),
    V5(rumqttc::v5::mqttbytes::v5::Publish),
}

/// Connection epochs and the lock that makes "is this PUBLISH from the current connection?"
/// and "queue its PUBACK" one step, against the event loop dropping queued acks when the
/// connection is lost.
#[derive(Debug, Default)]
pub struct AckGate {
    epoch: Mutex<u64>,
}

impl AckGate {
    /// The current connection's epoch.
    pub fn current(&self) -> u64 {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new epoch; `f` runs under the lock (the event loop drops queued acks there).
    pub fn advance(&self, f: impl FnOnce()) -> u64 {
        let mut e = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        *e += 1;
        f();
        *e
    }

    /// Runs `f` under the lock if `epoch` is still current; returns whether it ran.
    pub fn if_current(&self, epoch: u64, f: impl FnOnce()) -> bool {
        let e = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        if *e == epoch {
            f();
            true
        } else {
            false
        }
    }
}

/// The request side.
#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// Queues a PUBACK (never waits).
    pub fn try_ack(&self, h: &AckHandle) -> Result<(), String> {
        match (self, h) {
            (Client::V4(c), AckHandle::V4(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (Client::V5(c), AckHandle::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Err("ack handle of the other protocol version".into()),
        }
    }

    /// Queues a SUBSCRIBE.
    pub fn try_subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(
                    filter,
                    if qos == 0 {
                        rumqttc::QoS::AtMostOnce
                    } else {
                        rumqttc::QoS::AtLeastOnce
                    },
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::QoS;
                c.try_subscribe(
                    filter,
                    if qos == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    },
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a DISCONNECT.
    pub fn try_disconnect(&self) {
        let _queued = match self {
            Client::V4(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        };
    }
}

/// What the event loop produced.
#[derive(Debug)]
pub enum Polled {
    ConnAck {
        session_present: bool,
    },
    Publish(Box<Received>),
    /// SUBACK: the filters' positions that the broker refused.
    SubAck {
        refused: usize,
    },
    /// A DISCONNECT went out.
    Disconnected,
    Other,
}

/// The event loop.
pub enum Conn {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// Starts the client and its event loop (nothing is sent before the first poll).
pub fn start(p: Prepared) -> (Client, Conn) {
    match p {
        Prepared::V4(o) => {
            let (c, l) = rumqttc::AsyncClient::new(*o, REQUEST_CAPACITY);
            (Client::V4(c), Conn::V4(Box::new(l)))
        }
        Prepared::V5(o) => {
            let (c, l) = rumqttc::v5::AsyncClient::new(*o, REQUEST_CAPACITY);
            (Client::V5(c), Conn::V5(Box::new(l)))
        }
    }
}

impl Conn {
    /// Drops the connection state and the queued PUBACKs (rumqttc keeps other requests).
    pub fn clean(&mut self) {
        match self {
            Conn::V4(l) => l.clean(),
            Conn::V5(l) => l.clean(),
        }
    }

    /// Polls once: connects when disconnected, else reads, writes queued requests and pings.
    pub async fn poll(&mut self, epoch: u64) -> Result<Polled, String> {
        match self {
            Conn::V4(l) => {
                use rumqttc::{Event, Outgoing, Packet};
                match l.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Ok(Polled::ConnAck {
                        session_present: c.session_present,
                    }),
                    Event::Incoming(Packet::Publish(p)) => {
                        Ok(Polled::Publish(Box::new(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                            retain: p.retain,
                            dup: p.dup,
                            pkid: p.pkid,
                            user_properties: Vec::new(),
                            epoch,
                            ack: Some(AckHandle::V4(p)),
                        })))
                    }
                    Event::Incoming(Packet::SubAck(s)) => Ok(Polled::SubAck {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .count(),
                    }),
                    Event::Outgoing(Outgoing::Disconnect) => Ok(Polled::Disconnected),
                    _ => Ok(Polled::Other),
                }
            }
            Conn::V5(l) => {
                use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
                use rumqttc::v5::Event;
                match l.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Ok(Polled::ConnAck {
                        session_present: c.session_present,
                    }),
                    Event::Incoming(Packet::Publish(p)) => {
                        Ok(Polled::Publish(Box::new(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                            retain: p.retain,
                            dup: p.dup,
                            pkid: p.pkid,
                            user_properties: p
                                .properties
                                .as_ref()
                                .map(|pr| pr.user_properties.clone())
                                .unwrap_or_default(),
                            epoch,
                            ack: Some(AckHandle::V5(p)),
                        })))
                    }
                    Event::Incoming(Packet::SubAck(s)) => Ok(Polled::SubAck {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            .count(),
                    }),
                    Event::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Polled::Disconnected),
                    _ => Ok(Polled::Other),
                }
            }
        }
    }
}

/// Back-off is at least this, even when configured lower (rumqttc reconnects at once).
pub const MIN_RECONNECT: Duration = Duration::from_millis(10);
