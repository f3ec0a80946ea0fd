//! The accept loops of the plain-HTTP and HTTPS listeners: each connection on its own task
//! (TLS handshake included, so a slow client never holds up the next accept), HTTP/1.1 and
//! HTTP/2 (ALPN on TLS, the connection preface on plain TCP), a deadline for request headers,
//! and a graceful shutdown bounded in time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use deadsfu_tls::{AcceptError, HttpsAcceptor};

/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake must finish within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<HttpsAcceptor>,
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
        let (tcp, peer) = tokio::select! {
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
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
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
                    if let Some(stream) = accept_tls(&acceptor, tcp, peer).await {
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
