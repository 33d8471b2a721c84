//! Pipeline stage cores: grouping and transform. No I/O; time is a parameter.
//!
//! - [`group`]: a batch of measurements → observation groups (one per future Observation).
//! - [`transform`]: an observation group → a new FHIR R4 Observation, or a merge into an
//!   existing one, byte-compatible with microsoft/iomt-fhir.
//! - [`sampled_data`]: the SampledData slot algorithm used by the transform.
//! - [`identity`]: resolved FHIR ids and the deterministic ids / bodies of Create mode.

pub mod batch;
pub(crate) mod civil;
pub mod group;
pub mod identity;
pub mod sampled_data;
pub mod transform;

#[cfg(test)]
pub(crate) mod test_support {
    //! Shared test helpers: the upstream conformance data (`cases.json`).

    use std::path::PathBuf;

    /// Locates `conformance/iomt-fhir/cases.json`: `$IOMT_CONFORMANCE_DIR` if set, else the first
    /// ancestor of the crate directory that has `conformance/iomt-fhir/`,
    /// `shared/conformance/iomt-fhir/` or `tests/conformance/iomt-fhir/`. Panics (fails the
    /// test) when it is missing: the worked examples must never be skipped silently.
    pub fn cases_json_path() -> PathBuf {
        if let Some(dir) = std::env::var_os("IOMT_CONFORMANCE_DIR") {
            return PathBuf::from(dir).join("cases.json");
        }
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        for dir in manifest.ancestors() {
            for sub in [
                "conformance/iomt-fhir",
                "shared/conformance/iomt-fhir",
                "tests/conformance/iomt-fhir",
            ] {
                let p = dir.join(sub).join("cases.json");
                if p.is_file() {
                    return p;
                }
            }
        }
        panic!(
            "conformance cases.json not found above {}; set IOMT_CONFORMANCE_DIR",
            manifest.display()
        );
    }

    /// The `worked_examples` object of `cases.json`.
    pub fn worked_examples() -> serde_json::Value {
        let path = cases_json_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        v["worked_examples"].clone()
    }
}
