//! Shared helpers for the integration tests.

use std::path::PathBuf;

/// The upstream conformance corpus (`shared/conformance/iomt-fhir/` beside the checkout).
pub fn conformance_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for candidate in [
        manifest.join("../../shared/conformance/iomt-fhir"),
        manifest.join("../shared/conformance/iomt-fhir"),
    ] {
        if candidate.is_dir() {
            return candidate;
        }
    }
    panic!("the conformance corpus shared/conformance/iomt-fhir was not found beside the checkout");
}

/// Reads a conformance file as text.
pub fn read_conformance(name: &str) -> String {
    let p = conformance_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}
