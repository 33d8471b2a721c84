//! HL7 v2 for IHE PCD-01 "Communicate PCD Data" (ORU^R01) over MLLP
//! (device-protocols.md §4, codes §5.1–§5.2).
//!
//! Pieces, each pure:
//! - [`mllp`]: MLLP framing and a resynchronising streaming de-framer.
//! - [`message`]: the v2 parser (MSH delimiters, repetitions, components, escapes).
//! - [`pcd01`]: ORU^R01 → JSON bodies keyed by numeric MDC code.
//! - [`codes`]: MDC alias and MDC-unit → UCUM tables.
//! - [`ack`]: ACK builder (AA/CA, AE/CE, AR/CR with the reason).
//! - [`Hl7Decoder`]: MLLP + parse + bodies as a [`StreamDecoder`]. A transport that must ACK
//!   uses [`mllp::MllpDecoder`], [`message::Message::parse`], [`pcd01::oru_bodies`] and
//!   [`ack::build_ack_frame`] directly, one frame at a time.
//!
//! Invariant: no input panics; each problem is an [`Hl7Error`] that says whether the
//! message is to be rejected or answered with an error ([`Hl7Error::is_reject`]).

pub mod ack;
pub mod codes;
pub mod message;
pub mod mllp;
pub mod pcd01;

use serde_json::Value;
use thiserror::Error;

use crate::stream::StreamDecoder;
use crate::DecodeError;

/// Why an HL7 frame or message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Hl7Error {
    /// Bytes outside any MLLP frame.
    #[error("mllp: skipped {skipped} bytes outside a frame")]
    Garbage {
        /// Bytes skipped.
        skipped: usize,
    },
    /// A frame cut short by a new start block or the end of input.
    #[error("mllp: frame cut short after {len} bytes")]
    Truncated {
        /// Bytes of the frame received.
        len: usize,
    },
    /// The end block was not followed by a carriage return.
    #[error("mllp: end block 0x1c followed by {byte:#04x} instead of 0x0d")]
    BadTrailer {
        /// The byte found.
        byte: u8,
    },
    /// A frame over the size limit.
    #[error("mllp: frame longer than {max} bytes dropped")]
    FrameTooLong {
        /// The limit.
        max: usize,
    },
    /// The message has no segments.
    #[error("empty message")]
    Empty,
    /// The first segment is not MSH.
    #[error("message does not start with an MSH segment (starts {found:?})")]
    NoMsh {
        /// The first characters of the message.
        found: String,
    },
    /// MSH-1 / MSH-2 do not declare usable delimiters.
    #[error("bad delimiters: {0}")]
    BadDelimiters(String),
    /// A segment whose name is not three upper-case letters or digits.
    #[error("bad segment name {name:?}")]
    BadSegment {
        /// The name found.
        name: String,
    },
    /// Not an ORU^R01.
    #[error("unsupported message type {found:?} (expected ORU^R01)")]
    UnsupportedMessageType {
        /// MSH-9 as received.
        found: String,
    },
    /// A required field is empty.
    #[error("required field {field} is empty")]
    MissingField {
        /// The field, e.g. `MSH-10`.
        field: &'static str,
    },
    /// An NM value that is not a number.
    #[error("OBX set {set_id}: value {value:?} is not a number: {reason}")]
    BadNumeric {
        /// OBX-1.
        set_id: String,
        /// OBX-5.
        value: String,
        /// The parse error.
        reason: String,
    },
    /// A timestamp that is not an HL7 TS.
    #[error("{field}: {reason}")]
    BadTimestamp {
        /// The field, e.g. `OBX-14 (set 3)`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl Hl7Error {
    /// `true` when the message as a whole cannot be processed (ACK `AR`/`CR`): framing,
    /// missing or bad MSH, unsupported type, missing MSH-10. `false` for content errors in an
    /// otherwise valid ORU (`AE`/`CE`).
    pub fn is_reject(&self) -> bool {
        match self {
            Hl7Error::MissingField { field } => field.starts_with("MSH"),
            Hl7Error::BadNumeric { .. } | Hl7Error::BadTimestamp { .. } => false,
            _ => true,
        }
    }

    /// HL7 table 0357 code and text for ERR-3.
    pub fn hl7_error_code(&self) -> (u16, &'static str) {
        match self {
            Hl7Error::UnsupportedMessageType { .. } => (200, "Unsupported message type"),
            Hl7Error::MissingField { .. } => (101, "Required field missing"),
            Hl7Error::BadNumeric { .. }
            | Hl7Error::BadTimestamp { .. }
            | Hl7Error::BadDelimiters(_) => (102, "Data type error"),
            Hl7Error::Empty | Hl7Error::NoMsh { .. } | Hl7Error::BadSegment { .. } => {
                (100, "Segment sequence error")
            }
            _ => (207, "Application internal error"),
        }
    }
}

/// Parses one (unframed) message and decodes it into bodies.
pub fn decode_message(bytes: &[u8]) -> Result<Vec<Value>, Hl7Error> {
    let msg = message::Message::parse(bytes)?;
    pcd01::oru_bodies(&msg)
}

/// MLLP-framed ORU^R01 messages → bodies, as a [`StreamDecoder`]. A message's error is one
/// `Err`; a message's bodies are consecutive `Ok`s.
#[derive(Debug, Clone, Default)]
pub struct Hl7Decoder {
    mllp: mllp::MllpDecoder,
}

impl Hl7Decoder {
    /// A decoder with the default frame-size limit.
    pub fn new() -> Self {
        Self::default()
    }

    fn expand(frames: Vec<Result<Vec<u8>, Hl7Error>>) -> Vec<Result<Value, DecodeError>> {
        let mut out = Vec::new();
        for frame in frames {
            match frame.and_then(|f| decode_message(&f)) {
                Ok(bodies) => out.extend(bodies.into_iter().map(Ok)),
                Err(e) => out.push(Err(e.into())),
            }
        }
        out
    }
}

impl StreamDecoder for Hl7Decoder {
    fn push(&mut self, bytes: &[u8]) -> Vec<Result<Value, DecodeError>> {
        Self::expand(self.mllp.push(bytes))
    }

    fn finish(&mut self) -> Vec<Result<Value, DecodeError>> {
        Self::expand(self.mllp.finish())
    }
}
