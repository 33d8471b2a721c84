//! Bluetooth LE: the shipped BLE templates over the decoders' spec vectors (`templates`), and
//! the BLE source against a BlueZ played by python-dbusmock on a private D-Bus bus (`bluez`).

// The source needs the `ble` feature (btleplug); the templates do not.
#[cfg(feature = "ble")]
mod bluez;
mod templates;
