//! Port 80 (HTTP/1.1) and the admin listener. Port 80 answers ACME HTTP-01 challenges from
//! Redis (`acme:challenge:{token}`, which any SFU of the cluster may have placed) and sends
//! everything else to HTTPS with 308. The admin listener serves `/metrics`, `/healthz`,
//! `/readyz`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadsfu_cluster::RedisConn;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

fn response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves `handler` on `listener` (HTTP/1.1, header deadline) until `stop`.
pub async fn serve_http1<F, Fut>(
    listener: TcpListener,
    handler: F,
    stop: impl std::future::Future<Output = ()>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// The port-80 handler.
pub async fn port80(
    redis: Option<Arc<RedisConn>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        let valid = !token.is_empty()
            && token.len() <= 256
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        let Some(redis) = redis.filter(|_| valid) else {
            return response(StatusCode::NOT_FOUND, "");
        };
        let key = format!("{}acme:challenge:{token}", redis.keys().prefix());
        let mut conn = redis.manager();
        let answer: Result<Option<String>, _> =
            redis::cmd("GET").arg(key).query_async(&mut conn).await;
        return match answer {
            Ok(Some(a)) => response(StatusCode::OK, a),
            Ok(None) => response(StatusCode::NOT_FOUND, ""),
            Err(_) => response(StatusCode::SERVICE_UNAVAILABLE, ""),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(h, _)| h))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        });
    let Some(host) = host else {
        return response(StatusCode::BAD_REQUEST, "a Host header is required\n");
    };
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut r = response(StatusCode::PERMANENT_REDIRECT, "");
    if let Ok(v) = header::HeaderValue::from_str(&format!("https://{host}{path_and_query}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The admin handler: `metrics` renders the Prometheus text, `ready` says whether routing
/// has a live node.
pub fn admin(
    req: &Request<Incoming>,
    metrics: impl FnOnce() -> String,
    ready: impl FnOnce() -> bool,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let mut r = response(StatusCode::OK, metrics());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => response(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if ready() {
                response(StatusCode::OK, "ready\n")
            } else {
                response(StatusCode::SERVICE_UNAVAILABLE, "no live node\n")
            }
        }
        _ => response(StatusCode::NOT_FOUND, ""),
    }
}
