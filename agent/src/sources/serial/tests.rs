use super::task::{reason_code, record};
use super::*;
use crate::config::SourceKind;
use crate::sources::test_support::{codings, load_source, map_envelopes, obs_with, source_errors};
use iomt_drivers::{decoder, DecodeError};
use serde_json::Value;
use std::path::PathBuf;

fn cfg(protocol: SerialProtocol) -> SerialConfig {
    SerialConfig {
        port: PortSettings::new(PathBuf::from("/dev/serial/by-id/usb-nonin")),
        protocol,
        device_id: "oximeter-bed-12".into(),
        patient_id: Some("patient-0042".into()),
        bed: Some("W7-12".into()),
    }
}

/// Feeds `bytes` one at a time, as the reader does, and returns (result, raw bytes) pairs.
fn attribute(protocol: SerialProtocol, bytes: &[u8]) -> Vec<(Result<Value, DecodeError>, Vec<u8>)> {
    let mut d = decoder(protocol.name()).unwrap();
    let mut spans = RawSpans::new(protocol);
    let mut out = Vec::new();
    for &b in bytes {
        spans.push(b);
        let r = d.push(&[b]);
        if !r.is_empty() {
            let raws = spans.take(&r);
            out.extend(r.into_iter().zip(raws));
        }
    }
    let r = d.finish();
    let raws = spans.take(&r);
    out.extend(r.into_iter().zip(raws));
    out
}

#[test]
fn nonin8_frames_garbage_and_truncation_get_their_exact_bytes() {
    // good, 2 garbage bytes, good, a frame cut after 2 bytes, good, 3 bytes cut at the end.
    let bytes = [
        0x80, 0x48, 0x61, 0x00, //
        0x01, 0x02, //
        0x81, 0x07, 0x61, 0x00, //
        0x80, 0x48, //
        0x94, 0x3A, 0x5B, 0x00, //
        0x80, 0x40, 0x63,
    ];
    let out = attribute(SerialProtocol::Nonin8, &bytes);
    let kinds: Vec<String> = out
        .iter()
        .map(|(r, raw)| match r {
            Ok(b) => format!("ok {} {raw:02x?}", b["values"]["pulse_rate"]),
            Err(e) => format!("{} {raw:02x?}", reason_code(e)),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ok 72 [80, 48, 61, 00]",
            "garbage [01, 02]",
            "ok 135 [81, 07, 61, 00]",
            "truncated [80, 48]",
            "ok 58 [94, 3a, 5b, 00]",
            "truncated [80, 40, 63]",
        ]
    );
}

#[test]
fn line_protocols_attribute_whole_lines_and_skip_the_rest_of_an_overlong_one() {
    let mut bytes = b"\x00\x00SPO2=097 HR=072\r\nNONIN 7500 v1.2\r\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 5000));
    bytes.extend(b"\r\nSPO2=--- HR=---\r\nSPO2=095 HR=101*");
    let out = attribute(SerialProtocol::NoninAscii, &bytes);
    let got: Vec<(String, String)> = out
        .iter()
        .map(|(r, raw)| {
            (
                match r {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => reason_code(e).to_owned(),
                },
                String::from_utf8_lossy(raw).into_owned(),
            )
        })
        .collect();
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0].0, "not_a_data_line"); // the NULs glued to the first line
    assert_eq!(got[1], ("not_a_data_line".into(), "NONIN 7500 v1.2".into()));
    assert_eq!(got[2].0, "line_too_long");
    assert!(
        got[2].1.len() <= 4097 && got[2].1.starts_with("xxx"),
        "{}",
        got[2].1.len()
    );
    assert_eq!(got[3], ("ok".into(), "SPO2=--- HR=---".into()));
    assert_eq!(got[4], ("ok".into(), "SPO2=095 HR=101*".into()));
}

#[test]
fn record_carries_identity_raw_bytes_and_no_dedup_key() {
    let body = iomt_drivers::decode("nonin8", &[0x80, 0x48, 0x61, 0x00])
        .unwrap()
        .remove(0);
    let r = record(
        "bed12",
        &cfg(SerialProtocol::Nonin8),
        body,
        vec![0x80, 0x48, 0x61, 0x00],
        1_773_559_865_000,
    );
    assert_eq!(r.payload, [0x80, 0x48, 0x61, 0x00]);
    assert_eq!(r.dedup_key, None);
    let env: Value = serde_json::from_str(&r.envelope).unwrap();
    assert_eq!(
        env["SystemProperties"]["iothub-connection-device-id"],
        "oximeter-bed-12"
    );
    assert_eq!(
        env["SystemProperties"]["iothub-enqueuedtime"],
        "2026-03-15T07:31:05.0000000Z"
    );
    assert_eq!(env["Properties"]["patientId"], "patient-0042");
    assert_eq!(env["Properties"]["bed"], "W7-12");
    assert_eq!(env["Properties"]["protocol"], "nonin8");
    assert_eq!(env["Body"]["values"]["spo2"], 97);
}

#[test]
fn serial_bodies_map_to_loinc_mdc_ucum_observations() {
    let mut envs = Vec::new();
    let mut add = |p: SerialProtocol, bytes: &[u8], t: i64| {
        for body in iomt_drivers::decode_all(p.name(), bytes)
            .unwrap()
            .into_iter()
            .flatten()
        {
            envs.push(record("s", &cfg(p), body, bytes.to_vec(), t).envelope);
        }
    };
    add(
        SerialProtocol::Nonin8,
        &[0x80, 0x48, 0x61, 0x00],
        1_773_559_865_000,
    );
    // Sensor alarm (held values) and missing values: flagged, never mapped.
    add(
        SerialProtocol::Nonin8,
        &[0x83, 0x7F, 0x7F, 0x08],
        1_773_559_866_000,
    );
    add(
        SerialProtocol::Nonin8,
        &[0x80, 0x48, 0x61, 0x08],
        1_773_559_867_000,
    );
    add(
        SerialProtocol::NoninAscii,
        b"SPO2=--- HR=---\r\n",
        1_773_559_868_000,
    );
    add(
        SerialProtocol::MasimoAscii,
        b"06/23/24 14:37:54 SN=0000123456 SPO2=096% BPM=071 PI=02.21% SPCO=--.-% EXC=000800\r\n",
        1_773_559_869_000,
    );
    add(
        SerialProtocol::MasimoAscii,
        b"09/21/08 09:56:10 SpO2=000 PR=000 PI=00.00 EXC=828:Search,OffPat,SET\r\n",
        1_773_559_870_000,
    );
    let (ms, obs) = map_envelopes(&envs);
    let types: Vec<&str> = ms.iter().map(|m| m.type_name.as_str()).collect();
    assert_eq!(
        types,
        ["spo2", "pulserate", "spo2", "pulserate", "perfusionindex"]
    );
    assert!(ms.iter().all(
        |m| m.device_id == "oximeter-bed-12" && m.patient_id.as_deref() == Some("patient-0042")
    ));
    assert_eq!(obs.len(), 5);
    let spo2 = obs_with(&obs, "150456");
    assert_eq!(
        codings(spo2)[..3],
        [
            "http://loinc.org|2708-6",
            "http://loinc.org|59408-5",
            "urn:iso:std:iso:11073:10101|150456"
        ]
    );
    assert_eq!(spo2["valueQuantity"]["code"], "%");
    assert_eq!(spo2["valueQuantity"]["system"], "http://unitsofmeasure.org");
    let pi = obs_with(&obs, "61006-3");
    assert_eq!(pi["valueQuantity"]["value"], 2.21);
    assert!(codings(pi).contains(&"urn:iso:std:iso:11073:10101|150448".to_owned()));
    let pr = obs_with(&obs, "149530");
    assert_eq!(pr["valueQuantity"]["code"], "/min");
}

#[test]
fn config_reads_port_protocol_and_identity() {
    let (name, kind) = load_source(
        "type = \"serial\"\nname = \"bed12\"\npath = \"/dev/serial/by-id/usb-x\"\nprotocol = \"masimo-ascii\"\nbaud = 19200\nparity = \"even\"\ndata_bits = 7\nstop_bits = 2\ndevice_id = \"rad97-12\"\npatient_id = \"p-12\"\nbed = \"W7-12\"\nreopen_min_secs = 0.1\nreopen_max_secs = 2",
    )
    .unwrap();
    assert_eq!(name, "bed12");
    let SourceKind::Serial(c) = kind else {
        panic!("not serial")
    };
    assert_eq!(c.protocol, SerialProtocol::MasimoAscii);
    assert_eq!(c.port.path, PathBuf::from("/dev/serial/by-id/usb-x"));
    assert_eq!(
        (
            c.port.baud,
            c.port.data_bits,
            c.port.parity,
            c.port.stop_bits
        ),
        (19200, 7, Parity::Even, 2)
    );
    assert_eq!(c.port.reopen.max, std::time::Duration::from_secs(2));
    assert_eq!(c.device_id, "rad97-12");
    assert_eq!(c.patient_id.as_deref(), Some("p-12"));
    let (_, kind) = load_source(
        "type = \"serial\"\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin8\"\ndevice_id = \"n\"",
    )
    .unwrap();
    let SourceKind::Serial(c) = kind else {
        panic!("not serial")
    };
    assert_eq!(
        (
            c.port.baud,
            c.port.data_bits,
            c.port.parity,
            c.port.stop_bits
        ),
        (9600, 8, Parity::None, 1)
    );
}

#[test]
fn config_errors_are_all_reported() {
    let e = source_errors(
        "type = \"serial\"\nprotocol = \"philips\"\nbaud = 0\nparity = \"mark\"\nstop_bits = 3",
    );
    for want in ["path", "philips", "baud", "mark", "stop_bits", "device_id"] {
        assert!(e.contains(want), "{want} missing in:\n{e}");
    }
}
