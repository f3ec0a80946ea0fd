//! Bearer-token check for WHIP, WHEP and session requests.

use axum::http::{HeaderMap, StatusCode, Uri, header};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::front_door::SessionRole;
use crate::problem::Problem;

/// The value of query parameter `name`, if present.
pub(crate) fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// For creating a session: the bearer token, or a redirect ticket of this cluster for this
/// room and role (browsers drop `Authorization` on a cross-origin redirect).
pub(crate) fn check_session(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    room: &str,
    role: SessionRole,
) -> Result<(), Problem> {
    if state.bearer_token.is_none() {
        return Ok(());
    }
    let has_token =
        headers.contains_key(header::AUTHORIZATION) || query_param(uri, "access_token").is_some();
    match (query_param(uri, "ticket"), &state.front_door) {
        (Some(ticket), Some(door)) if !has_token => door
            .check_ticket(ticket, room, role)
            .map_err(|e| Problem::new(StatusCode::UNAUTHORIZED, "Invalid ticket", e.to_string())),
        _ => check(state, headers, uri),
    }
}

/// Accepts `Authorization: Bearer TOKEN` or `?access_token=TOKEN` (for pages and players that
/// cannot set headers). Compared in constant time.
pub(crate) fn check(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<(), Problem> {
    let Some(expected) = state.bearer_token.as_deref() else {
        return Ok(());
    };
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let from_query = query_param(uri, "access_token");
    let Some(given) = from_header.or(from_query) else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "Token required",
            "send Authorization: Bearer <token>",
        ));
    };
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "Invalid token",
            "the bearer token is not valid",
        ))
    }
}
