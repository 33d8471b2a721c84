//! Device drivers for iomt-edge.
//!
//! This crate turns bytes from devices (BLE GATT characteristics, serial frames, HL7 v2
//! messages over MLLP, MQTT payloads) into JSON bodies for the agent's event envelope.
//!
//! Architecture invariant: this crate never depends on the agent and knows nothing of
//! mapping templates. Decoders are pure functions over bytes: no I/O, no clock.
//!
//! Entry points:
//! - [`decode`] / [`decode_all`]: one-shot decoding of a byte string by protocol name (what
//!   `iomt-agent decode --protocol … --hex …` calls).
//! - [`decoder`]: a [`StreamDecoder`] for a protocol, for the transports.
//! - The protocol modules ([`ble`], [`serial`], [`hl7`], [`ieee11073`]) for direct use.
//!
//! Body shape: [`body`].

pub mod ble;
pub mod body;
pub mod hl7;
pub mod ieee11073;
pub mod serial;
pub mod stream;

pub use stream::StreamDecoder;

use serde_json::Value;
use thiserror::Error;

/// Any decoder's error.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeError {
    /// The protocol name is not one [`decode`] knows.
    #[error("unknown protocol {0:?} (expected one of nonin8, nonin-ascii, masimo-ascii, hl7v2, jsonl, ble:<uuid or name>)")]
    UnknownProtocol(String),
    /// A BLE characteristic value was rejected.
    #[error(transparent)]
    Ble(#[from] ble::BleError),
    /// Serial input (Nonin, Masimo, JSON lines) was rejected.
    #[error(transparent)]
    Serial(#[from] serial::SerialError),
    /// An HL7 v2 frame or message was rejected.
    #[error(transparent)]
    Hl7(#[from] hl7::Hl7Error),
}

/// The protocol names [`decoder`] accepts, besides `ble:<uuid or name>`.
pub const PROTOCOLS: [&str; 5] = ["nonin8", "nonin-ascii", "masimo-ascii", "hl7v2", "jsonl"];

/// A streaming decoder for `protocol`: `nonin8`, `nonin-ascii`, `masimo-ascii`, `hl7v2`
/// (MLLP-framed), `jsonl`, or `ble:<uuid or name>` (each push is one notification).
/// Names are case-insensitive.
pub fn decoder(protocol: &str) -> Result<Box<dyn StreamDecoder + Send>, DecodeError> {
    let name = protocol.trim().to_ascii_lowercase();
    if let Some(key) = name.strip_prefix("ble:") {
        let c = ble::Characteristic::lookup(key)
            .ok_or_else(|| ble::BleError::UnknownCharacteristic(key.to_owned()))?;
        return Ok(Box::new(ble::NotificationDecoder::new(c)));
    }
    Ok(match name.as_str() {
        "nonin8" => Box::new(serial::Nonin8Decoder::new()),
        "nonin-ascii" => Box::new(serial::LineDecoder::nonin_ascii()),
        "masimo-ascii" => Box::new(serial::LineDecoder::masimo_ascii()),
        "jsonl" => Box::new(serial::LineDecoder::json_lines()),
        "hl7v2" => Box::new(hl7::Hl7Decoder::new()),
        _ => return Err(DecodeError::UnknownProtocol(protocol.to_owned())),
    })
}

/// Decodes `bytes` as one complete input and returns every result, good and bad, in order.
///
/// `bytes` is pushed whole and then finished, so an unterminated last line is decoded and a
/// trailing partial frame is an error. For `hl7v2`, input that has no MLLP start block and
/// begins with `MSH` is taken as one bare (unframed) message.
pub fn decode_all(
    protocol: &str,
    bytes: &[u8],
) -> Result<Vec<Result<Value, DecodeError>>, DecodeError> {
    let mut d = decoder(protocol)?;
    if protocol.trim().eq_ignore_ascii_case("hl7v2")
        && !bytes.contains(&hl7::mllp::START_BLOCK)
        && bytes.trim_ascii_start().starts_with(b"MSH")
    {
        return Ok(match hl7::decode_message(bytes) {
            Ok(bodies) => bodies.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e.into())],
        });
    }
    let mut out = d.push(bytes);
    out.extend(d.finish());
    Ok(out)
}

/// Strict one-shot decoding: every body of `bytes`, or the first error (garbage and
/// truncated frames included). See [`decode_all`] for the lenient form.
pub fn decode(protocol: &str, bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
    decode_all(protocol, bytes)?.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_every_protocol() {
        for p in PROTOCOLS {
            assert!(decoder(p).is_ok(), "{p}");
            assert!(decoder(&p.to_ascii_uppercase()).is_ok(), "{p}");
        }
        assert!(decoder("ble:2a37").is_ok());
        assert!(decoder("BLE:Heart_Rate_Measurement").is_ok());
        assert!(matches!(
            decoder("ble:2a38").err(),
            Some(DecodeError::Ble(ble::BleError::UnknownCharacteristic(_)))
        ));
        assert!(matches!(
            decoder("philips").err(),
            Some(DecodeError::UnknownProtocol(_))
        ));
    }

    #[test]
    fn strict_decode_fails_on_the_first_error_lenient_keeps_going() {
        let bytes = [0x80, 0x48, 0x61, 0x00, 0x01, 0x80, 0x48, 0x61, 0x00];
        assert!(matches!(
            decode("nonin8", &bytes),
            Err(DecodeError::Serial(serial::SerialError::Garbage {
                skipped: 1,
                ..
            }))
        ));
        let all = decode_all("nonin8", &bytes).expect("known protocol");
        assert_eq!(all.len(), 3);
        assert!(all[0].is_ok() && all[1].is_err() && all[2].is_ok());
    }
}
