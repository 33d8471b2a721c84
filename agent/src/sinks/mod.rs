//! Sinks: where Observations go. Each sink reads the durable log from its own cursor and
//! acknowledges records only after they are delivered or dead-lettered.

pub mod eventhubs;
pub mod fhir;
pub mod outbox;
