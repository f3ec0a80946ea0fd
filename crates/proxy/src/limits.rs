//! Admission of new connections: a total cap, a cap per client IP, and a token bucket of new
//! connections per second per IP. Refusal is a cheap decision before any read; the caller
//! closes at once and counts. Time is passed in (tests use fake time).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_total: usize,
    pub max_per_ip: usize,
    /// New connections per second per IP (sustained)...
    pub rate_per_ip: f64,
    /// ...and the burst allowed above it.
    pub burst_per_ip: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total: 20_000,
            max_per_ip: 256,
            rate_per_ip: 50.0,
            burst_per_ip: 100.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
    Rate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerIp => "per_ip",
            Refusal::Rate => "rate",
        }
    }
}

#[derive(Debug)]
struct PerIp {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    by_ip: HashMap<IpAddr, PerIp>,
}

/// Counters of refusals by kind.
#[derive(Debug, Default)]
pub struct RefusalCounts {
    pub total: AtomicU64,
    pub per_ip: AtomicU64,
    pub rate: AtomicU64,
}

/// Shared by every connection of a listener.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
    pub refused: RefusalCounts,
}

/// Held while a connection is open; gives its slot back when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.admission.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(p) = s.by_ip.get_mut(&self.ip) {
            p.open = p.open.saturating_sub(1);
        }
    }
}

/// Per-IP entries kept at most (idle ones are forgotten first), so a spoofed-source flood of
/// distinct addresses cannot grow the map without bound.
const MAX_TRACKED_IPS: usize = 100_000;

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
            refused: RefusalCounts::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self) -> usize {
        self.lock().total
    }

    pub fn try_admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
        let refusal = {
            let mut s = self.lock();
            if s.by_ip.len() >= MAX_TRACKED_IPS && !s.by_ip.contains_key(&ip) {
                s.by_ip.retain(|_, p| p.open > 0);
            }
            let limits = self.limits;
            let total = s.total;
            let entry = s.by_ip.entry(ip).or_insert(PerIp {
                open: 0,
                tokens: limits.burst_per_ip,
                refilled: now,
            });
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * limits.rate_per_ip).min(limits.burst_per_ip);
            entry.refilled = now;
            if total >= limits.max_total {
                Some(Refusal::Total)
            } else if entry.open >= limits.max_per_ip {
                Some(Refusal::PerIp)
            } else if entry.tokens < 1.0 {
                Some(Refusal::Rate)
            } else {
                entry.tokens -= 1.0;
                entry.open += 1;
                s.total += 1;
                None
            }
        };
        match refusal {
            None => Ok(Permit {
                admission: self.clone(),
                ip,
            }),
            Some(r) => {
                let counter = match r {
                    Refusal::Total => &self.refused.total,
                    Refusal::PerIp => &self.refused.per_ip,
                    Refusal::Rate => &self.refused.rate,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Err(r)
            }
        }
    }
}

/// Logs a kind of event at most once per interval with the count since the last line, so a
/// flood makes one line, not one per connection.
#[derive(Debug)]
pub struct AggregateLog {
    what: &'static str,
    interval: std::time::Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl AggregateLog {
    pub const fn new(what: &'static str, interval: std::time::Duration) -> Self {
        Self {
            what,
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    pub fn note(&self, detail: &str, peer: IpAddr) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 += 1;
        let now = Instant::now();
        if s.0
            .is_none_or(|last| now.duration_since(last) >= self.interval)
        {
            tracing::warn!(what = self.what, count = s.1, last_reason = detail, last_peer = %peer, "connections refused");
            *s = (Some(now), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn per_ip_cap_and_release() {
        let a = Admission::new(Limits {
            max_total: 100,
            max_per_ip: 2,
            rate_per_ip: 1000.0,
            burst_per_ip: 1000.0,
        });
        let t = Instant::now();
        let p1 = a.try_admit(ip(1), t).unwrap();
        let _p2 = a.try_admit(ip(1), t).unwrap();
        assert_eq!(a.try_admit(ip(1), t).unwrap_err(), Refusal::PerIp);
        // Another client is not affected.
        let _q = a.try_admit(ip(2), t).unwrap();
        drop(p1);
        assert!(a.try_admit(ip(1), t).is_ok());
        assert_eq!(a.refused.per_ip.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn total_cap() {
        let a = Admission::new(Limits {
            max_total: 2,
            ..Limits::default()
        });
        let t = Instant::now();
        let _a = a.try_admit(ip(1), t).unwrap();
        let _b = a.try_admit(ip(2), t).unwrap();
        assert_eq!(a.try_admit(ip(3), t).unwrap_err(), Refusal::Total);
        assert_eq!(a.open(), 2);
    }

    #[test]
    fn rate_bucket_refills_with_time() {
        let a = Admission::new(Limits {
            max_total: 1000,
            max_per_ip: 1000,
            rate_per_ip: 10.0,
            burst_per_ip: 5.0,
        });
        let t = Instant::now();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(a.try_admit(ip(1), t).unwrap());
        }
        assert_eq!(a.try_admit(ip(1), t).unwrap_err(), Refusal::Rate);
        // 100 ms later one token is back, not more.
        let later = t + Duration::from_millis(100);
        held.push(a.try_admit(ip(1), later).unwrap());
        assert_eq!(a.try_admit(ip(1), later).unwrap_err(), Refusal::Rate);
        // Long idle: the burst, not more.
        let much_later = t + Duration::from_secs(60);
        for _ in 0..5 {
            held.push(a.try_admit(ip(1), much_later).unwrap());
        }
        assert_eq!(a.try_admit(ip(1), much_later).unwrap_err(), Refusal::Rate);
    }
}
