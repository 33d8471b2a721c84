//! Device drivers for iomt-edge.
//!
//! This crate turns bytes from devices (BLE GATT characteristics, serial frames, HL7 v2
//! messages over MLLP, MQTT payloads) into JSON bodies for the agent's event envelope.
//!
//! Architecture invariant: this crate never depends on the agent and knows nothing of
//! mapping templates. Decoders are pure functions over bytes.
