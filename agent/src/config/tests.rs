use super::*;
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const DEVICE: &str = r#"{"templateType":"CollectionContent","template":[]}"#;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iomt-config-test-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_minimal_config_gets_defaults() {
    let d = scratch("minimal");
    write(&d, "dev.json", DEVICE);
    write(
        &d,
        "fhir.json",
        r#"{"templateType":"CollectionFhir","template":[]}"#,
    );
    let text = "[mapping]\ndevice = \"dev.json\"\nfhir = \"fhir.json\"\n[[sources]]\ntype = \"simulator\"\n[[sinks]]\ntype = \"outbox\"\n";
    let c = load(text, &d.join("ward.toml")).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/iomt-edge"));
    assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9464");
    assert_eq!(c.buffer.when_full, WhenFull::Block);
    assert_eq!(c.buffer.commit_max_records, 256);
    assert_eq!(c.sources[0].name, "simulator");
    let SinkKind::Outbox(o) = &c.sinks[0].kind else {
        panic!("an outbox sink")
    };
    assert_eq!(o.dir, PathBuf::from("/var/lib/iomt-edge/outbox"));
}

#[test]
fn every_error_is_reported_at_once_with_line_and_key() {
    let d = scratch("errors");
    write(&d, "dev.json", "{\n \"templateType\": \"CollectionContent\",\n \"template\": [ {\"templateType\": \"mockA\", \"template\": {}} ]\n}");
    let text = r#"ward = "4 West"
colour = "blue"
[agent]
admin_addr = "not an address"
[mapping]
device = "dev.json"
fhir = "missing.json"
[buffer]
when_full = "explode"
commit_interval_ms = "fast"
[[sources]]
type = "teleporter"
[[sinks]]
type = "outbox"
password = "hunter2"
"#;
    let errs = load(text, &d.join("ward.toml")).unwrap_err();
    let find = |key: &str| {
        errs.iter()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("no error for {key}: {errs:#?}"))
    };
    assert_eq!(find("colour").line, 2);
    assert_eq!(find("agent.admin_addr").line, 4);
    assert!(find("mapping.fhir").message.contains("missing.json"));
    assert_eq!(find("buffer.when_full").line, 9);
    assert_eq!(find("buffer.commit_interval_ms").line, 10);
    assert_eq!(find("sources[0].type").line, 11);
    assert_eq!(find("sinks[0].password").line, 15);
    // The template error carries the template file's own line.
    let t = errs.iter().find(|e| e.key == "mapping.device").unwrap();
    assert!(t.file.ends_with("dev.json"));
    assert_eq!(t.line, 3);
    assert!(t
        .message
        .contains("No match found for template type mockA."));
    assert!(errs.len() >= 8, "{errs:#?}");
}

#[test]
fn syntax_errors_have_a_position() {
    let errs = load("[mapping\ndevice = 1", Path::new("w.toml")).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].line >= 1 && errs[0].message.starts_with("invalid TOML"),
        "{errs:?}"
    );
}

#[test]
fn secrets_resolve_from_env_file_and_credentials() {
    let d = scratch("secrets");
    write(&d, "s.txt", "from-file\n");
    write(&d, "cred", "from-cred");
    let env = |k: &str| (k == "SECRET").then(|| "from-env".to_owned());
    assert_eq!(
        resolve_secret(&SecretRef::Env("SECRET".into()), &env, None).unwrap(),
        "from-env"
    );
    assert!(resolve_secret(&SecretRef::Env("NOPE".into()), &env, None)
        .unwrap_err()
        .contains("NOPE"));
    assert_eq!(
        resolve_secret(&SecretRef::File(d.join("s.txt")), &env, None).unwrap(),
        "from-file"
    );
    assert_eq!(
        resolve_secret(&SecretRef::Credential("cred".into()), &env, Some(&d)).unwrap(),
        "from-cred"
    );
    assert!(
        resolve_secret(&SecretRef::Credential("cred".into()), &env, None)
            .unwrap_err()
            .contains("CREDENTIALS_DIRECTORY")
    );
}

const FHIR: &str = r#"{"templateType":"CollectionFhir","template":[]}"#;
const BLE_HEAD: &str = "[mapping]\ndevice = \"dev.json\"\nfhir = \"fhir.json\"\n[[sinks]]\ntype = \"outbox\"\n[[sources]]\ntype = \"ble\"\nname = \"ward-ble\"\n";

#[test]
fn a_ble_source_names_its_devices() {
    let d = scratch("ble-ok");
    write(&d, "dev.json", DEVICE);
    write(&d, "fhir.json", FHIR);
    let text = format!(
        "{BLE_HEAD}adapter = \"hci1\"\nreconnect_min_secs = 0.5\nwrite_current_time = true\n\
         [[sources.devices]]\naddress = \"c0:ff:ee:00:18:0d\"\nprofile = \"heart_rate\"\ndevice_id = \"hr-12\"\npatient_id = \"p-1\"\nbed = \"12\"\nuse_device_clock = false\n\
         [[sources.devices]]\nprofile = \"0x1810\"\nallow = [\"00:1C:05\", \"C0-FF-EE-00-18-10\"]\nintermediate = true\n"
    );
    let c = load(&text, &d.join("ward.toml")).unwrap();
    let SourceKind::Ble(b) = &c.sources[0].kind else {
        panic!("not a BLE source")
    };
    assert_eq!(b.adapter.as_deref(), Some("hci1"));
    assert_eq!(b.reconnect_min, Duration::from_millis(500));
    assert_eq!(b.reconnect_max, Duration::from_secs(60));
    assert_eq!(b.devices.len(), 2);
    let hr = &b.devices[0];
    use crate::sources::ble::{BtAddress, DeviceMatch, Profile};
    assert_eq!(
        hr.matcher,
        DeviceMatch::Address(BtAddress::parse("C0:FF:EE:00:18:0D").unwrap())
    );
    assert_eq!(hr.profile, Profile::HeartRate);
    assert_eq!(hr.device_id.as_deref(), Some("hr-12"));
    assert_eq!(hr.patient_id.as_deref(), Some("p-1"));
    assert!(hr.write_current_time, "source default applies");
    assert!(!hr.use_device_clock);
    let bp = &b.devices[1];
    assert_eq!(bp.profile, Profile::BloodPressure);
    assert_eq!(
        bp.matcher,
        DeviceMatch::Service {
            allow: vec![
                vec![0x00, 0x1C, 0x05],
                vec![0xC0, 0xFF, 0xEE, 0x00, 0x18, 0x10]
            ]
        }
    );
    assert!(bp.intermediate && bp.use_device_clock);
}

#[test]
fn a_ble_source_never_admits_unknown_devices() {
    let d = scratch("ble-bad");
    write(&d, "dev.json", DEVICE);
    write(&d, "fhir.json", FHIR);
    let text = format!(
        "{BLE_HEAD}reconnect_min_secs = 5\nreconnect_max_secs = 1\n\
         [[sources.devices]]\nprofile = \"blood_pressure\"\n\
         [[sources.devices]]\nprofile = \"blood_pressure\"\nallow = []\n\
         [[sources.devices]]\nprofile = \"blood_pressure\"\nallow = [\"*\"]\n\
         [[sources.devices]]\nprofile = \"cgm\"\naddress = \"C0:FF:EE:00:18:0D\"\n\
         [[sources.devices]]\nprofile = \"heart_rate\"\naddress = \"C0:FF:EE:00:18\"\n\
         [[sources.devices]]\nprofile = \"heart_rate\"\naddress = \"C0:FF:EE:00:18:0D\"\nallow = [\"C0:FF:EE\"]\n\
         [[sources.devices]]\nprofile = \"heart_rate\"\nallow = [\"C0:FF:EE\"]\ndevice_id = \"x\"\ncolour = \"red\"\n"
    );
    let errs = load(&text, &d.join("ward.toml")).unwrap_err();
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    let has = |k: &str, m: &str| {
        errs.iter()
            .any(|e| e.key == k && e.message.contains(m) && e.line > 0)
    };
    assert!(
        has("sources[0].reconnect_max_secs", "not be less"),
        "{keys:?}"
    );
    assert!(has("sources[0].devices[0]", "needs an address"), "{keys:?}");
    assert!(
        has("sources[0].devices[1].allow", "admits nothing"),
        "{keys:?}"
    );
    assert!(
        has("sources[0].devices[2].allow", "not an address prefix"),
        "{keys:?}"
    );
    assert!(
        has("sources[0].devices[3].profile", "not a supported profile"),
        "{keys:?}"
    );
    assert!(
        has("sources[0].devices[4].address", "not a Bluetooth address"),
        "{keys:?}"
    );
    assert!(has("sources[0].devices[5]", "not both"), "{keys:?}");
    assert!(
        has("sources[0].devices[6].device_id", "names one device"),
        "{keys:?}"
    );
    assert!(
        has("sources[0].devices[6].colour", "unknown key"),
        "{keys:?}"
    );

    let empty = BLE_HEAD.to_string();
    let errs = load(&empty, &d.join("ward.toml")).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.key == "sources[0].devices" && e.message.contains("at least one")),
        "{errs:?}"
    );
}

#[test]
fn an_eventhubs_sink_parses_with_its_defaults_and_needs_no_fhir_template() {
    let d = scratch("eventhubs");
    write(&d, "dev.json", DEVICE);
    let text = r#"[mapping]
device = "dev.json"
[[sources]]
type = "simulator"
[[sinks]]
type = "eventhubs"
name = "cloud"
namespace = "ward7.servicebus.windows.net"
hub = "vitals"
payload = "normalized"
gzip_groups = true
max_batch_events = 16
linger_secs = 0.5
unready_after_secs = 10
auth = { type = "client_secret", tenant_id = "t", client_id = "c", secret = { credential = "eh-secret" } }
"#;
    let c = load(text, &d.join("ward.toml")).unwrap();
    assert_eq!(c.sinks[0].name, "cloud");
    assert_eq!(c.sinks[0].unready_after, Duration::from_secs(10));
    let SinkKind::EventHubs(e) = &c.sinks[0].kind else {
        panic!("an eventhubs sink")
    };
    assert_eq!(e.payload, EventHubsPayload::Normalized);
    assert!(e.gzip_groups);
    assert_eq!(e.max_batch_events, 16);
    assert_eq!(e.linger, Some(Duration::from_millis(500)));
    assert_eq!(e.send_timeout, Duration::from_secs(30));
    assert_eq!(e.transport, crate::sinks::eventhubs::Transport::Tcp);
    assert_eq!(
        e.auth,
        EventHubsAuthConfig::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            secret: SecretRef::Credential("eh-secret".into()),
        }
    );
}

#[test]
fn eventhubs_sink_mistakes_are_all_reported() {
    let d = scratch("eventhubs-bad");
    write(&d, "dev.json", DEVICE);
    let text = r#"[mapping]
device = "dev.json"
[[sources]]
type = "simulator"
[[sinks]]
type = "eventhubs"
namespace = "amqps://ward7.servicebus.windows.net"
custom_endpoint = "127.0.0.1:5672"
transport = "carrier-pigeon"
payload = "raw"
gzip_groups = true
auth = { type = "connection_string", secret = "Endpoint=sb://inline" }
[[sinks]]
type = "eventhubs"
name = "mi"
auth = { type = "managed_identity" }
"#;
    let errs = load(text, &d.join("ward.toml")).unwrap_err();
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "sinks[0].namespace",
        "sinks[0].custom_endpoint",
        "sinks[0].transport",
        "sinks[0].gzip_groups",
        "sinks[0].auth.secret",
        "sinks[1].namespace",
        "sinks[1].hub",
    ] {
        assert!(keys.contains(&key), "{key} missing from {errs:?}");
    }
    assert!(
        !errs
            .iter()
            .any(|e| e.message.contains("Endpoint=sb://inline")),
        "the inline secret is not echoed"
    );
}

#[test]
fn fhir_short_identifiers_is_opt_in() {
    let d = scratch("fhir-short");
    write(&d, "dev.json", DEVICE);
    let base = "[mapping]\ndevice = \"dev.json\"\n[[sources]]\ntype = \"simulator\"\n[[sinks]]\ntype = \"fhir\"\nurl = \"http://127.0.0.1:1/fhir\"\n";
    for (extra, want) in [("", false), ("short_identifiers = true\n", true)] {
        let c = load(&format!("{base}{extra}"), &d.join("ward.toml"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        match &c.sinks[0].kind {
            SinkKind::Fhir(f) => assert_eq!(f.short_identifiers, want),
            other => panic!("{other:?}"),
        }
    }
}
