//! Device drivers for iomt-edge.
//!
//! This crate turns bytes from devices (BLE GATT characteristics, serial frames, HL7 v2
//! messages over MLLP, MQTT payloads) into JSON bodies for the agent's event envelope.
//!
//! Architecture invariant: this crate never depends on the agent and knows nothing of
//! mapping templates. Decoders are pure functions over bytes: no I/O, no clock.

pub mod ble;
pub mod body;
pub mod ieee11073;
pub mod stream;

pub use stream::StreamDecoder;

use thiserror::Error;

/// Any decoder's error.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeError {
    /// The protocol name is not one [`decode`] knows.
    #[error("unknown protocol {0:?}")]
    UnknownProtocol(String),
    /// A BLE characteristic value was rejected.
    #[error(transparent)]
    Ble(#[from] ble::BleError),
}
