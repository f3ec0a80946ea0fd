//! The FTL proxy (DESIGN.md §2.5, FTL.md "Proxying FTL").
//!
//! FTL clients ask for the HMAC nonce before they name the channel, so the proxy answers the
//! handshake itself: its own nonce, `CONNECT` checked against the channel's key
//! (`ftlkey:{channel}`), then its own FTL session to the channel's SFU with the same key. The
//! client's attributes go on to the SFU, the client is told to send media to the proxy's one
//! UDP port, and datagrams are relayed both ways as they are. `PING`/`201` and `DISCONNECT`
//! pass through; either side ending ends both.
//!
//! - [`session`]: the relay of one session, sans-IO (client lines, SFU lines, time in; lines
//!   for each side, events and timeouts out).
//! - [`stats`]: counters for `/metrics` and the aggregate refusal log.
//! - [`net`]: the tokio shell: listener and limits, one task per session, the UDP relay.

pub mod net;
pub mod session;
pub mod stats;

use std::net::SocketAddr;
use std::time::Duration;

pub use net::FtlProxy;
pub use session::{Rejection, RelayEnd};
pub use stats::{FtlStats, FtlStatsSnapshot};

/// Limits and deadlines of the FTL proxy.
#[derive(Debug, Clone)]
pub struct FtlLimits {
    /// Control connections open at once. When all are taken, the oldest connection that has
    /// not proved its key is closed to make room; if every one has, the newcomer is refused.
    pub max_connections: usize,
    /// Control connections open at once from one client IP (IPv6: one /64).
    pub max_per_ip: usize,
    /// New control connections per second from one client IP, sustained...
    pub connects_per_second_per_ip: f64,
    /// ...and the burst above it.
    pub connect_burst_per_ip: f64,
    /// From accept to the reply to `.`, the SFU's part included. A client that sends nothing
    /// or stalls is closed then (ftl-sdk waits 5 s for each reply).
    pub handshake_timeout: Duration,
    /// Connecting to the SFU (within the handshake deadline).
    pub sfu_connect_timeout: Duration,
    /// A streaming client that sends no `PING` for this long is ended.
    pub ping_timeout: Duration,
    /// A streaming SFU that answers no `PING` for this long is given up on.
    pub sfu_reply_timeout: Duration,
    /// Writing one control line, either side.
    pub write_timeout: Duration,
    /// Refusals are logged at most once per interval, as counts by reason.
    pub log_interval: Duration,
}

impl Default for FtlLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_ip: 16,
            connects_per_second_per_ip: 2.0,
            connect_burst_per_ip: 10.0,
            handshake_timeout: Duration::from_secs(5),
            sfu_connect_timeout: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(15),
            sfu_reply_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            log_interval: Duration::from_secs(10),
        }
    }
}

/// Settings of the FTL proxy.
#[derive(Debug, Clone)]
pub struct FtlProxyConfig {
    /// Control listener, `--ftl-listen` (OBS always uses port 8084).
    pub control: SocketAddr,
    /// The one UDP port clients send media to, `--ftl-udp-port`, bound on the control
    /// listener's IP; 0 picks an ephemeral port.
    pub udp_port: u16,
    pub limits: FtlLimits,
    /// Source address of connections to SFUs (`--backend-source`); `None`: the kernel's.
    pub backend_source: Option<std::net::IpAddr>,
}

impl FtlProxyConfig {
    pub fn new(control: SocketAddr, udp_port: u16) -> Self {
        Self {
            control,
            udp_port,
            limits: FtlLimits::default(),
            backend_source: None,
        }
    }
}
