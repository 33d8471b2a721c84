//! Decoders for Bluetooth SIG GATT health-profile characteristics (device-protocols.md §2).
//!
//! Each decoder takes the value of one notification or indication and returns one JSON body
//! (shape: [`crate::body`]). Covered: Heart Rate Measurement 0x2A37, Blood Pressure
//! Measurement 0x2A35, Intermediate Cuff Pressure 0x2A36, Temperature Measurement 0x2A1C,
//! Intermediate Temperature 0x2A1E, PLX Spot-check 0x2A5E, PLX Continuous 0x2A5F, Weight
//! Measurement 0x2A9D and Glucose Measurement 0x2A18. [`Characteristic::lookup`] finds a
//! decoder by 16-bit UUID, full 128-bit UUID or snake-case name.
//!
//! Invariants (all decoders):
//! - Little-endian throughout; every field is bounds-checked, so no input panics.
//! - A flags byte with any RFU bit set is rejected ([`BleError::ReservedFlags`]): an unknown
//!   flag may announce a field this decoder does not know, and guessing would misread data.
//!   RFU bits inside status words are kept in their `raw` value and otherwise ignored.
//! - A frame shorter than its flags promise, or with bytes left over after the last field, is
//!   rejected ([`BleError::TooShort`], [`BleError::TrailingBytes`]).
//! - IEEE 11073 special values become `null` with a reason in `absent`, never numbers.
//! - Date-time fields: `<name>` is an ISO-8601 local time without offset
//!   (`2024-03-15T08:30:00`; the format carries no zone) or `null` when the device left year,
//!   month or day unknown (0), in which case `<name>_parts` gives the known parts. Out-of-range
//!   fields are rejected ([`BleError::InvalidDateTime`]).

mod blood_pressure;
mod date_time;
mod glucose;
mod heart_rate;
mod pulse_oximeter;
mod thermometer;
mod weight;

pub use date_time::DateTime;

use serde_json::Value;
use thiserror::Error;

use crate::ieee11073::MderFloat;
use crate::stream::StreamDecoder;
use crate::DecodeError;

/// Why a characteristic value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BleError {
    /// The value ends before a field its flags announce.
    #[error("{characteristic}: {field} needs {needed} bytes at offset {offset}, but the value has {len} bytes")]
    TooShort {
        /// Characteristic name.
        characteristic: &'static str,
        /// The field that did not fit.
        field: &'static str,
        /// Offset of that field.
        offset: usize,
        /// Its width.
        needed: usize,
        /// Length of the value.
        len: usize,
    },
    /// Bytes remain after the last field the flags announce.
    #[error("{characteristic}: {extra} unexpected trailing bytes after offset {offset}")]
    TrailingBytes {
        /// Characteristic name.
        characteristic: &'static str,
        /// Offset of the first unexpected byte.
        offset: usize,
        /// How many bytes are left over.
        extra: usize,
    },
    /// The flags byte has reserved-for-future-use bits set.
    #[error("{characteristic}: reserved flag bits {reserved:#04x} set in flags {flags:#04x}")]
    ReservedFlags {
        /// Characteristic name.
        characteristic: &'static str,
        /// The whole flags byte.
        flags: u8,
        /// The RFU bits that are set.
        reserved: u8,
    },
    /// The RR-interval flag is set but the remaining bytes are not a whole, non-empty list.
    #[error("{characteristic}: RR-interval flag set but {len} bytes remain (need a non-zero even count)")]
    BadRrIntervals {
        /// Characteristic name.
        characteristic: &'static str,
        /// Bytes left for RR intervals.
        len: usize,
    },
    /// A date-time field holds an impossible date or time.
    #[error("{characteristic}: invalid {field}: {reason}")]
    InvalidDateTime {
        /// Characteristic name.
        characteristic: &'static str,
        /// The date-time field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The UUID or name is not one of the supported characteristics.
    #[error("unknown or unsupported GATT characteristic {0:?}")]
    UnknownCharacteristic(String),
}

/// A supported GATT characteristic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Characteristic {
    /// Heart Rate Measurement, 0x2A37.
    HeartRateMeasurement,
    /// Blood Pressure Measurement, 0x2A35.
    BloodPressureMeasurement,
    /// Intermediate Cuff Pressure, 0x2A36.
    IntermediateCuffPressure,
    /// Temperature Measurement, 0x2A1C.
    TemperatureMeasurement,
    /// Intermediate Temperature, 0x2A1E.
    IntermediateTemperature,
    /// PLX Spot-check Measurement, 0x2A5E.
    PlxSpotCheckMeasurement,
    /// PLX Continuous Measurement, 0x2A5F.
    PlxContinuousMeasurement,
    /// Weight Measurement, 0x2A9D.
    WeightMeasurement,
    /// Glucose Measurement, 0x2A18.
    GlucoseMeasurement,
}

/// A decoder function: one characteristic value in, one JSON body out.
pub type Decoder = fn(&[u8]) -> Result<Value, BleError>;

impl Characteristic {
    /// Every supported characteristic.
    pub const ALL: [Characteristic; 9] = [
        Characteristic::HeartRateMeasurement,
        Characteristic::BloodPressureMeasurement,
        Characteristic::IntermediateCuffPressure,
        Characteristic::TemperatureMeasurement,
        Characteristic::IntermediateTemperature,
        Characteristic::PlxSpotCheckMeasurement,
        Characteristic::PlxContinuousMeasurement,
        Characteristic::WeightMeasurement,
        Characteristic::GlucoseMeasurement,
    ];

    /// The 16-bit SIG UUID.
    pub const fn uuid16(&self) -> u16 {
        match self {
            Characteristic::HeartRateMeasurement => 0x2A37,
            Characteristic::BloodPressureMeasurement => 0x2A35,
            Characteristic::IntermediateCuffPressure => 0x2A36,
            Characteristic::TemperatureMeasurement => 0x2A1C,
            Characteristic::IntermediateTemperature => 0x2A1E,
            Characteristic::PlxSpotCheckMeasurement => 0x2A5E,
            Characteristic::PlxContinuousMeasurement => 0x2A5F,
            Characteristic::WeightMeasurement => 0x2A9D,
            Characteristic::GlucoseMeasurement => 0x2A18,
        }
    }

    /// The snake-case name, also the body's `type`.
    pub const fn name(&self) -> &'static str {
        match self {
            Characteristic::HeartRateMeasurement => "heart_rate_measurement",
            Characteristic::BloodPressureMeasurement => "blood_pressure_measurement",
            Characteristic::IntermediateCuffPressure => "intermediate_cuff_pressure",
            Characteristic::TemperatureMeasurement => "temperature_measurement",
            Characteristic::IntermediateTemperature => "intermediate_temperature",
            Characteristic::PlxSpotCheckMeasurement => "plx_spot_check_measurement",
            Characteristic::PlxContinuousMeasurement => "plx_continuous_measurement",
            Characteristic::WeightMeasurement => "weight_measurement",
            Characteristic::GlucoseMeasurement => "glucose_measurement",
        }
    }

    /// The full 128-bit UUID, lower case (`00002a37-0000-1000-8000-00805f9b34fb`).
    pub fn uuid128(&self) -> String {
        format!("0000{:04x}-0000-1000-8000-00805f9b34fb", self.uuid16())
    }

    /// Finds a characteristic by `"2a37"`, `"0x2A37"`, the 128-bit form, or its name
    /// (`"heart_rate_measurement"`; case-insensitive, `-` or space accepted for `_`).
    pub fn lookup(key: &str) -> Option<Self> {
        let key = key.trim().to_ascii_lowercase();
        let name = key.replace(['-', ' '], "_");
        if let Some(c) = Self::ALL.iter().find(|c| c.name() == name) {
            return Some(*c);
        }
        let hex = key.strip_prefix("0x").unwrap_or(&key);
        let uuid16 = if hex.len() == 4 {
            u16::from_str_radix(hex, 16).ok()
        } else {
            hex.strip_prefix("0000")
                .and_then(|rest| rest.strip_suffix("-0000-1000-8000-00805f9b34fb"))
                .filter(|short| short.len() == 4)
                .and_then(|short| u16::from_str_radix(short, 16).ok())
        }?;
        Self::ALL.iter().find(|c| c.uuid16() == uuid16).copied()
    }

    /// The decoder function for this characteristic.
    pub fn decoder(&self) -> Decoder {
        match self {
            Characteristic::HeartRateMeasurement => heart_rate::decode,
            Characteristic::BloodPressureMeasurement => blood_pressure::decode_measurement,
            Characteristic::IntermediateCuffPressure => blood_pressure::decode_intermediate,
            Characteristic::TemperatureMeasurement => thermometer::decode_measurement,
            Characteristic::IntermediateTemperature => thermometer::decode_intermediate,
            Characteristic::PlxSpotCheckMeasurement => pulse_oximeter::decode_spot_check,
            Characteristic::PlxContinuousMeasurement => pulse_oximeter::decode_continuous,
            Characteristic::WeightMeasurement => weight::decode,
            Characteristic::GlucoseMeasurement => glucose::decode,
        }
    }

    /// Decodes one value of this characteristic.
    pub fn decode(&self, value: &[u8]) -> Result<Value, BleError> {
        (self.decoder())(value)
    }
}

/// Looks up a decoder by UUID or name (see [`Characteristic::lookup`]).
pub fn lookup(key: &str) -> Option<Decoder> {
    Characteristic::lookup(key).map(|c| c.decoder())
}

/// Decodes a value of the characteristic named by `key`.
pub fn decode(key: &str, value: &[u8]) -> Result<Value, BleError> {
    Characteristic::lookup(key)
        .ok_or_else(|| BleError::UnknownCharacteristic(key.to_owned()))?
        .decode(value)
}

/// [`StreamDecoder`] adapter: each `push` is one complete notification or indication value
/// (BLE delivers whole values, so there is nothing to reassemble); `finish` yields nothing.
#[derive(Debug, Clone)]
pub struct NotificationDecoder {
    characteristic: Characteristic,
}

impl NotificationDecoder {
    /// A decoder for `characteristic`.
    pub fn new(characteristic: Characteristic) -> Self {
        Self { characteristic }
    }
}

impl StreamDecoder for NotificationDecoder {
    fn push(&mut self, bytes: &[u8]) -> Vec<Result<Value, DecodeError>> {
        vec![self.characteristic.decode(bytes).map_err(DecodeError::from)]
    }

    fn finish(&mut self) -> Vec<Result<Value, DecodeError>> {
        Vec::new()
    }
}

/// Bounds-checked little-endian reader over one characteristic value.
pub(crate) struct Reader<'a> {
    characteristic: Characteristic,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(characteristic: Characteristic, data: &'a [u8]) -> Self {
        Self {
            characteristic,
            data,
            pos: 0,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.characteristic.name()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len());
        match end {
            Some(end) => {
                let slice = &self.data[self.pos..end];
                self.pos = end;
                Ok(slice)
            }
            None => Err(BleError::TooShort {
                characteristic: self.name(),
                field,
                offset: self.pos,
                needed: n,
                len: self.data.len(),
            }),
        }
    }

    /// Reads the flags byte and rejects any bit outside `known`.
    pub(crate) fn flags(&mut self, known: u8) -> Result<u8, BleError> {
        let flags = self.u8("flags")?;
        let reserved = flags & !known;
        if reserved != 0 {
            return Err(BleError::ReservedFlags {
                characteristic: self.name(),
                flags,
                reserved,
            });
        }
        Ok(flags)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, BleError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, BleError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, BleError> {
        let b = self.take(2, field)?;
        Ok(i16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u24(&mut self, field: &'static str) -> Result<u32, BleError> {
        let b = self.take(3, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub(crate) fn skip(&mut self, n: usize, field: &'static str) -> Result<(), BleError> {
        self.take(n, field).map(|_| ())
    }

    pub(crate) fn sfloat(&mut self, field: &'static str) -> Result<MderFloat, BleError> {
        let b = self.take(2, field)?;
        Ok(MderFloat::from_sfloat_raw(u16::from_le_bytes([b[0], b[1]])))
    }

    pub(crate) fn float(&mut self, field: &'static str) -> Result<MderFloat, BleError> {
        let b = self.take(4, field)?;
        Ok(MderFloat::from_float_raw(u32::from_le_bytes([
            b[0], b[1], b[2], b[3],
        ])))
    }

    pub(crate) fn date_time(&mut self, field: &'static str) -> Result<DateTime, BleError> {
        let b = self.take(7, field)?;
        let mut arr = [0u8; 7];
        arr.copy_from_slice(b);
        DateTime::from_bytes(arr).map_err(|reason| BleError::InvalidDateTime {
            characteristic: self.name(),
            field,
            reason,
        })
    }

    /// The bytes not read yet (consumes them).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.data[self.pos..];
        self.pos = self.data.len();
        rest
    }

    /// Fails when bytes remain unread.
    pub(crate) fn finish(&self) -> Result<(), BleError> {
        if self.pos < self.data.len() {
            return Err(BleError::TrailingBytes {
                characteristic: self.name(),
                offset: self.pos,
                extra: self.data.len() - self.pos,
            });
        }
        Ok(())
    }
}

/// Adds a date-time to a body: `key` (ISO string or `null`) and, when incomplete,
/// `key_parts`.
pub(crate) fn put_date_time(body: &mut crate::body::Body, key: &str, dt: &DateTime) {
    match dt.iso() {
        Some(iso) => body.field(key, iso),
        None => {
            body.field(key, Value::Null);
            body.field(&format!("{key}_parts"), dt.parts_json());
        }
    }
}

/// `user_id` for BPM and weight: 0xFF means "unknown user" and becomes `null`.
pub(crate) fn user_id_json(id: u8) -> Value {
    if id == 0xFF {
        Value::Null
    } else {
        Value::from(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_uuid_and_name() {
        for c in Characteristic::ALL {
            assert_eq!(Characteristic::lookup(c.name()), Some(c));
            assert_eq!(
                Characteristic::lookup(&format!("{:04x}", c.uuid16())),
                Some(c)
            );
            assert_eq!(
                Characteristic::lookup(&format!("0x{:04X}", c.uuid16())),
                Some(c)
            );
            assert_eq!(Characteristic::lookup(&c.uuid128()), Some(c));
            assert_eq!(
                Characteristic::lookup(&c.uuid128().to_ascii_uppercase()),
                Some(c)
            );
        }
        assert_eq!(
            Characteristic::lookup("Heart-Rate-Measurement"),
            Some(Characteristic::HeartRateMeasurement)
        );
        assert_eq!(Characteristic::lookup("2a38"), None);
        assert_eq!(Characteristic::lookup("zz37"), None);
        assert_eq!(Characteristic::lookup(""), None);
        assert!(lookup("2a37").is_some());
        assert!(matches!(
            decode("nope", &[0]),
            Err(BleError::UnknownCharacteristic(_))
        ));
    }

    #[test]
    fn empty_values_are_rejected_for_every_characteristic() {
        for c in Characteristic::ALL {
            assert!(
                matches!(
                    c.decode(&[]),
                    Err(BleError::TooShort { field: "flags", .. })
                ),
                "{}",
                c.name()
            );
        }
    }
}
