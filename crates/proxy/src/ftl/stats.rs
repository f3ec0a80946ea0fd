//! Counters of the FTL proxy, for `/metrics`; refusals are counted and logged in aggregate by
//! [`Refusals`] (at most one line per interval, never one per refusal).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use deadsfu_limits::Refusals;

use super::session::Rejection;

#[derive(Debug)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub streaming: AtomicU64,
    pub streams: AtomicU64,
    pub refusals: Refusals<Rejection>,
    pub to_sfu_packets: AtomicU64,
    pub to_sfu_bytes: AtomicU64,
    pub to_client_packets: AtomicU64,
    pub to_client_bytes: AtomicU64,
    pub pings_echoed: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counters {
    fn new(log_interval: Duration) -> Self {
        Self {
            accepted: AtomicU64::default(),
            open: AtomicU64::default(),
            streaming: AtomicU64::default(),
            streams: AtomicU64::default(),
            refusals: Refusals::new("ftl_proxy", log_interval),
            to_sfu_packets: AtomicU64::default(),
            to_sfu_bytes: AtomicU64::default(),
            to_client_packets: AtomicU64::default(),
            to_client_bytes: AtomicU64::default(),
            pings_echoed: AtomicU64::default(),
            dropped: AtomicU64::default(),
        }
    }

    pub fn reject(&self, rejection: Rejection) {
        self.refusals.refuse(rejection, Instant::now());
    }
}

/// Adds one to a gauge for as long as it lives.
pub(crate) struct GaugeGuard(Arc<Counters>, fn(&Counters) -> &AtomicU64);

impl GaugeGuard {
    pub fn new(counters: &Arc<Counters>, gauge: fn(&Counters) -> &AtomicU64) -> Self {
        gauge(counters).fetch_add(1, Relaxed);
        Self(counters.clone(), gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Relaxed);
    }
}

/// A live view of the proxy's counters; cheap to clone.
#[derive(Debug, Clone)]
pub struct FtlStats(pub(crate) Arc<Counters>);

impl Default for FtlStats {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl FtlStats {
    /// Refusals are logged at most once per `log_interval`.
    pub fn new(log_interval: Duration) -> Self {
        Self(Arc::new(Counters::new(log_interval)))
    }

    pub fn snapshot(&self) -> FtlStatsSnapshot {
        let c = &self.0;
        FtlStatsSnapshot {
            accepted: c.accepted.load(Relaxed),
            open_connections: c.open.load(Relaxed),
            streaming_sessions: c.streaming.load(Relaxed),
            streams_started: c.streams.load(Relaxed),
            rejected: Rejection::ALL.map(|r| (r, c.refusals.count(r))),
            to_sfu_packets: c.to_sfu_packets.load(Relaxed),
            to_sfu_bytes: c.to_sfu_bytes.load(Relaxed),
            to_client_packets: c.to_client_packets.load(Relaxed),
            to_client_bytes: c.to_client_bytes.load(Relaxed),
            pings_echoed: c.pings_echoed.load(Relaxed),
            datagrams_dropped: c.dropped.load(Relaxed),
        }
    }
}

/// The proxy's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtlStatsSnapshot {
    /// Control connections accepted by the listener (before limits).
    pub accepted: u64,
    /// Control connections open now.
    pub open_connections: u64,
    /// Sessions relaying media now.
    pub streaming_sessions: u64,
    /// Sessions that reached streaming, in all.
    pub streams_started: u64,
    /// Refusals by reason.
    pub rejected: [(Rejection, u64); Rejection::ALL.len()],
    /// Datagrams (and their bytes) relayed from clients to SFUs.
    pub to_sfu_packets: u64,
    pub to_sfu_bytes: u64,
    /// Datagrams (NACKs, ping echoes, ...) relayed from SFUs to clients.
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Pings echoed by the proxy itself (before a client's address is known).
    pub pings_echoed: u64,
    /// Datagrams not relayed: unknown sender or SSRC, truncated, socket full.
    pub datagrams_dropped: u64,
}

impl FtlStatsSnapshot {
    pub fn rejected(&self, rejection: Rejection) -> u64 {
        self.rejected[rejection.index()].1
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }

    /// Appends the counters in Prometheus text format, as `deadsfu_proxy_ftl_*`.
    pub fn write_prometheus(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP deadsfu_proxy_ftl_{name} {help}");
            let _ = writeln!(out, "# TYPE deadsfu_proxy_ftl_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "deadsfu_proxy_ftl_{name}{labels} {value}");
            }
        };
        metric(
            "accepted_total",
            "counter",
            "FTL control connections accepted",
            &[("", self.accepted)],
        );
        metric(
            "open_connections",
            "gauge",
            "FTL control connections open",
            &[("", self.open_connections)],
        );
        metric(
            "streaming_sessions",
            "gauge",
            "FTL sessions relaying media",
            &[("", self.streaming_sessions)],
        );
        metric(
            "streams_started_total",
            "counter",
            "FTL sessions that started streaming",
            &[("", self.streams_started)],
        );
        let labels: Vec<(String, u64)> = self
            .rejected
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{}\"}}", r.label()), *n))
            .collect();
        let samples: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            "rejected_total",
            "counter",
            "FTL connections refused, by reason",
            &samples,
        );
        metric(
            "datagrams_total",
            "counter",
            "FTL datagrams relayed",
            &[
                ("{direction=\"to_sfu\"}", self.to_sfu_packets),
                ("{direction=\"to_client\"}", self.to_client_packets),
            ],
        );
        metric(
            "datagram_bytes_total",
            "counter",
            "FTL datagram bytes relayed",
            &[
                ("{direction=\"to_sfu\"}", self.to_sfu_bytes),
                ("{direction=\"to_client\"}", self.to_client_bytes),
            ],
        );
        metric(
            "pings_echoed_total",
            "counter",
            "FTL pings echoed by the proxy before the client's address was known",
            &[("", self.pings_echoed)],
        );
        metric(
            "datagrams_dropped_total",
            "counter",
            "FTL datagrams not relayed",
            &[("", self.datagrams_dropped)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let stats = FtlStats::default();
        stats.0.reject(Rejection::ChannelInUse);
        stats.0.to_sfu_packets.fetch_add(7, Relaxed);
        let mut out = String::new();
        stats.snapshot().write_prometheus(&mut out);
        assert!(out.contains("deadsfu_proxy_ftl_rejected_total{reason=\"channel_in_use\"} 1\n"));
        assert!(out.contains("deadsfu_proxy_ftl_datagrams_total{direction=\"to_sfu\"} 7\n"));
        assert!(out.contains("# TYPE deadsfu_proxy_ftl_open_connections gauge\n"));
    }
}
