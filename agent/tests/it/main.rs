//! The agent's single integration-test binary. One module per area; new tests go in the
//! module of their area, regression tests (one per bug, named after it) in `regression`.

mod conformance;
mod crash;
mod eventhubs;
mod fhir;
mod harness;
mod support;
