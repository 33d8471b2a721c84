//! CRC-32 (IEEE 802.3, reflected polynomial `0xEDB88320`), used as the per-record checksum.
//!
//! SQLite has no page checksums, so every row of the log carries a CRC over its fields (see the
//! format description in `super`). No I/O, no state.

/// Incremental CRC-32 state. `Crc32::new().update(a).update(b).finish()` equals the CRC of `a ++ b`.
///
/// The arithmetic is `crc32fast`'s (PCLMULQDQ / ARMv8 CRC instructions where the CPU has them,
/// a table otherwise): the byte-at-a-time table this module first had took a fifth of the
/// time of appending a batch (a perf profile of `benches/buffer.rs`). The values are the same
/// standard CRC-32, pinned by the check values below, so stores written before read unchanged.
#[derive(Debug, Clone)]
pub(crate) struct Crc32(crc32fast::Hasher);

impl Crc32 {
    pub(crate) fn new() -> Self {
        Self(crc32fast::Hasher::new())
    }

    pub(crate) fn update(mut self, bytes: &[u8]) -> Self {
        self.0.update(bytes);
        self
    }

    /// Feeds a length-prefixed byte string, so that field boundaries are part of the checksum.
    pub(crate) fn field(self, bytes: &[u8]) -> Self {
        self.update(&(bytes.len() as u64).to_le_bytes())
            .update(bytes)
    }

    pub(crate) fn finish(self) -> u32 {
        self.0.finalize()
    }
}

/// CRC-32 of one byte string.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    Crc32::new().update(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_check_values() {
        // The standard check value for CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            Crc32::new().update(b"1234").update(b"56789").finish(),
            0xCBF4_3926
        );
    }

    /// The bit-by-bit definition, to compare the fast implementation against.
    fn reference(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        c ^ 0xFFFF_FFFF
    }

    #[test]
    fn equals_the_bitwise_definition_on_every_length_up_to_300() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for n in 0..=data.len() {
            assert_eq!(crc32(&data[..n]), reference(&data[..n]), "length {n}");
        }
    }

    #[test]
    fn field_boundaries_matter() {
        let a = Crc32::new().field(b"ab").field(b"c").finish();
        let b = Crc32::new().field(b"a").field(b"bc").finish();
        assert_ne!(a, b);
    }
}
