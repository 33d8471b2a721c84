//! Configuration of the HL7 v2 / MLLP source (validated in `config/validate.rs`).

use crate::sources::serial::PortSettings;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the MLLP frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MllpTransport {
    /// A TCP listener (the usual transport; IANA port 2575).
    Tcp { listen: SocketAddr },
    /// A serial port carrying MLLP frames (ACKs are written back on the port).
    Serial(PortSettings),
}

/// Which part of the message names the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceIdFrom {
    /// OBX-18 equipment instance id (EUI-64) of the first reading; else MSH-3's universal id,
    /// else its namespace id, else the configured `device_id`.
    Obx18,
    /// MSH-3 (universal id, else namespace id), else the configured `device_id`.
    Msh3,
    /// Always the configured `device_id`.
    Fixed,
}

/// Which part of the message names the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientIdFrom {
    /// The first PID-3 identifier.
    Pid3,
    /// The PV1-3 location as `point_of_care/room/bed` (wards that identify by bed).
    Pv1,
    /// No patient id.
    None,
}

/// The HL7 v2 listener source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MllpConfig {
    pub transport: MllpTransport,
    pub device_id_from: DeviceIdFrom,
    /// Fallback (or fixed) device id.
    pub device_id: Option<String>,
    pub patient_id_from: PatientIdFrom,
    /// MSH-3 and MSH-4 of the ACKs (HL7-encoded).
    pub ack_sending_application: String,
    pub ack_sending_facility: String,
    /// Most concurrent TCP connections.
    pub max_connections: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
}
