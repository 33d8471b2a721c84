//! Configuration of the serial sources (validated in `config/validate.rs`): the port and its
//! line settings, the protocol, and the device's identity, which serial devices rarely report
//! themselves.

use crate::sources::ingest::Backoff;
use std::path::PathBuf;

/// Parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// Flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

/// A serial port and its line settings. Ptys accept any baud rate but force 8N; the settings
/// matter on real UARTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSettings {
    /// `/dev/ttyUSB0`, or better a stable `/dev/serial/by-id/...` link.
    pub path: PathBuf,
    pub baud: u32,
    /// 5 to 8.
    pub data_bits: u8,
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    /// Wait between attempts to (re)open the port.
    pub reopen: Backoff,
}

impl PortSettings {
    /// 9600 8N1, no flow control (Nonin and Masimo defaults).
    pub fn new(path: PathBuf) -> Self {
        PortSettings {
            path,
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
            reopen: Backoff {
                min: std::time::Duration::from_millis(200),
                max: std::time::Duration::from_secs(10),
            },
        }
    }
}

/// The serial protocols (names as in `iomt_drivers::decoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialProtocol {
    /// Nonin Serial Data Format #8 (4-byte binary frames).
    Nonin8,
    /// Nonin ASCII lines (`SPO2=097 HR=072`).
    NoninAscii,
    /// Masimo ASCII 1 lines.
    MasimoAscii,
    /// One JSON object per line (custom devices).
    JsonLines,
}

impl SerialProtocol {
    /// All protocols, for error messages.
    pub const NAMES: [&'static str; 4] = ["nonin8", "nonin-ascii", "masimo-ascii", "jsonl"];

    /// The decoder registry name.
    pub fn name(self) -> &'static str {
        match self {
            SerialProtocol::Nonin8 => "nonin8",
            SerialProtocol::NoninAscii => "nonin-ascii",
            SerialProtocol::MasimoAscii => "masimo-ascii",
            SerialProtocol::JsonLines => "jsonl",
        }
    }

    /// Parses a registry name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "nonin8" => SerialProtocol::Nonin8,
            "nonin-ascii" => SerialProtocol::NoninAscii,
            "masimo-ascii" => SerialProtocol::MasimoAscii,
            "jsonl" => SerialProtocol::JsonLines,
            _ => return None,
        })
    }
}

/// A serial device source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    pub port: PortSettings,
    pub protocol: SerialProtocol,
    /// The device's id (`SystemProperties.iothub-connection-device-id`, `Properties.deviceId`).
    pub device_id: String,
    /// The patient at this bed, if known (`Properties.patientId`).
    pub patient_id: Option<String>,
    /// The bed, if known (`Properties.bed`).
    pub bed: Option<String>,
}
