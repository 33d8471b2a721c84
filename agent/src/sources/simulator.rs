//! The built-in simulator: virtual bedside devices that emit the same gateway payload the real
//! drivers emit (`{deviceId, patientId, type, timestamp, values, units}`), so the shipped
//! templates map them unchanged.
//!
//! The generator here is pure: readings are a function of the seed, the device and the reading
//! number, and the time is passed in. The source task in [`crate::runtime`] drives it.

use crate::config::SimulatorConfig;
use crate::mapping::Timestamp;
use serde_json::{json, Value};

/// Kinds of simulated devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimKind {
    HeartRateMonitor,
    PulseOximeter,
    BpCuff,
    Thermometer,
}

impl SimKind {
    fn tag(self) -> &'static str {
        match self {
            SimKind::HeartRateMonitor => "hr",
            SimKind::PulseOximeter => "spo2",
            SimKind::BpCuff => "bp",
            SimKind::Thermometer => "temp",
        }
    }
}

/// One simulated device: its id, the patient in its bed, and a per-device random walk.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub kind: SimKind,
    pub device_id: String,
    pub patient_id: String,
    rng: u64,
    /// Per-patient baseline offsets so that devices differ.
    base: f64,
}

/// A small, fast, reproducible PRNG (splitmix64); simulation does not need more.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(state: &mut u64) -> f64 {
    (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64
}

impl SimDevice {
    /// Next reading's body at time `t`.
    pub fn reading(&mut self, t: Timestamp) -> Value {
        let noise = |s: &mut u64, amp: f64| (unit(s) - 0.5) * 2.0 * amp;
        let ts = crate::mapping::measurement::jsonnet_time(&t);
        let (kind, values, units) = match self.kind {
            SimKind::HeartRateMonitor => {
                let hr = (72.0 + self.base * 8.0 + noise(&mut self.rng, 4.0)).round();
                let rr = (16.0 + self.base * 2.0 + noise(&mut self.rng, 2.0)).round();
                (
                    "heartrate",
                    json!({"heartRate": hr as i64, "respiratoryRate": rr as i64}),
                    json!({"heartRate": "/min", "respiratoryRate": "/min"}),
                )
            }
            SimKind::PulseOximeter => {
                let spo2 = (97.0 + self.base + noise(&mut self.rng, 1.5))
                    .round()
                    .min(100.0);
                let pr = (71.0 + self.base * 8.0 + noise(&mut self.rng, 4.0)).round();
                (
                    "spo2",
                    json!({"spo2": spo2 as i64, "pulseRate": pr as i64}),
                    json!({"spo2": "%", "pulseRate": "/min"}),
                )
            }
            SimKind::BpCuff => {
                let sys = (120.0 + self.base * 12.0 + noise(&mut self.rng, 6.0)).round();
                let dia = (79.0 + self.base * 6.0 + noise(&mut self.rng, 4.0)).round();
                let mean = ((sys + 2.0 * dia) / 3.0).round();
                (
                    "bloodpressure",
                    json!({"systolic": sys as i64, "diastolic": dia as i64, "mean": mean as i64}),
                    json!({"systolic": "mm[Hg]", "diastolic": "mm[Hg]", "mean": "mm[Hg]"}),
                )
            }
            SimKind::Thermometer => {
                let c =
                    ((36.9 + self.base * 0.3 + noise(&mut self.rng, 0.2)) * 10.0).round() / 10.0;
                (
                    "bodytemperature",
                    json!({"bodyTemperature": c}),
                    json!({"bodyTemperature": "Cel"}),
                )
            }
        };
        json!({
            "deviceId": self.device_id,
            "patientId": self.patient_id,
            "type": kind,
            "timestamp": ts,
            "values": values,
            "units": units,
        })
    }
}

/// The devices a simulator config describes, in a stable order.
pub fn devices(cfg: &SimulatorConfig) -> Vec<SimDevice> {
    let mut out = Vec::new();
    let mut seed = cfg.seed;
    let mut bed = 0u32;
    for (kind, n) in [
        (SimKind::HeartRateMonitor, cfg.heart_rate_monitors),
        (SimKind::PulseOximeter, cfg.pulse_oximeters),
        (SimKind::BpCuff, cfg.bp_cuffs),
        (SimKind::Thermometer, cfg.thermometers),
    ] {
        for i in 1..=n {
            bed += 1;
            let mut rng = splitmix(&mut seed);
            let base = unit(&mut rng) - 0.5;
            out.push(SimDevice {
                kind,
                device_id: format!("{}-{}-{:03}", cfg.device_prefix, kind.tag(), i),
                patient_id: format!("{}-patient-{:03}", cfg.device_prefix, bed),
                rng,
                base,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> SimulatorConfig {
        SimulatorConfig {
            heart_rate_monitors: 2,
            pulse_oximeters: 1,
            bp_cuffs: 1,
            thermometers: 1,
            interval: Duration::from_secs(1),
            seed: 7,
            max_readings: 0,
            device_prefix: "sim".into(),
            ack_log: None,
        }
    }

    #[test]
    fn devices_are_stable_and_readings_reproducible() {
        let t = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let mut a = devices(&cfg());
        let mut b = devices(&cfg());
        assert_eq!(a.len(), 5);
        assert_eq!(a[0].device_id, "sim-hr-001");
        assert_eq!(a[4].device_id, "sim-temp-001");
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            assert_eq!(x.reading(t), y.reading(t));
        }
    }

    #[test]
    fn readings_are_plausible_vitals() {
        let t = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        for mut d in devices(&cfg()) {
            for _ in 0..200 {
                let r = d.reading(t);
                let v = &r["values"];
                match d.kind {
                    SimKind::HeartRateMonitor => assert!(
                        (50..=110).contains(&v["heartRate"].as_i64().unwrap()),
                        "{r}"
                    ),
                    SimKind::PulseOximeter => {
                        assert!((90..=100).contains(&v["spo2"].as_i64().unwrap()), "{r}")
                    }
                    SimKind::BpCuff => assert!(
                        v["systolic"].as_i64().unwrap() > v["diastolic"].as_i64().unwrap(),
                        "{r}"
                    ),
                    SimKind::Thermometer => assert!(
                        (35.5..=38.5).contains(&v["bodyTemperature"].as_f64().unwrap()),
                        "{r}"
                    ),
                }
            }
        }
    }
}
