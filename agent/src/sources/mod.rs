//! Sources: where readings come from. Each source wraps what it receives in the event
//! envelope and hands it to the durable log; it acknowledges its device only after the log
//! committed the reading.

pub mod ble;
pub mod envelope;
pub mod ingest;
pub mod mllp;
pub mod mqtt;
pub mod serial;
pub mod simulator;

#[cfg(test)]
mod test_support;
