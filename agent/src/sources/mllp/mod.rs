//! HL7 v2 ORU^R01 (IHE PCD-01) over MLLP: a TCP listener (or a serial port) that stores each
//! message durably and then answers it with one ACK.
//!
//! Per message (connections are served concurrently; messages of one connection in order):
//! 1. de-frame (`0x0B … 0x1C 0x0D`, resynchronising on the next start block);
//! 2. parse and decode with `iomt_drivers::hl7` into one body per (time, device, demo) group;
//! 3. valid: one log record for the whole message — Body = the array of bodies, dedup key
//!    `hl7:<MSH-10>` (a resent message is recognised), payload = the message bytes — and,
//!    **only after its durable commit**, ACK `AA` (or `CA` when the sender asked for enhanced
//!    acknowledgement with MSH-15);
//! 4. malformed: a dead letter (stage `decode`, reason `hl7_rejected` or `hl7_error`, the raw
//!    message) and, after its commit, `AR`/`CR` (cannot be processed: framing, MSH, type) or
//!    `AE`/`CE` (content error) with the reason in MSA-3 and ERR; other messages are not
//!    affected. Framing garbage and cut frames have no MSH to answer: dead-lettered only.
//!
//! Identity: `device_id_from` (OBX-18 EUI-64, MSH-3, or a fixed id) gives
//! `SystemProperties.iothub-connection-device-id`; `patient_id_from` (PID-3, PV1-3 or none)
//! gives `Properties.patientId`. Demo-mode data (OBX-8 `DEMO`) is stored flagged — `demo` in
//! each body and `Properties.demo` — and counted; the shipped templates do not map it.
//!
//! While the log refuses a message (full) the ACK is withheld and the store retried, so the
//! sender waits (its own timeout may resend; the dedup key absorbs that).

mod config;
mod task;

#[cfg(test)]
mod tests;

pub use config::{DeviceIdFrom, MllpConfig, MllpTransport, PatientIdFrom};
pub use task::{ack_frame, bind, hl7_timestamp, process_message, run, Processed};
