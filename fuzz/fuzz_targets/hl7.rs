//! Fuzz the HL7 v2 path: MLLP de-framing, message parsing, ORU^R01 decoding and ACKs.
//!
//! Checks: no panic; MLLP results do not depend on chunking; for any message that parses,
//! the ACK built for it parses back and echoes its control ID in MSA-2.
#![no_main]

use iomt_drivers::hl7::ack::{build_ack, AckCode, AckOptions, MessageHeader};
use iomt_drivers::hl7::message::Message;
use iomt_drivers::hl7::mllp::MllpDecoder;
use iomt_drivers::hl7::pcd01::oru_bodies;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let mut whole = MllpDecoder::default();
    let mut a = whole.push(bytes);
    a.extend(whole.finish());
    let mut chunked = MllpDecoder::default();
    let mut b = Vec::new();
    for part in bytes.chunks(usize::from(chunk).max(1)) {
        b.extend(chunked.push(part));
    }
    b.extend(chunked.finish());
    assert_eq!(a, b);

    if let Ok(msg) = Message::parse(bytes) {
        let outcome = oru_bodies(&msg);
        let header = MessageHeader::from_message(&msg);
        let code = AckCode::choose(&header, outcome.as_ref().err());
        let opts = AckOptions {
            sending_application: "GW",
            sending_facility: "HOSP",
            timestamp: "20240101000000",
            control_id: "ACK1",
        };
        let ack = build_ack(&header, code, outcome.as_ref().err(), &opts);
        let parsed = Message::parse(ack.as_bytes()).expect("our ACK parses");
        let msa = parsed.segment("MSA").expect("ACK has MSA");
        assert_eq!(msa.field(1).value(), code.as_str());
        assert_eq!(msa.field(2).value(), header.control_id);
    }
});
