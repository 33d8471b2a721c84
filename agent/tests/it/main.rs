//! The agent's single integration-test binary. One module per area; new tests go in the
//! module of their area, regression tests (one per bug, named after it) in `regression`.

mod ble;
mod conformance;
mod crash;
mod device_support;
mod eventhubs;
mod fhir;
mod harness;
mod mllp;
mod mqtt;
mod powercut;
mod runtime;
mod serial;
mod snapshots_doc;
mod support;
mod transform_json;
