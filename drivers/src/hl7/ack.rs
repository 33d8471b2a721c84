//! HL7 v2 acknowledgements for received messages (device-protocols.md §4.1, §4.3).
//!
//! Rules:
//! - Every message gets an ACK in the same framing (the transport frames it with
//!   [`super::mllp::frame`], or use [`build_ack_frame`]).
//! - [`AckCode::choose`]: a message that asks for enhanced acknowledgement (MSH-15 not empty,
//!   as PCD-01 senders do with `AL`) gets an accept-level code — `CA` when accepted, `CE` on an
//!   error, `CR` when rejected; otherwise original mode: `AA`, `AE`, `AR`. The doc's own sample
//!   answers a PCD-01 message with `AA`; receivers accept both, so a caller may pass `AA`
//!   explicitly to [`build_ack`].
//! - Reject (`AR`/`CR`) versus error (`AE`/`CE`): see [`Hl7Error::is_reject`]. The reason goes
//!   into MSA-3 and into an `ERR` segment (ERR-3 HL7 table 0357 code, ERR-4 severity `E`,
//!   ERR-8 the reason text), escaped.
//! - The ACK's MSH: MSH-3/4 from the caller, MSH-5/6 = the original MSH-3/4, MSH-7 = the
//!   caller's timestamp (this module never reads the clock), MSH-9 = `ACK^<trigger>^ACK`,
//!   MSH-10 = the caller's control ID, MSH-11/12 = the original's processing ID and version.
//!   Delimiters are always the defaults `|^~\&`.

use super::message::{Delimiters, Message};
use super::mllp;
use super::Hl7Error;

/// MSA-1 acknowledgement codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
    /// Commit accept (enhanced mode).
    CA,
    /// Commit error (enhanced mode).
    CE,
    /// Commit reject (enhanced mode).
    CR,
}

impl AckCode {
    /// The two-letter code.
    pub const fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// The code for a message with this header and outcome (see the module rules).
    pub fn choose(header: &MessageHeader, error: Option<&Hl7Error>) -> AckCode {
        let enhanced = !header.accept_ack_type.is_empty();
        match (error, enhanced) {
            (None, false) => AckCode::AA,
            (None, true) => AckCode::CA,
            (Some(e), false) if e.is_reject() => AckCode::AR,
            (Some(e), true) if e.is_reject() => AckCode::CR,
            (Some(_), false) => AckCode::AE,
            (Some(_), true) => AckCode::CE,
        }
    }
}

/// The parts of a received MSH that an ACK needs. `Default` (all empty) is used when the
/// message could not be parsed at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageHeader {
    /// MSH-3, re-encoded with the default delimiters.
    pub sending_application: String,
    /// MSH-4, re-encoded with the default delimiters.
    pub sending_facility: String,
    /// MSH-9.1 (`ORU`).
    pub message_type: String,
    /// MSH-9.2 (`R01`).
    pub trigger_event: String,
    /// MSH-10, the message control ID (the dedup key).
    pub control_id: String,
    /// MSH-11.
    pub processing_id: String,
    /// MSH-12.
    pub version: String,
    /// MSH-15 (accept acknowledgement type; non-empty means enhanced mode).
    pub accept_ack_type: String,
    /// MSH-16.
    pub application_ack_type: String,
}

impl MessageHeader {
    /// Reads the header of a parsed message.
    pub fn from_message(msg: &Message) -> Self {
        let msh = msg.msh();
        let d = Delimiters::default();
        Self {
            sending_application: msh.field(3).encode(&d),
            sending_facility: msh.field(4).encode(&d),
            message_type: msh.field(9).component(1).to_owned(),
            trigger_event: msh.field(9).component(2).to_owned(),
            control_id: msh.field(10).value().to_owned(),
            processing_id: msh.field(11).value().to_owned(),
            version: msh.field(12).value().to_owned(),
            accept_ack_type: msh.field(15).value().to_owned(),
            application_ack_type: msh.field(16).value().to_owned(),
        }
    }
}

/// What the receiver puts in its own MSH. `sending_application` and `sending_facility` are
/// HL7-encoded already (they may contain `^`); `timestamp` is an HL7 TS such as
/// `20240315083001+0100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckOptions<'a> {
    /// MSH-3 of the ACK.
    pub sending_application: &'a str,
    /// MSH-4 of the ACK.
    pub sending_facility: &'a str,
    /// MSH-7 of the ACK.
    pub timestamp: &'a str,
    /// MSH-10 of the ACK.
    pub control_id: &'a str,
}

/// Builds the ACK message text (segments ended by CR, no MLLP framing).
pub fn build_ack(
    header: &MessageHeader,
    code: AckCode,
    error: Option<&Hl7Error>,
    options: &AckOptions<'_>,
) -> String {
    let d = Delimiters::default();
    let trigger = d.escape(&header.trigger_event);
    let msh = [
        "MSH",
        &d.encoding_characters(),
        options.sending_application,
        options.sending_facility,
        &header.sending_application,
        &header.sending_facility,
        &d.escape(options.timestamp),
        "",
        &format!("ACK^{trigger}^ACK"),
        &d.escape(options.control_id),
        &d.escape(&header.processing_id),
        &d.escape(&header.version),
    ]
    .join("|");
    let mut out = format!("{msh}\r");
    let control = d.escape(&header.control_id);
    match error {
        None => out.push_str(&format!("MSA|{}|{control}\r", code.as_str())),
        Some(e) => {
            let reason = d.escape(&e.to_string());
            let (err_code, err_text) = e.hl7_error_code();
            out.push_str(&format!("MSA|{}|{control}|{reason}\r", code.as_str()));
            out.push_str(&format!(
                "ERR|||{err_code}^{err_text}^HL70357|E||||{reason}\r"
            ));
        }
    }
    out
}

/// [`build_ack`] wrapped in an MLLP frame.
pub fn build_ack_frame(
    header: &MessageHeader,
    code: AckCode,
    error: Option<&Hl7Error>,
    options: &AckOptions<'_>,
) -> Vec<u8> {
    mllp::frame(build_ack(header, code, error, options).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(accept: &str) -> MessageHeader {
        MessageHeader {
            sending_application: "APP".into(),
            trigger_event: "R01".into(),
            control_id: "M|1".into(),
            processing_id: "P".into(),
            version: "2.6".into(),
            accept_ack_type: accept.into(),
            ..MessageHeader::default()
        }
    }

    #[test]
    fn codes_follow_the_mode() {
        let reject = Hl7Error::UnsupportedMessageType {
            found: "ADT^A01".into(),
        };
        let error = Hl7Error::BadNumeric {
            set_id: "1".into(),
            value: "x".into(),
            reason: "r".into(),
        };
        assert_eq!(AckCode::choose(&header(""), None), AckCode::AA);
        assert_eq!(AckCode::choose(&header("AL"), None), AckCode::CA);
        assert_eq!(AckCode::choose(&header(""), Some(&reject)), AckCode::AR);
        assert_eq!(AckCode::choose(&header("AL"), Some(&reject)), AckCode::CR);
        assert_eq!(AckCode::choose(&header(""), Some(&error)), AckCode::AE);
        assert_eq!(AckCode::choose(&header("AL"), Some(&error)), AckCode::CE);
    }

    #[test]
    fn error_ack_carries_the_escaped_reason() {
        let error = Hl7Error::BadNumeric {
            set_id: "4".into(),
            value: "9|7".into(),
            reason: "bad".into(),
        };
        let opts = AckOptions {
            sending_application: "GW",
            sending_facility: "H",
            timestamp: "20240101000000",
            control_id: "A1",
        };
        let ack = build_ack(&header(""), AckCode::AE, Some(&error), &opts);
        let lines: Vec<&str> = ack.split('\r').collect();
        assert_eq!(
            lines[0],
            "MSH|^~\\&|GW|H|APP||20240101000000||ACK^R01^ACK|A1|P|2.6"
        );
        assert!(lines[1].starts_with("MSA|AE|M\\F\\1|"), "{}", lines[1]);
        assert!(lines[1].contains("9\\F\\7"), "{}", lines[1]);
        assert!(lines[2].starts_with("ERR|||102^Data type error^HL70357|E||||"));
        assert_eq!(lines[3], "");
        // The reason survives a parse of the ACK.
        let parsed = Message::parse(ack.as_bytes()).expect("ack parses");
        let msa = parsed.segment("MSA").expect("msa");
        assert_eq!(msa.field(2).value(), "M|1");
        assert_eq!(msa.field(3).value(), error.to_string());
    }
}
