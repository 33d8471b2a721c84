//! MLLP framing (device-protocols.md §4.1): `0x0B` + message + `0x1C 0x0D`.
//!
//! [`MllpDecoder`] is a byte-level state machine, so any chunking gives the same frames.
//! Resynchronisation rules:
//! - Outside a frame, CR and LF are ignored (some senders add them after `0x1C 0x0D`); any
//!   other byte is garbage, reported once per run as [`Hl7Error::Garbage`] when the next start
//!   block arrives (or at finish).
//! - A start block inside a frame means the frame was cut: [`Hl7Error::Truncated`], and a new
//!   frame starts there (the following good frame is not lost).
//! - `0x1C` not followed by `0x0D` is [`Hl7Error::BadTrailer`]; the byte after it is
//!   re-read as if outside a frame.
//! - A frame over the size limit is [`Hl7Error::FrameTooLong`]; its bytes are dropped up to
//!   the next start block.

use super::Hl7Error;

/// Start block.
pub const START_BLOCK: u8 = 0x0B;
/// End block.
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return that follows the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// Default frame-size limit (1 MiB; PCD-01 messages are a few kB).
pub const MAX_FRAME: usize = 1 << 20;

/// Wraps a message in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(message);
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    InFrame,
    SawEnd,
    Discarding,
}

/// Streaming MLLP de-framer: bytes in, complete message payloads out.
#[derive(Debug, Clone)]
pub struct MllpDecoder {
    state: State,
    buf: Vec<u8>,
    pending_garbage: usize,
    max: usize,
}

impl Default for MllpDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME)
    }
}

impl MllpDecoder {
    /// A decoder with a frame-size limit of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            state: State::Idle,
            buf: Vec::new(),
            pending_garbage: 0,
            max,
        }
    }

    fn flush_garbage(&mut self, out: &mut Vec<Result<Vec<u8>, Hl7Error>>) {
        if self.pending_garbage > 0 {
            out.push(Err(Hl7Error::Garbage {
                skipped: self.pending_garbage,
            }));
            self.pending_garbage = 0;
        }
    }

    fn idle_byte(&mut self, b: u8, out: &mut Vec<Result<Vec<u8>, Hl7Error>>) {
        match b {
            START_BLOCK => {
                self.flush_garbage(out);
                self.buf.clear();
                self.state = State::InFrame;
            }
            b'\r' | b'\n' => {}
            _ => self.pending_garbage += 1,
        }
    }

    /// Feeds bytes; returns each completed payload or framing error in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, Hl7Error>> {
        let mut out = Vec::new();
        for &b in bytes {
            match self.state {
                State::Idle => self.idle_byte(b, &mut out),
                State::Discarding => {
                    if b == START_BLOCK {
                        self.idle_byte(b, &mut out);
                    }
                }
                State::InFrame => match b {
                    START_BLOCK => {
                        out.push(Err(Hl7Error::Truncated {
                            len: self.buf.len(),
                        }));
                        self.buf.clear();
                    }
                    END_BLOCK => self.state = State::SawEnd,
                    _ if self.buf.len() >= self.max => {
                        out.push(Err(Hl7Error::FrameTooLong { max: self.max }));
                        self.buf.clear();
                        self.state = State::Discarding;
                    }
                    _ => self.buf.push(b),
                },
                State::SawEnd => {
                    if b == CARRIAGE_RETURN {
                        out.push(Ok(std::mem::take(&mut self.buf)));
                        self.state = State::Idle;
                    } else {
                        out.push(Err(Hl7Error::BadTrailer { byte: b }));
                        self.buf.clear();
                        self.state = State::Idle;
                        self.idle_byte(b, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Ends the input: reports an unfinished frame and pending garbage, then resets.
    pub fn finish(&mut self) -> Vec<Result<Vec<u8>, Hl7Error>> {
        let mut out = Vec::new();
        self.flush_garbage(&mut out);
        if matches!(self.state, State::InFrame | State::SawEnd) {
            out.push(Err(Hl7Error::Truncated {
                len: self.buf.len(),
            }));
        }
        self.buf.clear();
        self.state = State::Idle;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_deframes() {
        let mut d = MllpDecoder::default();
        let mut input = b"\r\n".to_vec();
        input.extend(frame(b"A"));
        input.extend(frame(b"BC"));
        assert_eq!(d.push(&input), vec![Ok(b"A".to_vec()), Ok(b"BC".to_vec())]);
        assert!(d.finish().is_empty());
    }

    #[test]
    fn resyncs_after_garbage_truncation_and_bad_trailer() {
        let mut d = MllpDecoder::default();
        let mut input = b"xyz".to_vec();
        input.extend([START_BLOCK, b'P']); // cut short by the next start block
        input.extend(frame(b"OK1"));
        input.extend([START_BLOCK, b'Q', END_BLOCK, b'Z']); // bad trailer
        input.extend(frame(b"OK2"));
        let out = d.push(&input);
        assert_eq!(
            out,
            vec![
                Err(Hl7Error::Garbage { skipped: 3 }),
                Err(Hl7Error::Truncated { len: 1 }),
                Ok(b"OK1".to_vec()),
                Err(Hl7Error::BadTrailer { byte: b'Z' }),
                Err(Hl7Error::Garbage { skipped: 1 }),
                Ok(b"OK2".to_vec()),
            ]
        );
    }

    #[test]
    fn limits_frame_size() {
        let mut d = MllpDecoder::new(4);
        let mut input = vec![START_BLOCK];
        input.extend(b"123456789");
        input.extend([END_BLOCK, CARRIAGE_RETURN]);
        input.extend(frame(b"ok"));
        assert_eq!(
            d.push(&input),
            vec![Err(Hl7Error::FrameTooLong { max: 4 }), Ok(b"ok".to_vec())]
        );
    }

    #[test]
    fn unfinished_frame_at_end() {
        let mut d = MllpDecoder::default();
        assert!(d.push(&[START_BLOCK, b'a', END_BLOCK]).is_empty());
        assert_eq!(d.finish(), vec![Err(Hl7Error::Truncated { len: 1 })]);
    }
}
