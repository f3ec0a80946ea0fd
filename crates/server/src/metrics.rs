//! `/metrics` (Prometheus text format) and `/healthz`.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let snap = state.engine.metrics();
    let (publishers, viewers) = state.engine.session_counts();
    let rooms = state.engine.rooms();
    let mut out = String::new();
    for (name, help, value) in snap.fields() {
        let _ = writeln!(out, "# HELP deadsfu_{name}_total {help}");
        let _ = writeln!(out, "# TYPE deadsfu_{name}_total counter");
        let _ = writeln!(out, "deadsfu_{name}_total {value}");
    }
    let _ = writeln!(out, "# HELP deadsfu_sessions Live sessions by kind");
    let _ = writeln!(out, "# TYPE deadsfu_sessions gauge");
    let _ = writeln!(out, "deadsfu_sessions{{kind=\"publisher\"}} {publishers}");
    let _ = writeln!(out, "deadsfu_sessions{{kind=\"viewer\"}} {viewers}");
    let _ = writeln!(
        out,
        "# HELP deadsfu_sessions_pending Sessions not yet connected"
    );
    let _ = writeln!(out, "# TYPE deadsfu_sessions_pending gauge");
    let _ = writeln!(
        out,
        "deadsfu_sessions_pending {}",
        state.engine.pending_sessions()
    );
    let _ = writeln!(out, "# HELP deadsfu_rooms Rooms with at least one session");
    let _ = writeln!(out, "# TYPE deadsfu_rooms gauge");
    let _ = writeln!(out, "deadsfu_rooms {}", rooms.len());
    if let Some(acme) = state.https.as_ref().and_then(|h| h.acme.as_ref()) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &acme.stats;
        for (name, help, value) in [
            (
                "acme_orders",
                "ACME orders this node started",
                s.orders_started.load(Relaxed),
            ),
            (
                "acme_order_failures",
                "ACME orders that failed",
                s.orders_failed.load(Relaxed),
            ),
            (
                "acme_certificates",
                "Certificates this node obtained",
                s.certificates_obtained.load(Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP deadsfu_{name}_total {help}");
            let _ = writeln!(out, "# TYPE deadsfu_{name}_total counter");
            let _ = writeln!(out, "deadsfu_{name}_total {value}");
        }
    }
    state.http_limits.write_prometheus(&mut out);
    for source in &state.extra_metrics {
        source.write_prometheus(&mut out);
    }
    let refusals = state.http_limits.proxy_protocol_refusals();
    let _ = writeln!(
        out,
        "# HELP deadsfu_proxy_protocol_refusals_total Connections refused for their PROXY protocol header"
    );
    let _ = writeln!(out, "# TYPE deadsfu_proxy_protocol_refusals_total counter");
    let _ = writeln!(
        out,
        "deadsfu_proxy_protocol_refusals_total{{reason=\"bad_header\"}} {}",
        refusals.bad_header
    );
    let _ = writeln!(
        out,
        "deadsfu_proxy_protocol_refusals_total{{reason=\"untrusted_header\"}} {}",
        refusals.untrusted_header
    );
    if let Some(https) = state.https.as_ref() {
        let _ = writeln!(
            out,
            "# HELP deadsfu_certificate_not_after_seconds Expiry of each served certificate"
        );
        let _ = writeln!(out, "# TYPE deadsfu_certificate_not_after_seconds gauge");
        for c in https.resolver.status() {
            let _ = writeln!(
                out,
                "deadsfu_certificate_not_after_seconds{{name=\"{}\",source=\"{}\"}} {}",
                c.name,
                serde_json::to_value(c.source)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                c.not_after_unix
            );
        }
    }
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

/// Liveness, and every served certificate with its expiry.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let certificates = state
        .https
        .as_ref()
        .map(|h| h.resolver.status())
        .unwrap_or_default();
    axum::Json(serde_json::json!({
        "status": "ok",
        "certificates": certificates,
    }))
    .into_response()
}

/// Readiness: 200 when this node takes new sessions (standalone, or in a cluster with Redis
/// reachable and not draining), 503 otherwise.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let ready = state.front_door.as_ref().is_none_or(|f| f.ready());
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::json!({ "ready": ready }))).into_response()
}
