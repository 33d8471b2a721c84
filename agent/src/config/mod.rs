//! The ward configuration: one TOML file per ward.
//!
//! Parsed in two steps, as the anchors do (vector's `ConfigBuilder` → `Config`, ripgrep's
//! low/high args): the raw form is the TOML document with a span on every key and value
//! (`toml::de::DeTable`); [`load`] walks it into [`Config`] and reports **every** problem in
//! one pass (syntax aside), each with the file, line, column and key, so that
//! `iomt-agent validate` can show an operator the whole list. Type errors do not stop the walk,
//! unknown keys are errors, defaults are applied here and only here.
//! Template files named by the config are loaded in the same pass, and their errors are
//! reported with their own file, line and column.
//!
//! Secrets are never inline: they name an environment variable, a file, or a systemd
//! credential (`$CREDENTIALS_DIRECTORY/<name>`), see [`SecretRef`].

mod validate;

pub use validate::{load, load_file, resolve_secret};

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in (the config or a template it names).
    pub file: PathBuf,
    /// 1-based line and column; 0 when unknown.
    pub line: usize,
    pub column: usize,
    /// The key path (`sinks[1].url`), empty for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file (its content, trailing newline removed).
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential=`).
    Credential(String),
}

/// What the log does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Back-pressure: sources stop acknowledging (MQTT stops PUBACKs; serial/BLE hold a bounded
    /// in-memory queue and count what they must drop).
    Block,
    /// Drop the oldest records, leaving a visible gap record and a metric.
    DropOldest,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file's directory; relative paths in the file are relative to it.
    pub base_dir: PathBuf,
    pub ward: Option<String>,
    pub state_dir: PathBuf,
    pub admin_addr: SocketAddr,
    /// Label per-device metrics with device ids (off by default).
    pub metrics_device_labels: bool,
    pub mapping: MappingConfig,
    pub buffer: BufferConfig,
    pub pipeline: PipelineConfig,
    pub sources: Vec<SourceConfig>,
    pub sinks: Vec<SinkConfig>,
}

/// Template files.
#[derive(Debug, Clone)]
pub struct MappingConfig {
    pub device: PathBuf,
    pub fhir: Option<PathBuf>,
    /// Reload templates when the files change (also on SIGHUP).
    pub watch: bool,
}

/// The durable log.
#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub when_full: WhenFull,
    pub commit_interval: Duration,
    pub commit_max_records: usize,
}

/// Grouping window.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// How long readings wait to be grouped before the groups are flushed to the sinks.
    pub flush_interval: Duration,
    /// Most log records read per flush.
    pub max_events_per_flush: usize,
}

/// A source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
}

/// Source types (closed: the project owns its drivers).
#[derive(Debug, Clone)]
pub enum SourceKind {
    Simulator(SimulatorConfig),
    /// Bluetooth LE health devices (`crate::sources::ble`).
    Ble(BleConfig),
    /// An MQTT subscriber (`sources/mqtt`).
    Mqtt(crate::sources::mqtt::MqttConfig),
    /// A serial bedside device: Nonin, Masimo, JSON lines (`sources/serial`).
    Serial(crate::sources::serial::SerialConfig),
    /// HL7 v2 over MLLP, TCP or serial (`sources/mllp`).
    Mllp(crate::sources::mllp::MllpConfig),
}

pub use crate::sources::ble::{BleConfig, BleDeviceConfig};

/// The built-in simulator: virtual bedside devices.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub heart_rate_monitors: u32,
    pub pulse_oximeters: u32,
    pub bp_cuffs: u32,
    pub thermometers: u32,
    /// Time between two readings of one device.
    pub interval: Duration,
    /// Random seed (readings are reproducible for a seed).
    pub seed: u64,
    /// Stop after this many readings in total (0: never). For tests and demos.
    pub max_readings: u64,
    /// Prefix of device ids (`{prefix}-hr-001`).
    pub device_prefix: String,
    /// Append every acknowledged reading's body to this file, one JSON per line (for tests
    /// and audits: what the agent acknowledged must be in the outbox).
    pub ack_log: Option<PathBuf>,
}

/// A sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    /// A sink that has been failing longer than this is not ready (`/readyz`).
    pub unready_after: Duration,
    pub kind: SinkKind,
}

/// Sink types.
#[derive(Debug, Clone)]
pub enum SinkKind {
    Outbox(OutboxConfig),
    /// Forwarding to an Azure Event Hub (`runtime/eventhubs_sink.rs`).
    EventHubs(EventHubsSinkConfig),
    /// A FHIR R4 server (`crate::sinks::fhir`).
    Fhir(Box<crate::sinks::fhir::FhirSinkConfig>),
}

/// The local NDJSON outbox.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Directory (default `<state_dir>/outbox`).
    pub dir: PathBuf,
    /// Rotate a file when it reaches this size.
    pub max_file_bytes: u64,
    /// Identity resolution offline: `create` (deterministic Patient/Device ids, and those
    /// resources written too) or `none` (message ids used as FHIR ids).
    pub create_identities: bool,
}

/// What the Event Hubs sink sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventHubsPayload {
    /// The device envelope's Body, with its Properties as application properties.
    Raw,
    /// The normalized measurements (the connector's normalized-message JSON).
    Normalized,
}

/// How the Event Hubs sink authenticates; secrets are references, resolved at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventHubsAuthConfig {
    ConnectionString(SecretRef),
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretRef,
    },
    /// System-assigned when `client_id` is `None`.
    ManagedIdentity {
        client_id: Option<String>,
    },
}

/// `[[sinks]] type = "eventhubs"`.
#[derive(Debug, Clone)]
pub struct EventHubsSinkConfig {
    pub namespace: Option<String>,
    /// Where the socket goes instead of the namespace (`amqp://127.0.0.1:5672` in tests).
    pub custom_endpoint: Option<String>,
    pub hub: Option<String>,
    pub auth: EventHubsAuthConfig,
    pub transport: crate::sinks::eventhubs::Transport,
    pub payload: EventHubsPayload,
    /// Normalized mode only: send gzip measurement groups instead of one event per measurement.
    pub gzip_groups: bool,
    /// At most this many events per Event Hubs batch (and measurements per group).
    pub max_batch_events: usize,
    /// The sink's group window (replaces `pipeline.flush_interval` for this sink when set).
    pub linger: Option<Duration>,
    /// Upper bound of one create-batch or send-batch call.
    pub send_timeout: Duration,
}

#[cfg(test)]
mod tests;
