//! Refusals counted by reason and logged in aggregate: at most one line per interval with the
//! counts since the previous line, never one line per refusal (a flood must not flood the log).

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A reason for refusing something: an enum listing all its values in `ALL`.
pub trait RefusalReason: Copy + Send + Sync + 'static {
    /// Every reason, in the order of [`index`](Self::index).
    const ALL: &'static [Self];
    /// Position in [`ALL`](Self::ALL).
    fn index(self) -> usize;
    /// A metric label and log word (`snake_case`).
    fn label(self) -> &'static str;
}

/// What one aggregate log line said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalLine {
    /// Refusals since the previous line.
    pub count: u64,
    /// `reason=count` pairs, space-separated, in the order of `R::ALL`.
    pub reasons: String,
}

#[derive(Debug)]
struct LogState {
    last_line: Option<Instant>,
    /// The counts as of the last line.
    logged: Vec<u64>,
}

/// Counters of refusals by reason, and their aggregate log.
///
/// [`refuse`](Self::refuse) counts and writes a line only if none was written within the
/// interval; call [`log_if_due`](Self::log_if_due) on a timer so that the tail of a burst is
/// logged too, and [`flush`](Self::flush) at shutdown.
#[derive(Debug)]
pub struct Refusals<R: RefusalReason> {
    what: &'static str,
    interval: Duration,
    counts: Box<[AtomicU64]>,
    log: Mutex<LogState>,
    _reason: PhantomData<fn(R)>,
}

impl<R: RefusalReason> Refusals<R> {
    /// `what` names the refused things in the log line (`"http"`, `"ftl"`, ...).
    pub fn new(what: &'static str, interval: Duration) -> Self {
        Self {
            what,
            interval,
            counts: R::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            log: Mutex::new(LogState {
                last_line: None,
                logged: vec![0; R::ALL.len()],
            }),
            _reason: PhantomData,
        }
    }

    /// Counts one refusal; logs if a line is due.
    pub fn refuse(&self, reason: R, now: Instant) {
        self.counts[reason.index()].fetch_add(1, Relaxed);
        self.log_if_due(now);
    }

    /// Refusals for `reason` since the start.
    pub fn count(&self, reason: R) -> u64 {
        self.counts[reason.index()].load(Relaxed)
    }

    /// Refusals for any reason since the start.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Every reason with its count since the start.
    pub fn counts(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        R::ALL.iter().map(|r| (*r, self.count(*r)))
    }

    /// Writes a line if there were refusals since the last one and the interval has passed.
    pub fn log_if_due(&self, now: Instant) -> Option<RefusalLine> {
        self.log_line(Some(now))
    }

    /// Writes a line now if there were refusals since the last one.
    pub fn flush(&self) -> Option<RefusalLine> {
        self.log_line(None)
    }

    fn log_line(&self, now: Option<Instant>) -> Option<RefusalLine> {
        // try_lock: whoever holds the lock is writing the line right now; never wait for it.
        let mut state = match self.log.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if let (Some(now), Some(last)) = (now, state.last_line)
            && now.saturating_duration_since(last) < self.interval
        {
            return None;
        }
        let mut line = RefusalLine {
            count: 0,
            reasons: String::new(),
        };
        for (i, reason) in R::ALL.iter().enumerate() {
            let count = self.counts[i].load(Relaxed);
            let new = count - state.logged[i];
            state.logged[i] = count;
            if new > 0 {
                line.count += new;
                let separator = if line.reasons.is_empty() { "" } else { " " };
                let _ = write!(line.reasons, "{separator}{}={new}", reason.label());
            }
        }
        if line.count == 0 {
            // Nothing to say; the next refusal after a quiet spell is logged at once.
            return None;
        }
        state.last_line = Some(now.unwrap_or_else(Instant::now));
        drop(state);
        tracing::warn!(
            what = self.what,
            count = line.count,
            reasons = %line.reasons,
            interval_s = self.interval.as_secs(),
            "refused (counts since the previous such line)"
        );
        Some(line)
    }

    /// Appends the counters in Prometheus text format: `# HELP`, `# TYPE` and one sample per
    /// reason, `{metric}{{{label}="reason"}} count`.
    pub fn write_prometheus(&self, metric: &str, help: &str, label: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} counter");
        for (reason, count) in self.counts() {
            let _ = writeln!(out, "{metric}{{{label}=\"{}\"}} {count}", reason.label());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Why {
        PerIp,
        Rate,
    }

    impl RefusalReason for Why {
        const ALL: &'static [Self] = &[Why::PerIp, Why::Rate];
        fn index(self) -> usize {
            self as usize
        }
        fn label(self) -> &'static str {
            match self {
                Why::PerIp => "per_ip",
                Why::Rate => "rate",
            }
        }
    }

    #[test]
    fn one_line_per_interval_with_counts_since_the_last() {
        let refusals = Refusals::<Why>::new("test", Duration::from_secs(10));
        let t0 = Instant::now();
        // The first refusal after a quiet spell is logged at once...
        refusals.refuse(Why::Rate, t0);
        // ...the next ones within the interval are only counted...
        for n in 0..1000 {
            refusals.refuse(Why::PerIp, t0 + Duration::from_millis(n));
            assert_eq!(refusals.log_if_due(t0 + Duration::from_millis(n)), None);
        }
        refusals.refuse(Why::Rate, t0 + Duration::from_secs(9));
        // ...and the timer writes them once the interval has passed.
        assert_eq!(
            refusals.log_if_due(t0 + Duration::from_secs(10)),
            Some(RefusalLine {
                count: 1001,
                reasons: "per_ip=1000 rate=1".into()
            })
        );
        assert_eq!(refusals.log_if_due(t0 + Duration::from_secs(30)), None);
        assert_eq!(refusals.count(Why::PerIp), 1000);
        assert_eq!(refusals.total(), 1002);
        refusals.refuse(Why::Rate, t0 + Duration::from_secs(31));
        assert_eq!(refusals.flush(), None, "logged by refuse already");
    }

    #[test]
    fn prometheus_text() {
        let refusals = Refusals::<Why>::new("test", Duration::from_secs(10));
        refusals.refuse(Why::PerIp, Instant::now());
        let mut out = String::new();
        refusals.write_prometheus("x_refused_total", "Refused", "reason", &mut out);
        assert_eq!(
            out,
            "# HELP x_refused_total Refused\n# TYPE x_refused_total counter\n\
             x_refused_total{reason=\"per_ip\"} 1\nx_refused_total{reason=\"rate\"} 0\n"
        );
    }
}
