//! Counters of the FTL proxy, for `/metrics`, and the aggregate log of refusals: at most one
//! line per interval with the counts by reason since the last line, never one per refusal.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::session::Rejection;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub streaming: AtomicU64,
    pub streams: AtomicU64,
    pub rejected: [AtomicU64; Rejection::ALL.len()],
    pub to_sfu_packets: AtomicU64,
    pub to_sfu_bytes: AtomicU64,
    pub to_client_packets: AtomicU64,
    pub to_client_bytes: AtomicU64,
    pub pings_echoed: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counters {
    pub fn reject(&self, rejection: Rejection) {
        self.rejected[rejection.index()].fetch_add(1, Relaxed);
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
#[derive(Debug, Clone, Default)]
pub struct FtlStats(pub(crate) Arc<Counters>);

impl FtlStats {
    pub fn snapshot(&self) -> FtlStatsSnapshot {
        let c = &self.0;
        FtlStatsSnapshot {
            accepted: c.accepted.load(Relaxed),
            open_connections: c.open.load(Relaxed),
            streaming_sessions: c.streaming.load(Relaxed),
            streams_started: c.streams.load(Relaxed),
            rejected: Rejection::ALL.map(|r| (r, c.rejected[r.index()].load(Relaxed))),
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

/// Turns the refusal counters into at most one log line per call (the caller calls once per
/// interval): the counts by reason since the previous line.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    logged: [u64; Rejection::ALL.len()],
}

impl RefusalLog {
    /// The refusals since the last call, as a count and `reason=count` pairs; `None` if
    /// there were none.
    pub fn since_last(&mut self, snapshot: &FtlStatsSnapshot) -> Option<(u64, String)> {
        let mut reasons = String::new();
        let mut total = 0;
        for (rejection, count) in snapshot.rejected {
            let new = count - self.logged[rejection.index()];
            self.logged[rejection.index()] = count;
            if new > 0 {
                total += new;
                let separator = if reasons.is_empty() { "" } else { " " };
                let _ = write!(reasons, "{separator}{}={new}", rejection.label());
            }
        }
        (total > 0).then_some((total, reasons))
    }

    /// Logs one line if anything was refused since the last call.
    pub fn log(&mut self, snapshot: &FtlStatsSnapshot) {
        if let Some((count, reasons)) = self.since_last(snapshot) {
            tracing::warn!(what = "ftl", count, reasons, "connections refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_as_counts_since_the_last_line() {
        let stats = FtlStats::default();
        let mut log = RefusalLog::default();
        assert_eq!(log.since_last(&stats.snapshot()), None);
        for _ in 0..3 {
            stats.0.reject(Rejection::WrongKey);
        }
        stats.0.reject(Rejection::PerIpConnections);
        assert_eq!(
            log.since_last(&stats.snapshot()),
            Some((4, "per_ip_connections=1 wrong_key=3".to_owned()))
        );
        assert_eq!(log.since_last(&stats.snapshot()), None);
        stats.0.reject(Rejection::WrongKey);
        assert_eq!(
            log.since_last(&stats.snapshot()),
            Some((1, "wrong_key=1".to_owned()))
        );
    }

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
