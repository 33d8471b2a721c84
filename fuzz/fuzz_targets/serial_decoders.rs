//! Fuzz the serial stream decoders (Nonin 8, Nonin ASCII, Masimo ASCII, JSON lines).
//!
//! The first byte picks the protocol, the second the chunk size; the rest is the stream.
//! Checks: no panic, and feeding the stream in chunks gives exactly the results of feeding
//! it whole (the resynchronisation logic must not depend on how the port splits reads).
#![no_main]

use iomt_drivers::{decoder, StreamDecoder};
use libfuzzer_sys::fuzz_target;

const PROTOCOLS: [&str; 4] = ["nonin8", "nonin-ascii", "masimo-ascii", "jsonl"];

fn feed(d: &mut dyn StreamDecoder, bytes: &[u8], chunk: usize) -> Vec<String> {
    let mut out = Vec::new();
    for part in bytes.chunks(chunk) {
        out.extend(d.push(part));
    }
    out.extend(d.finish());
    out.into_iter().map(|r| format!("{r:?}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let [selector, chunk, stream @ ..] = data else {
        return;
    };
    let protocol = PROTOCOLS[usize::from(*selector) % PROTOCOLS.len()];
    let mut whole = decoder(protocol).expect("known protocol");
    let mut chunked = decoder(protocol).expect("known protocol");
    let a = feed(whole.as_mut(), stream, stream.len().max(1));
    let b = feed(chunked.as_mut(), stream, usize::from(*chunk).max(1));
    assert_eq!(a, b);
});
