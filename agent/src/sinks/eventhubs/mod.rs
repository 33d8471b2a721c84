//! Event Hubs sink: forwards readings to an Azure Event Hub through the official SDK
//! (`azure_messaging_eventhubs` `ProducerClient`), for sites whose IoMT pipeline runs in Azure.
//!
//! * [`payload`] builds the events: `raw` (the device envelope as the device would have sent
//!   it) or `normalized` (the connector's normalized measurements, optionally as gzip
//!   measurement groups). Pure: no I/O, no clock.
//! * [`config`] holds the settings (namespace or custom endpoint, hub, auth, transport,
//!   timeouts, batching) and the pure flush/back-off helpers.
//! * [`forwarder`] sends them: per-partition-key batches, every network call under a timeout,
//!   the client rebuilt after a timeout or a connection error, permanent per-event rejections
//!   reported for the dead letter while the other events flow.
//! * [`pinned`] runs a forwarder on a dedicated single-threaded runtime (the agent's way to use
//!   it: fe2o3-amqp 0.16.2 can lose a disposition on a multi-threaded runtime and stall a send
//!   until its timeout).
//!
//! Invariants: an event counts as delivered only after `send_batch` returned `Ok` for it; every
//! event carries its record's sequence (`iomt-edge-seq`, and `iomt-edge-epoch` when the store
//! has one) so a consumer can drop the duplicates that at-least-once delivery allows.
//! SDK pins and their reasons: `docs/decisions/0004-eventhubs-sdk-pins.md`.

pub mod config;
pub mod forwarder;
pub mod payload;
pub mod pinned;

pub use config::{backoff, Auth, EventHubsConfig, SdkRetry, Secret, Transport};
pub use forwarder::{
    EventHubsForwarder, ForwardError, ForwardErrorKind, RejectedEvent, SendReport,
};
pub use payload::{
    normalized_events, normalized_groups, raw_event, upstream_partition_key, OutEvent,
    PartitionKeyMode, PayloadError, PropertyValue,
};
pub use pinned::PinnedForwarder;
