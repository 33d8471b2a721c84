//! Raw TOML → validated [`Config`], collecting every error.

use super::{
    BufferConfig, Config, ConfigError, MappingConfig, OutboxConfig, PipelineConfig, SecretRef,
    SimulatorConfig, SinkConfig, SinkKind, SourceConfig, SourceKind, WhenFull,
};
use serde_spanned::Spanned;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};

/// Default state directory (systemd `StateDirectory=iomt-edge`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/iomt-edge";
/// Default admin address: loopback only.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";

struct Ctx<'t> {
    file: PathBuf,
    text: &'t str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn err(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let (line, column) = span.map_or((0, 0), |s| self.line_col(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        });
    }
}

/// A table being read: remembers which keys were used, to report the others.
struct Section<'a, 'i> {
    table: &'a DeTable<'i>,
    path: String,
    span: Option<Range<usize>>,
    used: HashSet<String>,
}

fn kind_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a, 'i> Section<'a, 'i> {
    fn new(table: &'a DeTable<'i>, path: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Section {
            table,
            path: path.into(),
            span,
            used: HashSet::new(),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.used.insert(key.to_owned());
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    fn str(&mut self, cx: &mut Ctx<'_>, key: &str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                cx.err(
                    Some(v.span()),
                    &self.key_path(key),
                    format!("expected a string, found {}", kind_name(other)),
                );
                None
            }
        }
    }

    fn u64(&mut self, cx: &mut Ctx<'_>, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match i.to_string().replace('_', "").parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    cx.err(
                        Some(v.span()),
                        &self.key_path(key),
                        "expected a non-negative integer",
                    );
                    None
                }
            },
            other => {
                cx.err(
                    Some(v.span()),
                    &self.key_path(key),
                    format!("expected an integer, found {}", kind_name(other)),
                );
                None
            }
        }
    }

    fn secs(&mut self, cx: &mut Ctx<'_>, key: &str) -> Option<Duration> {
        let v = self.get(key)?;
        let secs = match v.get_ref() {
            DeValue::Integer(i) => i.to_string().replace('_', "").parse::<f64>().ok(),
            DeValue::Float(f) => f.to_string().replace('_', "").parse::<f64>().ok(),
            other => {
                cx.err(
                    Some(v.span()),
                    &self.key_path(key),
                    format!("expected a number of seconds, found {}", kind_name(other)),
                );
                return None;
            }
        };
        match secs {
            Some(s) if (0.0..1e12).contains(&s) => Some(Duration::from_secs_f64(s)),
            _ => {
                cx.err(
                    Some(v.span()),
                    &self.key_path(key),
                    "expected a non-negative number of seconds",
                );
                None
            }
        }
    }

    fn bool(&mut self, cx: &mut Ctx<'_>, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                cx.err(
                    Some(v.span()),
                    &self.key_path(key),
                    format!("expected true or false, found {}", kind_name(other)),
                );
                None
            }
        }
    }

    fn table(&mut self, cx: &mut Ctx<'_>, key: &str) -> Option<Section<'a, 'i>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Section::new(t, self.key_path(key), Some(v.span()))),
            other => {
                cx.err(
                    Some(v.span()),
                    &self.key_path(key),
                    format!("expected a table, found {}", kind_name(other)),
                );
                None
            }
        }
    }

    fn tables(&mut self, cx: &mut Ctx<'_>, key: &str) -> Vec<Section<'a, 'i>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let path = self.key_path(key);
        match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item.get_ref() {
                    DeValue::Table(t) => {
                        Some(Section::new(t, format!("{path}[{i}]"), Some(item.span())))
                    }
                    other => {
                        cx.err(
                            Some(item.span()),
                            &format!("{path}[{i}]"),
                            format!("expected a table, found {}", kind_name(other)),
                        );
                        None
                    }
                })
                .collect(),
            other => {
                cx.err(
                    Some(v.span()),
                    &path,
                    format!(
                        "expected an array of tables ([[{key}]]), found {}",
                        kind_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    /// A secret reference: `{ env = "X" }`, `{ file = "path" }` or `{ credential = "name" }`.
    #[allow(dead_code)] // used by the sinks and sources that take secrets
    fn secret(&mut self, cx: &mut Ctx<'_>, key: &str, base: &Path) -> Option<SecretRef> {
        let v = self.get(key)?;
        let path = self.key_path(key);
        let DeValue::Table(t) = v.get_ref() else {
            cx.err(
                Some(v.span()),
                &path,
                "secrets are never written inline: use { env = \"VAR\" }, { file = \"/path\" } or { credential = \"name\" } (systemd LoadCredential=)",
            );
            return None;
        };
        let mut s = Section::new(t, path.clone(), Some(v.span()));
        let env = s.str(cx, "env");
        let file = s.str(cx, "file");
        let cred = s.str(cx, "credential");
        s.finish(cx);
        match (env, file, cred) {
            (Some(e), None, None) => Some(SecretRef::Env(e)),
            (None, Some(f), None) => Some(SecretRef::File(base.join(f))),
            (None, None, Some(c)) => Some(SecretRef::Credential(c)),
            _ => {
                cx.err(
                    Some(v.span()),
                    &path,
                    "a secret names exactly one of env, file or credential",
                );
                None
            }
        }
    }

    fn finish(self, cx: &mut Ctx<'_>) {
        for (k, v) in self.table.iter() {
            let name = k.get_ref().as_ref();
            if !self.used.contains(name) {
                let mut known: Vec<&String> = self.used.iter().collect();
                known.sort();
                let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                cx.err(
                    Some(k.span()),
                    &self.key_path(name),
                    format!("unknown key (known keys here: {})", known.join(", ")),
                );
                let _ = v;
            }
        }
    }
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, Vec<ConfigError>> {
    match std::fs::read_to_string(path) {
        Ok(text) => load(&text, path),
        Err(e) => Err(vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the configuration: {e}"),
        }]),
    }
}

/// Validates config text; `path` names the file in errors and anchors relative paths.
pub fn load(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut cx = Ctx {
        file: path.to_owned(),
        text,
        errors: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let span = e.span();
            let msg = e.message().to_owned();
            cx.err(span, "", format!("invalid TOML: {msg}"));
            return Err(cx.errors);
        }
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    let mut top = Section::new(root.get_ref(), "", None);
    let ward = top.str(&mut cx, "ward");

    let mut state_dir = PathBuf::from(DEFAULT_STATE_DIR);
    let mut admin_addr: SocketAddr = DEFAULT_ADMIN_ADDR.parse().expect("valid default address");
    let mut metrics_device_labels = false;
    if let Some(mut a) = top.table(&mut cx, "agent") {
        if let Some(b) = a.bool(&mut cx, "metrics_device_labels") {
            metrics_device_labels = b;
        }
        if let Some(s) = a.str(&mut cx, "state_dir") {
            state_dir = base_dir.join(s);
        }
        if let Some(s) = a.str(&mut cx, "admin_addr") {
            match s.parse() {
                Ok(addr) => admin_addr = addr,
                Err(_) => {
                    let span = a.get("admin_addr").map(|v| v.span());
                    cx.err(
                        span,
                        "agent.admin_addr",
                        format!("'{s}' is not HOST:PORT (e.g. 127.0.0.1:9464)"),
                    );
                }
            }
        }
        a.finish(&mut cx);
    }

    let mapping = match top.table(&mut cx, "mapping") {
        Some(mut m) => {
            let span = m.span.clone();
            let device = m.str(&mut cx, "device");
            let fhir = m.str(&mut cx, "fhir").map(|f| base_dir.join(f));
            let watch = m.bool(&mut cx, "watch").unwrap_or(true);
            m.finish(&mut cx);
            match device {
                Some(d) => Some(MappingConfig {
                    device: base_dir.join(d),
                    fhir,
                    watch,
                }),
                None => {
                    cx.err(span, "mapping.device", "a device mapping template is required (mapping.device = \"path/to/devices.json\")");
                    None
                }
            }
        }
        None => {
            cx.err(
                None,
                "mapping",
                "missing [mapping] section with the device (and FHIR) template paths",
            );
            None
        }
    };
    if let Some(m) = &mapping {
        check_templates(&mut cx, m);
    }

    let mut buffer = BufferConfig {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(7 * 86_400),
        when_full: WhenFull::Block,
        commit_interval: Duration::from_millis(200),
        commit_max_records: 256,
    };
    if let Some(mut b) = top.table(&mut cx, "buffer") {
        if let Some(v) = b.u64(&mut cx, "max_bytes") {
            buffer.max_bytes = v;
        }
        if let Some(v) = b.secs(&mut cx, "max_age_secs") {
            buffer.max_age = v;
        }
        if let Some(v) = b.str(&mut cx, "when_full") {
            match v.as_str() {
                "block" => buffer.when_full = WhenFull::Block,
                "drop_oldest" => buffer.when_full = WhenFull::DropOldest,
                other => {
                    let span = b.get("when_full").map(|v| v.span());
                    cx.err(
                        span,
                        "buffer.when_full",
                        format!("'{other}' is not a policy (block or drop_oldest)"),
                    );
                }
            }
        }
        if let Some(v) = b.u64(&mut cx, "commit_interval_ms") {
            if !(1..=10_000).contains(&v) {
                let span = b.get("commit_interval_ms").map(|v| v.span());
                cx.err(
                    span,
                    "buffer.commit_interval_ms",
                    "must be between 1 and 10000 ms (100-250 is usual)",
                );
            }
            buffer.commit_interval = Duration::from_millis(v);
        }
        if let Some(v) = b.u64(&mut cx, "commit_max_records") {
            if v == 0 {
                let span = b.get("commit_max_records").map(|v| v.span());
                cx.err(span, "buffer.commit_max_records", "must be at least 1");
            }
            buffer.commit_max_records = v.max(1) as usize;
        }
        b.finish(&mut cx);
    }

    let mut pipeline = PipelineConfig {
        flush_interval: Duration::from_secs(5),
        max_events_per_flush: 1000,
    };
    if let Some(mut p) = top.table(&mut cx, "pipeline") {
        if let Some(v) = p.secs(&mut cx, "flush_interval_secs") {
            pipeline.flush_interval = v;
        }
        if let Some(v) = p.u64(&mut cx, "max_events_per_flush") {
            pipeline.max_events_per_flush = v.max(1) as usize;
        }
        p.finish(&mut cx);
    }

    let mut names = HashSet::new();
    let mut sources = Vec::new();
    for mut s in top.tables(&mut cx, "sources") {
        let path = s.path.clone();
        let span = s.span.clone();
        let kind = s.str(&mut cx, "type");
        let name = s
            .str(&mut cx, "name")
            .unwrap_or_else(|| kind.clone().unwrap_or_default());
        if !names.insert(name.clone()) {
            cx.err(
                span.clone(),
                &format!("{path}.name"),
                format!("duplicate source or sink name '{name}'"),
            );
        }
        match kind.as_deref() {
            Some("simulator") => {
                let mut sim = SimulatorConfig {
                    heart_rate_monitors: 2,
                    pulse_oximeters: 2,
                    bp_cuffs: 1,
                    thermometers: 1,
                    interval: Duration::from_secs(1),
                    seed: 1,
                    max_readings: 0,
                    device_prefix: "sim".into(),
                    ack_log: None,
                };
                if let Some(v) = s.str(&mut cx, "ack_log") {
                    sim.ack_log = Some(base_dir.join(v));
                }
                if let Some(v) = s.u64(&mut cx, "heart_rate_monitors") {
                    sim.heart_rate_monitors = v as u32;
                }
                if let Some(v) = s.u64(&mut cx, "pulse_oximeters") {
                    sim.pulse_oximeters = v as u32;
                }
                if let Some(v) = s.u64(&mut cx, "bp_cuffs") {
                    sim.bp_cuffs = v as u32;
                }
                if let Some(v) = s.u64(&mut cx, "thermometers") {
                    sim.thermometers = v as u32;
                }
                if let Some(v) = s.secs(&mut cx, "interval_secs") {
                    if v.is_zero() {
                        cx.err(
                            span.clone(),
                            &format!("{path}.interval_secs"),
                            "must be greater than 0",
                        );
                    }
                    sim.interval = v;
                }
                if let Some(v) = s.u64(&mut cx, "seed") {
                    sim.seed = v;
                }
                if let Some(v) = s.u64(&mut cx, "max_readings") {
                    sim.max_readings = v;
                }
                if let Some(v) = s.str(&mut cx, "device_prefix") {
                    sim.device_prefix = v;
                }
                sources.push(SourceConfig {
                    name,
                    kind: SourceKind::Simulator(sim),
                });
            }
            Some("ble") => {
                if let Some(ble) = parse_ble_source(&mut cx, &mut s, &path, span.clone()) {
                    sources.push(SourceConfig {
                        name,
                        kind: SourceKind::Ble(ble),
                    });
                }
            }
            Some("mqtt") => {
                if let Some(c) = parse_mqtt_source(&mut cx, &mut s, &name, &base_dir) {
                    sources.push(SourceConfig {
                        name,
                        kind: SourceKind::Mqtt(c),
                    });
                }
            }
            Some("serial") => {
                if let Some(c) = parse_serial_source(&mut cx, &mut s, &base_dir) {
                    sources.push(SourceConfig {
                        name,
                        kind: SourceKind::Serial(c),
                    });
                }
            }
            Some("mllp") => {
                if let Some(c) = parse_mllp_source(&mut cx, &mut s, &base_dir, ward.as_deref()) {
                    sources.push(SourceConfig {
                        name,
                        kind: SourceKind::Mllp(c),
                    });
                }
            }
            Some(other) => cx.err(
                span.clone(),
                &format!("{path}.type"),
                format!(
                    "unknown source type '{other}' (known: simulator, ble, mqtt, serial, mllp)"
                ),
            ),
            None => cx.err(
                span.clone(),
                &format!("{path}.type"),
                "every source needs a type (e.g. type = \"simulator\")",
            ),
        }
        s.finish(&mut cx);
    }

    let mut sinks = Vec::new();
    for mut s in top.tables(&mut cx, "sinks") {
        let path = s.path.clone();
        let span = s.span.clone();
        let kind = s.str(&mut cx, "type");
        let name = s
            .str(&mut cx, "name")
            .unwrap_or_else(|| kind.clone().unwrap_or_default());
        if !names.insert(name.clone()) {
            cx.err(
                span.clone(),
                &format!("{path}.name"),
                format!("duplicate source or sink name '{name}'"),
            );
        }
        let unready_after = s
            .secs(&mut cx, "unready_after_secs")
            .unwrap_or(Duration::from_secs(300));
        match kind.as_deref() {
            Some("outbox") => {
                let dir = s
                    .str(&mut cx, "dir")
                    .map(|d| base_dir.join(d))
                    .unwrap_or_else(|| state_dir.join("outbox"));
                let max_file_bytes = s
                    .u64(&mut cx, "max_file_bytes")
                    .unwrap_or(64 << 20)
                    .max(4096);
                let create_identities = match s.str(&mut cx, "identity").as_deref() {
                    None | Some("create") => true,
                    Some("none") => false,
                    Some(other) => {
                        cx.err(
                            span.clone(),
                            &format!("{path}.identity"),
                            format!(
                                "'{other}' is not an identity mode for the outbox (create or none)"
                            ),
                        );
                        true
                    }
                };
                sinks.push(SinkConfig {
                    name,
                    unready_after,
                    kind: SinkKind::Outbox(OutboxConfig {
                        dir,
                        max_file_bytes,
                        create_identities,
                    }),
                });
            }
            Some("eventhubs") => {
                if let Some(c) = parse_eventhubs_sink(&mut cx, &mut s, &base_dir) {
                    sinks.push(SinkConfig {
                        name,
                        unready_after,
                        kind: SinkKind::EventHubs(c),
                    });
                }
            }
            Some("fhir") => {
                if let Some(k) = parse_fhir_sink(&mut cx, &mut s, &path, &base_dir) {
                    sinks.push(SinkConfig {
                        name,
                        unready_after,
                        kind: SinkKind::Fhir(Box::new(k)),
                    });
                }
            }
            Some(other) => cx.err(
                span.clone(),
                &format!("{path}.type"),
                format!("unknown sink type '{other}' (known: outbox, eventhubs, fhir)"),
            ),
            None => cx.err(
                span.clone(),
                &format!("{path}.type"),
                "every sink needs a type (e.g. type = \"outbox\")",
            ),
        }
        s.finish(&mut cx);
    }
    if sources.is_empty() && !cx.errors.iter().any(|e| e.key.starts_with("sources")) {
        cx.err(
            None,
            "sources",
            "no source configured: add at least one [[sources]] table",
        );
    }
    if let Some(m) = &mapping {
        let writes_fhir = sinks.iter().any(|s| matches!(s.kind, SinkKind::Outbox(_)));
        if m.fhir.is_none() && writes_fhir {
            cx.err(None, "mapping.fhir", "the outbox sink writes FHIR resources: set mapping.fhir to a FHIR mapping template");
        }
    }
    if sinks.is_empty() && !cx.errors.iter().any(|e| e.key.starts_with("sinks")) {
        cx.err(None, "sinks", "no sink configured: add at least one [[sinks]] table (type = \"outbox\" keeps Observations locally)");
    }
    top.finish(&mut cx);

    match (cx.errors.is_empty(), mapping) {
        (true, Some(mapping)) => Ok(Config {
            base_dir,
            ward,
            state_dir,
            admin_addr,
            metrics_device_labels,
            mapping,
            buffer,
            pipeline,
            sources,
            sinks,
        }),
        _ => Err(cx.errors),
    }
}

/// Loads the templates named by the config and reports their errors with their own position.
fn check_templates(cx: &mut Ctx<'_>, m: &MappingConfig) {
    fn report(cx: &mut Ctx<'_>, file: &Path, key: &str, errs: Vec<crate::mapping::TemplateError>) {
        for e in errs {
            cx.errors.push(ConfigError {
                file: file.to_owned(),
                line: e.pos.line,
                column: e.pos.column,
                key: key.to_owned(),
                message: format!(
                    "{}{}",
                    e.entry
                        .map(|i| format!("template[{i}]: "))
                        .unwrap_or_default(),
                    e.message
                ),
            });
        }
    }
    match std::fs::read_to_string(&m.device) {
        Ok(t) => report(
            cx,
            &m.device,
            "mapping.device",
            crate::mapping::load_device_mapping(&t).errors,
        ),
        Err(e) => cx.err(
            None,
            "mapping.device",
            format!("cannot read {}: {e}", m.device.display()),
        ),
    }
    if let Some(f) = &m.fhir {
        match std::fs::read_to_string(f) {
            Ok(t) => report(
                cx,
                f,
                "mapping.fhir",
                crate::mapping::load_fhir_mapping(&t).errors,
            ),
            Err(e) => cx.err(
                None,
                "mapping.fhir",
                format!("cannot read {}: {e}", f.display()),
            ),
        }
    }
}

/// Reads a secret. `credentials_dir` is `$CREDENTIALS_DIRECTORY` (passed in, not read here).
pub fn resolve_secret(
    secret: &SecretRef,
    env: &dyn Fn(&str) -> Option<String>,
    credentials_dir: Option<&Path>,
) -> Result<String, String> {
    let trim = |s: String| s.trim_end_matches(['\n', '\r']).to_owned();
    match secret {
        SecretRef::Env(name) => {
            env(name).ok_or_else(|| format!("environment variable {name} is not set"))
        }
        SecretRef::File(p) => std::fs::read_to_string(p)
            .map(trim)
            .map_err(|e| format!("cannot read secret file {}: {e}", p.display())),
        SecretRef::Credential(name) => {
            let dir = credentials_dir.ok_or_else(|| {
                format!(
                    "credential '{name}' needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)"
                )
            })?;
            let p = dir.join(name);
            std::fs::read_to_string(&p)
                .map(trim)
                .map_err(|e| format!("cannot read credential {}: {e}", p.display()))
        }
    }
}

/// `[[sources]] type = "ble"`: the Bluetooth LE source and its `[[sources.devices]]`.
fn parse_ble_source(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    path: &str,
    span: Option<Range<usize>>,
) -> Option<super::BleConfig> {
    use crate::sources::ble::config::{parse_octets, BleDeviceConfig, BtAddress, DeviceMatch};
    use crate::sources::ble::Profile;
    if !cfg!(feature = "ble") {
        cx.err(
            span.clone(),
            &format!("{path}.type"),
            "this iomt-agent was built without Bluetooth LE support (cargo feature `ble`)",
        );
    }
    let secs = |s: &mut Section<'_, '_>, cx: &mut Ctx<'_>, key: &str, default: f64| {
        let v = s
            .secs(cx, key)
            .unwrap_or_else(|| Duration::from_secs_f64(default));
        if v < Duration::from_millis(10) {
            cx.err(
                span.clone(),
                &format!("{path}.{key}"),
                "must be at least 0.01 seconds",
            );
        }
        v
    };
    let adapter = s.str(cx, "adapter");
    let connect_timeout = secs(s, cx, "connect_timeout_secs", 20.0);
    let reconnect_min = secs(s, cx, "reconnect_min_secs", 1.0);
    let reconnect_max = secs(s, cx, "reconnect_max_secs", 60.0);
    let link_check = secs(s, cx, "link_check_secs", 5.0);
    if reconnect_max < reconnect_min {
        cx.err(
            span.clone(),
            &format!("{path}.reconnect_max_secs"),
            "must not be less than reconnect_min_secs",
        );
    }
    let max_devices = s.u64(cx, "max_devices").unwrap_or(32);
    let write_ct_default = s.bool(cx, "write_current_time").unwrap_or(false);
    let device_clock_default = s.bool(cx, "use_device_clock").unwrap_or(true);
    let mut devices = Vec::new();
    let mut seen = HashSet::new();
    let tables = s.tables(cx, "devices");
    if tables.is_empty() {
        cx.err(
            span.clone(),
            &format!("{path}.devices"),
            "a BLE source needs at least one [[sources.devices]] entry (the agent never connects to devices the config does not name)",
        );
    }
    for mut d in tables {
        let dpath = d.path.clone();
        let dspan = d.span.clone();
        let profile = match d.str(cx, "profile") {
            Some(p) => match Profile::parse(&p) {
                Some(p) => Some(p),
                None => {
                    cx.err(
                        dspan.clone(),
                        &format!("{dpath}.profile"),
                        format!(
                            "'{p}' is not a supported profile (known: {})",
                            Profile::ALL.map(|p| p.name()).join(", ")
                        ),
                    );
                    None
                }
            },
            None => {
                cx.err(
                    dspan.clone(),
                    &format!("{dpath}.profile"),
                    "every device needs a profile (e.g. profile = \"heart_rate\")",
                );
                None
            }
        };
        let address = d.str(cx, "address");
        let allow = d.get("allow").map(|v| (v.span(), v.get_ref()));
        let matcher = match (address, allow) {
            (Some(a), None) => match BtAddress::parse(&a) {
                Some(a) => {
                    if !seen.insert(a) {
                        cx.err(
                            dspan.clone(),
                            &format!("{dpath}.address"),
                            format!("device {a} is configured twice"),
                        );
                    }
                    Some(DeviceMatch::Address(a))
                }
                None => {
                    cx.err(
                        dspan.clone(),
                        &format!("{dpath}.address"),
                        format!("'{a}' is not a Bluetooth address (AA:BB:CC:DD:EE:FF)"),
                    );
                    None
                }
            },
            (None, Some((aspan, DeValue::Array(items)))) => {
                let mut prefixes = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(p) => match parse_octets(p) {
                            Some(o) if (1..=6).contains(&o.len()) => prefixes.push(o),
                            _ => cx.err(
                                Some(item.span()),
                                &format!("{dpath}.allow"),
                                format!("'{p}' is not an address prefix (AA:BB:CC, a manufacturer's OUI, up to a whole address)"),
                            ),
                        },
                        _ => cx.err(
                            Some(item.span()),
                            &format!("{dpath}.allow"),
                            "expected address prefixes as strings",
                        ),
                    }
                }
                if items.is_empty() {
                    cx.err(
                        Some(aspan),
                        &format!("{dpath}.allow"),
                        "an empty allow list admits nothing: name address prefixes (there is no wildcard)",
                    );
                }
                Some(DeviceMatch::Service { allow: prefixes })
            }
            (None, Some((aspan, _))) => {
                cx.err(
                    Some(aspan),
                    &format!("{dpath}.allow"),
                    "expected an array of address prefixes",
                );
                None
            }
            (Some(_), Some(_)) => {
                cx.err(
                    dspan.clone(),
                    &dpath,
                    "give either address (one device) or allow (devices advertising the profile's service), not both",
                );
                None
            }
            (None, None) => {
                cx.err(
                    dspan.clone(),
                    &dpath,
                    "a device needs an address, or an allow list of address prefixes for devices advertising the profile's service",
                );
                None
            }
        };
        let device_id = d.str(cx, "device_id");
        if device_id.is_some() && matches!(matcher, Some(DeviceMatch::Service { .. })) {
            cx.err(
                dspan.clone(),
                &format!("{dpath}.device_id"),
                "device_id names one device: use it with address, not with allow",
            );
        }
        let patient_id = d.str(cx, "patient_id");
        let bed = d.str(cx, "bed");
        let write_current_time = d.bool(cx, "write_current_time").unwrap_or(write_ct_default);
        let use_device_clock = d
            .bool(cx, "use_device_clock")
            .unwrap_or(device_clock_default);
        let intermediate = d.bool(cx, "intermediate").unwrap_or(false);
        d.finish(cx);
        if let (Some(matcher), Some(profile)) = (matcher, profile) {
            devices.push(BleDeviceConfig {
                matcher,
                profile,
                device_id,
                patient_id,
                bed,
                write_current_time,
                use_device_clock,
                intermediate,
            });
        }
    }
    Some(super::BleConfig {
        adapter,
        devices,
        max_devices: max_devices.clamp(1, 1024) as usize,
        connect_timeout,
        reconnect_min,
        reconnect_max,
        link_check,
    })
}

// ---- Device sources: MQTT, serial, MLLP (types in sources/{mqtt,serial,mllp}/config.rs) ----

fn err_at(cx: &mut Ctx<'_>, s: &mut Section<'_, '_>, key: &str, message: impl Into<String>) {
    let span = s.get(key).map(|v| v.span()).or_else(|| s.span.clone());
    let path = s.key_path(key);
    cx.err(span, &path, message);
}

/// A string key that must be one of `options`.
fn choice<T: Copy>(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    key: &str,
    options: &[(&str, T)],
) -> Option<T> {
    let v = s.str(cx, key)?;
    match options.iter().find(|(n, _)| *n == v) {
        Some((_, t)) => Some(*t),
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            err_at(
                cx,
                s,
                key,
                format!("'{v}' is not one of: {}", names.join(", ")),
            );
            None
        }
    }
}

/// An integer key within `range`.
fn ranged(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Option<u64> {
    let v = s.u64(cx, key)?;
    if range.contains(&v) {
        Some(v)
    } else {
        err_at(
            cx,
            s,
            key,
            format!("must be between {} and {}", range.start(), range.end()),
        );
        None
    }
}

/// A non-empty string key.
fn non_empty(cx: &mut Ctx<'_>, s: &mut Section<'_, '_>, key: &str) -> Option<String> {
    let v = s.str(cx, key)?;
    if v.trim().is_empty() {
        err_at(cx, s, key, "must not be empty");
        None
    } else {
        Some(v)
    }
}

fn parse_backoff(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    prefix: &str,
    default: crate::sources::ingest::Backoff,
) -> crate::sources::ingest::Backoff {
    let (min_key, max_key) = (format!("{prefix}_min_secs"), format!("{prefix}_max_secs"));
    let mut b = default;
    if let Some(v) = s.secs(cx, &min_key) {
        if v < Duration::from_millis(10) {
            err_at(cx, s, &min_key, "must be at least 0.01 s");
        }
        b.min = v.max(Duration::from_millis(10));
    }
    if let Some(v) = s.secs(cx, &max_key) {
        b.max = v;
    }
    if b.max < b.min {
        err_at(
            cx,
            s,
            &max_key,
            format!("must not be less than {min_key} ({:?})", b.min),
        );
        b.max = b.min;
    }
    b
}

/// Port settings of a serial source (also MLLP over serial).
fn parse_port_settings(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    base_dir: &Path,
) -> Option<crate::sources::serial::PortSettings> {
    use crate::sources::serial::{FlowControl, Parity, PortSettings};
    let path = non_empty(cx, s, "path");
    if path.is_none() && s.get("path").is_none() {
        err_at(
            cx,
            s,
            "path",
            "a serial port path is required (path = \"/dev/serial/by-id/...\")",
        );
    }
    let mut p = PortSettings::new(base_dir.join(path.unwrap_or_default()));
    if let Some(v) = ranged(cx, s, "baud", 50..=4_000_000) {
        p.baud = v as u32;
    }
    if let Some(v) = ranged(cx, s, "data_bits", 5..=8) {
        p.data_bits = v as u8;
    }
    if let Some(v) = choice(
        cx,
        s,
        "parity",
        &[
            ("none", Parity::None),
            ("odd", Parity::Odd),
            ("even", Parity::Even),
        ],
    ) {
        p.parity = v;
    }
    if let Some(v) = ranged(cx, s, "stop_bits", 1..=2) {
        p.stop_bits = v as u8;
    }
    if let Some(v) = choice(
        cx,
        s,
        "flow_control",
        &[
            ("none", FlowControl::None),
            ("software", FlowControl::Software),
            ("hardware", FlowControl::Hardware),
        ],
    ) {
        p.flow_control = v;
    }
    p.reopen = parse_backoff(cx, s, "reopen", p.reopen);
    Some(p)
}

fn parse_serial_source(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    base_dir: &Path,
) -> Option<crate::sources::serial::SerialConfig> {
    use crate::sources::serial::{SerialConfig, SerialProtocol};
    let before = cx.errors.len();
    let port = parse_port_settings(cx, s, base_dir);
    let protocol = match s.str(cx, "protocol") {
        Some(p) => match SerialProtocol::from_name(&p) {
            Some(p) => Some(p),
            None => {
                err_at(
                    cx,
                    s,
                    "protocol",
                    format!(
                        "'{p}' is not a serial protocol (known: {})",
                        SerialProtocol::NAMES.join(", ")
                    ),
                );
                None
            }
        },
        None => {
            err_at(
                cx,
                s,
                "protocol",
                format!(
                    "a serial source needs a protocol ({})",
                    SerialProtocol::NAMES.join(", ")
                ),
            );
            None
        }
    };
    let device_id = non_empty(cx, s, "device_id");
    if device_id.is_none() && s.get("device_id").is_none() {
        err_at(
            cx,
            s,
            "device_id",
            "serial devices rarely report an identity: set device_id (and patient_id/bed if known)",
        );
    }
    let patient_id = non_empty(cx, s, "patient_id");
    let bed = non_empty(cx, s, "bed");
    if cx.errors.len() > before {
        return None;
    }
    Some(SerialConfig {
        port: port?,
        protocol: protocol?,
        device_id: device_id?,
        patient_id,
        bed,
    })
}

fn parse_mqtt_source(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    name: &str,
    base_dir: &Path,
) -> Option<crate::sources::mqtt::MqttConfig> {
    use crate::sources::ingest::Backoff;
    use crate::sources::mqtt::{check_filter, MqttConfig, MqttTls, MqttVersion, Subscription};
    let before = cx.errors.len();
    let host = non_empty(cx, s, "host");
    if host.is_none() && s.get("host").is_none() {
        err_at(cx, s, "host", "an MQTT source needs the broker's host name");
    }
    let version = choice(
        cx,
        s,
        "protocol_version",
        &[("3.1.1", MqttVersion::V311), ("5", MqttVersion::V5)],
    )
    .unwrap_or(MqttVersion::V311);
    let client_id = non_empty(cx, s, "client_id");
    if client_id.is_none() && s.get("client_id").is_none() {
        err_at(
            cx,
            s,
            "client_id",
            "a stable client_id is required: the broker keeps the persistent session under it",
        );
    }
    let clean_session = s.bool(cx, "clean_session").unwrap_or(false);
    let session_expiry = ranged(cx, s, "session_expiry_secs", 0..=u64::from(u32::MAX))
        .map_or(Duration::from_secs(7 * 86_400), Duration::from_secs);
    let keep_alive = ranged(cx, s, "keep_alive_secs", 5..=65_535)
        .map_or(Duration::from_secs(30), Duration::from_secs);
    let username = non_empty(cx, s, "username");
    let password = s.secret(cx, "password", base_dir);
    if password.is_some() && username.is_none() {
        err_at(cx, s, "password", "a password needs a username");
    }
    let ca_file = non_empty(cx, s, "ca_file").map(|f| base_dir.join(f));
    let client_cert_file = non_empty(cx, s, "client_cert_file").map(|f| base_dir.join(f));
    let client_key = s.secret(cx, "client_key", base_dir);
    if client_cert_file.is_some() != client_key.is_some() {
        err_at(
            cx,
            s,
            "client_cert_file",
            "client_cert_file and client_key go together (mutual TLS)",
        );
    }
    let tls_on = s
        .bool(cx, "tls")
        .unwrap_or(ca_file.is_some() || client_cert_file.is_some());
    if !tls_on && (ca_file.is_some() || client_cert_file.is_some()) {
        err_at(cx, s, "tls", "tls = false but TLS files are set");
    }
    let tls = tls_on.then(|| MqttTls {
        ca_file: ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
        client_cert_file: client_cert_file.clone(),
        client_key: client_key.clone(),
    });
    let port =
        ranged(cx, s, "port", 1..=65_535).map_or(if tls_on { 8883 } else { 1883 }, |p| p as u16);
    let mut subscriptions = Vec::new();
    for mut t in s.tables(cx, "subscriptions") {
        let filter = non_empty(cx, &mut t, "filter");
        if filter.is_none() && t.get("filter").is_none() {
            err_at(cx, &mut t, "filter", "a subscription needs a topic filter");
        }
        let qos = ranged(cx, &mut t, "qos", 0..=1).unwrap_or(1) as u8;
        if let Some(f) = filter {
            if let Err(e) = check_filter(&f) {
                err_at(cx, &mut t, "filter", e);
            }
            subscriptions.push(Subscription { filter: f, qos });
        }
        t.finish(cx);
    }
    if subscriptions.is_empty() && cx.errors.len() == before {
        err_at(
            cx,
            s,
            "subscriptions",
            "an MQTT source needs at least one subscription (subscriptions = [{ filter = \"ward7/+/vitals\", qos = 1 }])",
        );
    }
    let device_id_topic_segment =
        ranged(cx, s, "device_id_topic_segment", 0..=64).map(|v| v as usize);
    let device_id = non_empty(cx, s, "device_id").unwrap_or_else(|| name.to_owned());
    let wrap_non_json = s.bool(cx, "wrap_non_json").unwrap_or(false);
    let reconnect = parse_backoff(cx, s, "reconnect", Backoff::default());
    if cx.errors.len() > before {
        return None;
    }
    Some(MqttConfig {
        host: host?,
        port,
        version,
        client_id: client_id?,
        clean_session,
        session_expiry,
        keep_alive,
        username,
        password,
        tls,
        subscriptions,
        device_id_topic_segment,
        device_id,
        wrap_non_json,
        reconnect,
    })
}

fn parse_mllp_source(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    base_dir: &Path,
    ward: Option<&str>,
) -> Option<crate::sources::mllp::MllpConfig> {
    use crate::sources::mllp::{DeviceIdFrom, MllpConfig, MllpTransport, PatientIdFrom};
    let before = cx.errors.len();
    let listen = s.str(cx, "listen");
    let has_path = s.table.iter().any(|(k, _)| k.get_ref().as_ref() == "path");
    let transport = match (listen, has_path) {
        (Some(l), false) => match l.parse::<SocketAddr>() {
            Ok(listen) => Some(MllpTransport::Tcp { listen }),
            Err(_) => {
                err_at(
                    cx,
                    s,
                    "listen",
                    format!("'{l}' is not HOST:PORT (e.g. 0.0.0.0:2575)"),
                );
                None
            }
        },
        (None, true) => parse_port_settings(cx, s, base_dir).map(MllpTransport::Serial),
        (Some(_), true) => {
            err_at(
                cx,
                s,
                "listen",
                "give either listen (TCP) or path (serial port), not both",
            );
            None
        }
        (None, false) => {
            err_at(
                cx,
                s,
                "listen",
                "an MLLP source needs listen = \"0.0.0.0:2575\" (TCP) or path = \"/dev/ttyUSB0\" (serial)",
            );
            None
        }
    };
    let device_id_from = choice(
        cx,
        s,
        "device_id_from",
        &[
            ("obx18", DeviceIdFrom::Obx18),
            ("msh3", DeviceIdFrom::Msh3),
            ("fixed", DeviceIdFrom::Fixed),
        ],
    )
    .unwrap_or(DeviceIdFrom::Obx18);
    let device_id = non_empty(cx, s, "device_id");
    if device_id_from == DeviceIdFrom::Fixed && device_id.is_none() {
        err_at(
            cx,
            s,
            "device_id",
            "device_id_from = \"fixed\" needs device_id",
        );
    }
    let patient_id_from = choice(
        cx,
        s,
        "patient_id_from",
        &[
            ("pid3", PatientIdFrom::Pid3),
            ("pv1", PatientIdFrom::Pv1),
            ("none", PatientIdFrom::None),
        ],
    )
    .unwrap_or(PatientIdFrom::Pid3);
    let ack_sending_application =
        non_empty(cx, s, "ack_sending_application").unwrap_or_else(|| "IOMT-EDGE".into());
    let ack_sending_facility = s
        .str(cx, "ack_sending_facility")
        .unwrap_or_else(|| ward.unwrap_or_default().to_owned());
    let max_connections = ranged(cx, s, "max_connections", 1..=1024).unwrap_or(16) as usize;
    let idle_timeout = s
        .secs(cx, "idle_timeout_secs")
        .unwrap_or(Duration::from_secs(600))
        .max(Duration::from_secs(1));
    if cx.errors.len() > before {
        return None;
    }
    Some(MllpConfig {
        transport: transport?,
        device_id_from,
        device_id,
        patient_id_from,
        ack_sending_application,
        ack_sending_facility,
        max_connections,
        idle_timeout,
    })
}

/// `[[sinks]] type = "eventhubs"` (types in `config/mod.rs`, sending in
/// `runtime/eventhubs_sink.rs`). Secrets stay references here; the runtime resolves them.
fn parse_eventhubs_sink(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    base_dir: &Path,
) -> Option<super::EventHubsSinkConfig> {
    use super::{EventHubsAuthConfig, EventHubsPayload, EventHubsSinkConfig};
    use crate::sinks::eventhubs::Transport;
    let before = cx.errors.len();
    let namespace = non_empty(cx, s, "namespace");
    if let Some(ns) = &namespace {
        if ns.contains("://") || ns.contains('/') {
            err_at(
                cx,
                s,
                "namespace",
                "must be a host name such as ward7.servicebus.windows.net (use custom_endpoint for a URL)",
            );
        }
    }
    let custom_endpoint = non_empty(cx, s, "custom_endpoint");
    if let Some(ep) = &custom_endpoint {
        if !["amqp://", "amqps://", "ws://", "wss://"]
            .iter()
            .any(|p| ep.starts_with(p))
        {
            err_at(
                cx,
                s,
                "custom_endpoint",
                "must start with amqp://, amqps://, ws:// or wss://",
            );
        }
    }
    let hub = non_empty(cx, s, "hub");
    let auth = match s.table(cx, "auth") {
        None => {
            err_at(
                cx,
                s,
                "auth",
                "an Event Hubs sink needs auth = { type = \"connection_string\", secret = { credential = \"eventhubs\" } } (or client_secret, managed_identity)",
            );
            None
        }
        Some(mut a) => {
            let kind = choice(
                cx,
                &mut a,
                "type",
                &[
                    ("connection_string", 0u8),
                    ("client_secret", 1),
                    ("managed_identity", 2),
                ],
            );
            let auth = match kind {
                Some(0) => {
                    let secret = a.secret(cx, "secret", base_dir);
                    if secret.is_none() && a.get("secret").is_none() {
                        err_at(
                            cx,
                            &mut a,
                            "secret",
                            "the connection string's secret reference is required",
                        );
                    }
                    secret.map(EventHubsAuthConfig::ConnectionString)
                }
                Some(1) => {
                    let tenant_id = non_empty(cx, &mut a, "tenant_id");
                    let client_id = non_empty(cx, &mut a, "client_id");
                    let secret = a.secret(cx, "secret", base_dir);
                    for (key, missing) in [
                        ("tenant_id", tenant_id.is_none()),
                        ("client_id", client_id.is_none()),
                        ("secret", secret.is_none()),
                    ] {
                        if missing && a.get(key).is_none() {
                            err_at(cx, &mut a, key, "required for client_secret authentication");
                        }
                    }
                    match (tenant_id, client_id, secret) {
                        (Some(tenant_id), Some(client_id), Some(secret)) => {
                            Some(EventHubsAuthConfig::ClientSecret {
                                tenant_id,
                                client_id,
                                secret,
                            })
                        }
                        _ => None,
                    }
                }
                Some(_) => Some(EventHubsAuthConfig::ManagedIdentity {
                    client_id: non_empty(cx, &mut a, "client_id"),
                }),
                None => {
                    if a.get("type").is_none() {
                        err_at(
                            cx,
                            &mut a,
                            "type",
                            "one of connection_string, client_secret, managed_identity",
                        );
                    }
                    None
                }
            };
            a.finish(cx);
            auth
        }
    };
    if !matches!(auth, Some(EventHubsAuthConfig::ConnectionString(_)) | None) {
        if namespace.is_none() {
            err_at(
                cx,
                s,
                "namespace",
                "Entra ID authentication needs the namespace",
            );
        }
        if hub.is_none() {
            err_at(
                cx,
                s,
                "hub",
                "Entra ID authentication needs the event hub name",
            );
        }
    }
    let transport = choice(
        cx,
        s,
        "transport",
        &[("tcp", Transport::Tcp), ("websocket", Transport::WebSocket)],
    )
    .unwrap_or(Transport::Tcp);
    let payload = choice(
        cx,
        s,
        "payload",
        &[
            ("raw", EventHubsPayload::Raw),
            ("normalized", EventHubsPayload::Normalized),
        ],
    )
    .unwrap_or(EventHubsPayload::Raw);
    let gzip_groups = s.bool(cx, "gzip_groups").unwrap_or(false);
    if gzip_groups && payload == EventHubsPayload::Raw {
        err_at(
            cx,
            s,
            "gzip_groups",
            "gzip measurement groups need payload = \"normalized\"",
        );
    }
    let max_batch_events = ranged(cx, s, "max_batch_events", 1..=10_000).unwrap_or(256) as usize;
    let linger = s.secs(cx, "linger_secs");
    let send_timeout = s
        .secs(cx, "send_timeout_secs")
        .unwrap_or(Duration::from_secs(30));
    if send_timeout < Duration::from_millis(100) {
        err_at(cx, s, "send_timeout_secs", "must be at least 0.1 s");
    }
    if cx.errors.len() > before {
        return None;
    }
    Some(EventHubsSinkConfig {
        namespace,
        custom_endpoint,
        hub,
        auth: auth?,
        transport,
        payload,
        gzip_groups,
        max_batch_events,
        linger,
        send_timeout,
    })
}

/// `[[sinks]] type = "fhir"`: the FHIR sink's keys (see `docs/fhir.md`).
fn parse_fhir_sink(
    cx: &mut Ctx<'_>,
    s: &mut Section<'_, '_>,
    path: &str,
    base: &Path,
) -> Option<crate::sinks::fhir::FhirSinkConfig> {
    use crate::sinks::fhir::{FhirAuth, FhirSinkConfig, IdentityMode};
    let span = s.span.clone();
    let key = |k: &str| format!("{path}.{k}");
    let mut ok = true;
    let url = s.str(cx, "url");
    let mut c = FhirSinkConfig::new(url.clone().unwrap_or_default());
    let mut loopback = false;
    match url.as_deref().map(reqwest::Url::parse) {
        None => {
            cx.err(
                span.clone(),
                &key("url"),
                "the FHIR base URL is required (url = \"https://<server>/fhir\")",
            );
            ok = false;
        }
        Some(Ok(u)) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            let host = u.host_str().unwrap_or("");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
                || u.scheme() == "https";
            if u.query().is_some() {
                let sp = s.get("url").map(|v| v.span());
                cx.err(sp, &key("url"), "the FHIR base URL must not have a query");
                ok = false;
            }
        }
        Some(_) => {
            let sp = s.get("url").map(|v| v.span());
            cx.err(
                sp,
                &key("url"),
                format!("'{}' is not an http(s) URL", url.unwrap_or_default()),
            );
            ok = false;
        }
    }
    if let Some(v) = s.str(cx, "identity") {
        c.identity = match v.as_str() {
            "lookup" => IdentityMode::Lookup,
            "create" => IdentityMode::Create,
            "lookup_with_encounter" => IdentityMode::LookupWithEncounter,
            other => {
                let sp = s.get("identity").map(|v| v.span());
                cx.err(sp, &key("identity"), format!("'{other}' is not an identity mode (lookup, create or lookup_with_encounter)"));
                ok = false;
                IdentityMode::Lookup
            }
        };
    }
    if let Some(v) = s.str(cx, "device_identifier_system") {
        c.device_identifier_system = Some(v).filter(|v| !v.trim().is_empty());
    }
    if let Some(v) = s.str(cx, "patient_identifier_system") {
        c.patient_identifier_system = Some(v).filter(|v| !v.trim().is_empty());
    }
    if let Some(v) = s.bool(cx, "verify_patient") {
        c.verify_patient = v;
    }
    if let Some(v) = s.secs(cx, "identity_cache_ttl_secs") {
        c.identity_cache_ttl = v;
    }
    if let Some(v) = s.u64(cx, "identity_cache_entries") {
        c.identity_cache_entries = v.max(1) as usize;
    }
    if let Some(v) = s.u64(cx, "observation_cache_entries") {
        c.observation_cache_entries = v as usize;
    }
    if let Some(v) = s.secs(cx, "observation_cache_ttl_secs") {
        c.observation_cache_ttl = v;
    }
    if let Some(v) = s.secs(cx, "request_timeout_secs") {
        if v.is_zero() {
            let sp = s.get("request_timeout_secs").map(|v| v.span());
            cx.err(sp, &key("request_timeout_secs"), "must be greater than 0");
            ok = false;
        }
        c.request_timeout = v;
    }
    if let Some(v) = s.u64(cx, "max_retries") {
        c.max_retries = v.min(20) as u32;
    }
    if let Some(v) = s.secs(cx, "backoff_initial_secs") {
        c.backoff_initial = v.max(std::time::Duration::from_millis(1));
    }
    if let Some(v) = s.secs(cx, "backoff_max_secs") {
        c.backoff_max = v;
    }
    if c.backoff_max < c.backoff_initial {
        cx.err(
            span.clone(),
            &key("backoff_max_secs"),
            "must be at least backoff_initial_secs",
        );
        ok = false;
    }
    if let Some(v) = s.u64(cx, "conflict_retries") {
        c.conflict_retries = v.min(20) as u32;
    }
    if let Some(v) = s.u64(cx, "dead_letter_after_attempts") {
        if v > 1000 {
            let sp = s.get("dead_letter_after_attempts").map(|v| v.span());
            cx.err(
                sp,
                &key("dead_letter_after_attempts"),
                "must be between 0 (never) and 1000",
            );
            ok = false;
        }
        c.dead_letter_after_attempts = v.min(1000) as u32;
    }
    if let Some(v) = s.u64(cx, "concurrency") {
        if !(1..=64).contains(&v) {
            let sp = s.get("concurrency").map(|v| v.span());
            cx.err(sp, &key("concurrency"), "must be between 1 and 64");
            ok = false;
        }
        c.concurrency = v.clamp(1, 64) as usize;
    }
    if let Some(v) = s.bool(cx, "short_identifiers") {
        c.short_identifiers = v;
    }
    if let Some(v) = s.bool(cx, "batch_bundle") {
        c.batch_bundle = v;
    }
    if let Some(v) = s.u64(cx, "bundle_max_entries") {
        if !(1..=1000).contains(&v) {
            let sp = s.get("bundle_max_entries").map(|v| v.span());
            cx.err(sp, &key("bundle_max_entries"), "must be between 1 and 1000");
            ok = false;
        }
        c.bundle_max_entries = v.clamp(1, 1000) as usize;
    }
    let mut file = |s: &mut Section<'_, '_>, cx: &mut Ctx<'_>, k: &str| -> Option<PathBuf> {
        let p = base.join(s.str(cx, k)?);
        if let Err(e) = std::fs::metadata(&p) {
            let sp = s.get(k).map(|v| v.span());
            cx.err(sp, &key(k), format!("cannot read {}: {e}", p.display()));
            ok = false;
        }
        Some(p)
    };
    c.ca_file = file(s, cx, "ca_file");
    c.client_cert = file(s, cx, "client_cert");
    c.client_key = file(s, cx, "client_key");
    if c.client_cert.is_some() != c.client_key.is_some() {
        cx.err(
            span.clone(),
            &key("client_cert"),
            "client_cert and client_key go together (mutual TLS)",
        );
        ok = false;
    }
    if let Some(mut a) = s.table(cx, "auth") {
        let aspan = a.span.clone();
        let apath = a.path.clone();
        let akey = |k: &str| format!("{apath}.{k}");
        match a.str(cx, "type").as_deref() {
            Some("none") => c.auth = FhirAuth::None,
            Some("bearer") => match a.secret(cx, "token", base) {
                Some(token) => c.auth = FhirAuth::Bearer { token },
                None => {
                    if a.get("token").is_none() {
                        cx.err(aspan.clone(), &akey("token"), "a bearer token is required: token = { env = \"VAR\" } (or file/credential)");
                    }
                    ok = false;
                }
            },
            Some("oauth2") => {
                let token_url = a.str(cx, "token_url");
                let client_id = a.str(cx, "client_id");
                let secret = a.secret(cx, "client_secret", base);
                let scope = a.str(cx, "scope");
                let resource = a.str(cx, "resource");
                for (k, missing) in [
                    ("token_url", token_url.is_none()),
                    ("client_id", client_id.is_none()),
                    (
                        "client_secret",
                        secret.is_none() && a.get("client_secret").is_none(),
                    ),
                ] {
                    if missing {
                        cx.err(aspan.clone(), &akey(k), format!("oauth2 needs {k}"));
                        ok = false;
                    }
                }
                if let Some(t) = &token_url {
                    if !reqwest::Url::parse(t).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
                    {
                        let sp = a.get("token_url").map(|v| v.span());
                        cx.err(
                            sp,
                            &akey("token_url"),
                            format!("'{t}' is not an http(s) URL"),
                        );
                        ok = false;
                    }
                }
                match (token_url, client_id, secret) {
                    (Some(token_url), Some(client_id), Some(client_secret)) => {
                        c.auth = FhirAuth::OAuth2 {
                            token_url,
                            client_id,
                            client_secret,
                            scope,
                            resource,
                        }
                    }
                    _ => ok = false,
                }
            }
            Some(other) => {
                let sp = a.get("type").map(|v| v.span());
                cx.err(
                    sp,
                    &akey("type"),
                    format!("'{other}' is not an auth type (none, bearer or oauth2)"),
                );
                ok = false;
            }
            None => {
                cx.err(
                    aspan,
                    &akey("type"),
                    "auth needs a type (none, bearer or oauth2)",
                );
                ok = false;
            }
        }
        a.finish(cx);
    }
    if !loopback && !matches!(c.auth, FhirAuth::None) && ok {
        cx.err(
            span,
            &key("url"),
            "credentials would be sent over plain http: use https (plain http is allowed only to localhost)",
        );
        ok = false;
    }
    ok.then_some(c)
}
