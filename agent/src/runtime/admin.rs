//! The admin endpoint on loopback: `/livez`, `/readyz`, `/metrics`, `/status`, and
//! `POST /identity/invalidate[?device=ID]` (drops the FHIR sinks' cached identities).
//!
//! A deliberately small HTTP/1.1 responder (one request per connection, no keep-alive): it
//! serves a handful of GETs to local tools and Prometheus, and keeps the dependency tree lean.

use super::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The running server.
pub struct Admin {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds and serves until stopped.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<Admin> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => {
                    if let Ok((s, _)) = r {
                        let sh = shared.clone();
                        tokio::spawn(async move {
                            tokio::time::timeout(Duration::from_secs(5), handle(s, sh)).await.ok();
                        });
                    }
                }
                _ = stop.changed() => return,
            }
        }
    });
    Ok(Admin { local_addr, task })
}

async fn handle(mut s: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while n < buf.len() {
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |k: &str| {
        query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(a, _)| *a == k)
                .map(|(_, v)| v.to_owned())
        })
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (status, ctype, body) = match (method, path) {
        ("GET", "/livez") => (200, "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => {
            let reasons = shared.not_ready_reasons();
            if reasons.is_empty() {
                (200, "text/plain", "ready\n".to_owned())
            } else {
                (
                    503,
                    "text/plain",
                    format!("not ready: {}\n", reasons.join("; ")),
                )
            }
        }
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", shared.metrics.render()),
        ("GET", "/status") => (200, "application/json", status_json(&shared)),
        ("GET", "/buffer/stats") => {
            store_op(&shared, |st| super::ops::buffer_stats(st, super::now_ms())).await
        }
        ("GET", "/dlq") => {
            let after = param("after").and_then(|v| v.parse().ok()).unwrap_or(0);
            let limit = param("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
            store_op(&shared, move |st| super::ops::dlq_list(st, after, limit)).await
        }
        ("GET", _) if segs.len() == 2 && segs[0] == "dlq" => match segs[1].parse::<i64>() {
            Ok(id) => match store_op(&shared, move |st| {
                super::ops::dlq_show(st, id).map(|v| v.unwrap_or(serde_json::Value::Null))
            })
            .await
            {
                (200, _, b) if b == "null" => (404, "text/plain", format!("no dead letter {id}\n")),
                other => other,
            },
            Err(_) => (400, "text/plain", "bad id\n".to_owned()),
        },
        ("POST", "/dlq/purge") => {
            let older = param("older_than_secs")
                .and_then(|v| v.parse::<i64>().ok())
                .map(|s| s * 1000);
            let sh = shared.clone();
            blocking_json(move || {
                super::ops::dlq_purge(&mut super::worker::lock(&sh.store), older, super::now_ms())
            })
            .await
        }
        ("POST", _) if segs.len() == 3 && segs[0] == "dlq" && segs[2] == "replay" => {
            match segs[1].parse::<i64>() {
                Ok(id) => replay_online(&shared, vec![id]).await,
                Err(_) => (400, "text/plain", "bad id\n".to_owned()),
            }
        }
        ("POST", "/dlq/replay") => {
            let ids = store_op(&shared, |st| super::ops::dlq_list(st, 0, 100_000)).await;
            let ids: Vec<i64> = serde_json::from_str::<serde_json::Value>(&ids.2)
                .ok()
                .and_then(|v| {
                    v.as_array()
                        .map(|a| a.iter().filter_map(|d| d["id"].as_i64()).collect())
                })
                .unwrap_or_default();
            replay_online(&shared, ids).await
        }
        ("POST", "/identity/invalidate") => identity_invalidate(&shared, target),
        ("GET", _) => (
            404,
            "text/plain",
            "not found (try /livez, /readyz, /metrics, /status)\n".to_owned(),
        ),
        (_, "/identity/invalidate") => (405, "text/plain", "use POST\n".to_owned()),
        _ => (405, "text/plain", "method not allowed\n".to_owned()),
    };
    let status: u16 = status;
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

fn status_json(shared: &Shared) -> String {
    let sources: serde_json::Map<String, serde_json::Value> = shared
        .sources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, (ok, d))| (k.clone(), serde_json::json!({"ok": ok, "detail": d})))
        .collect();
    let m = &shared.metrics;
    serde_json::json!({
        "ready": shared.not_ready_reasons().is_empty(),
        "not_ready_reasons": shared.not_ready_reasons(),
        "sources": sources,
        "readings_stored": m.counter("iomt_source_received_total", &[]),
        "resources_delivered": m.counter("iomt_sink_delivered_total", &[]),
        "buffer_records": m.gauge("iomt_buffer_records", &[]),
        "dead_letters": m.gauge("iomt_dlq_records", &[]),
        "certificates": shared.certificates.to_json(super::now_ms() / 1000),
        "certificate_expiring_within_days": super::certs::EXPIRING_WITHIN_SECS / 86_400,
    })
    .to_string()
}

type Reply = (u16, &'static str, String);

async fn blocking_json(
    f: impl FnOnce() -> Result<serde_json::Value, crate::buffer::StoreError> + Send + 'static,
) -> Reply {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => (200, "application/json", v.to_string()),
        Ok(Err(e)) => (500, "text/plain", format!("{e}\n")),
        Err(e) => (500, "text/plain", format!("{e}\n")),
    }
}

async fn store_op(
    shared: &Arc<Shared>,
    f: impl FnOnce(&crate::buffer::Store) -> Result<serde_json::Value, crate::buffer::StoreError>
        + Send
        + 'static,
) -> Reply {
    let sh = shared.clone();
    blocking_json(move || f(&super::worker::lock(&sh.store))).await
}

/// Replays dead letters while the agent runs: back into the log through the group committer,
/// then removed from the dead-letter store.
async fn replay_online(shared: &Arc<Shared>, ids: Vec<i64>) -> Reply {
    let mut replayed = Vec::new();
    let mut refused = Vec::new();
    for id in ids {
        let sh = shared.clone();
        let letter =
            tokio::task::spawn_blocking(move || super::worker::lock(&sh.store).dlq_show(id)).await;
        let letter = match letter {
            Ok(Ok(Some(d))) => d,
            Ok(Ok(None)) => {
                refused.push(serde_json::json!({"id": id, "error": "no such dead letter"}));
                continue;
            }
            Ok(Err(e)) => return (500, "text/plain", format!("{e}\n")),
            Err(e) => return (500, "text/plain", format!("{e}\n")),
        };
        let rec = match super::ops::replay_record(&letter, super::now_ms()) {
            Ok(r) => r,
            Err(e) => {
                refused.push(serde_json::json!({"id": id, "error": e}));
                continue;
            }
        };
        match shared.committer.append(rec).await {
            Ok(a) => {
                let sh = shared.clone();
                let removed = tokio::task::spawn_blocking(move || {
                    super::worker::lock(&sh.store).dlq_replay(id)
                })
                .await;
                if !matches!(removed, Ok(Ok(_))) {
                    tracing::warn!(id, "A replayed dead letter could not be removed; it may be replayed twice (harmless: ids are deterministic).");
                }
                replayed.push(serde_json::json!({"id": id, "seq": a.seq()}));
            }
            Err(e) => refused.push(serde_json::json!({"id": id, "error": e.to_string()})),
        }
    }
    shared.appended.notify_waiters();
    (
        200,
        "application/json",
        serde_json::json!({"replayed": replayed, "refused": refused}).to_string(),
    )
}

/// `POST /identity/invalidate[?device=ID]`: drops every cached identity, or one device's, in
/// every FHIR sink. Answers JSON `{"invalidated": n, "device": …, "sinks": [...]}`.
fn identity_invalidate(shared: &Shared, target: &str) -> (u16, &'static str, String) {
    let mut device = None;
    if let Some((_, query)) = target.split_once('?') {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (percent_decode(k).as_deref(), percent_decode(v)) {
                (Some("device"), Some(v)) if !v.is_empty() => device = Some(v),
                (Some("device"), _) => {
                    return (
                        400,
                        "text/plain",
                        "device must be a non-empty, percent-encoded device id\n".into(),
                    )
                }
                _ => {}
            }
        }
    }
    let caches = shared
        .identity_caches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut total = 0;
    let mut sinks = Vec::new();
    for (sink, cache) in &caches {
        let n = cache.invalidate(device.as_deref());
        crate::telemetry::events::fhir_identity_invalidated(
            &shared.metrics,
            sink,
            device.is_some(),
            n,
        );
        total += n;
        sinks.push(sink.clone());
    }
    (
        200,
        "application/json",
        serde_json::json!({"invalidated": total, "device": device, "sinks": sinks}).to_string()
            + "\n",
    )
}

/// Decodes `%XX` and `+` in a query component; `None` when it is not UTF-8 or malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("MON%2D1+a%7Cb").as_deref(),
            Some("MON-1 a|b")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%FF"), None);
    }
}
