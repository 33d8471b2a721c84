//! Serial bedside devices: Nonin (Format 8 binary, ASCII lines), Masimo ASCII 1 and generic
//! JSON lines, read from a serial port (tokio-serial; serialport without libudev).
//!
//! Per port, two tasks:
//! - the **reader** (re)opens the port with capped back-off (one warning per outage, health
//!   and `iomt_source_connected` follow), feeds every byte to the protocol's streaming decoder
//!   from `iomt_drivers` and turns each result into a log record or a dead letter, with the
//!   exact raw bytes of that frame or line ([`RawSpans`]);
//! - the **storer** commits them in order, many per group commit.
//!
//! Invariants:
//! - Garbage and truncated frames never cost a good frame: the decoders resynchronise; each
//!   rejected stretch is dead-lettered (stage `decode`, reason `garbage`, `truncated`,
//!   `bad_frame`, `not_a_data_line`, `bad_value`, `not_json`, `line_too_long`) with its bytes.
//! - Reading never waits for the log: a serial device cannot be paused, so a full log (or a
//!   slow disk) fills a bounded queue of [`MAX_HELD`] items, beyond which new readings are
//!   dropped and counted (`iomt_source_dropped_total{reason="buffer_full"}`).
//! - Unplug (EOF or an I/O error; a pty hang-up reads as EOF) closes the port and the reader
//!   reopens it by path; a replugged device resumes without a restart. Bytes in flight at the
//!   hang-up are lost by the kernel, and a frame cut by it is dead-lettered as truncated.
//! - The device's identity is the config's (`device_id`, `patient_id`, `bed`): envelope
//!   `SystemProperties.iothub-connection-device-id` and `Properties.deviceId/patientId/bed`;
//!   the enqueued time is the gateway's receive time (these devices have no usable clock).

mod config;
mod task;

#[cfg(test)]
mod tests;

pub use config::{FlowControl, Parity, PortSettings, SerialConfig, SerialProtocol};
pub use task::{open_port, run, RawSpans, MAX_HELD};
