//! deadsfu's HTTP surface (axum): WHIP and WHEP (RFC 9725 and its WHEP sibling), the session
//! resources they create, the original deadsfu routes, `/metrics` and `/healthz`.
//!
//! One concept per file: `whip.rs`, `whep.rs`, `session.rs` (PATCH/DELETE on a session),
//! `legacy.rs`, `metrics.rs`, and the shared pieces `auth.rs`, `cors.rs`, `problem.rs`, `sdp_body.rs`.

mod auth;
mod cors;
mod legacy;
mod metrics;
mod problem;
mod sdp_body;
mod session;
mod whep;
mod whip;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use deadsfu_rtc::MediaEngine;

pub use problem::Problem;

/// What the HTTP side needs to serve requests.
#[derive(Clone)]
pub struct AppState {
    pub engine: MediaEngine,
    /// When set, WHIP, WHEP and session requests must carry it.
    pub bearer_token: Option<Arc<str>>,
    /// STUN/TURN URLs advertised in `Link: <url>; rel="ice-server"` headers.
    pub ice_servers: Arc<[String]>,
}

/// Path prefix of session resources (`Location` of a WHIP/WHEP session).
pub const SESSION_PATH: &str = "/session";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/whip/{room}", post(whip::create).options(whip::options))
        .route("/whep/{room}", post(whep::create).options(whep::options))
        .route(
            "/session/{id}",
            axum::routing::patch(session::patch)
                .delete(session::delete)
                .options(session::options),
        )
        .route("/whip", post(legacy::whip).options(whip::options))
        .route("/whap", post(legacy::whap).options(whep::options))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .fallback(problem::not_found)
        .layer(axum::middleware::from_fn(cors::add_cors_headers))
        .with_state(state)
}

/// Room names are path segments and log fields: keep them short and plain.
pub(crate) fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
