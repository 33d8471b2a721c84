//! iomt-edge agent library.
//!
//! See `ARCHITECTURE.md` at the repository root for the bird's-eye view and invariants.

pub mod buffer;
pub mod config;
pub mod mapping;
pub mod pipeline;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod telemetry;
