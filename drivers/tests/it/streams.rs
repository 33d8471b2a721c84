//! Streaming decoders: resynchronisation after garbage and truncation, and chunking
//! invariance (the same bytes split differently give the same results).

use iomt_drivers::hl7::mllp;
use iomt_drivers::serial::SerialError;
use iomt_drivers::{decoder, DecodeError};
use proptest::prelude::*;
use serde_json::Value;

type Results = Vec<Result<Value, DecodeError>>;

fn run_chunked(protocol: &str, bytes: &[u8], cuts: &[usize]) -> Results {
    let mut d = decoder(protocol).expect("known protocol");
    let mut out = Vec::new();
    let mut start = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts {
        out.extend(d.push(&bytes[start..cut.max(start)]));
        start = cut.max(start);
    }
    out.extend(d.push(&bytes[start..]));
    out.extend(d.finish());
    out
}

fn run(protocol: &str, bytes: &[u8]) -> Results {
    run_chunked(protocol, bytes, &[])
}

fn spo2(r: &Result<Value, DecodeError>) -> Option<i64> {
    r.as_ref().ok()?.get("values")?.get("spo2")?.as_i64()
}

const GOOD: [u8; 4] = [0x80, 0x48, 0x61, 0x00];

#[test]
fn nonin8_resyncs_after_garbage_and_truncation() {
    let mut input = vec![0x00, 0x12, 0x7F]; // garbage, no sync bit
    input.extend([0x81, 0x07]); // frame start cut short
    input.extend(GOOD);
    input.extend([0x80, 0x48]); // cut short again
    input.extend([0x81, 0x07, 0x61, 0x00]);
    input.extend([0x80, 0x48, 0x61]); // truncated at end of input
    let out = run("nonin8", &input);
    let kinds: Vec<String> = out
        .iter()
        .map(|r| match r {
            Ok(v) => format!("ok {}", v["values"]["pulse_rate"]),
            Err(DecodeError::Serial(SerialError::Garbage { skipped, .. })) => {
                format!("garbage {skipped}")
            }
            Err(DecodeError::Serial(SerialError::Truncated { got, .. })) => {
                format!("truncated {got}")
            }
            Err(e) => format!("other {e}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "garbage 3",
            "truncated 2",
            "ok 72",
            "truncated 2",
            "ok 135",
            "truncated 3"
        ]
    );
}

#[test]
fn nonin8_rejects_reserved_bits_and_keeps_going() {
    let mut input = vec![0xC0, 0x48, 0x61, 0x00]; // bit6 of status is reserved
    input.extend([0x80, 0x48, 0x61, 0x40]); // bit6 of status2 is reserved
    input.extend(GOOD);
    let out = run("nonin8", &input);
    assert_eq!(out.len(), 3);
    assert!(matches!(
        out[0],
        Err(DecodeError::Serial(SerialError::ReservedBits {
            index: 0,
            ..
        }))
    ));
    assert!(matches!(
        out[1],
        Err(DecodeError::Serial(SerialError::ReservedBits {
            index: 3,
            ..
        }))
    ));
    assert_eq!(spo2(&out[2]), Some(97));
}

#[test]
fn line_decoders_skip_bad_lines_without_losing_good_ones() {
    let input = b"Nonin 9600 v1.2\r\nSPO2=097 HR=072\r\nSPO2=0x7 HR=1\r\n\r\nSPO2=098 HR=070";
    let out = run("nonin-ascii", input);
    assert_eq!(out.len(), 4);
    assert!(out[0].is_err(), "header line");
    assert_eq!(spo2(&out[1]), Some(97));
    assert!(out[2].is_err(), "bad value");
    assert_eq!(
        spo2(&out[3]),
        Some(98),
        "unterminated last line decoded at finish"
    );

    let input = b"37:54 SN=0000123456 SPO2=097%\r\n\x00\x0006/23/24 14:37:54 SPO2=097% BPM=072\r\n";
    let out = run("masimo-ascii", input);
    assert_eq!(out.len(), 2);
    assert!(out[0].is_err());
    assert_eq!(spo2(&out[1]), Some(97));

    let input = b"{\"a\":1}\n[1]\n{bad\n{\"b\":2}\n";
    let out = run("jsonl", input);
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].as_ref().ok(), Some(&serde_json::json!({"a": 1})));
    assert!(out[1].is_err() && out[2].is_err());
    assert_eq!(out[3].as_ref().ok(), Some(&serde_json::json!({"b": 2})));
}

#[test]
fn overlong_line_is_dropped_and_the_next_one_decoded() {
    let mut input = vec![b'S'; 10_000];
    input.extend(b"\r\nSPO2=097 HR=072\r\n");
    let out = run("nonin-ascii", &input);
    assert_eq!(out.len(), 2);
    assert!(matches!(
        out[0],
        Err(DecodeError::Serial(SerialError::LineTooLong { .. }))
    ));
    assert_eq!(spo2(&out[1]), Some(97));
}

const MSG: &str = "MSH|^~\\&|A||||20240101120000||ORU^R01|ID1|P|2.6\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R\r";

#[test]
fn hl7_resyncs_after_garbage_truncation_and_bad_messages() {
    let mut input = b"noise".to_vec();
    input.push(mllp::START_BLOCK);
    input.extend(b"MSH|^~\\&|cut short");
    input.extend(mllp::frame(MSG.as_bytes()));
    input.extend(mllp::frame(b"PID|not a message"));
    input.extend(mllp::frame(MSG.replace("|97|", "|9x|").as_bytes()));
    input.extend(mllp::frame(MSG.as_bytes()));
    let out = run("hl7v2", &input);
    let oks: Vec<&Value> = out.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(oks.len(), 2);
    for body in oks {
        assert_eq!(body["values"]["150456"], 97);
        assert_eq!(body["message_control_id"], "ID1");
    }
    assert_eq!(out.len(), 6, "{out:?}");
    assert!(matches!(&out[0], Err(DecodeError::Hl7(e)) if e.to_string().contains("skipped 5")));
    assert!(matches!(&out[1], Err(DecodeError::Hl7(e)) if e.to_string().contains("cut short")));
    assert!(out[2].is_ok());
    assert!(matches!(&out[3], Err(DecodeError::Hl7(e)) if e.is_reject()));
    assert!(matches!(&out[4], Err(DecodeError::Hl7(e)) if !e.is_reject()));
    assert!(out[5].is_ok());
}

/// A stream mixing good frames of every protocol with noise.
fn sample_stream(protocol: &str) -> Vec<u8> {
    match protocol {
        "nonin8" => {
            let mut v = Vec::new();
            for i in 0..6u8 {
                v.extend([0x80, 0x40 + i, 0x61, 0x00]);
                v.extend(&[0x00, 0x81, 0x05][..usize::from(i % 3)]);
            }
            v
        }
        "nonin-ascii" => b"SPO2=097 HR=072\r\nnoise\nSPO2=--- HR=---\r\n\r\nSPO2=095 HR=101*".to_vec(),
        "masimo-ascii" => b"\x0006/23/24 14:37:54 SPO2=097% BPM=072\r\nxx\r\n06/23/24 14:37:55 SPO2=096% BPM=071 EXC=000020\r\n".to_vec(),
        "jsonl" => b"{\"a\":1}\r\n{x}\n{\"b\":[1,2]}".to_vec(),
        _ => {
            let mut v = b"zz".to_vec();
            v.extend(mllp::frame(MSG.as_bytes()));
            v.extend([mllp::START_BLOCK, b'M']);
            v.extend(mllp::frame(MSG.as_bytes()));
            v.extend([mllp::END_BLOCK, b'x']);
            v
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn chunking_does_not_change_results(
        protocol in prop::sample::select(vec!["nonin8", "nonin-ascii", "masimo-ascii", "jsonl", "hl7v2"]),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let bytes = sample_stream(protocol);
        let whole = run(protocol, &bytes);
        prop_assert!(whole.iter().any(Result::is_ok));
        prop_assert_eq!(run_chunked(protocol, &bytes, &cuts), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_is_invariant(
        protocol in prop::sample::select(vec!["nonin8", "nonin-ascii", "masimo-ascii", "jsonl", "hl7v2"]),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let whole = run(protocol, &bytes);
        prop_assert_eq!(run_chunked(protocol, &bytes, &cuts), whole);
    }

    #[test]
    fn good_nonin8_frames_survive_garbage_between_them(
        frames in prop::collection::vec((0u8..=0x7F, 0u8..=0x7E), 1..10),
        garbage in prop::collection::vec(prop::collection::vec(0u8..0x80, 0..5), 10),
    ) {
        // Garbage without the sync bit between frames never costs a frame.
        let mut input = Vec::new();
        for (i, (hr, sp)) in frames.iter().enumerate() {
            input.extend(&garbage[i]);
            input.extend([0x80, *hr, *sp, 0x00]);
        }
        let got: Vec<i64> = run("nonin8", &input).iter().filter_map(spo2).collect();
        let want: Vec<i64> = frames.iter().map(|(_, sp)| i64::from(*sp)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn ble_decoders_never_panic_and_give_one_body_or_a_reason(
        uuid in prop::sample::select(vec!["2a37", "2a35", "2a36", "2a1c", "2a1e", "2a5e", "2a5f", "2a9d", "2a18"]),
        bytes in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        match iomt_drivers::decode(&format!("ble:{uuid}"), &bytes) {
            Ok(bodies) => {
                prop_assert_eq!(bodies.len(), 1);
                prop_assert!(bodies[0]["values"].is_object());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
