//! The drivers crate's single integration-test binary.

mod streams;
mod vectors;
