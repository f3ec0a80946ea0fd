//! Who may do what. Two rights, each with its own optional token: publishing (WHIP) and
//! viewing (WHEP, the room list). `--bearer-token` sets both. A session, once created, is
//! controlled through its own unguessable URL (PATCH, DELETE, room switch): the URL is the
//! capability, so it needs no token and is never logged at info level.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, Uri, header};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::front_door::SessionRole;
use crate::problem::Problem;

/// The tokens a node requires; `None` leaves that right open.
#[derive(Debug, Clone, Default)]
pub struct AccessTokens {
    pub publish: Option<Arc<str>>,
    pub view: Option<Arc<str>>,
}

impl AccessTokens {
    fn for_role(&self, role: SessionRole) -> Option<&str> {
        match role {
            SessionRole::Publish => self.publish.as_deref(),
            SessionRole::View => self.view.as_deref(),
        }
    }
}

/// The value of query parameter `name`, if present.
pub(crate) fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// For creating a session: the role's token, or a redirect ticket of this cluster for this
/// room and role (browsers drop `Authorization` on a cross-origin redirect).
pub(crate) fn check_session(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    room: &str,
    role: SessionRole,
) -> Result<(), Problem> {
    if state.tokens.for_role(role).is_none() {
        return Ok(());
    }
    let has_token =
        headers.contains_key(header::AUTHORIZATION) || query_param(uri, "access_token").is_some();
    match (query_param(uri, "ticket"), &state.front_door) {
        (Some(ticket), Some(door)) if !has_token => door
            .check_ticket(ticket, room, role)
            .map_err(|e| Problem::new(StatusCode::UNAUTHORIZED, "Invalid ticket", e.to_string())),
        _ => check(state, headers, uri, role),
    }
}

/// Accepts `Authorization: Bearer TOKEN` or `?access_token=TOKEN` (for pages and players that
/// cannot set headers) for `role`. Compared in constant time.
pub(crate) fn check(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    role: SessionRole,
) -> Result<(), Problem> {
    let Some(expected) = state.tokens.for_role(role) else {
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
