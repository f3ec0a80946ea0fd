//! The original deadsfu routes, kept for its users: `POST /whip?room=NAME` to publish and
//! `POST /whap?room=NAME` to watch. An empty or missing room is `mainroom`.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use deadsfu_rtc::SessionKind;
use serde::Deserialize;

use crate::problem::Problem;
use crate::{AppState, session};

pub(crate) const DEFAULT_ROOM: &str = "mainroom";

#[derive(Deserialize)]
pub(crate) struct RoomQuery {
    #[serde(default)]
    room: String,
}

impl RoomQuery {
    fn room(&self) -> &str {
        if self.room.is_empty() {
            DEFAULT_ROOM
        } else {
            &self.room
        }
    }
}

pub(crate) async fn whip(
    State(state): State<AppState>,
    Query(q): Query<RoomQuery>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, Problem> {
    session::create(
        &state,
        SessionKind::Publisher,
        q.room(),
        &headers,
        &uri,
        body,
    )
    .await
}

pub(crate) async fn whap(
    State(state): State<AppState>,
    Query(q): Query<RoomQuery>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, Problem> {
    session::create(&state, SessionKind::Viewer, q.room(), &headers, &uri, body).await
}
