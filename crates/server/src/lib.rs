//! deadsfu's HTTP surface (axum): WHIP and WHEP (RFC 9725 and its WHEP sibling), the session
//! resources they create, the original deadsfu routes, `/metrics` and `/healthz`.
//!
//! One concept per file: `whip.rs`, `whep.rs`, `session.rs` (PATCH/DELETE on a session, room
//! switching), `legacy.rs`, `api.rs` (rooms as JSON and server-sent events), `web.rs` (the
//! player and publisher pages), `metrics.rs`, and the shared pieces `auth.rs`, `cors.rs`,
//! `problem.rs`, `sdp_body.rs`.

mod api;
mod auth;
mod cors;
mod framing;
mod front_door;
mod https;
mod legacy;
pub mod limits;
pub mod listen;
mod metrics;
mod problem;
pub mod proxy_protocol;
mod sdp_body;
mod session;
mod web;
mod whep;
mod whip;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use deadsfu_rtc::MediaEngine;

pub use api::{RoomInfo, RoomsSnapshot, room_feed};
pub use auth::AccessTokens;
pub use front_door::{
    ClusterRoom, FrontDoor, RouteDecision, RouteRequest, SessionRole, TicketError,
};
pub use https::HttpsState;
pub use limits::{
    HttpAdmission, HttpLimits, HttpRefusal, ProxyProtocolRefusals, raise_open_file_limit,
};
pub use listen::{Transport, serve};
pub use problem::Problem;
pub use proxy_protocol::{Cidr, CidrError, ProxyPolicy};
pub use web::HtmlSource;

/// What the HTTP side needs to serve requests.
#[derive(Clone)]
pub struct AppState {
    pub engine: MediaEngine,
    /// Tokens required to publish and to view (each optional).
    pub tokens: auth::AccessTokens,
    /// STUN/TURN URLs advertised in `Link: <url>; rel="ice-server"` headers.
    pub ice_servers: Arc<[String]>,
    /// Where the web pages come from.
    pub html: HtmlSource,
    /// The rooms of this node, refreshed by [`room_feed`].
    pub rooms: tokio::sync::watch::Receiver<RoomsSnapshot>,
    /// Set when the node serves HTTPS.
    pub https: Option<HttpsState>,
    /// Cluster routing of new sessions (cluster mode); `None` serves everything here.
    pub front_door: Option<Arc<dyn FrontDoor>>,
    /// Connection and event-stream limits (shared with the listeners).
    pub http_limits: Arc<HttpAdmission>,
    /// More counters for `/metrics` (e.g. the FTL listener's), appended as they write them.
    pub extra_metrics: Vec<Arc<dyn MetricsSource>>,
}

/// Something that appends its counters to `/metrics` in Prometheus text format.
pub trait MetricsSource: Send + Sync + 'static {
    fn write_prometheus(&self, out: &mut String);
}

/// Longest time a request may take, reading its body included.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
        .route(
            "/session/{id}/room",
            post(session::switch_room).options(cors::preflight_json_post),
        )
        .route("/whip", post(legacy::whip).options(whip::options))
        .route("/whap", post(legacy::whap).options(whep::options))
        .route("/switchRoom", get(legacy::switch_room))
        .route("/api/rooms", get(api::rooms).options(cors::preflight_get))
        .route("/", get(web::index))
        .route("/send", get(web::send))
        .route("/web/{*file}", get(web::asset))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .route(
            "/.well-known/acme-challenge/{token}",
            get(https::http01_answer),
        )
        .fallback(problem::not_found)
        // A request (body included) that takes longer than this is cut off with 408, so slow
        // clients cannot hold resources. The event stream below is long-lived by design.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .route(
            "/api/rooms/events",
            get(api::room_events).options(cors::preflight_get),
        )
        .layer(axum::middleware::from_fn(cors::add_cors_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            https::redirect_to_https,
        ))
        .with_state(state)
}

/// Room names are path segments and log fields: keep them short and plain.
pub(crate) fn check_room_name(name: &str) -> Result<(), Problem> {
    // Dots are allowed inside names ("stage.2"), but a name of dots only ("." or "..") would
    // read as a path step wherever room names become paths or keys.
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.bytes().all(|b| b == b'.');
    if plain {
        Ok(())
    } else {
        Err(Problem::new(
            axum::http::StatusCode::BAD_REQUEST,
            "Invalid room name",
            "room names are 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.', not dots only",
        ))
    }
}

#[cfg(test)]
mod room_name_tests {
    use super::check_room_name;

    #[test]
    fn plain_names_pass_and_path_steps_do_not() {
        for ok in ["mainroom", "stage.2", "a-b_c", &"x".repeat(64)] {
            assert!(check_room_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "...",
            "a/b",
            "a b",
            "%2e%2e",
            &"x".repeat(65),
            "é",
        ] {
            assert!(check_room_name(bad).is_err(), "{bad}");
        }
    }
}
