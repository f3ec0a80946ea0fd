//! The HTTPS front: TLS passthrough by SNI. Each connection is a pipeline of small bounded
//! stages, each with its own deadline: admission (limits) → ClientHello (16 KiB, 5 s) →
//! route (from the cached table) → connect (3 s) → PROXY v2 header when the node wants one →
//! replay of the hello → splice both ways (idle timeout). One timer serves all the deadlines
//! of a connection: each stage moves it.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::client_hello::{
    ALERT_UNRECOGNIZED_NAME, HelloInfo, HelloProgress, HelloReader, HelloReject,
};
use crate::pipe::{PipeCounters, Splice, pipe_both_ways};
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
    /// When bulk transfers move on to `splice` (`--splice`).
    pub splice: Splice,
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
            splice: Splice::Auto,
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
        // The local address of every accepted connection, unless the listener is bound to
        // any address (then each connection is asked, for its PROXY header).
        let local = listener
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified());
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one system call
        // fewer per connection.
        let nodelay_inherited = socket2::SockRef::from(&listener).set_nodelay(true).is_ok();
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
                me.serve(tcp, peer, local, nodelay_inherited).await;
            });
        }
    }

    async fn serve(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        nodelay_inherited: bool,
    ) {
        if !nodelay_inherited {
            let _ = client.set_nodelay(true);
        }
        // The connection's one timer: the hello's deadline, then the connect's, then the idle
        // watchdog's.
        let deadline = tokio::time::sleep(self.config.hello_timeout);
        tokio::pin!(deadline);
        let hello = tokio::select! {
            biased;
            hello = read_hello(&client) => hello,
            () = &mut deadline => {
                self.stats.hello_timeouts.fetch_add(1, Ordering::Relaxed);
                self.refusals
                    .refuse(HttpsRefusal::HelloTimeout, Instant::now());
                return;
            }
        };
        let (info, buffered) = match hello {
            Ok(h) => h,
            Err(reason) => {
                self.stats.hello_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%peer, reason, "ClientHello refused");
                self.refusals.refuse(HttpsRefusal::BadHello, Instant::now());
                return;
            }
        };
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
            let mut client = client;
            let _ = client.write_all(&ALERT_UNRECOGNIZED_NAME).await;
            self.refusals
                .refuse(HttpsRefusal::UnknownName, Instant::now());
            return;
        };
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.config.connect_timeout);
        let connected = tokio::select! {
            biased;
            c = crate::net_util::connect_from(self.config.backend_source, backend.addr) => c,
            () = &mut deadline => {
                self.stats.backend_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %backend.node, addr = %backend.addr, "backend connect timed out");
                return;
            }
        };
        let upstream = match connected {
            Ok(s) => s,
            Err(e) => {
                self.stats.backend_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %backend.node, addr = %backend.addr, error = %e, "backend refused");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let mut header = ProxyV2Header::default();
        if backend.proxy_protocol {
            let local = local
                .or_else(|| client.local_addr().ok())
                .unwrap_or(backend.addr);
            header = ProxyV2Header::new(peer, local);
        }
        if write_both(&upstream, header.as_bytes(), &buffered)
            .await
            .is_err()
        {
            self.stats.backend_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        drop(buffered);
        self.stats.routed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, sni = ?info.sni, node = %backend.node, "routed");
        let _ = pipe_both_ways(
            client,
            upstream,
            self.config.idle_timeout,
            deadline,
            self.stats.bytes.clone(),
            self.config.splice,
        )
        .await;
    }
}

/// Reads until the ClientHello is complete, straight into the buffer that is replayed;
/// returns the hello and that buffer.
async fn read_hello(client: &TcpStream) -> Result<(HelloInfo, Vec<u8>), &'static str> {
    let mut reader = HelloReader::new();
    loop {
        client.readable().await.map_err(|_| "read error")?;
        let (n, progress) = match reader.receive(|buf| client.try_read_buf(buf)) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err("read error"),
        };
        match progress {
            HelloProgress::NeedMore if n == 0 => return Err("closed before the hello"),
            HelloProgress::NeedMore => {}
            HelloProgress::Hello(info) => return Ok((info, reader.into_buffered())),
            HelloProgress::Reject(r) => {
                return Err(match r {
                    HelloReject::NotTls => "not TLS",
                    HelloReject::TooLarge => "hello too large",
                    HelloReject::Malformed(_) => "malformed hello",
                });
            }
        }
    }
}

/// Writes `head` then `tail` (the PROXY header and the hello) in one system call when the
/// socket takes them, without joining them first.
async fn write_both(dst: &TcpStream, mut head: &[u8], mut tail: &[u8]) -> io::Result<()> {
    while !head.is_empty() || !tail.is_empty() {
        dst.writable().await?;
        match dst.try_write_vectored(&[IoSlice::new(head), IoSlice::new(tail)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let from_head = n.min(head.len());
                head = &head[from_head..];
                tail = &tail[n - from_head..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The PROXY protocol v2 signature.
const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const PROXY_V2_PROXY: u8 = 0x21;
const PROXY_V2_TCP4: u8 = 0x11;
const PROXY_V2_TCP6: u8 = 0x21;
/// Signature, version and command, family, length.
const PROXY_V2_FIXED: usize = 16;

/// A PROXY protocol v2 header for a TCP connection, built on the stack (empty by default).
#[derive(Debug, Clone, Copy)]
pub struct ProxyV2Header {
    bytes: [u8; PROXY_V2_FIXED + 36],
    len: usize,
}

impl Default for ProxyV2Header {
    fn default() -> Self {
        Self {
            bytes: [0; PROXY_V2_FIXED + 36],
            len: 0,
        }
    }
}

impl ProxyV2Header {
    /// The header for a connection from `client` to `local`; mixed families are sent both as
    /// IPv6 (IPv4-mapped).
    pub fn new(client: SocketAddr, local: SocketAddr) -> Self {
        let mut h = Self::default();
        h.bytes[..12].copy_from_slice(&PROXY_V2_SIGNATURE);
        h.bytes[12] = PROXY_V2_PROXY;
        let (fixed, addresses) = h.bytes.split_at_mut(PROXY_V2_FIXED);
        let addresses_len = match (client, local) {
            (SocketAddr::V4(c), SocketAddr::V4(l)) => {
                fixed[13] = PROXY_V2_TCP4;
                addresses[..4].copy_from_slice(&c.ip().octets());
                addresses[4..8].copy_from_slice(&l.ip().octets());
                addresses[8..10].copy_from_slice(&c.port().to_be_bytes());
                addresses[10..12].copy_from_slice(&l.port().to_be_bytes());
                12
            }
            (c, l) => {
                let v6 = |a: SocketAddr| match a {
                    SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped().octets(),
                    SocketAddr::V6(v6) => v6.ip().octets(),
                };
                fixed[13] = PROXY_V2_TCP6;
                addresses[..16].copy_from_slice(&v6(c));
                addresses[16..32].copy_from_slice(&v6(l));
                addresses[32..34].copy_from_slice(&c.port().to_be_bytes());
                addresses[34..36].copy_from_slice(&l.port().to_be_bytes());
                36
            }
        };
        h.bytes[14..16].copy_from_slice(&(addresses_len as u16).to_be_bytes());
        h.len = PROXY_V2_FIXED + addresses_len;
        h
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header as ppp's builder wrote it (what the SFU parses).
    fn ppp_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        use ppp::v2::{Builder, Command, Protocol, Version};
        let map = |a: SocketAddr| match a {
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            v6 => v6,
        };
        let addresses = match (client, local) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
                ppp::v2::Addresses::from((client, local))
            }
            (c, l) => ppp::v2::Addresses::from((map(c), map(l))),
        };
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    /// What `run` counts on to skip `set_nodelay` per connection.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&listener).set_nodelay(true).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn proxy_header_round_trips() {
        let h = ProxyV2Header::new(
            "203.0.113.7:4711".parse().unwrap(),
            "127.0.0.10:443".parse().unwrap(),
        );
        let parsed = ppp::v2::Header::try_from(h.as_bytes()).unwrap();
        match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(a.source_address, std::net::Ipv4Addr::new(203, 0, 113, 7));
                assert_eq!(a.source_port, 4711);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proxy_header_is_byte_for_byte_ppps() {
        let pairs = [
            ("203.0.113.7:4711", "127.0.0.10:443"),
            ("[2001:db8::7]:4711", "[2001:db8::1]:443"),
            ("203.0.113.7:4711", "[2001:db8::1]:443"),
            ("[2001:db8::7]:65535", "10.0.0.1:8443"),
        ];
        for (c, l) in pairs {
            let (c, l) = (c.parse().unwrap(), l.parse().unwrap());
            assert_eq!(
                ProxyV2Header::new(c, l).as_bytes(),
                &ppp_header(c, l)[..],
                "{c} {l}"
            );
        }
        assert!(ProxyV2Header::default().as_bytes().is_empty());
    }
}
