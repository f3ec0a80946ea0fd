//! Limits of the HTTP side: open connections (total and per client IP), event-stream
//! subscribers (total and per client IP), the first request head's deadline, and the counters
//! and aggregate log of everything refused before it reached a handler.
//!
//! The client IP is the PROXY v2 source on connections from a trusted proxy, so one proxy does
//! not count as one client.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_limits::{ConcurrencyLimit, ConcurrencyRefusal, Permit, RefusalReason, Refusals};

/// Limits of the HTTP listeners.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections over all listeners; more are closed at once.
    pub max_connections: usize,
    /// Open connections per client IP (IPv6: per /64).
    pub max_connections_per_ip: usize,
    /// Open `/api/rooms/events` streams; more get 503.
    pub max_event_streams: usize,
    /// Open `/api/rooms/events` streams per client IP; more get 429.
    pub max_event_streams_per_ip: usize,
    /// The first request head must arrive within this (from accept, TLS handshake included in
    /// its own deadline); later heads on a kept-alive connection too.
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_connections_per_ip: 256,
            max_event_streams: 4096,
            max_event_streams_per_ip: 32,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// What was refused before reaching a handler, or by the event-stream cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// From a trusted proxy, without a valid PROXY v2 header in time.
    ProxyHeaderMissing,
    /// A PROXY header from a source not trusted to send one.
    ProxyHeaderUntrusted,
    /// `max_connections` open.
    Connections,
    /// `max_connections_per_ip` open for the client.
    ConnectionsPerIp,
    /// `max_event_streams` open (503).
    EventStreams,
    /// `max_event_streams_per_ip` open for the client (429).
    EventStreamsPerIp,
    /// `Transfer-Encoding` together with `Content-Length` (400).
    AmbiguousFraming,
}

impl RefusalReason for HttpRefusal {
    const ALL: &'static [Self] = &[
        HttpRefusal::ProxyHeaderMissing,
        HttpRefusal::ProxyHeaderUntrusted,
        HttpRefusal::Connections,
        HttpRefusal::ConnectionsPerIp,
        HttpRefusal::EventStreams,
        HttpRefusal::EventStreamsPerIp,
        HttpRefusal::AmbiguousFraming,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            HttpRefusal::ProxyHeaderMissing => "proxy_header_missing",
            HttpRefusal::ProxyHeaderUntrusted => "proxy_header_untrusted",
            HttpRefusal::Connections => "connections",
            HttpRefusal::ConnectionsPerIp => "connections_per_ip",
            HttpRefusal::EventStreams => "event_streams",
            HttpRefusal::EventStreamsPerIp => "event_streams_per_ip",
            HttpRefusal::AmbiguousFraming => "ambiguous_framing",
        }
    }
}

/// How often refusals are logged at most (one line with the counts by reason).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The live limits, shared by the listeners and the routes.
#[derive(Debug)]
pub struct HttpAdmission {
    limits: HttpLimits,
    connections: Arc<ConcurrencyLimit>,
    event_streams: Arc<ConcurrencyLimit>,
    refusals: Refusals<HttpRefusal>,
}

impl HttpAdmission {
    pub fn new(limits: HttpLimits) -> Arc<Self> {
        Arc::new(Self {
            connections: ConcurrencyLimit::new(
                limits.max_connections,
                limits.max_connections_per_ip,
            ),
            event_streams: ConcurrencyLimit::new(
                limits.max_event_streams,
                limits.max_event_streams_per_ip,
            ),
            refusals: Refusals::new("http", REFUSAL_LOG_INTERVAL),
            limits,
        })
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    pub(crate) fn refuse(&self, reason: HttpRefusal) {
        self.refusals.refuse(reason, Instant::now());
    }

    /// Writes the tail of a burst of refusals (call on a timer).
    pub(crate) fn log_refusals_if_due(&self) {
        self.refusals.log_if_due(Instant::now());
    }

    /// A place for a new connection from `client`, or `None` (counted) over a limit.
    pub(crate) fn admit_connection(&self, client: IpAddr) -> Option<Permit> {
        match self.connections.try_acquire(client) {
            Ok(permit) => Some(permit),
            Err(ConcurrencyRefusal::Total) => {
                self.refuse(HttpRefusal::Connections);
                None
            }
            Err(ConcurrencyRefusal::PerIp) => {
                self.refuse(HttpRefusal::ConnectionsPerIp);
                None
            }
        }
    }

    /// A place for a new event-stream subscriber, or the cap it hit (counted).
    pub(crate) fn admit_event_stream(&self, client: IpAddr) -> Result<Permit, HttpRefusal> {
        self.event_streams.try_acquire(client).map_err(|r| {
            let reason = match r {
                ConcurrencyRefusal::Total => HttpRefusal::EventStreams,
                ConcurrencyRefusal::PerIp => HttpRefusal::EventStreamsPerIp,
            };
            self.refuse(reason);
            reason
        })
    }

    /// Refusals for `reason` since the start.
    pub fn refused(&self, reason: HttpRefusal) -> u64 {
        self.refusals.count(reason)
    }

    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    pub fn open_event_streams(&self) -> usize {
        self.event_streams.open()
    }

    /// Connections refused by the PROXY protocol rules since the start.
    pub fn proxy_protocol_refusals(&self) -> ProxyProtocolRefusals {
        ProxyProtocolRefusals {
            bad_header: self.refused(HttpRefusal::ProxyHeaderMissing),
            untrusted_header: self.refused(HttpRefusal::ProxyHeaderUntrusted),
        }
    }

    /// Appends the counters and gauges in Prometheus text format.
    pub(crate) fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        self.refusals.write_prometheus(
            "deadsfu_http_refused_total",
            "HTTP connections and requests refused by a limit or rule, by reason",
            "reason",
            out,
        );
        for (name, help, value) in [
            (
                "deadsfu_http_connections",
                "Open HTTP connections",
                self.open_connections(),
            ),
            (
                "deadsfu_event_streams",
                "Open /api/rooms/events streams",
                self.open_event_streams(),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// Connections refused by the PROXY protocol rules (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyProtocolRefusals {
    /// From a trusted source, without a valid PROXY v2 header in time (none, malformed, too
    /// long, cut short, too slow).
    pub bad_header: u64,
    /// From a source not trusted to send one, starting with a PROXY header (v1 or v2).
    pub untrusted_header: u64,
}

impl ProxyProtocolRefusals {
    pub fn total(&self) -> u64 {
        self.bad_header + self.untrusted_header
    }
}

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) to its hard limit: every connection
/// is a descriptor, and the usual soft limit of 1024 is reached by a modest flood. Returns the
/// limit now in force.
#[cfg(unix)]
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    // rlim_t is u64 on Linux, not everywhere.
    #[allow(clippy::unnecessary_cast)]
    Ok(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    Err(std::io::Error::other("no RLIMIT_NOFILE on this platform"))
}
