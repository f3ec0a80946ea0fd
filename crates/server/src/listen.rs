//! The accept loops of the plain-HTTP and HTTPS listeners: each connection on its own task
//! (TLS handshake included, so a slow client never holds up the next accept), HTTP/1.1 and
//! HTTP/2 (ALPN on TLS, the connection preface on plain TCP), a deadline for request headers,
//! and a graceful shutdown bounded in time.
//!
//! Before TLS and HTTP, each connection passes the PROXY protocol rules of [`ProxyPolicy`]: a
//! trusted front-line proxy must start with a PROXY v2 header, whose client address then stands
//! for the connection (`ConnectInfo`, logs, limits); anyone else starting with one is refused.
//! Then the connection limits of [`HttpAdmission`] (total and per client IP): over them, the
//! connection is closed at once, counted, and logged in aggregate. Under hyper, HTTP/1
//! connections pass through a [`FramingGuard`] (ambiguous framing refused with 400; a deadline
//! for the first request head, which hyper does not have).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use deadsfu_tls::{AcceptError, HttpsAcceptor};

use crate::framing::{AMBIGUOUS_FRAMING_PATH, FramingGuard};
use crate::limits::{HttpAdmission, HttpRefusal};
use crate::problem::Problem;
use crate::proxy_protocol::{self, ProxyPolicy};
use deadsfu_limits::Permit;

/// The TLS handshake must finish within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A trusted proxy writes its PROXY v2 header first thing; an untrusted connection is looked at
/// for this long at most before it is handed on as it is.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for open connections (event streams never end by themselves).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which kind of listener a request came through (an extension on every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Https,
}

fn builder(header_timeout: Duration) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves `app` on `listener` until `stop` resolves; with `tls`, every connection is HTTPS.
/// `proxy` names the sources that must send a PROXY v2 header (the default trusts none);
/// `admission` holds the connection limits (shared by every listener and the routes).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<HttpsAcceptor>,
    proxy: Arc<ProxyPolicy>,
    admission: Arc<HttpAdmission>,
    stop: impl std::future::Future<Output = ()>,
) {
    let header_timeout = admission.limits().header_timeout;
    let mut log_timer = tokio::time::interval(crate::limits::REFUSAL_LOG_INTERVAL);
    let graceful = GracefulShutdown::new();
    let transport = if tls.is_some() {
        Transport::Https
    } else {
        Transport::Http
    };
    tokio::pin!(stop);
    loop {
        let (mut tcp, peer) = tokio::select! {
            _ = log_timer.tick() => {
                admission.log_refusals_if_due();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let proxy = proxy.clone();
        let admission = admission.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let accepted = Instant::now();
            let Some((client, _permit)) = admit(&mut tcp, peer, &proxy, &admission).await else {
                return;
            };
            let rejected = Arc::new(AtomicBool::new(false));
            let service = {
                let rejected = rejected.clone();
                hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(client));
                    req.extensions_mut().insert(transport);
                    let app = app.clone();
                    let ambiguous = rejected.load(Ordering::Relaxed)
                        && req.uri().path() == AMBIGUOUS_FRAMING_PATH;
                    let admission = admission.clone();
                    async move {
                        if ambiguous {
                            admission.refuse(HttpRefusal::AmbiguousFraming);
                            return Ok(ambiguous_framing());
                        }
                        let res = match app.oneshot(req).await {
                            Ok(res) => res,
                            Err(never) => match never {},
                        };
                        Ok::<_, Infallible>(res)
                    }
                })
            };
            match tls {
                None => {
                    let left = header_timeout.saturating_sub(accepted.elapsed());
                    let io = FramingGuard::new(tcp, left, rejected);
                    let conn = builder(header_timeout)
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    if let Some(stream) = accept_tls(&acceptor, tcp, client).await {
                        let io = FramingGuard::new(stream, header_timeout, rejected);
                        let conn = builder(header_timeout)
                            .serve_connection_with_upgrades(TokioIo::new(io), service)
                            .into_owned();
                        let _ = watcher.watch(conn).await;
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the shutdown grace period");
    }
}

async fn accept_tls(
    acceptor: &HttpsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match acceptor.accept(tcp).await {
        Ok(stream) => Some(stream),
        Err(AcceptError::AcmeValidation) => None,
        // Scanners and clients that do not trust us fail here all day: debug, not warn.
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Applies the PROXY protocol rules and the connection limits to a new connection; returns the
/// address that stands for the client and the connection's place, or `None` when the
/// connection is refused (the caller drops, so closes, it). Refusals are counted and logged in
/// aggregate only.
async fn admit(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    policy: &ProxyPolicy,
    admission: &HttpAdmission,
) -> Option<(SocketAddr, Permit)> {
    if policy.trusts(peer.ip()) {
        match proxy_protocol::read_header(tcp, PROXY_HEADER_TIMEOUT).await {
            // LOCAL (the proxy's own health check) and unspecified: the proxy is the client.
            Ok(source) => {
                let client = source.unwrap_or(peer);
                let permit = admission.admit_connection(client.ip())?;
                Some((client, permit))
            }
            Err(e) => {
                tracing::debug!(%peer, reason = e.reason(), "trusted source without a PROXY header");
                admission.refuse(HttpRefusal::ProxyHeaderMissing);
                None
            }
        }
    } else {
        // Limits first: they cost nothing, and nothing is read from a refused client.
        let permit = admission.admit_connection(peer.ip())?;
        match proxy_protocol::peek_for_header(tcp, PROXY_HEADER_TIMEOUT).await {
            None => Some((peer, permit)),
            Some(kind) => {
                tracing::debug!(%peer, kind = kind.as_str(), "PROXY header from an untrusted source");
                admission.refuse(HttpRefusal::ProxyHeaderUntrusted);
                None
            }
        }
    }
}

/// The answer to a request with both `Transfer-Encoding` and `Content-Length`.
fn ambiguous_framing() -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut res = Problem::new(
        axum::http::StatusCode::BAD_REQUEST,
        "Ambiguous request framing",
        "a request may not carry both Transfer-Encoding and Content-Length",
    )
    .into_response();
    res.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    res
}
