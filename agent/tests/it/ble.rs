//! Bluetooth LE: the shipped BLE templates over the decoders' spec vectors (`templates`), and
//! the BLE source against a BlueZ played by python-dbusmock on a private D-Bus bus (`bluez`).

mod bluez;
mod templates;
