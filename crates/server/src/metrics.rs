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
    let _ = writeln!(out, "# HELP deadsfu_rooms Rooms with at least one session");
    let _ = writeln!(out, "# TYPE deadsfu_rooms gauge");
    let _ = writeln!(out, "deadsfu_rooms {}", rooms.len());
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}
