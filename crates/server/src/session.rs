//! Session resources: creating one (shared by WHIP and WHEP), PATCH (trickle ICE, ICE restart)
//! and DELETE.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use deadsfu_rtc::{SessionKind, TrickleOutcome};

use crate::problem::Problem;
use crate::{AppState, SESSION_PATH, auth, check_room_name, cors, sdp_body};

/// POST of an SDP offer: 201 with the answer, `Location`, `ETag` and ICE-server `Link`s.
pub(crate) async fn create(
    state: &AppState,
    kind: SessionKind,
    room: &str,
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
) -> Result<Response, Problem> {
    auth::check(state, headers, uri)?;
    check_room_name(room)?;
    let offer = sdp_body::read(headers, body, "application/sdp").await?;
    let created = state
        .engine
        .create_session(kind, room, &offer)
        .await
        .inspect_err(|e| tracing::info!(room, ?kind, error = %e, "session refused"))?;
    let mut res = (StatusCode::CREATED, created.answer).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_PATH}/{}", created.id)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&created.etag) {
        h.insert(header::ETAG, v);
    }
    add_ice_server_links(state, h);
    Ok(res)
}

pub(crate) fn add_ice_server_links(state: &AppState, h: &mut HeaderMap) {
    for url in state.ice_servers.iter() {
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"ice-server\"")) {
            h.append(header::LINK, v);
        }
    }
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, Problem> {
    auth::check(&state, &headers, &uri)?;
    if state.engine.session_kind(&id).is_none() {
        return Err(deadsfu_rtc::SessionError::NotFound.into());
    }
    let fragment = sdp_body::read(&headers, body, "application/trickle-ice-sdpfrag").await?;
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    match state.engine.patch_session(&id, &fragment, if_match).await? {
        TrickleOutcome::Added => Ok(StatusCode::NO_CONTENT.into_response()),
        TrickleOutcome::Restarted { fragment, etag } => {
            let mut res = (StatusCode::OK, fragment).into_response();
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/trickle-ice-sdpfrag"),
            );
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            Ok(res)
        }
    }
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Problem> {
    auth::check(&state, &headers, &uri)?;
    state.engine.close_session(&id).await?;
    Ok(StatusCode::OK.into_response())
}

pub(crate) async fn options() -> Response {
    cors::preflight(
        "PATCH, DELETE, OPTIONS",
        Some(("accept-patch", "application/trickle-ice-sdpfrag")),
    )
}

#[derive(serde::Deserialize)]
pub(crate) struct SwitchRoomBody {
    room: String,
}

/// `POST {session}/room` with `{"room": "NAME"}`: moves a viewer to another room.
pub(crate) async fn switch_room(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, Problem> {
    auth::check(&state, &headers, &uri)?;
    if !sdp_body::content_type_is(&headers, "application/json") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Wrong content type",
            "the body must be application/json",
        ));
    }
    let bytes = axum::body::to_bytes(body, 4096).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Body too large",
            "at most 4096 bytes",
        )
    })?;
    let req: SwitchRoomBody = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "Malformed JSON",
            format!("expected {{\"room\": \"NAME\"}}: {e}"),
        )
    })?;
    do_switch(&state, &id, &req.room).await
}

pub(crate) async fn do_switch(state: &AppState, id: &str, room: &str) -> Result<Response, Problem> {
    check_room_name(room)?;
    state.engine.switch_room(id, room).await?;
    Ok(axum::Json(serde_json::json!({ "room": room })).into_response())
}
