use super::*;
use crate::config::{SecretRef, SourceKind};
use crate::sources::ingest::Backoff;
use crate::sources::test_support::{load_source, map_envelopes, source_errors};
use serde_json::Value;
use std::time::Duration;

fn cfg() -> MqttConfig {
    MqttConfig {
        host: "localhost".into(),
        port: 1883,
        version: MqttVersion::V311,
        client_id: "gw-w7".into(),
        clean_session: false,
        session_expiry: Duration::from_secs(3600),
        keep_alive: Duration::from_secs(30),
        username: None,
        password: None,
        tls: None,
        subscriptions: vec![Subscription {
            filter: "ward7/+/vitals".into(),
            qos: 1,
        }],
        device_id_topic_segment: Some(1),
        device_id: "mqtt".into(),
        wrap_non_json: false,
        reconnect: Backoff::default(),
    }
}

fn received(topic: &str, payload: &[u8], qos: u8) -> Received {
    Received {
        topic: topic.into(),
        payload: payload.to_vec(),
        qos,
        retain: false,
        dup: false,
        pkid: 7,
        user_properties: vec![
            (
                "iothub-creation-time-utc".into(),
                "2026-03-15T07:31:00Z".into(),
            ),
            ("topic".into(), "spoofed".into()),
        ],
        epoch: 1,
        ack: None,
    }
}

#[test]
fn a_json_payload_becomes_the_body_with_topic_properties_and_device_from_the_topic() {
    let payload = br#"{"deviceId":"ox-12","patientId":"p-42","type":"spo2","timestamp":"2026-03-15T07:31:05Z","values":{"spo2":97,"pulseRate":71}}"#;
    let Item::Record(rec) = build_item(
        "mq",
        &cfg(),
        &received("ward7/ox-12/vitals", payload, 1),
        1_773_559_866_000,
    ) else {
        panic!("dead-lettered")
    };
    assert_eq!(rec.dedup_key.as_deref(), Some("mqtt:gw-w7:7"));
    assert_eq!(rec.payload, payload);
    let env: Value = serde_json::from_str(&rec.envelope).unwrap();
    assert_eq!(env["Body"]["values"]["spo2"], 97);
    assert_eq!(env["Properties"]["topic"], "ward7/ox-12/vitals");
    assert_eq!(env["Properties"]["qos"], 1);
    assert_eq!(env["Properties"]["retain"], false);
    assert_eq!(
        env["Properties"]["iothub-creation-time-utc"],
        "2026-03-15T07:31:00Z"
    );
    assert_eq!(
        env["SystemProperties"]["iothub-connection-device-id"],
        "ox-12"
    );
    // The gateway payload maps with the shipped templates.
    let (ms, obs) = map_envelopes(std::slice::from_ref(&rec.envelope));
    assert_eq!(ms.len(), 2);
    assert_eq!(obs.len(), 2);
    // QoS 0: no dedup key (nothing is resent).
    let Item::Record(rec) =
        build_item("mq", &cfg(), &received("ward7/ox-12/vitals", payload, 0), 0)
    else {
        panic!("dead-lettered")
    };
    assert_eq!(rec.dedup_key, None);
}

#[test]
fn non_json_is_dead_lettered_unless_wrapped() {
    let r = received("ward7/x/vitals", b"SPO2=97", 1);
    let Item::Dead { reason, .. } = build_item("mq", &cfg(), &r, 0) else {
        panic!("stored")
    };
    assert_eq!(reason, "not_json");
    let mut c = cfg();
    c.wrap_non_json = true;
    let Item::Record(rec) = build_item("mq", &c, &r, 0) else {
        panic!("dead-lettered")
    };
    let env: Value = serde_json::from_str(&rec.envelope).unwrap();
    assert_eq!(env["Body"], "SPO2=97");
    let Item::Dead { reason, .. } = build_item("mq", &c, &received("t", &[0xFF, 0xFE], 1), 0)
    else {
        panic!("stored")
    };
    assert_eq!(reason, "not_text");
}

#[test]
fn device_id_segment_falls_back() {
    assert_eq!(
        device_id_for_topic("ward7/ox-12/vitals", Some(1), "f"),
        "ox-12"
    );
    assert_eq!(device_id_for_topic("ward7", Some(1), "f"), "f");
    assert_eq!(device_id_for_topic("ward7//vitals", Some(1), "f"), "f");
    assert_eq!(device_id_for_topic("ward7/ox/vitals", None, "f"), "f");
}

#[test]
fn ack_gate_only_acks_on_the_current_connection() {
    let g = AckGate::default();
    let e1 = g.advance(|| {});
    assert!(g.if_current(e1, || {}));
    let mut cleaned = false;
    let e2 = g.advance(|| cleaned = true);
    assert!(cleaned);
    let mut ran = false;
    assert!(!g.if_current(e1, || ran = true));
    assert!(!ran);
    assert!(g.if_current(e2, || ran = true));
    assert!(ran);
}

#[test]
fn filters_are_checked() {
    for ok in ["#", "ward7/#", "ward7/+/vitals", "+", "a/b"] {
        assert!(check_filter(ok).is_ok(), "{ok}");
    }
    for bad in ["", "ward7/#/x", "ward7/ab#", "ward7/a+/x", "a\0b"] {
        assert!(check_filter(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn config_reads_tls_auth_session_and_subscriptions() {
    let (name, kind) = load_source(
        "type = \"mqtt\"\nname = \"ward-mqtt\"\nhost = \"broker.ward\"\nprotocol_version = \"5\"\nclient_id = \"gw-w7\"\nusername = \"agent\"\npassword = { env = \"MQTT_PASSWORD\" }\nca_file = \"/etc/iomt/ca.pem\"\nclient_cert_file = \"/etc/iomt/gw.pem\"\nclient_key = { credential = \"mqtt-key\" }\nsubscriptions = [ { filter = \"ward7/+/vitals\", qos = 1 }, { filter = \"ward7/alarms/#\", qos = 0 } ]\ndevice_id_topic_segment = 1\nwrap_non_json = true\nreconnect_max_secs = 10",
    )
    .unwrap();
    assert_eq!(name, "ward-mqtt");
    let SourceKind::Mqtt(c) = kind else {
        panic!("not mqtt")
    };
    assert_eq!(c.version, MqttVersion::V5);
    assert_eq!(c.port, 8883, "TLS default port");
    assert!(!c.clean_session);
    assert_eq!(c.password, Some(SecretRef::Env("MQTT_PASSWORD".into())));
    let tls = c.tls.unwrap();
    assert_eq!(
        tls.client_key,
        Some(SecretRef::Credential("mqtt-key".into()))
    );
    assert_eq!(c.subscriptions.len(), 2);
    assert_eq!(c.subscriptions[1].qos, 0);
    assert_eq!(c.reconnect.max, Duration::from_secs(10));
    let (_, kind) = load_source(
        "type = \"mqtt\"\nhost = \"h\"\nclient_id = \"c\"\nsubscriptions = [ { filter = \"#\" } ]",
    )
    .unwrap();
    let SourceKind::Mqtt(c) = kind else {
        panic!("not mqtt")
    };
    assert_eq!(
        (c.port, c.subscriptions[0].qos, c.device_id.as_str()),
        (1883, 1, "mqtt")
    );
    assert!(c.tls.is_none());
}

#[test]
fn config_errors_are_all_reported() {
    let e = source_errors("type = \"mqtt\"\npassword = \"inline\"\nkeep_alive_secs = 1\nprotocol_version = \"4\"\nsubscriptions = [ { filter = \"a/#/b\", qos = 2 } ]");
    for want in [
        "host",
        "client_id",
        "secrets are never written inline",
        "keep_alive_secs",
        "'4'",
        "'#'",
        "qos",
    ] {
        assert!(e.contains(want), "{want} missing in:\n{e}");
    }
}

#[test]
fn prepare_reads_secrets_and_reports_missing_files() {
    let mut c = cfg();
    c.username = Some("agent".into());
    c.password = Some(SecretRef::Env("PW".into()));
    assert!(prepare(&c, &|k| (k == "PW").then(|| "s3cret".to_owned()), None).is_ok());
    let e = prepare(&c, &|_| None, None).unwrap_err();
    assert!(e.contains("PW"), "{e}");
    c.tls = Some(MqttTls {
        ca_file: "/nonexistent/ca.pem".into(),
        client_cert_file: None,
        client_key: None,
    });
    let e = prepare(&c, &|_| Some("x".into()), None).unwrap_err();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
}
