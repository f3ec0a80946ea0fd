//! The accept loops of the plain-HTTP and HTTPS listeners: each connection on its own task
//! (TLS handshake included, so a slow client never holds up the next accept), HTTP/1.1 and
//! HTTP/2 (ALPN on TLS, the connection preface on plain TCP), a deadline for request headers,
//! and a graceful shutdown bounded in time.
//!
//! Before TLS and HTTP, each connection passes the PROXY protocol rules of [`ProxyPolicy`]: a
//! trusted front-line proxy must start with a PROXY v2 header, whose client address then stands
//! for the connection (`ConnectInfo`, logs, limits); anyone else starting with one is refused.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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

use crate::proxy_protocol::{self, ProxyPolicy};

/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake must finish within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A trusted proxy writes its PROXY v2 header first thing; an untrusted connection is looked at
/// for this long at most before it is handed on as it is.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals are logged at most once in this period (with a count), so a flood cannot flood logs.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections (event streams never end by themselves).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which kind of listener a request came through (an extension on every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Https,
}

fn builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves `app` on `listener` until `stop` resolves; with `tls`, every connection is HTTPS.
/// `proxy` names the sources that must send a PROXY v2 header (the default trusts none).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<HttpsAcceptor>,
    proxy: Arc<ProxyPolicy>,
    stop: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let transport = if tls.is_some() {
        Transport::Https
    } else {
        Transport::Http
    };
    tokio::pin!(stop);
    loop {
        let (mut tcp, peer) = tokio::select! {
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
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some(client) = admit(&mut tcp, peer, &proxy).await else {
                return;
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(client));
                req.extensions_mut().insert(transport);
                let app = app.clone();
                async move {
                    let res = match app.oneshot(req).await {
                        Ok(res) => res,
                        Err(never) => match never {},
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            match tls {
                None => {
                    let conn = builder()
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    if let Some(stream) = accept_tls(&acceptor, tcp, client).await {
                        let conn = builder()
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
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

/// Applies the PROXY protocol rules to a new connection; returns the address that stands for the
/// client, or `None` when the connection is refused (the caller drops, so closes, it).
async fn admit(tcp: &mut TcpStream, peer: SocketAddr, policy: &ProxyPolicy) -> Option<SocketAddr> {
    if policy.trusts(peer.ip()) {
        match proxy_protocol::read_header(tcp, PROXY_HEADER_TIMEOUT).await {
            // LOCAL (the proxy's own health check) and unspecified: the proxy is the client.
            Ok(source) => Some(source.unwrap_or(peer)),
            Err(e) => {
                REFUSED_BAD_HEADER.fetch_add(1, Ordering::Relaxed);
                log_refusal(peer, "trusted_source_without_header", e.reason(), &e);
                None
            }
        }
    } else {
        match proxy_protocol::peek_for_header(tcp, PROXY_HEADER_TIMEOUT).await {
            None => Some(peer),
            Some(kind) => {
                REFUSED_UNTRUSTED_HEADER.fetch_add(1, Ordering::Relaxed);
                log_refusal(
                    peer,
                    "untrusted_source_with_header",
                    kind.as_str(),
                    &format_args!(
                        "PROXY {} header from a source not trusted to send one",
                        kind.as_str()
                    ),
                );
                None
            }
        }
    }
}

static REFUSED_BAD_HEADER: AtomicU64 = AtomicU64::new(0);
static REFUSED_UNTRUSTED_HEADER: AtomicU64 = AtomicU64::new(0);
/// Refusals since the last log line, and when that line was written.
static UNLOGGED_REFUSALS: AtomicU64 = AtomicU64::new(0);
static LAST_REFUSAL_LOG: Mutex<Option<Instant>> = Mutex::new(None);

/// Connections refused by the PROXY protocol rules since the process started, over all
/// listeners (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyProtocolRefusals {
    /// From a trusted source, without a valid PROXY v2 header within [`PROXY_HEADER_TIMEOUT`]
    /// (none, malformed, too long, cut short, too slow).
    pub bad_header: u64,
    /// From a source not trusted to send one, starting with a PROXY header (v1 or v2).
    pub untrusted_header: u64,
}

impl ProxyProtocolRefusals {
    pub fn total(&self) -> u64 {
        self.bad_header + self.untrusted_header
    }
}

pub fn proxy_protocol_refusals() -> ProxyProtocolRefusals {
    ProxyProtocolRefusals {
        bad_header: REFUSED_BAD_HEADER.load(Ordering::Relaxed),
        untrusted_header: REFUSED_UNTRUSTED_HEADER.load(Ordering::Relaxed),
    }
}

/// Logs a refusal unless one was logged within [`REFUSAL_LOG_PERIOD`]; the line that is written
/// carries the count since the previous one and this (latest) peer. The counters above are exact.
fn log_refusal(peer: SocketAddr, rule: &str, reason: &str, detail: &dyn std::fmt::Display) {
    UNLOGGED_REFUSALS.fetch_add(1, Ordering::Relaxed);
    // try_lock: whoever holds the lock is deciding to log right now; never wait for it.
    let Ok(mut last) = LAST_REFUSAL_LOG.try_lock() else {
        return;
    };
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_PERIOD) {
        return;
    }
    *last = Some(now);
    drop(last);
    let refused = UNLOGGED_REFUSALS.swap(0, Ordering::Relaxed);
    tracing::warn!(
        %peer,
        rule,
        reason,
        %detail,
        refused,
        period_s = REFUSAL_LOG_PERIOD.as_secs(),
        "connections refused by the PROXY protocol rules (`refused` since the last such line; \
         peer, rule and reason are the latest's)"
    );
}
