//! Bearer-token check for WHIP, WHEP and session requests.

use axum::http::{HeaderMap, StatusCode, Uri, header};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::problem::Problem;

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
    let from_query = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")));
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
