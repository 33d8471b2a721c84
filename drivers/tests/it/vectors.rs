//! Every test vector of device-protocols.md, table-driven from `tests/data/vectors.json`.
//!
//! Expectations in the data file are transcribed from the document's "decoded" columns; the
//! matchers are described in the file's `_comment`.

use iomt_drivers::hl7::ack::{build_ack_frame, AckCode, AckOptions, MessageHeader};
use iomt_drivers::hl7::message::Message;
use iomt_drivers::hl7::mllp;
use iomt_drivers::ieee11073::{Decimal, MderFloat};
use iomt_drivers::{decode_all, DecodeError};
use serde_json::Value;

fn data() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");
    let text = std::fs::read_to_string(path).expect("vectors.json readable");
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Checks `actual` against `expected`; returns a description of the first mismatch.
fn matches(expected: &Value, actual: Option<&Value>, path: &str) -> Result<(), String> {
    if expected == "$absent" {
        return match actual {
            None => Ok(()),
            Some(a) => Err(format!("{path}: expected no key, found {a}")),
        };
    }
    let actual = actual.ok_or_else(|| format!("{path}: missing"))?;
    if let Some(obj) = expected.as_object() {
        if let Some(digits) = obj.get("$dec").and_then(Value::as_str) {
            return match text_of(actual) {
                Some(t) if t == digits => Ok(()),
                _ => Err(format!("{path}: expected decimal {digits}, found {actual}")),
            };
        }
        if let Some(x) = obj.get("$num").and_then(Value::as_f64) {
            let got = text_of(actual).and_then(|t| t.parse::<f64>().ok());
            return match got {
                Some(g) if g == x => Ok(()),
                _ => Err(format!("{path}: expected number {x}, found {actual}")),
            };
        }
        if let Some(x) = obj.get("$approx").and_then(Value::as_f64) {
            return match actual.as_f64() {
                Some(g) if (g - x).abs() <= 0.0005 => Ok(()),
                _ => Err(format!("{path}: expected about {x}, found {actual}")),
            };
        }
        let a = actual
            .as_object()
            .ok_or_else(|| format!("{path}: expected an object, found {actual}"))?;
        for (k, v) in obj {
            matches(v, a.get(k), &format!("{path}.{k}"))?;
        }
        return Ok(());
    }
    if let Some(items) = expected.as_array() {
        let a = actual
            .as_array()
            .ok_or_else(|| format!("{path}: expected an array, found {actual}"))?;
        if a.len() != items.len() {
            return Err(format!(
                "{path}: expected {} items, found {}",
                items.len(),
                a.len()
            ));
        }
        for (i, (e, x)) in items.iter().zip(a).enumerate() {
            matches(e, Some(x), &format!("{path}[{i}]"))?;
        }
        return Ok(());
    }
    if expected == actual {
        Ok(())
    } else {
        Err(format!("{path}: expected {expected}, found {actual}"))
    }
}

fn input(v: &Value) -> Vec<u8> {
    let bytes = match (v.get("hex"), v.get("text")) {
        (Some(h), _) => hex(h.as_str().expect("hex string")),
        (_, Some(t)) => t.as_str().expect("text string").as_bytes().to_vec(),
        _ => panic!("vector without input: {v}"),
    };
    if v.get("mllp") == Some(&Value::Bool(true)) {
        mllp::frame(&bytes)
    } else {
        bytes
    }
}

#[test]
fn decoder_vectors() {
    let data = data();
    let vectors = data["decoders"].as_array().expect("decoders array");
    assert!(vectors.len() >= 60, "vector table shrank");
    let mut failures = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let protocol = v["protocol"].as_str().expect("protocol");
        let bytes = input(v);
        let results = decode_all(protocol, &bytes).expect("known protocol");
        let expect = v["expect"].as_array().expect("expect array");
        let label = format!("#{i} {protocol} ({})", v["source"]);
        if results.len() != expect.len() {
            failures.push(format!(
                "{label}: expected {} results, got {results:?}",
                expect.len()
            ));
            continue;
        }
        for (want, got) in expect.iter().zip(&results) {
            match (want.get("ok"), want.get("error"), got) {
                (Some(w), _, Ok(body)) => {
                    if let Err(e) = matches(w, Some(body), "body") {
                        failures.push(format!("{label}: {e}\n  got {body}"));
                    }
                }
                (_, Some(w), Err(e)) => {
                    let w = w.as_str().expect("error substring");
                    let text = e.to_string();
                    if !text.to_lowercase().contains(&w.to_lowercase()) {
                        failures.push(format!("{label}: error {text:?} lacks {w:?}"));
                    }
                }
                (_, _, got) => failures.push(format!("{label}: expected {want}, got {got:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ieee11073_vectors() {
    let data = data();
    let vectors = data["ieee11073"].as_array().expect("array");
    assert_eq!(vectors.len(), 20);
    for v in vectors {
        let bytes = hex(v["hex"].as_str().expect("hex"));
        let decoded = match v["format"].as_str() {
            Some("sfloat") => MderFloat::from_sfloat_le(&bytes),
            _ => MderFloat::from_float_le(&bytes),
        }
        .expect("right width");
        let m = v["mantissa"].as_i64().expect("m");
        let e = v["exponent"].as_i64().expect("e") as i16;
        assert_eq!(decoded, MderFloat::Value(Decimal::new(m, e)), "{v}");
        assert_eq!(
            decoded.to_string(),
            v["text"].as_str().expect("text"),
            "{v}"
        );
        // The JSON form keeps the same digits, whatever its type.
        assert_eq!(
            text_of(&decoded.to_json()).as_deref(),
            v["text"].as_str(),
            "{v}"
        );
        // And the encoder gives the wire bytes back.
        let back = match v["format"].as_str() {
            Some("sfloat") => decoded.to_sfloat_le().map(|b| b.to_vec()),
            _ => decoded.to_float_le().map(|b| b.to_vec()),
        };
        assert_eq!(back, Ok(bytes), "{v}");
    }
    let specials = data["ieee11073_specials"].as_array().expect("array");
    assert_eq!(specials.len(), 10);
    for v in specials {
        let bytes = hex(v["hex"].as_str().expect("hex"));
        let decoded = match v["format"].as_str() {
            Some("sfloat") => MderFloat::from_sfloat_le(&bytes),
            _ => MderFloat::from_float_le(&bytes),
        }
        .expect("right width");
        let special = decoded.special().expect("is special");
        assert_eq!(Some(special.name()), v["special"].as_str(), "{v}");
        assert_eq!(decoded.to_json(), Value::Null);
    }
}

#[test]
fn hl7_sample_frame_and_ack_bytes() {
    let data = data();
    let h = &data["hl7"];
    let sample = h["sample"].as_str().expect("sample");
    let framed = mllp::frame(sample.as_bytes());
    assert_eq!(
        framed.len() as u64,
        h["sample_frame_len"].as_u64().expect("len")
    );
    assert!(framed.starts_with(&hex(h["sample_frame_head"].as_str().expect("head"))));
    assert!(framed.ends_with(&hex(h["sample_frame_tail"].as_str().expect("tail"))));

    let msg = Message::parse(sample.as_bytes()).expect("sample parses");
    let header = MessageHeader::from_message(&msg);
    assert_eq!(header.control_id, "MSG00001");
    let a = &h["ack"];
    assert_eq!(a["code"], "AA");
    let opts = AckOptions {
        sending_application: a["sending_application"].as_str().expect("app"),
        sending_facility: a["sending_facility"].as_str().expect("fac"),
        timestamp: a["timestamp"].as_str().expect("ts"),
        control_id: a["control_id"].as_str().expect("id"),
    };
    let ack = build_ack_frame(&header, AckCode::AA, None, &opts);
    assert_eq!(ack.len() as u64, a["len"].as_u64().expect("len"));
    assert_eq!(ack, hex(a["hex"].as_str().expect("hex")));
    // The sample asks for enhanced acknowledgement (MSH-15 = AL), so the chosen code is CA;
    // the doc's ACK uses AA, which receivers accept too.
    assert_eq!(AckCode::choose(&header, None), AckCode::CA);
}

#[test]
fn hl7_bare_message_is_accepted_by_one_shot_decode() {
    let data = data();
    let sample = data["hl7"]["sample"].as_str().expect("sample");
    let bodies = iomt_drivers::decode("hl7v2", sample.as_bytes()).expect("decodes");
    assert_eq!(bodies.len(), 3);
    let err =
        iomt_drivers::decode("hl7v2", b"MSH|^~\\&|A||||||ADT^A01|1|P|2.6").expect_err("not an ORU");
    assert!(matches!(err, DecodeError::Hl7(_)), "{err}");
}
