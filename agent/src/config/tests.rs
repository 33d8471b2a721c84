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
    let text = "[mapping]\ndevice = \"dev.json\"\n[[sources]]\ntype = \"simulator\"\n[[sinks]]\ntype = \"outbox\"\n";
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
