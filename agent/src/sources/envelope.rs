//! The event envelope the IoMT connector reads: `{Body, Properties, SystemProperties}`.
//!
//! Every source wraps what its driver decoded in this shape, and fills the IoT Hub system
//! properties, so that existing `IotJsonPathContent` templates (device id from
//! `iothub-connection-device-id`, time from `iothub-enqueuedtime`) work unchanged.

use crate::mapping::Timestamp;
use serde_json::{json, Map, Value};

/// Builds an envelope. `properties` are the source's application properties (topic, port,
/// protocol...); `received_at` is the gateway's receive time (the "enqueued" time).
pub fn envelope(
    body: Value,
    properties: Map<String, Value>,
    device_id: &str,
    received_at: Timestamp,
) -> Value {
    let t = received_at.format_o();
    json!({
        "Body": body,
        "Properties": Value::Object(properties),
        "SystemProperties": {
            "iothub-connection-device-id": device_id,
            "iothub-enqueuedtime": t,
            "x-opt-enqueued-time": t,
        },
    })
}
