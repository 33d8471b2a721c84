use super::*;
use crate::config::SourceKind;
use crate::sources::test_support::{codings, load_source, map_envelopes, obs_with, source_errors};
use iomt_drivers::hl7::ack::AckCode;
use iomt_drivers::hl7::message::Message;
use serde_json::Value;
use std::time::Duration;

/// The PCD-01 sample of device-protocols.md §4.3 (CR-separated).
pub const SAMPLE: &str = "MSH|^~\\&|EDGEGW^0012340000000001^EUI-64|WARD7|||20240315083000+0100||ORU^R01^ORU_R01|MSG00001|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\rPID|||123456^^^HOSP^MR||Doe^Jane^^^^^L\rPV1||I|WARD7^^BED12\rOBR|1|MSG00001^EDGEGW^0012340000000001^EUI-64|MSG00001^EDGEGW^0012340000000001^EUI-64|182777000^monitoring of patient^SCT|||20240315083000+0100\rOBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0012340000000001^EUI-64\rOBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R|||20240315082958+0100\rOBX|3|NM|151562^MDC_RESP_RATE^MDC|1.1.2.1|16|264928^MDC_DIM_RESP_PER_MIN^MDC|8-30||||R|||20240315082958+0100\rOBX|4|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100||||R|||20240315082958+0100\rOBX|5|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|71|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20240315082958+0100\rOBX|6|NM|150448^MDC_PULS_OXIM_PERF_REL^MDC|1.2.1.3|2.4|262688^MDC_DIM_PERCENT^MDC|||||R|||20240315082958+0100\rOBX|7|NM|150301^MDC_PRESS_CUFF_SYS^MDC|1.3.1.1|128|266016^MDC_DIM_MMHG^MDC|||||R|||20240315082500+0100\rOBX|8|NM|150302^MDC_PRESS_CUFF_DIA^MDC|1.3.1.2|82|266016^MDC_DIM_MMHG^MDC|||||R|||20240315082500+0100\rOBX|9|NM|150303^MDC_PRESS_CUFF_MEAN^MDC|1.3.1.3|97|266016^MDC_DIM_MMHG^MDC|||||R|||20240315082500+0100\rOBX|10|NM|150344^MDC_TEMP^MDC|1.4.1.1|37.1|268192^MDC_DIM_DEGC^MDC|||||R|||20240315082000+0100\r";

fn cfg() -> MllpConfig {
    MllpConfig {
        transport: MllpTransport::Tcp {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        device_id_from: DeviceIdFrom::Obx18,
        device_id: Some("fallback-monitor".into()),
        patient_id_from: PatientIdFrom::Pid3,
        ack_sending_application: "IOMT-EDGE".into(),
        ack_sending_facility: "W7".into(),
        max_connections: 4,
        idle_timeout: Duration::from_secs(60),
    }
}

fn stored(p: Processed) -> (crate::buffer::NewRecord, Value, bool) {
    match p {
        Processed::Store { record, demo, .. } => {
            let env = serde_json::from_str(&record.envelope).unwrap();
            (record, env, demo)
        }
        Processed::Reject { error, .. } => panic!("rejected: {error}"),
    }
}

#[test]
fn a_pcd01_message_is_one_record_with_identity_and_the_msh10_dedup_key() {
    let (rec, env, demo) = stored(process_message(
        "mllp",
        &cfg(),
        SAMPLE.as_bytes(),
        "10.0.0.5:40000",
        1_773_559_865_000,
    ));
    assert!(!demo);
    assert_eq!(rec.dedup_key.as_deref(), Some("hl7:MSG00001"));
    assert_eq!(rec.payload, SAMPLE.as_bytes());
    // 2024-03-15T08:29:58+01:00, the first body's observation time.
    assert_eq!(rec.device_time_ms, Some(1_710_487_798_000));
    assert_eq!(
        env["SystemProperties"]["iothub-connection-device-id"],
        "0012340000000001"
    );
    assert_eq!(env["Properties"]["patientId"], "123456");
    assert_eq!(env["Properties"]["messageControlId"], "MSG00001");
    assert_eq!(env["Properties"]["demo"], false);
    assert!(
        env["Body"].as_array().is_some_and(|b| b.len() >= 3),
        "{}",
        env["Body"]
    );
}

#[test]
fn identity_follows_the_configuration() {
    let mut c = cfg();
    c.device_id_from = DeviceIdFrom::Fixed;
    c.patient_id_from = PatientIdFrom::Pv1;
    let (_, env, _) = stored(process_message("mllp", &c, SAMPLE.as_bytes(), "p", 0));
    assert_eq!(
        env["SystemProperties"]["iothub-connection-device-id"],
        "fallback-monitor"
    );
    assert_eq!(env["Properties"]["patientId"], "WARD7/BED12");
    c.device_id_from = DeviceIdFrom::Msh3;
    c.patient_id_from = PatientIdFrom::None;
    let (_, env, _) = stored(process_message("mllp", &c, SAMPLE.as_bytes(), "p", 0));
    assert_eq!(
        env["SystemProperties"]["iothub-connection-device-id"],
        "0012340000000001"
    );
    assert!(env["Properties"].get("patientId").is_none());
    // No OBX-18 and no MSH-3: the configured id; without one, the message is refused (AE).
    let bare = SAMPLE
        .replace("EDGEGW^0012340000000001^EUI-64|WARD7", "|WARD7")
        .replace("0012340000000001^EUI-64\r", "\r");
    let (_, env, _) = stored(process_message("mllp", &cfg(), bare.as_bytes(), "p", 0));
    assert_eq!(
        env["SystemProperties"]["iothub-connection-device-id"],
        "fallback-monitor"
    );
    let mut c = cfg();
    c.device_id = None;
    match process_message("mllp", &c, bare.as_bytes(), "p", 0) {
        Processed::Reject {
            reason,
            header,
            error,
        } => {
            assert_eq!(reason, "no_device_id");
            assert_eq!(AckCode::choose(&header, Some(&error)), AckCode::CE);
        }
        Processed::Store { .. } => panic!("stored without a device id"),
    }
}

#[test]
fn demo_data_is_flagged() {
    let demo = SAMPLE.replace(
        "|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100|",
        "|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100|DEMO",
    );
    let (_, env, flagged) = stored(process_message("mllp", &cfg(), demo.as_bytes(), "p", 0));
    assert!(flagged);
    assert_eq!(env["Properties"]["demo"], true);
    let bodies = env["Body"].as_array().unwrap();
    assert!(bodies
        .iter()
        .any(|b| b["demo"] == true && b["values"]["150456"] == 97));
    // The shipped templates do not turn demo data into Observations.
    let (ms, _) = map_envelopes(&[env.to_string()]);
    assert!(!ms.iter().any(|m| m.type_name == "spo2"), "{ms:?}");
    assert!(ms.iter().any(|m| m.type_name == "heartrate"));
}

#[test]
fn malformed_messages_are_rejected_or_errored_with_the_reason() {
    // Not HL7 at all: AR (no MSH to read the mode from).
    let Processed::Reject {
        header,
        error,
        reason,
    } = process_message("m", &cfg(), b"hello", "p", 0)
    else {
        panic!("accepted garbage")
    };
    assert_eq!(reason, "hl7_rejected");
    let (code, frame) = ack_frame(&cfg(), &header, Some(&error), 0);
    assert_eq!(code, AckCode::AR);
    assert_eq!(frame[0], 0x0B);
    assert_eq!(&frame[frame.len() - 2..], [0x1C, 0x0D]);
    // A bad number in an OBX of an enhanced-mode message: CE, with the reason in MSA-3.
    let bad = SAMPLE.replace("|1.2.1.1|97|", "|1.2.1.1|9x7|");
    let Processed::Reject {
        header,
        error,
        reason,
    } = process_message("m", &cfg(), bad.as_bytes(), "p", 0)
    else {
        panic!("accepted a bad number")
    };
    assert_eq!(reason, "hl7_error");
    let (code, frame) = ack_frame(&cfg(), &header, Some(&error), 1_773_559_865_000);
    assert_eq!(code, AckCode::CE);
    let ack = Message::parse(&frame[1..frame.len() - 2]).unwrap();
    let msa = ack.segment("MSA").unwrap();
    assert_eq!(msa.field(1).value(), "CE");
    assert_eq!(msa.field(2).value(), "MSG00001");
    assert!(
        msa.field(3).value().contains("9x7"),
        "{}",
        msa.field(3).value()
    );
    assert_eq!(ack.msh().field(7).value(), "20260315073105+0000");
    assert_eq!(ack.msh().field(10).value(), "ACKMSG00001");
    // Original mode (no MSH-15): AA on success.
    let original = SAMPLE.replace("|P|2.6|||AL|NE|", "|P|2.6|||||");
    let Processed::Store { header, .. } = process_message("m", &cfg(), original.as_bytes(), "p", 0)
    else {
        panic!("rejected")
    };
    assert_eq!(ack_frame(&cfg(), &header, None, 0).0, AckCode::AA);
}

#[test]
fn the_sample_maps_to_observations_with_loinc_mdc_and_ucum() {
    let (_, env, _) = stored(process_message("mllp", &cfg(), SAMPLE.as_bytes(), "p", 0));
    let (ms, obs) = map_envelopes(&[env.to_string()]);
    let mut types: Vec<&str> = ms.iter().map(|m| m.type_name.as_str()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "bloodpressure",
            "heartrate",
            "perfusionindex",
            "pulserate",
            "respiratoryrate",
            "spo2",
            "temperature"
        ]
    );
    assert!(ms
        .iter()
        .all(|m| m.device_id == "0012340000000001" && m.patient_id.as_deref() == Some("123456")));
    let spo2 = obs_with(&obs, "150456");
    assert_eq!(
        codings(spo2)[..2],
        [
            "http://loinc.org|2708-6".to_owned(),
            "http://loinc.org|59408-5".to_owned()
        ]
    );
    let start = spo2["effectivePeriod"]["start"]
        .as_str()
        .unwrap_or_default();
    assert!(start.starts_with("2024-03-15T07:29:58"), "{spo2}");
    let bp = obs_with(&obs, "85354-9");
    let comps: Vec<(String, Value)> = bp["component"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"]["coding"][0]["code"].as_str().unwrap().to_owned(),
                c["valueQuantity"]["value"].clone(),
            )
        })
        .collect();
    assert!(
        comps.contains(&("8480-6".into(), Value::from(128))),
        "{comps:?}"
    );
    assert!(
        comps.contains(&("8462-4".into(), Value::from(82))),
        "{comps:?}"
    );
    assert_eq!(bp["component"][0]["valueQuantity"]["code"], "mm[Hg]");
    let temp = obs_with(&obs, "150344");
    assert_eq!(temp["valueQuantity"]["code"], "Cel");
    assert_eq!(temp["valueQuantity"]["value"], 37.1);
}

#[test]
fn config_tcp_and_serial_transports() {
    let (_, kind) = load_source("type = \"mllp\"\nlisten = \"0.0.0.0:2575\"\ndevice_id_from = \"msh3\"\npatient_id_from = \"pv1\"").unwrap();
    let SourceKind::Mllp(c) = kind else {
        panic!("not mllp")
    };
    assert_eq!(
        c.transport,
        MllpTransport::Tcp {
            listen: "0.0.0.0:2575".parse().unwrap()
        }
    );
    assert_eq!(
        (c.device_id_from, c.patient_id_from),
        (DeviceIdFrom::Msh3, PatientIdFrom::Pv1)
    );
    assert_eq!(c.ack_sending_facility, "W7");
    let (_, kind) = load_source("type = \"mllp\"\npath = \"/dev/ttyS1\"\nbaud = 115200").unwrap();
    let SourceKind::Mllp(c) = kind else {
        panic!("not mllp")
    };
    let MllpTransport::Serial(p) = c.transport else {
        panic!("not serial")
    };
    assert_eq!(p.baud, 115200);
    let e = source_errors("type = \"mllp\"\nlisten = \"nowhere\"\ndevice_id_from = \"fixed\"\npatient_id_from = \"mrn\"");
    for want in ["nowhere", "device_id", "mrn"] {
        assert!(e.contains(want), "{want} missing in:\n{e}");
    }
    assert!(source_errors("type = \"mllp\"").contains("listen"));
}
