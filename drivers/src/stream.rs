//! The streaming decoder interface shared by every protocol, and a line splitter for the
//! line-oriented serial formats.
//!
//! API decision: a decoder is a plain struct fed with whatever bytes the transport read
//! (any chunking). [`StreamDecoder::push`] returns, in input order, one `Ok(body)` per
//! decoded frame and one `Err` per rejected stretch of input; [`StreamDecoder::finish`]
//! flushes what is left at end of input. After an error the decoder has already resynchronised
//! and keeps going: an error never swallows a following good frame.
//!
//! Invariant (property-tested for every decoder): splitting the same input into different
//! chunks yields the same sequence of results. To keep that true, a run of garbage is reported
//! as one error when the decoder next finds a frame start (or at `finish`), not per chunk.

use serde_json::Value;

use crate::DecodeError;

/// A decoder for one protocol, fed incrementally.
pub trait StreamDecoder {
    /// Feeds bytes; returns every frame completed or rejected by them, in order.
    fn push(&mut self, bytes: &[u8]) -> Vec<Result<Value, DecodeError>>;

    /// Ends the input: decodes or rejects whatever is buffered, then resets the decoder.
    fn finish(&mut self) -> Vec<Result<Value, DecodeError>>;
}

/// One item from [`LineSplitter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// A complete, non-empty line without its terminator.
    Text(Vec<u8>),
    /// A line longer than the limit; its bytes up to the next terminator are dropped.
    TooLong(usize),
}

/// Splits bytes into lines on CR, LF or CR LF, skipping empty lines, with a length limit so
/// that a device that never sends a newline cannot grow the buffer without bound.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineSplitter {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\r' || b == b'\n' {
                if self.discarding {
                    self.discarding = false;
                } else if !self.buf.is_empty() {
                    out.push(Line::Text(std::mem::take(&mut self.buf)));
                }
                continue;
            }
            if self.discarding {
                continue;
            }
            if self.buf.len() == self.max {
                out.push(Line::TooLong(self.max));
                self.buf.clear();
                self.discarding = true;
                continue;
            }
            self.buf.push(b);
        }
        out
    }

    /// The unterminated last line, if any (treated as complete).
    pub(crate) fn finish(&mut self) -> Option<Line> {
        self.discarding = false;
        if self.buf.is_empty() {
            None
        } else {
            Some(Line::Text(std::mem::take(&mut self.buf)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_any_terminator_and_skips_empty_lines() {
        let mut s = LineSplitter::new(100);
        let lines = s.push(b"a\r\nb\n\nc\rd");
        assert_eq!(
            lines,
            vec![
                Line::Text(b"a".to_vec()),
                Line::Text(b"b".to_vec()),
                Line::Text(b"c".to_vec())
            ]
        );
        assert_eq!(s.finish(), Some(Line::Text(b"d".to_vec())));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn overlong_line_is_reported_once_and_dropped() {
        let mut s = LineSplitter::new(3);
        let lines = s.push(b"abcdefgh\nok\n");
        assert_eq!(lines, vec![Line::TooLong(3), Line::Text(b"ok".to_vec())]);
    }
}
