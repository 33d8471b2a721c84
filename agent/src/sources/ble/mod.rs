//! The Bluetooth LE source: Bluetooth SIG health-profile devices (heart rate, blood pressure,
//! thermometer, pulse oximeter, weight scale, glucose) over BlueZ, with btleplug.
//!
//! - [`config`]: the validated configuration and the admission rule (never connect to a device
//!   the ward config does not name by address or by service + allowed address prefix).
//! - [`body`]: pure: decoder body → gateway body (identity, binding, effective time, digits).
//! - `source` (cargo feature `ble`): the task that scans, connects, reads Device Information,
//!   subscribes, stores every reading durably before counting it, and reconnects with
//!   back-off when the link drops.
//!
//! Invariants: see each module; the user-facing description is `docs/ble.md`.

pub mod body;
pub mod config;
#[cfg(feature = "ble")]
pub mod source;

pub use config::{BleConfig, BleDeviceConfig, BtAddress, DeviceMatch, Profile};
