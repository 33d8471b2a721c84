//! Internal events: each logs once and updates its metrics. The only place metric names are
//! used. Log lines never carry patient ids or payloads at info level.

use super::Metrics;

/// A reading from a source was stored durably.
pub fn reading_stored(m: &Metrics, source: &str, duplicate: bool) {
    if duplicate {
        m.add("iomt_source_duplicates_total", &[("source", source)], 1);
        tracing::debug!(source, "Reading was already stored (device resent it).");
    } else {
        m.add("iomt_source_received_total", &[("source", source)], 1);
    }
}

/// A source had to drop a reading it could not store.
pub fn reading_dropped(m: &Metrics, source: &str, reason: &'static str) {
    m.add(
        "iomt_source_dropped_total",
        &[("source", source), ("reason", reason)],
        1,
    );
    tracing::warn!(
        source,
        reason,
        "Reading dropped by the source: the log is full and the device cannot be paused."
    );
}

/// Items entered a stage.
pub fn stage_received(m: &Metrics, stage: &'static str, n: u64) {
    m.add("iomt_stage_received_total", &[("stage", stage)], n);
}

/// A stage produced items.
pub fn stage_emitted(m: &Metrics, stage: &'static str, n: u64) {
    m.add("iomt_stage_emitted_total", &[("stage", stage)], n);
}

/// A stage rejected an item; it goes to the dead-letter store.
pub fn stage_failed(m: &Metrics, sink: &str, stage: &'static str, reason: &str, error: &str) {
    m.add(
        "iomt_stage_failed_total",
        &[("stage", stage), ("reason", reason)],
        1,
    );
    m.add(
        "iomt_sink_dead_lettered_total",
        &[("sink", sink), ("reason", reason)],
        1,
    );
    // The error text can quote message content (template errors name values), so it is
    // logged at debug only; the dead-letter store keeps it for `iomt-agent dlq show`.
    tracing::warn!(
        sink,
        stage,
        reason,
        "Record dead-lettered; see `iomt-agent dlq list`."
    );
    tracing::debug!(sink, stage, reason, error, "Dead-letter detail.");
}

/// A sink delivered resources.
pub fn delivered(m: &Metrics, sink: &str, written: u64, unchanged: u64) {
    m.add("iomt_sink_delivered_total", &[("sink", sink)], written);
    m.add("iomt_sink_unchanged_total", &[("sink", sink)], unchanged);
}

/// A delivery failed transiently and will be retried.
pub fn delivery_retry(m: &Metrics, sink: &str, error: &str, attempt: u32) {
    m.add("iomt_sink_retried_total", &[("sink", sink)], 1);
    m.set("iomt_sink_failing", &[("sink", sink)], 1.0);
    tracing::warn!(sink, attempt, %error, "Delivery failed; readings stay in the log and will be retried.");
}

/// A sink is delivering again.
pub fn delivery_recovered(m: &Metrics, sink: &str) {
    m.set("iomt_sink_failing", &[("sink", sink)], 0.0);
    tracing::info!(sink, "Delivery recovered.");
}

/// Template reload outcome.
pub fn templates_reloaded(m: &Metrics, ok: bool, errors: usize) {
    m.add(
        "iomt_templates_reloads_total",
        &[("result", if ok { "ok" } else { "error" })],
        1,
    );
    if ok {
        tracing::info!("Mapping templates reloaded.");
    } else {
        tracing::error!(errors, "Mapping templates failed to load; the previous templates stay in use. Run `iomt-agent validate` for details.");
    }
}

/// The store was quarantined at start.
pub fn store_quarantined(m: &Metrics, path: &str, reason: &str) {
    m.set("iomt_store_quarantined", &[], 1.0);
    tracing::error!(
        path,
        reason,
        "The durable log was unreadable and was moved aside; the agent continues on a fresh log."
    );
}

/// A gap record (readings dropped by drop_oldest) reached a sink.
pub fn gap_seen(m: &Metrics, sink: &str, dropped: u64) {
    m.add(
        "iomt_stage_failed_total",
        &[("stage", "log"), ("reason", "dropped_oldest")],
        dropped,
    );
    tracing::warn!(
        sink,
        dropped,
        "Readings were dropped by the drop_oldest policy before delivery."
    );
}

/// BLE: the adapter or BlueZ cannot be used (no D-Bus system bus, no `org.bluez`, no adapter).
pub fn ble_unavailable(m: &Metrics, source: &str, error: &str) {
    m.add("iomt_ble_unavailable_total", &[("source", source)], 1);
    tracing::warn!(source, %error, "Bluetooth is not available; retrying with back-off.");
}

/// BLE: a device advertised but the ward config does not admit it (never connected to).
pub fn ble_device_not_admitted(source: &str, address: &str) {
    tracing::debug!(
        source,
        address,
        "BLE device not in the ward config; ignored."
    );
}

/// BLE: a device is connected and subscribed.
pub fn ble_connected(m: &Metrics, source: &str, device: &str, subscribed: usize) {
    m.add("iomt_ble_connects_total", &[("source", source)], 1);
    tracing::info!(source, device, subscribed, "BLE device connected.");
}

/// BLE: a connect (or the set-up after it) failed; it is retried with back-off.
pub fn ble_connect_failed(m: &Metrics, source: &str, device: &str, error: &str) {
    m.add("iomt_ble_connect_failures_total", &[("source", source)], 1);
    tracing::warn!(source, device, %error, "BLE connect failed; retrying with back-off.");
}

/// BLE: the link to a connected device was lost; it is reconnected with back-off.
pub fn ble_link_lost(m: &Metrics, source: &str, device: &str, reason: &str) {
    m.add("iomt_ble_link_losses_total", &[("source", source)], 1);
    tracing::warn!(source, device, reason, "BLE link lost; reconnecting.");
}

/// BLE: a notification could not be decoded; it was dead-lettered with its bytes.
pub fn ble_undecodable(m: &Metrics, source: &str, device: &str) {
    m.add(
        "iomt_stage_failed_total",
        &[("stage", "decode"), ("reason", "ble_decode")],
        1,
    );
    tracing::warn!(
        source,
        device,
        "BLE value could not be decoded; dead-lettered (see `iomt-agent dlq list`)."
    );
}

/// A device source read a message or frame from its transport (before the durable commit;
/// `iomt_source_received_total` counts it once stored).
pub fn source_message_in(m: &Metrics, source: &str) {
    m.add("iomt_source_messages_in_total", &[("source", source)], 1);
}

/// A device source's connection (broker, port, listener) is up.
pub fn source_connected(m: &Metrics, source: &str, detail: &str) {
    m.set("iomt_source_connected", &[("source", source)], 1.0);
    tracing::info!(source, detail, "Source connected.");
}

/// A device source's connection failed or was lost. Logged at warn once per outage
/// (`first`), then at debug, so a device unplugged for hours does not flood the log.
pub fn source_disconnected(m: &Metrics, source: &str, error: &str, retry_in_ms: u64, first: bool) {
    m.set("iomt_source_connected", &[("source", source)], 0.0);
    m.add(
        "iomt_source_connect_failures_total",
        &[("source", source)],
        1,
    );
    if first {
        tracing::warn!(source, %error, retry_in_ms, "Source disconnected; retrying with back-off.");
    } else {
        tracing::debug!(source, %error, retry_in_ms, "Source still disconnected.");
    }
}

/// Input a device source could not decode was dead-lettered (stage `decode`).
pub fn source_dead_lettered(m: &Metrics, source: &str, reason: &str) {
    m.add(
        "iomt_source_decode_failed_total",
        &[("source", source), ("reason", reason)],
        1,
    );
    tracing::warn!(
        source,
        reason,
        "Undecodable input dead-lettered; see `iomt-agent dlq list`."
    );
}

/// A device marked a reading as demo data (HL7 OBX-8 `DEMO`); it is stored, flagged.
pub fn source_demo_data(m: &Metrics, source: &str) {
    m.add("iomt_source_demo_total", &[("source", source)], 1);
    tracing::debug!(source, "Message carries demo-mode data (flagged).");
}

/// An HL7 acknowledgement was sent (MSA-1 code).
pub fn hl7_ack_sent(m: &Metrics, source: &str, code: &'static str) {
    m.add(
        "iomt_source_hl7_acks_total",
        &[("source", source), ("code", code)],
        1,
    );
}

/// A FHIR sink sent a request (`op`: search, read, create, update, history, bundle_search,
/// bundle_write, metadata, check, token; `status`: a bounded status label or `network`).
pub fn fhir_request(m: &Metrics, sink: &str, op: &'static str, status: &'static str) {
    m.add(
        "iomt_fhir_requests_total",
        &[("sink", sink), ("op", op), ("status", status)],
        1,
    );
}

/// A FHIR sink got a new access token.
pub fn fhir_token_issued(m: &Metrics, sink: &str) {
    m.add("iomt_fhir_tokens_total", &[("sink", sink)], 1);
    tracing::debug!(sink, "Access token obtained.");
}

/// An identity was taken from the cache (`hit`) or resolved on the server.
pub fn fhir_identity_cache(m: &Metrics, sink: &str, hit: bool) {
    m.add(
        "iomt_fhir_identity_cache_total",
        &[("sink", sink), ("result", if hit { "hit" } else { "miss" })],
        1,
    );
}

/// The identity cache was invalidated (admin request); `one_device` when for a single device.
pub fn fhir_identity_invalidated(m: &Metrics, sink: &str, one_device: bool, dropped: usize) {
    m.add(
        "iomt_fhir_identity_invalidations_total",
        &[
            ("sink", sink),
            ("scope", if one_device { "device" } else { "all" }),
        ],
        1,
    );
    tracing::info!(
        sink,
        scope = if one_device { "device" } else { "all" },
        dropped,
        "Identity cache invalidated."
    );
}

/// A versioned FHIR write conflicted (409/412): re-read, re-merge, retry.
pub fn fhir_conflict(m: &Metrics, sink: &str) {
    m.add("iomt_fhir_conflicts_total", &[("sink", sink)], 1);
}

/// A create overwrote a version another writer created meanwhile (upstream
/// `FHIRResourceContention`); the sink merges the two.
pub fn fhir_contention(m: &Metrics, sink: &str) {
    m.add("iomt_fhir_contention_total", &[("sink", sink)], 1);
    tracing::info!(
        sink,
        "Another writer created the same Observation concurrently; merging both."
    );
}

/// An Observation was created, updated, or left unchanged (upstream `FhirResourceSaved`).
pub fn fhir_saved(m: &Metrics, sink: &str, outcome: &'static str) {
    m.add(
        "iomt_fhir_resources_saved_total",
        &[("sink", sink), ("outcome", outcome)],
        1,
    );
}

/// The startup check of a FHIR sink (`GET metadata`, then one authenticated request).
pub fn fhir_server_check(m: &Metrics, sink: &str, url: &str, result: Result<&str, &str>) {
    match result {
        Ok(about) => {
            m.set("iomt_fhir_server_ok", &[("sink", sink)], 1.0);
            tracing::info!(sink, url, server = about, "FHIR server check passed.");
        }
        Err(error) => {
            m.set("iomt_fhir_server_ok", &[("sink", sink)], 0.0);
            m.add(
                "iomt_fhir_server_check_failures_total",
                &[("sink", sink)],
                1,
            );
            tracing::error!(sink, url, %error, "FHIR server check failed; the sink is not delivering and will retry.");
        }
    }
}

/// The server refused a batch Bundle; the sink goes on with single requests.
pub fn fhir_bundles_refused(m: &Metrics, sink: &str, detail: &str) {
    m.add("iomt_fhir_bundles_refused_total", &[("sink", sink)], 1);
    tracing::warn!(sink, %detail, "The FHIR server refused a batch Bundle; using single requests (batch_bundle turned off).");
}

/// Seconds until a configured TLS certificate's not-after (negative once expired); the labels
/// are the role (`fhir_ca_bundle`...) and the sink or source name, never a subject.
pub fn tls_certificate_expiry(m: &Metrics, component: &str, role: &'static str, seconds: i64) {
    m.set(
        "iomt_tls_certificate_expiry_seconds",
        &[("component", component), ("role", role)],
        seconds as f64,
    );
}

/// A configured TLS certificate file was read at start, or its state changed since
/// (`runtime/certs.rs`). `state` is `ok`, `expiring` (fewer than 30 days left), `expired` or
/// `unreadable`; all but `ok` warn.
pub fn tls_certificate_checked(
    component: &str,
    role: &'static str,
    path: &str,
    state: &'static str,
    detail: &str,
) {
    match state {
        "ok" => tracing::info!(component, role, path, detail, "TLS certificate checked."),
        "expiring" => tracing::warn!(
            component,
            role,
            path,
            detail,
            "TLS certificate expires within 30 days: replace it, then restart the agent."
        ),
        "expired" => tracing::warn!(
            component,
            role,
            path,
            detail,
            "TLS certificate has expired: connections that rely on it will fail until it is replaced and the agent restarted."
        ),
        _ => tracing::warn!(
            component,
            role,
            path,
            detail,
            "TLS certificate file cannot be read or parsed."
        ),
    }
}

/// A sink's server failed on single records (a 5xx about their resource) while it delivered
/// the rest: they stay in the log and are retried on their own back-off.
pub fn delivery_record_retry(m: &Metrics, sink: &str, reason: &str, error: &str, attempt: u32) {
    m.add(
        "iomt_sink_record_retries_total",
        &[("sink", sink), ("reason", reason)],
        1,
    );
    tracing::warn!(
        sink,
        reason,
        attempt,
        "The server failed on some readings; they stay in the log and are retried while the others flow."
    );
    tracing::debug!(sink, reason, error, "Record retry detail.");
}

/// An Event Hubs sink dropped and rebuilt its client `n` times during one delivery (after a
/// send timeout or a connection error). `n == 0` only makes sure the counter exists.
pub fn eventhubs_client_rebuilt(m: &Metrics, sink: &str, n: u32) {
    m.add(
        "iomt_eventhubs_client_rebuilds_total",
        &[("sink", sink)],
        u64::from(n),
    );
    if n > 0 {
        tracing::warn!(
            sink,
            rebuilds = n,
            "Event Hubs client rebuilt after a send timeout or a connection error."
        );
    }
}

/// Messages no device mapping template matched (upstream's `DroppedEvent`): not an error, since
/// templates choose what to map, but never silent. Counted per sink on every batch; `log` is
/// set by the caller at most once a minute, with the count since the last line.
pub fn messages_unmatched(m: &Metrics, sink: &str, n: u64, log: Option<u64>) {
    m.add("iomt_normalize_unmatched_total", &[("sink", sink)], n);
    if let Some(since) = log {
        tracing::warn!(
            sink,
            messages = since,
            "Messages matched no device mapping template, so no Observation was made from them; test one with `iomt-agent map` if they should have been mapped."
        );
    }
}
