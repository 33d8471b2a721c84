//! Template loaders: arbitrary text as a device mapping and as a FHIR mapping must load or
//! fail with errors, never panic; a mapping that loads must normalize a message without panic.
#![no_main]

use iomt_agent::mapping::{load_device_mapping, load_fhir_mapping, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let device = load_device_mapping(text);
    let fhir = load_fhir_mapping(text);
    for e in device.errors.iter().chain(fhir.errors.iter()) {
        let _ = e.to_string();
    }
    if let Some(t) = Timestamp::from_unix_millis(1_700_000_000_000) {
        let msg = serde_json::json!({
            "Body": {"deviceId": "d1", "timestamp": "2024-01-01T00:00:00Z", "values": {"heartRate": 72}},
            "Properties": {},
            "SystemProperties": {"iothub-connection-device-id": "d1", "iothub-enqueuedtime": "2024-01-01T00:00:00Z"}
        });
        let _ = device.mapping.normalize(msg, t);
    }
});
