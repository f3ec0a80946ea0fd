//! The HTTPS front: TLS passthrough by SNI. Each connection is a pipeline of small bounded
//! stages, each with its own deadline: admission (limits) → ClientHello (16 KiB, 5 s) →
//! route (from the cached table) → connect (3 s) → PROXY v2 header when the node wants one →
//! replay of the hello → splice both ways (idle timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client_hello::{ALERT_UNRECOGNIZED_NAME, HelloProgress, HelloReader};
use crate::pipe::{PipeCounters, pipe_both_ways};
use crate::route_cache::{RouteCache, unix_ms};
use deadsfu_limits::{Admission, AdmissionRefusal, RefusalReason, Refusals};

#[derive(Debug, Clone)]
pub struct HttpsFrontConfig {
    pub service_domain: String,
    pub region: String,
    pub hello_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Source address of connections to SFUs (`--backend-source`).
    pub backend_source: Option<std::net::IpAddr>,
}

impl Default for HttpsFrontConfig {
    fn default() -> Self {
        Self {
            service_domain: String::new(),
            region: "default".into(),
            hello_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(300),
            backend_source: None,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpsStats {
    pub accepted: AtomicU64,
    pub routed: AtomicU64,
    pub hello_rejected: AtomicU64,
    pub hello_timeouts: AtomicU64,
    pub unknown_name: AtomicU64,
    pub backend_failed: AtomicU64,
    pub bytes: Arc<PipeCounters>,
}

/// Why a connection was closed before it reached an SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpsRefusal {
    /// Connection limits (see [`Admission`]).
    Total,
    PerIp,
    Rate,
    /// Not a TLS ClientHello, or one without a usable name.
    BadHello,
    /// No whole ClientHello within the deadline.
    HelloTimeout,
    /// No node serves the name.
    UnknownName,
}

impl RefusalReason for HttpsRefusal {
    const ALL: &'static [Self] = &[
        HttpsRefusal::Total,
        HttpsRefusal::PerIp,
        HttpsRefusal::Rate,
        HttpsRefusal::BadHello,
        HttpsRefusal::HelloTimeout,
        HttpsRefusal::UnknownName,
    ];
    fn index(self) -> usize {
        self as usize
    }
    fn label(self) -> &'static str {
        match self {
            HttpsRefusal::Total => "total",
            HttpsRefusal::PerIp => "per_ip",
            HttpsRefusal::Rate => "rate",
            HttpsRefusal::BadHello => "bad_hello",
            HttpsRefusal::HelloTimeout => "hello_timeout",
            HttpsRefusal::UnknownName => "unknown_name",
        }
    }
}

/// How often refusals are logged at most (in aggregate).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct HttpsFront {
    pub config: HttpsFrontConfig,
    pub routes: Arc<RouteCache>,
    pub admission: Arc<Admission>,
    pub stats: Arc<HttpsStats>,
    pub refusals: Refusals<HttpsRefusal>,
}

impl HttpsFront {
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        // Writes the tail of a burst of refusals once the log interval has passed.
        let mut log_timer = tokio::time::interval(REFUSAL_LOG_INTERVAL);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = log_timer.tick() => {
                    self.refusals.log_if_due(Instant::now());
                    continue;
                }
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut stop => return,
            };
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            // Over a limit: closed at once (dropping the socket), counted, logged in aggregate.
            let permit = match self.admission.try_admit(peer.ip(), Instant::now()) {
                Ok(p) => p,
                Err(r) => {
                    let reason = match r {
                        AdmissionRefusal::Total => HttpsRefusal::Total,
                        AdmissionRefusal::PerIp => HttpsRefusal::PerIp,
                        AdmissionRefusal::Rate => HttpsRefusal::Rate,
                    };
                    self.refusals.refuse(reason, Instant::now());
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                me.serve(tcp, peer).await;
            });
        }
    }

    async fn serve(&self, mut client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        let hello =
            match tokio::time::timeout(self.config.hello_timeout, read_hello(&mut client)).await {
                Ok(Ok(h)) => h,
                Ok(Err(reason)) => {
                    self.stats.hello_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(%peer, reason, "ClientHello refused");
                    self.refusals.refuse(HttpsRefusal::BadHello, Instant::now());
                    return;
                }
                Err(_) => {
                    self.stats.hello_timeouts.fetch_add(1, Ordering::Relaxed);
                    self.refusals
                        .refuse(HttpsRefusal::HelloTimeout, Instant::now());
                    return;
                }
            };
        let (info, buffered) = hello;
        let table = self.routes.table();
        let route = table.route_hello(
            &info,
            &self.config.service_domain,
            &self.config.region,
            unix_ms(),
            self.routes.redis_away(),
            &mut rand::rng(),
        );
        let Some(backend) = route else {
            self.stats.unknown_name.fetch_add(1, Ordering::Relaxed);
            let _ = client.write_all(&ALERT_UNRECOGNIZED_NAME).await;
            self.refusals
                .refuse(HttpsRefusal::UnknownName, Instant::now());
            return;
        };
        let connected = tokio::time::timeout(
            self.config.connect_timeout,
            crate::net_util::connect_from(self.config.backend_source, backend.addr),
        )
        .await;
        let mut upstream = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.stats.backend_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %backend.node, addr = %backend.addr, error = %e, "backend refused");
                return;
            }
            Err(_) => {
                self.stats.backend_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %backend.node, addr = %backend.addr, "backend connect timed out");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let mut first = Vec::with_capacity(buffered.len() + 64);
        if backend.proxy_protocol {
            let local = client.local_addr().unwrap_or(backend.addr);
            match proxy_v2_header(peer, local) {
                Some(h) => first.extend_from_slice(&h),
                None => return,
            }
        }
        first.extend_from_slice(&buffered);
        if upstream.write_all(&first).await.is_err() {
            self.stats.backend_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.routed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, sni = ?info.sni, node = %backend.node, "routed");
        let _ = pipe_both_ways(
            client,
            upstream,
            self.config.idle_timeout,
            self.stats.bytes.clone(),
        )
        .await;
    }
}

/// Reads until the ClientHello is complete; returns it and the bytes to replay.
async fn read_hello(
    client: &mut TcpStream,
) -> Result<(crate::client_hello::HelloInfo, Vec<u8>), &'static str> {
    let mut reader = HelloReader::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = client.read(&mut buf).await.map_err(|_| "read error")?;
        if n == 0 {
            return Err("closed before the hello");
        }
        match reader.push(&buf[..n]) {
            HelloProgress::NeedMore => {}
            HelloProgress::Hello(info) => return Ok((info, reader.into_buffered())),
            HelloProgress::Reject(r) => {
                return Err(match r {
                    crate::client_hello::HelloReject::NotTls => "not TLS",
                    crate::client_hello::HelloReject::TooLarge => "hello too large",
                    crate::client_hello::HelloReject::Malformed(_) => "malformed hello",
                });
            }
        }
    }
}

/// A PROXY protocol v2 header for a TCP connection from `client` to `local`.
pub fn proxy_v2_header(client: SocketAddr, local: SocketAddr) -> Option<Vec<u8>> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let addresses = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            ppp::v2::Addresses::from((client, local))
        }
        // Mixed families: both as IPv6 (IPv4-mapped).
        (c, l) => {
            let map = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
                v6 => v6,
            };
            ppp::v2::Addresses::from((map(c), map(l)))
        }
    };
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_header_round_trips() {
        let h = proxy_v2_header(
            "203.0.113.7:4711".parse().unwrap(),
            "127.0.0.10:443".parse().unwrap(),
        )
        .unwrap();
        let parsed = ppp::v2::Header::try_from(&h[..]).unwrap();
        match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(a.source_address, std::net::Ipv4Addr::new(203, 0, 113, 7));
                assert_eq!(a.source_port, 4711);
            }
            other => panic!("{other:?}"),
        }
    }
}
