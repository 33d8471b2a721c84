//! The BLE source task (btleplug over BlueZ/D-Bus).
//!
//! Topology: one **dispatcher** per source owns the BlueZ session: it picks the adapter,
//! starts discovery filtered on the configured profiles' services, and reads the adapter's
//! event stream. A device the ward config admits ([`BleConfig::admit`]) gets one long-lived
//! **device task**; link events for it (`DeviceDisconnected`, adapter powered off) are
//! forwarded to that task over a small channel. A device task loops: connect (bounded by
//! `connect_timeout`) → discover services → read Device Information → Current Time (write
//! or read, for the coincident time stamp) → open the notification stream, then subscribe to
//! the profile's measurement characteristics (glucose: and ask the RACP for stored records) →
//! receive until the link drops → back off → reconnect.
//!
//! Invariants:
//! - Never connects to a device the config does not admit; admitted service-matched devices
//!   are capped at `max_devices`.
//! - Tasks do not grow with reconnects: one task per admitted device for the life of the
//!   BlueZ session; each connection's notification stream (and its D-Bus match rules) is
//!   dropped when the connection ends. If the D-Bus connection is lost, every device task of
//!   that session is stopped and joined before a new session starts.
//! - Link loss is detected from adapter events and by polling `is_connected` every
//!   `link_check` (the notification stream does not end on disconnect); a `Down` event is
//!   believed only if BlueZ also says the device is not connected (stale events are ignored).
//! - Each reading is appended to the durable log and counted (`reading_stored`) only when the
//!   append resolved (after the commit). BLE cannot be paused: while the log refuses
//!   (full), readings wait in a bounded per-device queue; beyond it the oldest is dropped and
//!   counted. Undecodable values go to the dead-letter store with their bytes.
//! - Health: `shared.sources["<source>"]` for the session, `["<source>/<device id>"]` per device.

use super::body::{
    clock_offset_ms, encode_current_time, gateway_body, parse_current_time, DeviceInfo,
    ReadingContext, TimeSource,
};
use super::config::{Backoff, BleConfig, BleDeviceConfig, BtAddress, DeviceMatch, Profile};
use crate::buffer::{Appended, NewDeadLetter, NewRecord, StoreError};
use crate::mapping::Timestamp;
use crate::runtime::{now_ms, worker, Shared};
use crate::sources::envelope::envelope;
use crate::telemetry::events;
use btleplug::api::bleuuid::{uuid_from_u16, BleUuid};
use btleplug::api::{
    Central, CentralEvent, CentralState, CharPropFlags, Characteristic as GattCharacteristic,
    Manager as _, Peripheral as _, ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::StreamExt;
use iomt_drivers::ble::Characteristic;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Readings held per device while the log refuses them; beyond this the oldest is dropped.
const MAX_HELD: usize = 1_000;
/// Time allowed for one GATT read or write during set-up.
const GATT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Device Information Service characteristics.
const DIS_MANUFACTURER: u16 = 0x2A29;
const DIS_MODEL: u16 = 0x2A24;
const DIS_SERIAL: u16 = 0x2A25;
const DIS_FIRMWARE: u16 = 0x2A26;
const DIS_HARDWARE: u16 = 0x2A27;
const DIS_SOFTWARE: u16 = 0x2A28;
const DIS_SYSTEM_ID: u16 = 0x2A23;
const CURRENT_TIME: u16 = 0x2A2B;
const GLUCOSE_RACP: u16 = 0x2A52;

/// Why a BlueZ session or a connection could not go on.
#[derive(Debug, thiserror::Error)]
enum BleError {
    #[error("{0}")]
    Bluetooth(#[from] btleplug::Error),
    #[error("{0}")]
    Other(String),
}

/// Runs the source until the stop signal.
pub async fn run(
    name: String,
    cfg: BleConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = Arc::new(cfg);
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    loop {
        if *stop.borrow() {
            return;
        }
        match bluez_session(&name, &cfg, &shared, &stop, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                let e = e.to_string();
                events::ble_unavailable(&shared.metrics, &name, &e);
                set_health(&shared, &name, false, format!("Bluetooth unavailable: {e}"));
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A running device task and its link-event channel.
struct DeviceHandle {
    link: mpsc::Sender<()>,
    task: JoinHandle<()>,
    by_service: bool,
}

/// One BlueZ session: returns `Ok` on stop, `Err` when BlueZ or D-Bus went away.
async fn bluez_session(
    name: &str,
    cfg: &Arc<BleConfig>,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<(), BleError> {
    let mut stop = stop.clone();
    let manager = Manager::new().await?;
    let adapter = pick_adapter(&manager, cfg.adapter.as_deref()).await?;
    let mut events = adapter.events().await?;
    let filter = ScanFilter {
        services: cfg.services().into_iter().map(uuid_from_u16).collect(),
    };
    adapter.start_scan(filter.clone()).await?;
    backoff.reset();
    set_health(shared, name, true, "scanning".into());
    let (session_stop_tx, session_stop) = watch::channel(false);
    let mut devices: HashMap<PeripheralId, DeviceHandle> = HashMap::new();
    let mut tick = tokio::time::interval(cfg.link_check);
    let result = loop {
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            ev = events.next() => match ev {
                None => break Err(BleError::Other("the BlueZ event stream ended (D-Bus connection lost)".into())),
                Some(CentralEvent::DeviceDiscovered(id))
                | Some(CentralEvent::DeviceUpdated(id))
                | Some(CentralEvent::DeviceConnected(id))
                | Some(CentralEvent::ServicesAdvertisement { id, .. }) => {
                    if !devices.contains_key(&id) {
                        if let Some(h) = admit(name, cfg, shared, &adapter, &id, &devices, &stop, &session_stop).await {
                            devices.insert(id, h);
                        }
                    }
                }
                Some(CentralEvent::DeviceDisconnected(id)) => {
                    if let Some(h) = devices.get(&id) {
                        // Full channel: a Down is already pending, which is enough.
                        h.link.try_send(()).ok();
                    }
                }
                Some(CentralEvent::StateUpdate(CentralState::PoweredOff)) => {
                    set_health(shared, name, false, "adapter powered off".into());
                    for h in devices.values() {
                        h.link.try_send(()).ok();
                    }
                }
                Some(CentralEvent::StateUpdate(CentralState::PoweredOn)) => {
                    adapter.start_scan(filter.clone()).await.ok();
                    set_health(shared, name, true, "scanning".into());
                }
                Some(_) => {}
            },
            _ = tick.tick() => {
                // A device task only ends on stop; one that ended otherwise (a panic) is
                // forgotten so that the device can be admitted again.
                devices.retain(|_, h| !h.task.is_finished());
            }
        }
    };
    session_stop_tx.send(true).ok();
    for (_, h) in devices.drain() {
        tokio::time::timeout(Duration::from_secs(3), h.task)
            .await
            .ok();
    }
    adapter.stop_scan().await.ok();
    result
}

async fn pick_adapter(manager: &Manager, wanted: Option<&str>) -> Result<Adapter, BleError> {
    let adapters = manager.adapters().await?;
    let mut names = Vec::new();
    for a in adapters {
        // BlueZ: "hci0 (usb:v1D6Bp0245d050A)".
        let info = a.adapter_info().await.unwrap_or_default();
        let id = info.split_whitespace().next().unwrap_or("").to_owned();
        match wanted {
            None => return Ok(a),
            Some(w) if w == id => return Ok(a),
            Some(_) => names.push(id),
        }
    }
    Err(BleError::Other(match wanted {
        Some(w) => format!(
            "no Bluetooth adapter named {w} (found: {})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ),
        None => "no Bluetooth adapter".into(),
    }))
}

/// Spawns a device task when the config admits the device.
#[allow(clippy::too_many_arguments)]
async fn admit(
    name: &str,
    cfg: &Arc<BleConfig>,
    shared: &Arc<Shared>,
    adapter: &Adapter,
    id: &PeripheralId,
    devices: &HashMap<PeripheralId, DeviceHandle>,
    stop: &watch::Receiver<bool>,
    session_stop: &watch::Receiver<bool>,
) -> Option<DeviceHandle> {
    let p = adapter.peripheral(id).await.ok()?;
    let address = BtAddress(p.address().into_inner());
    let services: Vec<u16> = p
        .properties()
        .await
        .ok()
        .flatten()
        .map(|props| {
            props
                .services
                .iter()
                .filter_map(|u| u.to_ble_u16())
                .collect()
        })
        .unwrap_or_default();
    let Some(entry) = cfg.admit(&address, &services) else {
        events::ble_device_not_admitted(name, &address.colon());
        return None;
    };
    let by_service = matches!(entry.matcher, DeviceMatch::Service { .. });
    if by_service && devices.values().filter(|h| h.by_service).count() >= cfg.max_devices {
        events::ble_device_not_admitted(name, &address.colon());
        return None;
    }
    let device_id = entry.device_id.clone().unwrap_or_else(|| address.eui48());
    let (link_tx, link_rx) = mpsc::channel(1);
    let task = DeviceTask {
        source: name.to_owned(),
        health_key: format!("{name}/{device_id}"),
        device_id,
        address,
        entry: entry.clone(),
        cfg: cfg.clone(),
        shared: shared.clone(),
        peripheral: p,
        link: link_rx,
        info: DeviceInfo::default(),
        clock_offset_ms: None,
        held: VecDeque::new(),
        last_glucose_sequence: None,
    };
    let stops = (stop.clone(), session_stop.clone());
    Some(DeviceHandle {
        link: link_tx,
        task: tokio::spawn(task.run(stops)),
        by_service,
    })
}

/// How a connection ended.
enum End {
    Stopped,
    LinkLost { reason: String, stable: bool },
}

/// One admitted device, for the life of a BlueZ session.
struct DeviceTask {
    source: String,
    health_key: String,
    device_id: String,
    address: BtAddress,
    entry: BleDeviceConfig,
    cfg: Arc<BleConfig>,
    shared: Arc<Shared>,
    peripheral: Peripheral,
    link: mpsc::Receiver<()>,
    info: DeviceInfo,
    clock_offset_ms: Option<i64>,
    held: VecDeque<NewRecord>,
    last_glucose_sequence: Option<u16>,
}

/// Resolves when either stop signal is raised (or its sender is gone).
async fn stopped(stops: &mut (watch::Receiver<bool>, watch::Receiver<bool>)) {
    loop {
        if *stops.0.borrow() || *stops.1.borrow() {
            return;
        }
        tokio::select! {
            r = stops.0.changed() => if r.is_err() { return },
            r = stops.1.changed() => if r.is_err() { return },
        }
    }
}

impl DeviceTask {
    async fn run(mut self, mut stops: (watch::Receiver<bool>, watch::Receiver<bool>)) {
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        loop {
            self.health(false, "connecting".into());
            let ended = {
                let mut s = stops.clone();
                tokio::select! {
                    r = self.connection() => r,
                    _ = stopped(&mut s) => Ok(End::Stopped),
                }
            };
            match ended {
                Ok(End::Stopped) => {
                    self.flush().await;
                    self.peripheral.disconnect().await.ok();
                    self.health(false, "stopped".into());
                    return;
                }
                Ok(End::LinkLost { reason, stable }) => {
                    events::ble_link_lost(
                        &self.shared.metrics,
                        &self.source,
                        &self.device_id,
                        &reason,
                    );
                    if stable {
                        backoff.reset();
                    }
                    self.health(false, format!("link lost ({reason}); reconnecting"));
                }
                Err(e) => {
                    let e = e.to_string();
                    events::ble_connect_failed(
                        &self.shared.metrics,
                        &self.source,
                        &self.device_id,
                        &e,
                    );
                    self.health(false, format!("cannot connect: {e}; retrying"));
                }
            }
            // Leave BlueZ in a clean state, and forget link events of the old connection.
            tokio::time::timeout(GATT_TIMEOUT, self.peripheral.disconnect())
                .await
                .ok();
            while self.link.try_recv().is_ok() {}
            let delay = backoff.next_delay();
            let deadline = Instant::now() + delay;
            // Keep trying to store held readings while waiting.
            loop {
                self.flush().await;
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let step = (deadline - now).min(Duration::from_millis(500));
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = stopped(&mut stops) => {
                        self.flush().await;
                        self.health(false, "stopped".into());
                        return;
                    }
                }
            }
        }
    }

    /// Connects, sets up and receives until the link drops.
    async fn connection(&mut self) -> Result<End, BleError> {
        let p = self.peripheral.clone();
        match tokio::time::timeout(self.cfg.connect_timeout, p.connect()).await {
            Ok(Ok(())) => {}
            // BlueZ may already hold the connection (auto-connect of a bonded device).
            Ok(Err(e)) => {
                if !p.is_connected().await.unwrap_or(false) {
                    return Err(e.into());
                }
            }
            Err(_) => {
                return Err(BleError::Other(format!(
                    "connect timed out after {:?}",
                    self.cfg.connect_timeout
                )))
            }
        }
        gatt(p.discover_services()).await?;
        let chars: Vec<GattCharacteristic> = p.characteristics().into_iter().collect();
        self.read_device_information(&chars).await;
        self.current_time(&chars).await;
        // Open the stream before subscribing so that the first value cannot be missed.
        let mut notifications = p.notifications().await?;
        let mut subscribed = 0;
        for uuid in self.entry.profile.measurements(self.entry.intermediate) {
            if let Some(c) = find(&chars, uuid) {
                if c.properties
                    .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
                {
                    gatt(p.subscribe(c)).await?;
                    subscribed += 1;
                }
            }
        }
        if subscribed == 0 {
            return Err(BleError::Other(format!(
                "the device has none of the {} profile's measurement characteristics",
                self.entry.profile.name()
            )));
        }
        if self.entry.profile == Profile::Glucose {
            self.request_glucose_records(&chars).await?;
        }
        let connected_at = Instant::now();
        events::ble_connected(
            &self.shared.metrics,
            &self.source,
            &self.device_id,
            subscribed,
        );
        self.health(true, format!("connected; {subscribed} characteristics"));
        let mut tick = tokio::time::interval(self.cfg.link_check);
        tick.tick().await;
        let lost = |reason: &str| -> Result<End, BleError> {
            Ok(End::LinkLost {
                reason: reason.to_owned(),
                stable: connected_at.elapsed() >= STABLE_AFTER,
            })
        };
        loop {
            tokio::select! {
                n = notifications.next() => match n {
                    Some(n) => self.on_value(n).await,
                    None => return lost("notification stream ended"),
                },
                l = self.link.recv() => match l {
                    Some(()) => {
                        if !p.is_connected().await.unwrap_or(false) {
                            return lost("disconnected");
                        }
                    }
                    None => return Ok(End::Stopped),
                },
                _ = tick.tick() => {
                    self.flush().await;
                    if !p.is_connected().await.unwrap_or(false) {
                        return lost("link check: not connected");
                    }
                }
            }
        }
    }

    async fn read_device_information(&mut self, chars: &[GattCharacteristic]) {
        let p = self.peripheral.clone();
        let mut info = DeviceInfo::default();
        for uuid in [
            DIS_MANUFACTURER,
            DIS_MODEL,
            DIS_SERIAL,
            DIS_FIRMWARE,
            DIS_HARDWARE,
            DIS_SOFTWARE,
            DIS_SYSTEM_ID,
        ] {
            let Some(c) = find(chars, uuid) else { continue };
            if !c.properties.contains(CharPropFlags::READ) {
                continue;
            }
            let Ok(raw) = gatt(p.read(c)).await else {
                continue;
            };
            let slot = match uuid {
                DIS_MANUFACTURER => &mut info.manufacturer,
                DIS_MODEL => &mut info.model,
                DIS_SERIAL => &mut info.serial,
                DIS_FIRMWARE => &mut info.firmware,
                DIS_HARDWARE => &mut info.hardware,
                DIS_SOFTWARE => &mut info.software,
                _ => {
                    info.system_id = <[u8; 8]>::try_from(raw.as_slice()).ok();
                    continue;
                }
            };
            *slot = DeviceInfo::text(&raw);
        }
        // Keep what an earlier connection read if this one could not read it.
        let old = std::mem::take(&mut self.info);
        self.info = DeviceInfo {
            manufacturer: info.manufacturer.or(old.manufacturer),
            model: info.model.or(old.model),
            serial: info.serial.or(old.serial),
            firmware: info.firmware.or(old.firmware),
            hardware: info.hardware.or(old.hardware),
            software: info.software.or(old.software),
            system_id: info.system_id.or(old.system_id),
        };
    }

    /// Writes the gateway time to Current Time (then the device clock is UTC: offset 0) or
    /// reads it for the coincident time stamp; without it the offset is unknown.
    async fn current_time(&mut self, chars: &[GattCharacteristic]) {
        self.clock_offset_ms = None;
        let Some(c) = find(chars, CURRENT_TIME) else {
            return;
        };
        let p = self.peripheral.clone();
        if self.entry.write_current_time && c.properties.contains(CharPropFlags::WRITE) {
            let now = gateway_now();
            let value = encode_current_time(&now);
            if gatt(p.write(c, &value, WriteType::WithResponse))
                .await
                .is_ok()
            {
                self.clock_offset_ms = Some(0);
                return;
            }
        }
        if c.properties.contains(CharPropFlags::READ) {
            if let Ok(raw) = gatt(p.read(c)).await {
                let now = gateway_now();
                self.clock_offset_ms =
                    parse_current_time(&raw).map(|device| clock_offset_ms(device, &now));
            }
        }
    }

    /// Glucose: records arrive only on request; ask for those after the last one stored.
    async fn request_glucose_records(
        &mut self,
        chars: &[GattCharacteristic],
    ) -> Result<(), BleError> {
        let Some(racp) = find(chars, GLUCOSE_RACP) else {
            return Ok(());
        };
        let p = self.peripheral.clone();
        gatt(p.subscribe(racp)).await?;
        let request = match self.last_glucose_sequence.and_then(|s| s.checked_add(1)) {
            // Report stored records (0x01), greater or equal (0x03), filter: sequence (0x01).
            Some(next) => {
                let [lo, hi] = next.to_le_bytes();
                vec![0x01, 0x03, 0x01, lo, hi]
            }
            // Report stored records, all.
            None => vec![0x01, 0x01],
        };
        gatt(p.write(racp, &request, WriteType::WithResponse)).await?;
        Ok(())
    }

    async fn on_value(&mut self, n: ValueNotification) {
        let Some(uuid16) = n.uuid.to_ble_u16() else {
            return;
        };
        let Some(c) = Characteristic::ALL.iter().find(|c| c.uuid16() == uuid16) else {
            // RACP responses and anything else the device notifies are not readings.
            return;
        };
        let received_ms = now_ms();
        let received_at = Timestamp::from_unix_millis(received_ms).unwrap_or_else(gateway_now);
        let mut props = Map::new();
        props.insert("source".into(), Value::String(self.source.clone()));
        props.insert("protocol".into(), Value::String("ble".into()));
        props.insert(
            "characteristic".into(),
            Value::String(format!("0x{uuid16:04X}")),
        );
        props.insert(
            "bluetoothAddress".into(),
            Value::String(self.address.eui48()),
        );
        let decoded = match c.decode(&n.value) {
            Ok(d) => d,
            Err(e) => {
                self.dead_letter(e.to_string(), n.value, received_ms).await;
                return;
            }
        };
        if let Some(seq) = decoded.get("sequence_number").and_then(Value::as_u64) {
            let seq = u16::try_from(seq).unwrap_or(u16::MAX);
            self.last_glucose_sequence =
                Some(self.last_glucose_sequence.map_or(seq, |s| s.max(seq)));
        }
        let reading = gateway_body(
            decoded,
            &ReadingContext {
                device_id: &self.device_id,
                patient_id: self.entry.patient_id.as_deref(),
                bed: self.entry.bed.as_deref(),
                address: self.address,
                info: &self.info,
                received_at,
                clock_offset_ms: self.clock_offset_ms,
                use_device_clock: self.entry.use_device_clock,
            },
        );
        let env = envelope(reading.body, props, &self.device_id, received_at);
        self.held.push_back(NewRecord {
            source: self.source.clone(),
            dedup_key: reading.dedup_key,
            receive_time_ms: received_ms,
            device_time_ms: (reading.time_source == TimeSource::Device)
                .then(|| reading.time.datetime().timestamp_millis()),
            payload: n.value,
            envelope: env.to_string(),
        });
        if self.held.len() > MAX_HELD {
            self.held.pop_front();
            events::reading_dropped(&self.shared.metrics, &self.source, "buffer_full");
        }
        self.flush().await;
    }

    /// Stores what is held, in order; stops at the first refusal and keeps the rest.
    async fn flush(&mut self) {
        let mut stored = false;
        while let Some(rec) = self.held.front().cloned() {
            match self.shared.committer.append(rec).await {
                Ok(a) => {
                    self.held.pop_front();
                    stored = true;
                    events::reading_stored(
                        &self.shared.metrics,
                        &self.source,
                        matches!(a, Appended::Duplicate(_)),
                    );
                }
                Err(StoreError::Full(full)) => {
                    self.health(
                        false,
                        format!("log full ({full}); holding {} readings", self.held.len()),
                    );
                    break;
                }
                Err(e) => {
                    self.health(false, format!("cannot store readings: {e}"));
                    break;
                }
            }
        }
        if stored {
            self.shared.appended.notify_waiters();
        }
    }

    async fn dead_letter(&self, error: String, payload: Vec<u8>, time_ms: i64) {
        events::ble_undecodable(&self.shared.metrics, &self.source, &self.device_id);
        let store = self.shared.store.clone();
        let dl = NewDeadLetter {
            seq: None,
            sink: None,
            source: self.source.clone(),
            stage: "decode".into(),
            reason: "ble_decode".into(),
            error,
            time_ms,
            payload,
            envelope: None,
        };
        let r = tokio::task::spawn_blocking(move || worker::lock(&store).dead_letter(dl)).await;
        if !matches!(r, Ok(Ok(_))) {
            tracing::error!(source = %self.source, "Cannot dead-letter an undecodable BLE value.");
        }
    }

    fn health(&self, ok: bool, detail: String) {
        set_health(&self.shared, &self.health_key, ok, detail);
    }
}

fn find(chars: &[GattCharacteristic], uuid16: u16) -> Option<&GattCharacteristic> {
    let uuid = uuid_from_u16(uuid16);
    chars.iter().find(|c| c.uuid == uuid)
}

/// A GATT operation bounded in time.
async fn gatt<T>(
    f: impl std::future::Future<Output = Result<T, btleplug::Error>>,
) -> Result<T, BleError> {
    match tokio::time::timeout(GATT_TIMEOUT, f).await {
        Ok(r) => r.map_err(BleError::from),
        Err(_) => Err(BleError::Other(format!(
            "GATT operation timed out after {GATT_TIMEOUT:?}"
        ))),
    }
}

fn gateway_now() -> Timestamp {
    Timestamp::from_unix_millis(now_ms())
        .unwrap_or_else(|| Timestamp::from_unix_millis(0).expect("invariant: the epoch is valid"))
}

fn set_health(shared: &Shared, key: &str, ok: bool, detail: String) {
    shared
        .sources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.to_owned(), (ok, detail));
}
