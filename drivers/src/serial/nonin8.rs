//! Nonin Serial Data Format #8 (device-protocols.md §3.2): 4-byte frames, once per second.
//!
//! Frame: `status` (bit7 = 1, bit6 R, OOT, LPRF, MPRF, ARTF, HR8, HR7), `HR-D` (bit7 = 0),
//! `SpO2-D` (bit7 = 0), `status2` (bit7 = 0, bit6 R, SPA, bit4 R, SNSA, bit2 R, bit1 R,
//! LOW BAT). `HR = ((b1 & 0x03) << 7) | (b2 & 0x7F)` (9 bits), `SpO2 = b3 & 0x7F`.
//!
//! Format 8 has **no checksum**: integrity rests on the sync bits and on reserved bits being
//! zero, so a frame with a reserved bit set is rejected ([`SerialError::ReservedBits`]).
//!
//! Body: `values.spo2` (%, MDC 150456) and `values.pulse_rate` (/min, MDC 149530), `null`
//! with `absent = "missing"` for 127 / 511; `status` holds every flag as a boolean
//! (`out_of_track`, `low_perfusion`, `marginal_perfusion`, `artifact`, `sensor_alarm`,
//! `smartpoint`, `low_battery`). Flags are reported, not acted on: values under
//! `sensor_alarm` or `out_of_track` are the device's held display values and stay numbers.
//!
//! Streaming: sync on a byte with bit7 = 1 followed by three bytes with bit7 = 0. Bytes before
//! a frame start are reported as one [`SerialError::Garbage`]; a frame start followed by
//! another frame start too early is reported as [`SerialError::Truncated`] and decoding
//! restarts at the new frame start, so no following good frame is lost.

use serde_json::{json, Value};

use super::SerialError;
use crate::body::{Absent, Body, Reading};
use crate::stream::StreamDecoder;
use crate::DecodeError;

const PROTOCOL: &str = "nonin8";
const FRAME: usize = 4;

/// Decodes one 4-byte Format 8 frame (sync bits checked).
pub fn decode_nonin8_frame(frame: [u8; 4]) -> Result<Value, SerialError> {
    for (index, value) in frame.iter().copied().enumerate() {
        let want_high = index == 0;
        if (value & 0x80 != 0) != want_high {
            return Err(SerialError::BadSync {
                protocol: PROTOCOL,
                index,
                value,
            });
        }
    }
    let [b1, b2, b3, b4] = frame;
    for (index, value, mask) in [(0, b1, 0x40u8), (3, b4, 0x56u8)] {
        if value & mask != 0 {
            return Err(SerialError::ReservedBits {
                protocol: PROTOCOL,
                index,
                value,
                reserved: value & mask,
            });
        }
    }
    let hr = (u16::from(b1 & 0x03) << 7) | u16::from(b2 & 0x7F);
    let spo2 = b3 & 0x7F;
    let mut body = Body::new(PROTOCOL);
    let reading = |v: i64, missing: i64| {
        if v == missing {
            Reading::Absent(Absent::Missing)
        } else {
            Reading::Int(v)
        }
    };
    body.measure(
        "spo2",
        reading(i64::from(spo2), 127),
        Some("%"),
        Some(150456),
    );
    body.measure(
        "pulse_rate",
        reading(i64::from(hr), 511),
        Some("/min"),
        Some(149530),
    );
    body.field(
        "status",
        json!({
            "out_of_track": b1 & 0x20 != 0,
            "low_perfusion": b1 & 0x10 != 0,
            "marginal_perfusion": b1 & 0x08 != 0,
            "artifact": b1 & 0x04 != 0,
            "sensor_alarm": b4 & 0x08 != 0,
            "smartpoint": b4 & 0x20 != 0,
            "low_battery": b4 & 0x01 != 0,
        }),
    );
    Ok(body.into_value())
}

/// Streaming Format 8 decoder (see the module doc for resynchronisation).
#[derive(Debug, Default, Clone)]
pub struct Nonin8Decoder {
    buf: Vec<u8>,
    pending_garbage: usize,
}

impl Nonin8Decoder {
    /// A decoder waiting for the first frame start.
    pub fn new() -> Self {
        Self::default()
    }

    fn flush_garbage(&mut self, out: &mut Vec<Result<Value, DecodeError>>) {
        if self.pending_garbage > 0 {
            out.push(Err(SerialError::Garbage {
                protocol: PROTOCOL,
                skipped: self.pending_garbage,
            }
            .into()));
            self.pending_garbage = 0;
        }
    }
}

impl StreamDecoder for Nonin8Decoder {
    fn push(&mut self, bytes: &[u8]) -> Vec<Result<Value, DecodeError>> {
        let mut out = Vec::new();
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            // Skip to the next byte with the sync bit.
            match self.buf[pos..].iter().position(|b| b & 0x80 != 0) {
                None => {
                    self.pending_garbage += self.buf.len() - pos;
                    pos = self.buf.len();
                    break;
                }
                Some(skip) => {
                    self.pending_garbage += skip;
                    pos += skip;
                }
            }
            let avail = &self.buf[pos..];
            // A second frame start inside the frame: the first one is truncated.
            if let Some(next) = avail.iter().take(FRAME).skip(1).position(|b| b & 0x80 != 0) {
                self.flush_garbage(&mut out);
                out.push(Err(SerialError::Truncated {
                    protocol: PROTOCOL,
                    got: next + 1,
                    expected: FRAME,
                }
                .into()));
                pos += next + 1;
                continue;
            }
            if avail.len() < FRAME {
                break;
            }
            let frame = [avail[0], avail[1], avail[2], avail[3]];
            pos += FRAME;
            self.flush_garbage(&mut out);
            out.push(decode_nonin8_frame(frame).map_err(DecodeError::from));
        }
        self.buf.drain(..pos);
        out
    }

    fn finish(&mut self) -> Vec<Result<Value, DecodeError>> {
        let mut out = Vec::new();
        self.flush_garbage(&mut out);
        if !self.buf.is_empty() {
            out.push(Err(SerialError::Truncated {
                protocol: PROTOCOL,
                got: self.buf.len(),
                expected: FRAME,
            }
            .into()));
            self.buf.clear();
        }
        out
    }
}
