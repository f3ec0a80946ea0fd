//! Session resources: creating one (shared by WHIP and WHEP), PATCH (trickle ICE, ICE restart)
//! and DELETE.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use deadsfu_rtc::{SessionKind, TrickleOutcome};

use crate::front_door::{RouteDecision, RouteRequest, SessionRole};
use crate::listen::Transport;
use crate::problem::Problem;
use crate::{AppState, SESSION_PATH, auth, check_room_name, cors, sdp_body};

/// POST of an SDP offer: 201 with the answer, `Location`, `ETag` and ICE-server `Link`s.
pub(crate) async fn create(
    state: &AppState,
    kind: SessionKind,
    room: &str,
    headers: &HeaderMap,
    uri: &Uri,
    origin: Origin,
    body: Body,
) -> Result<Response, Problem> {
    let client = origin.peer.map(|p| p.ip());
    check_room_name(room)?;
    let role = match kind {
        SessionKind::Publisher => SessionRole::Publish,
        SessionKind::Viewer => SessionRole::View,
    };
    auth::check_session(state, headers, uri, room, role)?;
    if let Some(door) = &state.front_door {
        let host = request_host(headers, uri);
        let request = RouteRequest {
            role,
            room,
            host: host.as_deref(),
            path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
            redirected: auth::query_param(uri, "ticket").is_some(),
        };
        match door.route(request).await {
            RouteDecision::Serve => {}
            RouteDecision::Redirect(location) => {
                tracing::info!(room, ?role, client = ?client, to = %location.split('?').next().unwrap_or(""), "redirected");
                let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
                if let Ok(v) = HeaderValue::from_str(&location) {
                    res.headers_mut().insert(header::LOCATION, v);
                }
                return Ok(res);
            }
            RouteDecision::Refuse(problem) => return Err(problem),
        }
    }
    let offer = sdp_body::read(headers, body, "application/sdp").await?;
    let created = state
        .engine
        .create_session(kind, room, &offer, client)
        .await
        .inspect_err(
            |e| tracing::info!(room, ?kind, client = ?client, error = %e, "session refused"),
        )?;
    tracing::info!(room, ?kind, client = ?client, "session created");
    let mut res = (StatusCode::CREATED, created.answer).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    // The session lives on this node: its URL is the name the client reached it by, or the
    // node's own public URL if that name was the cluster's service name.
    let base = match (&state.front_door, request_host(headers, uri)) {
        (Some(door), Some(host)) if door.is_service_name(&host) => door.public_url().to_string(),
        _ => own_base_url(headers, uri, origin.transport),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{base}{SESSION_PATH}/{}", created.id)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&created.etag) {
        h.insert(header::ETAG, v);
    }
    add_ice_server_links(state, h);
    Ok(res)
}

/// How a request reached this node: the listener, and the client's address (a trusted proxy's
/// PROXY header replaces the TCP peer's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub transport: Transport,
    pub peer: Option<std::net::SocketAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Origin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Origin {
            transport: parts
                .extensions
                .get::<Transport>()
                .copied()
                .unwrap_or(Transport::Http),
            peer: parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        })
    }
}

/// The Host header's host part, lower case (no port).
fn request_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?;
    crate::https::host_part(host).map(|h| h.to_ascii_lowercase())
}

/// `scheme://host[:port]` as the client reached this node (standalone `Location`s are absolute
/// too, so a client behind any proxy path resolves them alike).
fn own_base_url(headers: &HeaderMap, uri: &Uri, transport: Transport) -> String {
    let scheme = match transport {
        Transport::Https => "https",
        Transport::Http => "http",
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        })
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
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
    body: Body,
) -> Result<Response, Problem> {
    // The session URL is the capability (see auth.rs): no token needed.
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
) -> Result<Response, Problem> {
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
    body: Body,
) -> Result<Response, Problem> {
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
