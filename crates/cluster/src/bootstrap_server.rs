//! `cluster serve`: the bootstrap HTTPS server handing each access token's bundle out.
//!
//! `GET` with `?access_token=` or `Authorization: Bearer` returns the zip; everything else
//! gets the same 401 after the token's hash has been compared, in constant time, with every
//! issued token's hash, so the answer gives no hint which names exist. Repeated failures
//! from one address are answered ever more slowly. Logs never carry the token.
//!
//! It runs from a bootstrap directory ([`crate::bootstrap_dir`]), never from the cluster
//! directory: it refuses to start where the CA's private key is.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::bootstrap_dir::{BootstrapDir, BootstrapDirError, refuse_if_holds_ca_key};
use crate::secret::{constant_time_eq, sha256_hex};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: usize = 256;
/// Failures from one address before answers slow down, and the longest delay.
const FREE_FAILURES: u32 = 3;
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(5);
/// A quiet address's failure count is forgotten after this long.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);
const MAX_TRACKED_ADDRESSES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    BootstrapDir(#[from] BootstrapDirError),
    #[error("cannot read the bootstrap certificate or key: {0}")]
    Certificate(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

struct ServerState {
    dir: BootstrapDir,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// A bound, not yet running, bootstrap server.
pub struct BootstrapServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<ServerState>,
}

impl BootstrapServer {
    /// Serves the bootstrap directory `dir` (`DIR/bootstrap`, or one written by
    /// `cluster export-bootstrap`); refused if it holds the CA's private key. Binds `listen`,
    /// or the bootstrap address chosen at `init` when `None`.
    pub async fn bind(dir: &Path, listen: Option<&str>) -> Result<Self, ServeError> {
        refuse_if_holds_ca_key(dir)?;
        let dir = BootstrapDir::new(dir).map_err(BootstrapDirError::Io)?;
        let settings = dir.read_settings()?;
        if let Some(cluster_root) = dir.root().parent()
            && cluster_root.join("ca/ca.key").exists()
        {
            tracing::warn!(
                cluster_dir = %cluster_root.display(),
                "serving from inside the cluster directory: this process can reach the CA key \
                 beside it; for a server facing the internet, run `cluster export-bootstrap` \
                 and serve the copy as a user or on a host without the cluster directory"
            );
        }
        let listen = listen.unwrap_or(&settings.listen).to_string();
        let certs = CertificateDer::pem_file_iter(dir.server_cert())
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ServeError::Certificate(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(dir.server_key())
            .map_err(|e| ServeError::Certificate(e.to_string()))?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| ServeError::Certificate(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(|e| ServeError::Certificate(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: listen.clone(),
                source,
            })?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            state: Arc::new(ServerState {
                dir,
                failures: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let addr = self.local_addr().ok();
        tracing::info!(listen = ?addr, "bootstrap server listening");
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::debug!(error = %err, "accept failed");
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many bootstrap connections; dropping one");
                continue;
            };
            let acceptor = self.acceptor.clone();
            let state = self.state.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let tls =
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let service = service_fn(move |req| handle(state.clone(), peer, req));
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tls), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            });
        }
        tracing::info!("bootstrap server stopped");
    }
}

async fn handle(
    state: Arc<ServerState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = state.failure_delay(peer.ip());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let method = req.method().clone();
    // The path only: the query holds the token.
    let path = req.uri().path().to_string();
    let token = request_token(&req);
    let found = match (&method, token) {
        (&hyper::Method::GET, Some(token)) => state.find_bundle(&token),
        _ => None,
    };
    let response = match found {
        Some((name, zip)) => {
            state.forget_failures(peer.ip());
            tracing::info!(%peer, %method, %path, %name, status = 200, "bundle handed out");
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/zip")
                .header(header::CACHE_CONTROL, "no-store")
                .body(Full::new(Bytes::from(zip)))
        }
        None => {
            state.record_failure(peer.ip());
            tracing::info!(%peer, %method, %path, status = 401, "bundle request refused");
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, "Bearer")
                .header(header::CACHE_CONTROL, "no-store")
                .body(Full::new(Bytes::from_static(b"unauthorized\n")))
        }
    };
    Ok(response.expect("static response parts are valid"))
}

/// The token from `?access_token=` or `Authorization: Bearer`.
fn request_token(req: &Request<Incoming>) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_string());
    }
    let query = req.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

impl ServerState {
    /// The bundle for `token`. Read from disk per request so `revoke` takes effect at once.
    fn find_bundle(&self, token: &str) -> Option<(String, Vec<u8>)> {
        if token.len() > 256 {
            return None;
        }
        let hash = sha256_hex(token.as_bytes());
        let names = match self.dir.list_token_hashes() {
            Ok(names) => names,
            Err(err) => {
                tracing::error!(error = %err, "cannot list the bundles");
                return None;
            }
        };
        // Compare with every name, without stopping at a match.
        let mut matched = None;
        for (name, token_sha256) in names {
            if constant_time_eq(hash.as_bytes(), token_sha256.as_bytes()) {
                matched = Some(name);
            }
        }
        let name = matched?;
        match std::fs::read(self.dir.bundle(&name)) {
            Ok(zip) => Some((name, zip)),
            Err(err) => {
                tracing::error!(%name, error = %err, "cannot read bundle");
                None
            }
        }
    }

    fn failure_delay(&self, ip: IpAddr) -> Duration {
        let failures = self.failures.lock().expect("failures lock");
        match failures.get(&ip) {
            Some((count, last)) if *count > FREE_FAILURES && last.elapsed() < FAILURE_MEMORY => {
                let extra = (*count - FREE_FAILURES).min(20);
                (Duration::from_millis(250) * extra).min(MAX_FAILURE_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    fn record_failure(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() >= MAX_TRACKED_ADDRESSES {
            failures.retain(|_, (_, last)| last.elapsed() < FAILURE_MEMORY);
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    fn forget_failures(&self, ip: IpAddr) {
        self.failures.lock().expect("failures lock").remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_are_slowed_down_and_success_forgives() {
        let state = ServerState {
            dir: BootstrapDir::new(Path::new("/nonexistent")).unwrap(),
            failures: Mutex::new(HashMap::new()),
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut delays = Vec::new();
        for _ in 0..30 {
            delays.push(state.failure_delay(ip));
            state.record_failure(ip);
        }
        assert!(
            delays[..=FREE_FAILURES as usize]
                .iter()
                .all(|d| d.is_zero())
        );
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), MAX_FAILURE_DELAY);
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(state.failure_delay(other).is_zero());
        state.forget_failures(ip);
        assert!(state.failure_delay(ip).is_zero());
    }
}
