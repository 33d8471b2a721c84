//! The streaming decoder for line-oriented protocols, and generic JSON lines (`jsonl`).
//!
//! A [`LineDecoder`] splits input on CR, LF or CR LF (empty lines skipped) and runs one
//! protocol's line function on each line. An unterminated last line is decoded at
//! [`StreamDecoder::finish`]. A line over the protocol's limit is reported once and dropped up
//! to the next newline.
//!
//! `jsonl`: each line must be one JSON **object**, which is passed through unchanged as the
//! body (keys in the device's order). serde_json's recursion limit bounds nesting.

use serde_json::Value;

use super::{decode_masimo_line, decode_nonin_ascii_line, SerialError};
use crate::stream::{Line, LineSplitter, StreamDecoder};
use crate::DecodeError;

/// Line-length limit for the ASCII device formats (real lines are under 300 bytes).
pub const MAX_ASCII_LINE: usize = 4096;
/// Line-length limit for JSON lines.
pub const MAX_JSON_LINE: usize = 1 << 20;

/// Decodes one JSON line into its object.
pub fn decode_json_line(line: &[u8]) -> Result<Value, SerialError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| SerialError::Json {
        protocol: "jsonl",
        reason: format!("invalid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(SerialError::Json {
            protocol: "jsonl",
            reason: "not a JSON object".into(),
        });
    }
    Ok(value)
}

fn nonin_ascii(line: &[u8]) -> Result<Value, SerialError> {
    decode_nonin_ascii_line(&text("nonin-ascii", line)?)
}

fn masimo_ascii(line: &[u8]) -> Result<Value, SerialError> {
    decode_masimo_line(&text("masimo-ascii", line)?)
}

fn text(protocol: &'static str, line: &[u8]) -> Result<String, SerialError> {
    String::from_utf8(line.to_vec()).map_err(|_| SerialError::NotADataLine {
        protocol,
        reason: "not valid UTF-8 text".into(),
    })
}

/// Streaming decoder for a line-oriented protocol.
#[derive(Debug)]
pub struct LineDecoder {
    protocol: &'static str,
    splitter: LineSplitter,
    decode_line: fn(&[u8]) -> Result<Value, SerialError>,
}

impl LineDecoder {
    /// Nonin ASCII (`SPO2=… HR=…`) lines.
    pub fn nonin_ascii() -> Self {
        Self::new("nonin-ascii", MAX_ASCII_LINE, nonin_ascii)
    }

    /// Masimo ASCII 1 lines.
    pub fn masimo_ascii() -> Self {
        Self::new("masimo-ascii", MAX_ASCII_LINE, masimo_ascii)
    }

    /// Generic JSON lines.
    pub fn json_lines() -> Self {
        Self::new("jsonl", MAX_JSON_LINE, decode_json_line)
    }

    fn new(
        protocol: &'static str,
        max: usize,
        decode_line: fn(&[u8]) -> Result<Value, SerialError>,
    ) -> Self {
        Self {
            protocol,
            splitter: LineSplitter::new(max),
            decode_line,
        }
    }

    fn decode(&self, line: Line) -> Result<Value, DecodeError> {
        match line {
            Line::Text(bytes) => (self.decode_line)(&bytes).map_err(DecodeError::from),
            Line::TooLong(max) => Err(SerialError::LineTooLong {
                protocol: self.protocol,
                max,
            }
            .into()),
        }
    }
}

impl StreamDecoder for LineDecoder {
    fn push(&mut self, bytes: &[u8]) -> Vec<Result<Value, DecodeError>> {
        let lines = self.splitter.push(bytes);
        lines.into_iter().map(|l| self.decode(l)).collect()
    }

    fn finish(&mut self) -> Vec<Result<Value, DecodeError>> {
        self.splitter
            .finish()
            .into_iter()
            .map(|l| self.decode(l))
            .collect()
    }
}
