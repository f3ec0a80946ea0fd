//! What HTTPS adds to the HTTP surface: plain-HTTP page requests redirected to HTTPS (308),
//! ACME HTTP-01 answers from the certificate store, and the certificates `/healthz` reports.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use deadsfu_tls::{AcmeManager, CertResolver, CertStore};

use crate::AppState;
use crate::listen::Transport;

/// HTTPS settings the routes need.
#[derive(Clone)]
pub struct HttpsState {
    /// The HTTPS listener's port, for redirects.
    pub port: u16,
    pub resolver: Arc<CertResolver>,
    /// Where HTTP-01 answers are (with ACME on).
    pub store: Option<Arc<dyn CertStore>>,
    /// For the ACME counters in `/metrics`.
    pub acme: Option<Arc<AcmeManager>>,
}

pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Paths plain HTTP keeps serving when HTTPS is on.
fn stays_plain(path: &str) -> bool {
    path.starts_with(ACME_CHALLENGE_PREFIX) || path == "/healthz" || path == "/metrics"
}

/// A Host header's host part, if it is a plain name or address (nothing to inject).
pub(crate) fn host_part(host: &str) -> Option<&str> {
    let host = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        let end = rest.find(']')?;
        &host[..end + 2]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    plain.then_some(host)
}

/// On the plain-HTTP listener with HTTPS on: GET and HEAD go to HTTPS with 308, except the
/// paths that must stay plain. Other methods are served (API clients configured with an
/// http:// URL keep working; browsers only navigate with GET).
pub(crate) async fn redirect_to_https(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(https) = state.https.as_ref() else {
        return next.run(req).await;
    };
    let plain = req.extensions().get::<Transport>() == Some(&Transport::Http);
    let page = matches!(*req.method(), Method::GET | Method::HEAD);
    if !plain || !page || stays_plain(req.uri().path()) {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .and_then(host_part)
        .unwrap_or("localhost");
    let port = if https.port == 443 {
        String::new()
    } else {
        format!(":{}", https.port)
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut res = StatusCode::PERMANENT_REDIRECT.into_response();
            res.headers_mut().insert(header::LOCATION, v);
            res
        }
        Err(_) => next.run(req).await,
    }
}

/// `GET /.well-known/acme-challenge/{token}`: the key authorisation, from the store.
pub(crate) async fn http01_answer(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    let valid = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    let store = state.https.as_ref().and_then(|h| h.store.as_ref());
    let answer = match (valid, store) {
        (true, Some(store)) => match store.http_challenge(&token).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an HTTP-01 answer");
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        },
        _ => None,
    };
    match answer {
        Some(key_authorization) => {
            let mut res = (StatusCode::OK, key_authorization).into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            res
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_strips_the_port_and_refuses_oddities() {
        assert_eq!(host_part("a.test:8080"), Some("a.test"));
        assert_eq!(host_part("a.test"), Some("a.test"));
        assert_eq!(host_part("[::1]:80"), Some("[::1]"));
        assert_eq!(host_part("a b"), None);
        assert_eq!(host_part("evil.test/x"), None);
        assert_eq!(host_part(""), None);
    }

    #[test]
    fn challenge_health_and_metrics_stay_plain() {
        assert!(stays_plain("/.well-known/acme-challenge/abc"));
        assert!(stays_plain("/healthz"));
        assert!(!stays_plain("/"));
        assert!(!stays_plain("/whep/room"));
    }
}
