//! CRC-32 (IEEE 802.3, reflected polynomial `0xEDB88320`), used as the per-record checksum.
//!
//! SQLite has no page checksums, so every row of the log carries a CRC over its fields (see the
//! format description in `super`). The table is computed at compile time; no I/O, no state.

const POLY: u32 = 0xEDB8_8320;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { POLY ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Incremental CRC-32 state. `Crc32::new().update(a).update(b).finish()` equals the CRC of `a ++ b`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crc32(u32);

impl Crc32 {
    pub(crate) fn new() -> Self {
        Self(0xFFFF_FFFF)
    }

    pub(crate) fn update(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            let idx = usize::from((self.0 as u8) ^ b);
            self.0 = TABLE[idx] ^ (self.0 >> 8);
        }
        self
    }

    /// Feeds a length-prefixed byte string, so that field boundaries are part of the checksum.
    pub(crate) fn field(self, bytes: &[u8]) -> Self {
        self.update(&(bytes.len() as u64).to_le_bytes())
            .update(bytes)
    }

    pub(crate) fn finish(self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
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

    #[test]
    fn field_boundaries_matter() {
        let a = Crc32::new().field(b"ab").field(b"c").finish();
        let b = Crc32::new().field(b"a").field(b"bc").finish();
        assert_ne!(a, b);
    }
}
