//! Fuzz the BLE GATT decoders and the IEEE 11073 number codec.
//!
//! The first byte picks the characteristic, the rest is the characteristic value. Checks:
//! no panic; a decoded body is an object whose `type` is the characteristic name; every
//! decoded SFLOAT / FLOAT re-encodes to the same bytes.
#![no_main]

use iomt_drivers::ble::Characteristic;
use iomt_drivers::ieee11073::MderFloat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let c = Characteristic::ALL[usize::from(selector) % Characteristic::ALL.len()];
    if let Ok(body) = c.decode(value) {
        assert_eq!(body["type"], c.name());
        assert!(body["values"].is_object());
    }
    if let Some(two) = value.get(..2) {
        let f = MderFloat::from_sfloat_le(two).expect("two bytes");
        assert_eq!(f.to_sfloat_le().expect("decoded values re-encode"), two);
    }
    if let Some(four) = value.get(..4) {
        let f = MderFloat::from_float_le(four).expect("four bytes");
        assert_eq!(f.to_float_le().expect("decoded values re-encode"), four);
    }
});
