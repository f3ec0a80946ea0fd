//! `POST /whep/{room}`: WHEP playback (recvonly offer in, sendonly answer out).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use deadsfu_rtc::SessionKind;

use crate::problem::Problem;
use crate::session::Origin;
use crate::{AppState, cors, session};

pub(crate) async fn create(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    origin: Origin,
    body: Body,
) -> Result<Response, Problem> {
    session::create(
        &state,
        SessionKind::Viewer,
        &room,
        &headers,
        &uri,
        origin,
        body,
    )
    .await
}

pub(crate) async fn options(State(state): State<AppState>) -> Response {
    let mut res = cors::preflight("POST, OPTIONS", Some(("accept-post", "application/sdp")));
    session::add_ice_server_links(&state, res.headers_mut());
    res
}
