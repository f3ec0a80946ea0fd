//! CORS, so that browser players and publishers on other origins can use WHIP and WHEP.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

pub(crate) async fn add_cors_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Post, Accept-Patch"),
    );
    res
}

/// Preflight of `POST {session}/room` (a JSON body, maybe a bearer token).
pub(crate) async fn preflight_json_post() -> Response {
    preflight("POST, OPTIONS", Some(("accept-post", "application/json")))
}

/// Preflight of the `/api` reads (a bearer token in the Authorization header).
pub(crate) async fn preflight_get() -> Response {
    preflight("GET, OPTIONS", None)
}

/// Headers of an OPTIONS answer (CORS preflight and WHIP's discovery of what POST takes).
pub(crate) fn preflight(
    methods: &'static str,
    accept: Option<(&'static str, &'static str)>,
) -> Response {
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = axum::http::StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    if let Some((name, value)) = accept {
        h.insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    res
}
