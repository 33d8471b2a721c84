//! Configuration of the Bluetooth LE source (validated form; the TOML walk is
//! `config::validate::parse_ble_source`) and the pure admission rule: which advertising device
//! the agent may connect to.
//!
//! Invariants:
//! - The agent connects only to devices the ward config admits: an entry with an exact
//!   `address`, or an entry for an advertised `service` **and** an `allow` list of address
//!   prefixes (a manufacturer's OUI `00:1C:05`, or longer). There is no wildcard: an unknown
//!   device is never connected to.
//! - Addresses are compared as 6 octets, whatever the case or separator (`:` or `-`) used.

use std::time::Duration;

/// A Bluetooth device address (EUI-48), most significant octet first as printed
/// (`C0:FF:EE:00:18:0D` is `[0xC0, 0xFF, 0xEE, 0x00, 0x18, 0x0D]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BtAddress(pub [u8; 6]);

impl BtAddress {
    /// Parses `C0:FF:EE:00:18:0D` or `c0-ff-ee-00-18-0d`.
    pub fn parse(s: &str) -> Option<Self> {
        let octets = parse_octets(s)?;
        <[u8; 6]>::try_from(octets.as_slice()).ok().map(BtAddress)
    }

    /// The EUI-48 form the HL7 PHD IG uses for `Device.identifier.value`:
    /// upper-case hex octets separated by dashes (`C0-FF-EE-00-18-0D`).
    pub fn eui48(&self) -> String {
        dashed(&self.0)
    }

    /// The BlueZ / btleplug form (`C0:FF:EE:00:18:0D`).
    pub fn colon(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl std::fmt::Display for BtAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.colon())
    }
}

/// Upper-case hex octets joined by `-`.
pub fn dashed(octets: &[u8]) -> String {
    octets
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// `AA:BB:CC` / `aa-bb-cc` → octets; `None` unless every group is exactly two hex digits.
pub fn parse_octets(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.split([':', '-'])
        .map(|g| {
            if g.len() == 2 {
                u8::from_str_radix(g, 16).ok()
            } else {
                None
            }
        })
        .collect()
}

/// The Bluetooth SIG health profiles the source can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Heart Rate Service 0x180D.
    HeartRate,
    /// Blood Pressure Service 0x1810.
    BloodPressure,
    /// Health Thermometer Service 0x1809.
    Thermometer,
    /// Pulse Oximeter Service 0x1822.
    PulseOximeter,
    /// Weight Scale Service 0x181D.
    WeightScale,
    /// Glucose Service 0x1808 (records are requested through the RACP, 0x2A52).
    Glucose,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 6] = [
        Profile::HeartRate,
        Profile::BloodPressure,
        Profile::Thermometer,
        Profile::PulseOximeter,
        Profile::WeightScale,
        Profile::Glucose,
    ];

    /// The config name (`heart_rate`, `blood_pressure`, `thermometer`, `pulse_oximeter`,
    /// `weight_scale`, `glucose`).
    pub const fn name(&self) -> &'static str {
        match self {
            Profile::HeartRate => "heart_rate",
            Profile::BloodPressure => "blood_pressure",
            Profile::Thermometer => "thermometer",
            Profile::PulseOximeter => "pulse_oximeter",
            Profile::WeightScale => "weight_scale",
            Profile::Glucose => "glucose",
        }
    }

    /// Parses a config name; the 16-bit service UUID (`180d`, `0x180D`) is accepted too.
    pub fn parse(s: &str) -> Option<Self> {
        let k = s.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        let hex = k.strip_prefix("0x").unwrap_or(&k);
        let uuid = if hex.len() == 4 {
            u16::from_str_radix(hex, 16).ok()
        } else {
            None
        };
        Self::ALL
            .iter()
            .find(|p| p.name() == k || Some(p.service()) == uuid)
            .copied()
    }

    /// The primary service's 16-bit UUID.
    pub const fn service(&self) -> u16 {
        match self {
            Profile::HeartRate => 0x180D,
            Profile::BloodPressure => 0x1810,
            Profile::Thermometer => 0x1809,
            Profile::PulseOximeter => 0x1822,
            Profile::WeightScale => 0x181D,
            Profile::Glucose => 0x1808,
        }
    }

    /// The measurement characteristics the source subscribes to (notifications or
    /// indications). Intermediate values (cuff pressure 0x2A36, intermediate temperature
    /// 0x2A1E) are live-display values, only with `intermediate = true`.
    pub fn measurements(&self, intermediate: bool) -> Vec<u16> {
        match self {
            Profile::HeartRate => vec![0x2A37],
            Profile::BloodPressure if intermediate => vec![0x2A35, 0x2A36],
            Profile::BloodPressure => vec![0x2A35],
            Profile::Thermometer if intermediate => vec![0x2A1C, 0x2A1E],
            Profile::Thermometer => vec![0x2A1C],
            Profile::PulseOximeter => vec![0x2A5E, 0x2A5F],
            Profile::WeightScale => vec![0x2A9D],
            Profile::Glucose => vec![0x2A18],
        }
    }
}

/// How a device entry matches advertising devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMatch {
    /// Exactly this address.
    Address(BtAddress),
    /// Any device that advertises the profile's service and whose address starts with one
    /// of these prefixes (1 to 6 octets each; never empty).
    Service { allow: Vec<Vec<u8>> },
}

/// One configured device (or family of devices, for a service entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleDeviceConfig {
    pub matcher: DeviceMatch,
    pub profile: Profile,
    /// Device id in the body (`deviceId`); default: the address in EUI-48 form. Only for an
    /// address entry (a service entry admits several devices).
    pub device_id: Option<String>,
    /// Patient bound to the device (`patientId` in the body).
    pub patient_id: Option<String>,
    /// Bed (`bed` in the body).
    pub bed: Option<String>,
    /// Write the gateway's UTC time to Current Time (0x2A2B) after connecting, when the
    /// device has it and allows writes.
    pub write_current_time: bool,
    /// Use the device's own measurement time stamps, corrected by the coincident reading of
    /// its Current Time; without such a reading the gateway's receive time is used.
    pub use_device_clock: bool,
    /// Also subscribe to the profile's intermediate (live display) characteristic.
    pub intermediate: bool,
}

/// The BLE source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleConfig {
    /// Adapter name (`hci0`); `None`: the first adapter BlueZ lists.
    pub adapter: Option<String>,
    pub devices: Vec<BleDeviceConfig>,
    /// Most devices connected at once through service entries (address entries always count).
    pub max_devices: usize,
    /// Time allowed for connect + service resolution.
    pub connect_timeout: Duration,
    /// Reconnect back-off: first delay, doubled after each failure up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often a connected device's link is also checked by polling (events are primary).
    pub link_check: Duration,
}

impl BleConfig {
    /// The device entry that admits a device with `address` advertising `services` (16-bit
    /// UUIDs of the SIG base; others are ignored), if any. Address entries win over service
    /// entries.
    pub fn admit(&self, address: &BtAddress, services: &[u16]) -> Option<&BleDeviceConfig> {
        self.devices
            .iter()
            .find(|d| matches!(&d.matcher, DeviceMatch::Address(a) if a == address))
            .or_else(|| {
                self.devices.iter().find(|d| match &d.matcher {
                    DeviceMatch::Service { allow } => {
                        services.contains(&d.profile.service())
                            && allow.iter().any(|p| address.0.starts_with(p))
                    }
                    DeviceMatch::Address(_) => false,
                })
            })
    }

    /// 16-bit service UUIDs of every configured entry (for the discovery filter).
    pub fn services(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self.devices.iter().map(|d| d.profile.service()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Reconnect back-off: doubles from `min` to `max`; [`Backoff::reset`] after a good session.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(10));
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt; the one after it is doubled (capped).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> BtAddress {
        BtAddress::parse(s).expect("address")
    }

    fn entry(matcher: DeviceMatch, profile: Profile) -> BleDeviceConfig {
        BleDeviceConfig {
            matcher,
            profile,
            device_id: None,
            patient_id: None,
            bed: None,
            write_current_time: false,
            use_device_clock: true,
            intermediate: false,
        }
    }

    fn cfg(devices: Vec<BleDeviceConfig>) -> BleConfig {
        BleConfig {
            adapter: None,
            devices,
            max_devices: 8,
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            link_check: Duration::from_secs(5),
        }
    }

    #[test]
    fn addresses_parse_in_either_form_and_print_as_eui48() {
        let a = addr("c0:ff:ee:00:18:0d");
        assert_eq!(a, addr("C0-FF-EE-00-18-0D"));
        assert_eq!(a.eui48(), "C0-FF-EE-00-18-0D");
        assert_eq!(a.colon(), "C0:FF:EE:00:18:0D");
        for bad in [
            "",
            "C0:FF:EE:00:18",
            "C0:FF:EE:00:18:0D:01",
            "C0FFEE00180D",
            "C0:FF:EE:00:18:G0",
            "C0:FF:EE:00:18:0",
        ] {
            assert_eq!(BtAddress::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn profiles_parse_by_name_or_service_uuid() {
        for p in Profile::ALL {
            assert_eq!(Profile::parse(p.name()), Some(p));
            assert_eq!(Profile::parse(&format!("0x{:04X}", p.service())), Some(p));
        }
        assert_eq!(
            Profile::parse("Blood-Pressure"),
            Some(Profile::BloodPressure)
        );
        assert_eq!(
            Profile::parse("180a"),
            None,
            "device information is not a profile"
        );
        assert_eq!(Profile::parse("cgm"), None);
        assert_eq!(Profile::BloodPressure.measurements(false), [0x2A35]);
        assert_eq!(Profile::BloodPressure.measurements(true), [0x2A35, 0x2A36]);
    }

    #[test]
    fn only_admitted_devices_are_connected_to() {
        let c = cfg(vec![
            entry(
                DeviceMatch::Service {
                    allow: vec![vec![0xC0, 0xFF, 0xEE]],
                },
                Profile::BloodPressure,
            ),
            entry(
                DeviceMatch::Address(addr("00:1C:05:FF:E8:74")),
                Profile::PulseOximeter,
            ),
        ]);
        // Service entry: right service and allowed prefix.
        let cuff = c.admit(&addr("C0:FF:EE:00:18:10"), &[0x1810]);
        assert_eq!(cuff.map(|d| d.profile), Some(Profile::BloodPressure));
        // Right service, unknown manufacturer: never.
        assert!(c.admit(&addr("C0:FF:EF:00:18:10"), &[0x1810]).is_none());
        // Allowed prefix, but it does not advertise the service.
        assert!(c.admit(&addr("C0:FF:EE:00:18:10"), &[0x180D]).is_none());
        assert!(c.admit(&addr("C0:FF:EE:00:18:10"), &[]).is_none());
        // Address entry: admitted whatever it advertises.
        let ox = c.admit(&addr("00:1c:05:ff:e8:74"), &[]);
        assert_eq!(ox.map(|d| d.profile), Some(Profile::PulseOximeter));
        assert_eq!(c.services(), [0x1810, 0x1822]);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(
            b.next_delay(),
            Duration::from_millis(10),
            "never a busy loop"
        );
    }
}
