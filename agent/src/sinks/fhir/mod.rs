//! FHIR sink: writes the pipeline's Observations straight to a FHIR R4 server, as the IoMT
//! FHIR connector's FHIR stage does (`R4FhirImportService`, semantics doc §4–§5): same ids,
//! same identifiers, same merges, so the agent and a cloud connector can write to one server.
//!
//! * [`config`]: the settings (`[[sinks]] type = "fhir"`) and pure helpers (back-off,
//!   `Retry-After`, ETags).
//! * [`client`]: HTTP over rustls, OAuth 2.0 client credentials or a static bearer token,
//!   custom CA and client certificate, per-request retries, the startup check.
//! * [`identity`]: Device/Patient/Encounter resolution (`lookup`, `create`,
//!   `lookup_with_encounter`) and the identity cache.
//! * [`sink`]: per-batch delivery (create or merge, `If-Match`, conflicts, dead letters,
//!   batch Bundles).
//!
//! # Identity, bed moves and the virtual-device-per-patient pattern
//!
//! An Observation points at a Device and a Patient. Upstream finds the Patient through
//! `Device.patient` and caches the answer per device for 2 h, so when a monitor moves to
//! another bed its readings keep going to the previous patient until the cache expires; the
//! MedTech documentation's advice is a *virtual device per patient*: the device id the
//! mapping emits is made patient-specific (for example `{serial}.{patientId}` with a
//! CalculatedContent `deviceIdExpression`), and one FHIR Device resource exists per
//! (physical device, patient) pair, so a move creates a new Device instead of re-pointing one.
//!
//! This sink does not need that pattern for correctness:
//! - the identity cache is keyed by (device, patient, encounter) as the message carries them,
//!   lives 5 minutes by default (`identity_cache_ttl_secs`) and can be dropped at once
//!   (`POST /identity/invalidate[?device=ID]`, `iomt-agent identity invalidate`);
//! - with `verify_patient` (default) a message whose patient id is not the Device's Patient is
//!   dead-lettered as `patient_device_mismatch` instead of being written to the wrong chart,
//!   and is replayable once `Device.patient` is updated.
//!
//! Use the virtual-device pattern anyway when the gateway's messages do **not** carry the
//! patient id (then nothing can detect a move but `Device.patient`), when the device history
//! per patient matters to downstream consumers (one Device per stay), or in `create` mode,
//! which never re-links a Device that already has a patient. It is not needed when messages
//! carry the patient id and `Device.patient` is kept current by ADT (re-linking on admission),
//! or for devices that never leave one patient (wearables, home devices).

pub mod client;
pub mod config;
pub mod identity;
pub mod sink;

pub use client::{FhirClient, FhirError};
pub use config::{FhirAuth, FhirSinkConfig, IdentityMode};
pub use identity::{IdentityCache, IdentityKey};
pub use sink::{DeliverError, FhirSink};
