//! The original deadsfu routes, kept for its users: `POST /whip?room=NAME` to publish,
//! `POST /whap?room=NAME` to watch (an empty or missing room is `mainroom`), and
//! `GET /switchRoom?room=NAME&subuuid=SESSION` to move a viewer to another room.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use deadsfu_rtc::SessionKind;
use serde::Deserialize;

use crate::problem::Problem;
use crate::session::Origin;
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
    origin: Origin,
    body: Body,
) -> Result<Response, Problem> {
    session::create(
        &state,
        SessionKind::Publisher,
        q.room(),
        &headers,
        &uri,
        origin,
        body,
    )
    .await
}

pub(crate) async fn whap(
    State(state): State<AppState>,
    Query(q): Query<RoomQuery>,
    headers: HeaderMap,
    uri: Uri,
    origin: Origin,
    body: Body,
) -> Result<Response, Problem> {
    session::create(
        &state,
        SessionKind::Viewer,
        q.room(),
        &headers,
        &uri,
        origin,
        body,
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct SwitchQuery {
    #[serde(default)]
    room: String,
    #[serde(default)]
    subuuid: String,
}

pub(crate) async fn switch_room(
    State(state): State<AppState>,
    Query(q): Query<SwitchQuery>,
) -> Result<Response, Problem> {
    // The session id is the capability (see auth.rs).
    let room = if q.room.is_empty() {
        DEFAULT_ROOM
    } else {
        &q.room
    };
    session::do_switch(&state, &q.subuuid, room).await
}
