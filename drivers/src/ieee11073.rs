//! IEEE 11073-20601 number formats: SFLOAT (16-bit, `medfloat16`) and FLOAT (32-bit,
//! `medfloat32`), with their special values, and the precision-preserving [`Decimal`].
//!
//! Layout (device-protocols.md §1): SFLOAT is a 4-bit two's-complement exponent over a 12-bit
//! two's-complement mantissa; FLOAT is an 8-bit exponent over a 24-bit mantissa. The exponent
//! has **no bias**. Five raw patterns (all with exponent 0) are special values ([`Special`]).
//!
//! Invariants:
//! - A decoded value keeps its `(mantissa, exponent)` pair; nothing goes through `f64`, so
//!   `0xF014` prints `2.0` and `0xE0C8` prints `2.00` (the PHD IG FLOATS table).
//! - Every `u16` / `u32` decodes (decoding is total); encoding is exact and never emits a
//!   special pattern for a finite value: a finite value that would collide with one, or whose
//!   mantissa or exponent does not fit, is an [`FloatError`], never silently rescaled.
//! - `decode(encode(v)) == v` for every encodable `v`, and `encode(decode(raw)) == raw` for
//!   every raw pattern (property-tested).
//!
//! JSON representation of a decimal (see [`Decimal::to_json`]): a JSON number when serde_json
//! prints that number with exactly the spec digits (`2.0`, `37.0`, `98.6`, `72`), otherwise a
//! JSON **string** holding the spec digits (`"2.00"`, `"37.60"`). Consumers must accept both;
//! a string keeps trailing zeros that a JSON number would lose. Special values are JSON `null`
//! (the caller records the reason separately, see [`crate::body`]).

use std::fmt;
use std::str::FromStr;

use serde_json::{Number, Value};
use thiserror::Error;

/// Errors from decoding fixed-width byte slices or encoding values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FloatError {
    /// The byte slice does not have the format's width.
    #[error("{format} needs exactly {expected} bytes, got {got}")]
    WrongLength {
        /// `"SFLOAT"` or `"FLOAT"`.
        format: &'static str,
        /// Width of the format in bytes.
        expected: usize,
        /// Length of the slice that was given.
        got: usize,
    },
    /// The mantissa does not fit the format's two's-complement mantissa field.
    #[error("mantissa {mantissa} does not fit the {bits}-bit {format} mantissa")]
    MantissaOutOfRange {
        /// `"SFLOAT"` or `"FLOAT"`.
        format: &'static str,
        /// The offending mantissa.
        mantissa: i64,
        /// Width of the mantissa field.
        bits: u32,
    },
    /// The exponent does not fit the format's two's-complement exponent field.
    #[error("exponent {exponent} does not fit the {bits}-bit {format} exponent")]
    ExponentOutOfRange {
        /// `"SFLOAT"` or `"FLOAT"`.
        format: &'static str,
        /// The offending exponent.
        exponent: i16,
        /// Width of the exponent field.
        bits: u32,
    },
    /// A finite value whose raw pattern would be read back as a special value.
    #[error("mantissa {mantissa} at exponent 0 is reserved for a {format} special value")]
    CollidesWithSpecial {
        /// `"SFLOAT"` or `"FLOAT"`.
        format: &'static str,
        /// The offending mantissa.
        mantissa: i64,
    },
}

/// Errors from parsing a decimal string such as `"37.60"` (HL7 `NM`, Masimo values).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseDecimalError {
    /// The string is empty (after the sign).
    #[error("empty number")]
    Empty,
    /// A character that is not a digit, a single leading sign or a single decimal point.
    #[error("invalid character {0:?} in number")]
    InvalidChar(char),
    /// More significant digits than an `i64` mantissa holds.
    #[error("number has more than 18 significant digits")]
    TooManyDigits,
}

/// A finite decimal `mantissa × 10^exponent` that keeps the digits it was given.
///
/// Equality is structural: `2.0` (20, −1) and `2.00` (200, −2) are different values on
/// purpose, because the number of digits is the device's stated precision. Use
/// [`Decimal::numerically_eq`] to compare magnitudes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: i64,
    exponent: i16,
}

impl Decimal {
    /// Builds `mantissa × 10^exponent`.
    pub const fn new(mantissa: i64, exponent: i16) -> Self {
        Self { mantissa, exponent }
    }

    /// The integer mantissa.
    pub const fn mantissa(&self) -> i64 {
        self.mantissa
    }

    /// The base-10 exponent.
    pub const fn exponent(&self) -> i16 {
        self.exponent
    }

    /// Multiplies by `10^by` by moving the exponent (exact; `None` on exponent overflow).
    /// For example 0.00095 kg/L scaled by 5 is 95 mg/dL with the same digits.
    pub fn scale(self, by: i16) -> Option<Self> {
        self.exponent
            .checked_add(by)
            .map(|exponent| Self::new(self.mantissa, exponent))
    }

    /// Nearest `f64`, for display and arithmetic only (parsed from the exact digits, so it
    /// is correctly rounded).
    pub fn to_f64(&self) -> f64 {
        self.to_string().parse::<f64>().unwrap_or(f64::NAN)
    }

    /// `true` when both values denote the same number (`2.0` and `2.00` are equal here).
    pub fn numerically_eq(&self, other: &Self) -> bool {
        if self.mantissa == 0 || other.mantissa == 0 {
            return self.mantissa == other.mantissa;
        }
        let (a, b) = (self.trimmed(), other.trimmed());
        a == b
    }

    /// Removes trailing zeros from the mantissa (used only for numeric comparison).
    fn trimmed(&self) -> (i64, i32) {
        let (mut m, mut e) = (self.mantissa, i32::from(self.exponent));
        while m != 0 && m % 10 == 0 {
            m /= 10;
            e += 1;
        }
        (m, e)
    }

    /// The JSON form of this decimal: a number when serde_json prints it with exactly the
    /// digits of [`Decimal`]'s `Display`, else a string with those digits.
    pub fn to_json(&self) -> Value {
        let digits = self.to_string();
        if self.exponent >= 0 {
            let int = 10_i64
                .checked_pow(u32::from(self.exponent.unsigned_abs()))
                .and_then(|p| self.mantissa.checked_mul(p));
            if let Some(int) = int {
                let number = Number::from(int);
                if number.to_string() == digits {
                    return Value::Number(number);
                }
            }
        } else if let Ok(float) = digits.parse::<f64>() {
            if let Some(number) = Number::from_f64(float) {
                if number.to_string() == digits {
                    return Value::Number(number);
                }
            }
        }
        Value::String(digits)
    }
}

impl fmt::Display for Decimal {
    /// Prints the spec digits: `(20, -1)` → `2.0`, `(200, -2)` → `2.00`, `(2, 1)` → `20`,
    /// `(95, -5)` → `0.00095`, `(-5, -1)` → `-0.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        if self.exponent >= 0 {
            if self.mantissa == 0 {
                return f.write_str("0");
            }
            f.write_str(sign)?;
            f.write_str(&digits)?;
            for _ in 0..self.exponent {
                f.write_str("0")?;
            }
            return Ok(());
        }
        let frac_len = usize::from(self.exponent.unsigned_abs());
        f.write_str(sign)?;
        if digits.len() > frac_len {
            let (int, frac) = digits.split_at(digits.len() - frac_len);
            write!(f, "{int}.{frac}")
        } else {
            f.write_str("0.")?;
            for _ in 0..frac_len - digits.len() {
                f.write_str("0")?;
            }
            f.write_str(&digits)
        }
    }
}

impl FromStr for Decimal {
    type Err = ParseDecimalError;

    /// Parses `[+-]digits[.digits]` (also `.5` and `5.`), keeping every fraction digit:
    /// `"02.21"` → (221, −2), `"37.60"` → (3760, −2). No exponent notation.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let mut mantissa: i64 = 0;
        let mut significant = 0usize;
        let mut frac_digits = 0usize;
        let mut seen_point = false;
        let mut seen_digit = false;
        for c in body.chars() {
            match c {
                '0'..='9' => {
                    seen_digit = true;
                    let d = i64::from(c as u8 - b'0');
                    if significant > 0 || d != 0 {
                        significant += 1;
                    }
                    if significant > 18 {
                        return Err(ParseDecimalError::TooManyDigits);
                    }
                    mantissa = mantissa * 10 + d;
                    if seen_point {
                        frac_digits += 1;
                    }
                }
                '.' if !seen_point => seen_point = true,
                other => return Err(ParseDecimalError::InvalidChar(other)),
            }
        }
        if !seen_digit {
            return Err(ParseDecimalError::Empty);
        }
        let exponent = i16::try_from(frac_digits).map_err(|_| ParseDecimalError::TooManyDigits)?;
        Ok(Self::new(
            if negative { -mantissa } else { mantissa },
            -exponent,
        ))
    }
}

/// The five IEEE 11073-20601 special values (device-protocols.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Special {
    /// Not a number (`0x07FF` / `0x007FFFFF`).
    NaN,
    /// Not at this resolution (`0x0800` / `0x00800000`).
    NRes,
    /// Positive infinity (`0x07FE` / `0x007FFFFE`).
    PositiveInfinity,
    /// Negative infinity (`0x0802` / `0x00800002`).
    NegativeInfinity,
    /// Reserved for future use (`0x0801` / `0x00800001`).
    Reserved,
}

impl Special {
    /// All special values.
    pub const ALL: [Special; 5] = [
        Special::NaN,
        Special::NRes,
        Special::PositiveInfinity,
        Special::NegativeInfinity,
        Special::Reserved,
    ];

    /// Short stable name used in JSON bodies: `nan`, `nres`, `+inf`, `-inf`, `reserved`.
    pub const fn name(&self) -> &'static str {
        match self {
            Special::NaN => "nan",
            Special::NRes => "nres",
            Special::PositiveInfinity => "+inf",
            Special::NegativeInfinity => "-inf",
            Special::Reserved => "reserved",
        }
    }

    /// FHIR `Observation.dataAbsentReason` code from the PHD IG table.
    pub const fn data_absent_reason(&self) -> &'static str {
        match self {
            Special::NaN => "not-a-number",
            Special::NRes | Special::Reserved => "error",
            Special::PositiveInfinity => "positive-infinity",
            Special::NegativeInfinity => "negative-infinity",
        }
    }

    const fn sfloat_raw(&self) -> u16 {
        match self {
            Special::NaN => 0x07FF,
            Special::NRes => 0x0800,
            Special::PositiveInfinity => 0x07FE,
            Special::NegativeInfinity => 0x0802,
            Special::Reserved => 0x0801,
        }
    }

    const fn float_raw(&self) -> u32 {
        match self {
            Special::NaN => 0x007F_FFFF,
            Special::NRes => 0x0080_0000,
            Special::PositiveInfinity => 0x007F_FFFE,
            Special::NegativeInfinity => 0x0080_0002,
            Special::Reserved => 0x0080_0001,
        }
    }
}

/// A decoded SFLOAT or FLOAT: a finite [`Decimal`] or a [`Special`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MderFloat {
    /// A finite value with the device's digits.
    Value(Decimal),
    /// One of the special values.
    Special(Special),
}

/// Field widths of a format: (name, exponent bits, mantissa bits).
struct Format {
    name: &'static str,
    exp_bits: u32,
    mant_bits: u32,
}

const SFLOAT: Format = Format {
    name: "SFLOAT",
    exp_bits: 4,
    mant_bits: 12,
};
const FLOAT: Format = Format {
    name: "FLOAT",
    exp_bits: 8,
    mant_bits: 24,
};

fn sign_extend(value: u32, bits: u32) -> i64 {
    let shift = 64 - bits;
    (i64::from(value) << shift) >> shift
}

impl MderFloat {
    /// Decodes a raw SFLOAT (already assembled from its little-endian bytes). Total.
    pub fn from_sfloat_raw(raw: u16) -> Self {
        if let Some(special) = Special::ALL.iter().find(|s| s.sfloat_raw() == raw) {
            return MderFloat::Special(*special);
        }
        Self::finite(u32::from(raw), &SFLOAT)
    }

    /// Decodes a raw FLOAT (already assembled from its bytes). Total.
    pub fn from_float_raw(raw: u32) -> Self {
        if let Some(special) = Special::ALL.iter().find(|s| s.float_raw() == raw) {
            return MderFloat::Special(*special);
        }
        Self::finite(raw, &FLOAT)
    }

    fn finite(raw: u32, format: &Format) -> Self {
        let mant_mask = (1u32 << format.mant_bits) - 1;
        let mantissa = sign_extend(raw & mant_mask, format.mant_bits);
        let exponent = sign_extend(raw >> format.mant_bits, format.exp_bits);
        // The exponent is at most 8 bits wide, so it always fits i16.
        let exponent = i16::try_from(exponent).unwrap_or(i16::MAX);
        MderFloat::Value(Decimal::new(mantissa, exponent))
    }

    /// Decodes exactly two little-endian bytes (BLE GATT order).
    pub fn from_sfloat_le(bytes: &[u8]) -> Result<Self, FloatError> {
        match bytes {
            [lo, hi] => Ok(Self::from_sfloat_raw(u16::from_le_bytes([*lo, *hi]))),
            _ => Err(FloatError::WrongLength {
                format: SFLOAT.name,
                expected: 2,
                got: bytes.len(),
            }),
        }
    }

    /// Decodes exactly four little-endian bytes (BLE GATT order).
    pub fn from_float_le(bytes: &[u8]) -> Result<Self, FloatError> {
        let arr: [u8; 4] = bytes.try_into().map_err(|_| FloatError::WrongLength {
            format: FLOAT.name,
            expected: 4,
            got: bytes.len(),
        })?;
        Ok(Self::from_float_raw(u32::from_le_bytes(arr)))
    }

    /// Decodes exactly four big-endian bytes (Philips IntelliVue order).
    pub fn from_float_be(bytes: &[u8]) -> Result<Self, FloatError> {
        let arr: [u8; 4] = bytes.try_into().map_err(|_| FloatError::WrongLength {
            format: FLOAT.name,
            expected: 4,
            got: bytes.len(),
        })?;
        Ok(Self::from_float_raw(u32::from_be_bytes(arr)))
    }

    /// Encodes to a raw SFLOAT. Exact: see the module invariants.
    pub fn to_sfloat_raw(&self) -> Result<u16, FloatError> {
        match self {
            MderFloat::Special(s) => Ok(s.sfloat_raw()),
            MderFloat::Value(d) => {
                let raw = Self::encode_finite(d, &SFLOAT)?;
                // SFLOAT fields total 16 bits, so the raw value fits u16.
                Ok(u16::try_from(raw).unwrap_or(u16::MAX))
            }
        }
    }

    /// Encodes to a raw FLOAT. Exact: see the module invariants.
    pub fn to_float_raw(&self) -> Result<u32, FloatError> {
        match self {
            MderFloat::Special(s) => Ok(s.float_raw()),
            MderFloat::Value(d) => Self::encode_finite(d, &FLOAT),
        }
    }

    /// Encodes to two little-endian bytes.
    pub fn to_sfloat_le(&self) -> Result<[u8; 2], FloatError> {
        self.to_sfloat_raw().map(u16::to_le_bytes)
    }

    /// Encodes to four little-endian bytes.
    pub fn to_float_le(&self) -> Result<[u8; 4], FloatError> {
        self.to_float_raw().map(u32::to_le_bytes)
    }

    fn encode_finite(d: &Decimal, format: &Format) -> Result<u32, FloatError> {
        let mant_max = (1i64 << (format.mant_bits - 1)) - 1;
        let exp_max = (1i16 << (format.exp_bits - 1)) - 1;
        let (m, e) = (d.mantissa(), d.exponent());
        if m < -mant_max - 1 || m > mant_max {
            return Err(FloatError::MantissaOutOfRange {
                format: format.name,
                mantissa: m,
                bits: format.mant_bits,
            });
        }
        if e < -exp_max - 1 || e > exp_max {
            return Err(FloatError::ExponentOutOfRange {
                format: format.name,
                exponent: e,
                bits: format.exp_bits,
            });
        }
        let mant_mask = (1u32 << format.mant_bits) - 1;
        let exp_mask = (1u32 << format.exp_bits) - 1;
        // Two's-complement truncation to the field widths (range checked above).
        let raw = ((e as u32) & exp_mask) << format.mant_bits | ((m as u32) & mant_mask);
        let collides = match format.exp_bits {
            4 => Special::ALL
                .iter()
                .any(|s| u32::from(s.sfloat_raw()) == raw),
            _ => Special::ALL.iter().any(|s| s.float_raw() == raw),
        };
        if collides {
            return Err(FloatError::CollidesWithSpecial {
                format: format.name,
                mantissa: m,
            });
        }
        Ok(raw)
    }

    /// The finite value, if any.
    pub fn decimal(&self) -> Option<Decimal> {
        match self {
            MderFloat::Value(d) => Some(*d),
            MderFloat::Special(_) => None,
        }
    }

    /// The special value, if any.
    pub fn special(&self) -> Option<Special> {
        match self {
            MderFloat::Value(_) => None,
            MderFloat::Special(s) => Some(*s),
        }
    }

    /// JSON form: [`Decimal::to_json`] for finite values, `null` for special values.
    pub fn to_json(&self) -> Value {
        match self {
            MderFloat::Value(d) => d.to_json(),
            MderFloat::Special(_) => Value::Null,
        }
    }
}

impl fmt::Display for MderFloat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MderFloat::Value(d) => d.fmt(f),
            MderFloat::Special(s) => f.write_str(s.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sfloat(bytes: [u8; 2]) -> MderFloat {
        MderFloat::from_sfloat_le(&bytes).expect("two bytes")
    }

    #[test]
    fn specials_decode_from_their_patterns() {
        assert_eq!(sfloat([0xFF, 0x07]), MderFloat::Special(Special::NaN));
        assert_eq!(sfloat([0x00, 0x08]), MderFloat::Special(Special::NRes));
        assert_eq!(
            sfloat([0xFE, 0x07]),
            MderFloat::Special(Special::PositiveInfinity)
        );
        assert_eq!(
            sfloat([0x02, 0x08]),
            MderFloat::Special(Special::NegativeInfinity)
        );
        assert_eq!(sfloat([0x01, 0x08]), MderFloat::Special(Special::Reserved));
        let f = |b: [u8; 4]| MderFloat::from_float_le(&b).expect("four bytes");
        assert_eq!(
            f([0xFF, 0xFF, 0x7F, 0x00]),
            MderFloat::Special(Special::NaN)
        );
        assert_eq!(
            f([0x00, 0x00, 0x80, 0x00]),
            MderFloat::Special(Special::NRes)
        );
        assert_eq!(
            f([0xFE, 0xFF, 0x7F, 0x00]),
            MderFloat::Special(Special::PositiveInfinity)
        );
        assert_eq!(
            f([0x02, 0x00, 0x80, 0x00]),
            MderFloat::Special(Special::NegativeInfinity)
        );
        assert_eq!(
            f([0x01, 0x00, 0x80, 0x00]),
            MderFloat::Special(Special::Reserved)
        );
    }

    #[test]
    fn special_patterns_only_at_exponent_zero() {
        // 0xF7FF is mantissa 2047 at exponent -1: a finite 204.7, not NaN.
        assert_eq!(
            MderFloat::from_sfloat_raw(0xF7FF),
            MderFloat::Value(Decimal::new(2047, -1))
        );
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(matches!(
            MderFloat::from_sfloat_le(&[1]),
            Err(FloatError::WrongLength { got: 1, .. })
        ));
        assert!(MderFloat::from_float_le(&[1, 2, 3]).is_err());
        assert!(MderFloat::from_float_be(&[]).is_err());
    }

    #[test]
    fn display_keeps_digits() {
        let cases = [
            ((2, 0), "2"),
            ((20, -1), "2.0"),
            ((200, -2), "2.00"),
            ((2, 1), "20"),
            ((95, -5), "0.00095"),
            ((-5, -1), "-0.5"),
            ((-1234, 0), "-1234"),
            ((0, -2), "0.00"),
            ((0, 3), "0"),
            ((1234567, -2), "12345.67"),
        ];
        for ((m, e), want) in cases {
            assert_eq!(Decimal::new(m, e).to_string(), want, "({m}, {e})");
        }
    }

    #[test]
    fn json_is_number_only_when_digits_survive() {
        assert_eq!(Decimal::new(20, -1).to_json().to_string(), "2.0");
        assert_eq!(Decimal::new(370, -1).to_json().to_string(), "37.0");
        assert_eq!(Decimal::new(986, -1).to_json().to_string(), "98.6");
        assert_eq!(Decimal::new(2, 1).to_json(), Value::from(20));
        assert_eq!(Decimal::new(200, -2).to_json(), Value::from("2.00"));
        assert_eq!(Decimal::new(3760, -2).to_json(), Value::from("37.60"));
        assert_eq!(
            MderFloat::Special(Special::NaN).to_json(),
            Value::Null,
            "specials are never numbers"
        );
    }

    #[test]
    fn parse_keeps_fraction_digits() {
        assert_eq!("02.21".parse(), Ok(Decimal::new(221, -2)));
        assert_eq!("37.60".parse(), Ok(Decimal::new(3760, -2)));
        assert_eq!("-0.5".parse(), Ok(Decimal::new(-5, -1)));
        assert_eq!("+7".parse(), Ok(Decimal::new(7, 0)));
        assert_eq!(".5".parse(), Ok(Decimal::new(5, -1)));
        assert_eq!("".parse::<Decimal>(), Err(ParseDecimalError::Empty));
        assert_eq!("-".parse::<Decimal>(), Err(ParseDecimalError::Empty));
        assert_eq!(
            "1.2.3".parse::<Decimal>(),
            Err(ParseDecimalError::InvalidChar('.'))
        );
        assert_eq!(
            "1e5".parse::<Decimal>(),
            Err(ParseDecimalError::InvalidChar('e'))
        );
        assert_eq!(
            "1234567890123456789".parse::<Decimal>(),
            Err(ParseDecimalError::TooManyDigits)
        );
    }

    #[test]
    fn numeric_equality_ignores_trailing_zeros() {
        assert!(Decimal::new(20, -1).numerically_eq(&Decimal::new(200, -2)));
        assert!(Decimal::new(2, 1).numerically_eq(&Decimal::new(20, 0)));
        assert!(!Decimal::new(2, 1).numerically_eq(&Decimal::new(2, 0)));
        assert!(Decimal::new(0, 5).numerically_eq(&Decimal::new(0, -3)));
    }

    #[test]
    fn encoder_rejects_what_does_not_fit() {
        let v = |m, e| MderFloat::Value(Decimal::new(m, e));
        assert!(matches!(
            v(2048, 0).to_sfloat_raw(),
            Err(FloatError::MantissaOutOfRange { .. })
        ));
        assert!(matches!(
            v(1, 8).to_sfloat_raw(),
            Err(FloatError::ExponentOutOfRange { .. })
        ));
        assert!(matches!(
            v(2047, 0).to_sfloat_raw(),
            Err(FloatError::CollidesWithSpecial { .. })
        ));
        assert!(matches!(
            v(-2048, 0).to_sfloat_raw(),
            Err(FloatError::CollidesWithSpecial { .. })
        ));
        assert_eq!(v(2047, -1).to_sfloat_raw(), Ok(0xF7FF));
        assert!(matches!(
            v(0x7F_FFFF, 0).to_float_raw(),
            Err(FloatError::CollidesWithSpecial { .. })
        ));
        assert!(v(-8_388_609, 0).to_float_raw().is_err());
        assert!(v(1, -129).to_float_raw().is_err());
    }

    #[test]
    fn every_sfloat_pattern_round_trips() {
        for raw in 0..=u16::MAX {
            let decoded = MderFloat::from_sfloat_raw(raw);
            assert_eq!(decoded.to_sfloat_raw(), Ok(raw), "raw {raw:#06x}");
        }
    }

    fn finite(mant_bits: u32, exp_bits: u32) -> impl Strategy<Value = MderFloat> {
        let mmax = (1i64 << (mant_bits - 1)) - 1;
        let emax = (1i16 << (exp_bits - 1)) - 1;
        (-mmax - 1..=mmax, -emax - 1..=emax).prop_map(|(m, e)| MderFloat::Value(Decimal::new(m, e)))
    }

    proptest! {
        #[test]
        fn float_raw_round_trips(raw in any::<u32>()) {
            let decoded = MderFloat::from_float_raw(raw);
            prop_assert_eq!(decoded.to_float_raw(), Ok(raw));
            let le = decoded.to_float_le().expect("encodes");
            prop_assert_eq!(MderFloat::from_float_le(&le), Ok(decoded));
            prop_assert_eq!(MderFloat::from_float_be(&raw.to_be_bytes()), Ok(decoded));
        }

        #[test]
        fn sfloat_value_round_trips(v in finite(12, 4)) {
            match v.to_sfloat_le() {
                Ok(bytes) => prop_assert_eq!(MderFloat::from_sfloat_le(&bytes), Ok(v)),
                // Only the exponent-0 special patterns may be refused.
                Err(e) => prop_assert!(matches!(e, FloatError::CollidesWithSpecial { .. }), "unexpected {}", e),
            }
        }

        #[test]
        fn float_value_round_trips(v in finite(24, 8)) {
            match v.to_float_le() {
                Ok(bytes) => prop_assert_eq!(MderFloat::from_float_le(&bytes), Ok(v)),
                Err(e) => prop_assert!(matches!(e, FloatError::CollidesWithSpecial { .. }), "unexpected {}", e),
            }
        }

        #[test]
        fn display_parses_back(m in -8_388_608i64..=8_388_607, e in -128i16..=0) {
            let d = Decimal::new(m, e);
            prop_assert_eq!(d.to_string().parse::<Decimal>(), Ok(d));
        }

        #[test]
        fn json_never_loses_digits(m in -8_388_608i64..=8_388_607, e in -128i16..=127) {
            let d = Decimal::new(m, e);
            let text = match d.to_json() {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s,
                other => return Err(TestCaseError::fail(format!("unexpected {other}"))),
            };
            prop_assert_eq!(text, d.to_string());
        }
    }
}
