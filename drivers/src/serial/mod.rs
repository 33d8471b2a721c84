//! Serial bedside-device decoders (device-protocols.md §3): Nonin Serial Data Format #8
//! binary frames, Nonin ASCII lines, Masimo ASCII 1 lines, and generic JSON lines.
//!
//! Each protocol has a pure per-frame / per-line function and a streaming decoder
//! ([`Nonin8Decoder`], [`LineDecoder`]) implementing [`crate::StreamDecoder`], which the
//! serial transport will feed with whatever the port returns.
//!
//! Invariants:
//! - No input panics; every rejected frame or line is an `Err` with a reason, and decoding
//!   resumes at the next frame start or line.
//! - Device "no data" markers (Nonin HR 511 / SpO2 127, `---`, Masimo `000` under a sensor
//!   exception) are `null` with a reason in `absent`, never numbers.
//! - Line decoders cap a line at a fixed length ([`MAX_ASCII_LINE`], [`MAX_JSON_LINE`]) so a
//!   device that never sends a newline cannot grow memory without bound.

mod lines;
mod masimo;
mod nonin8;
mod nonin_ascii;

pub use lines::{decode_json_line, LineDecoder, MAX_ASCII_LINE, MAX_JSON_LINE};
pub use masimo::{decode_masimo_line, MASIMO_SUPPRESSING_EXCEPTIONS};
pub use nonin8::{decode_nonin8_frame, Nonin8Decoder};
pub use nonin_ascii::decode_nonin_ascii_line;

use thiserror::Error;

/// Why serial input was rejected. `protocol` is the registry name (`nonin8`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SerialError {
    /// Bytes that could not start a frame were skipped while resynchronising.
    #[error("{protocol}: skipped {skipped} bytes that do not start a frame")]
    Garbage {
        /// Protocol name.
        protocol: &'static str,
        /// Number of bytes skipped.
        skipped: usize,
    },
    /// A frame start was followed by another frame start (or end of input) too early.
    #[error("{protocol}: truncated frame ({got} of {expected} bytes) dropped")]
    Truncated {
        /// Protocol name.
        protocol: &'static str,
        /// Bytes of the frame that arrived.
        got: usize,
        /// Bytes a frame needs.
        expected: usize,
    },
    /// A frame byte has its sync bit wrong.
    #[error("{protocol}: byte {index} ({value:#04x}) has the wrong sync bit")]
    BadSync {
        /// Protocol name.
        protocol: &'static str,
        /// Index of the byte in the frame (0-based).
        index: usize,
        /// The byte.
        value: u8,
    },
    /// A frame byte has reserved bits set.
    #[error("{protocol}: reserved bits {reserved:#04x} set in byte {index} ({value:#04x})")]
    ReservedBits {
        /// Protocol name.
        protocol: &'static str,
        /// Index of the byte in the frame (0-based).
        index: usize,
        /// The byte.
        value: u8,
        /// Its reserved bits that are set.
        reserved: u8,
    },
    /// A line exceeded the line-length limit; it was dropped up to the next newline.
    #[error("{protocol}: line longer than {max} bytes dropped")]
    LineTooLong {
        /// Protocol name.
        protocol: &'static str,
        /// The limit.
        max: usize,
    },
    /// A line that is not a data line of this protocol (header, partial line, noise).
    #[error("{protocol}: not a data line: {reason}")]
    NotADataLine {
        /// Protocol name.
        protocol: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A `KEY=VALUE` whose value cannot be read.
    #[error("{protocol}: bad value {value:?} for {key}: {reason}")]
    BadValue {
        /// Protocol name.
        protocol: &'static str,
        /// The key.
        key: String,
        /// The value text.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A JSON line that is not valid JSON or not an object.
    #[error("{protocol}: {reason}")]
    Json {
        /// Protocol name.
        protocol: &'static str,
        /// serde_json's message, or "not a JSON object".
        reason: String,
    },
}
