//! Admission of new connections: a total cap, a cap per client IP, and a token bucket of new
//! connections per second per IP. Refusal is a cheap decision before any read; the caller
//! closes at once and counts it (see [`Refusals`](crate::Refusals)).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::{ConcurrencyLimit, ConcurrencyRefusal, PerIpRate, Permit};

#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_total: usize,
    pub max_per_ip: usize,
    /// New connections per second per IP (sustained)...
    pub rate_per_ip: f64,
    /// ...and the burst allowed above it.
    pub burst_per_ip: f64,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_total: 20_000,
            max_per_ip: 256,
            rate_per_ip: 50.0,
            burst_per_ip: 100.0,
        }
    }
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmissionRefusal {
    Total,
    PerIp,
    Rate,
}

impl AdmissionRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionRefusal::Total => "total",
            AdmissionRefusal::PerIp => "per_ip",
            AdmissionRefusal::Rate => "rate",
        }
    }
}

/// Held while a connection is open.
pub type ConnectionPermit = Permit;

/// Shared by every connection of a listener.
#[derive(Debug)]
pub struct Admission {
    open: Arc<ConcurrencyLimit>,
    rate: PerIpRate,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            open: ConcurrencyLimit::new(limits.max_total, limits.max_per_ip),
            rate: PerIpRate::new(limits.rate_per_ip, limits.burst_per_ip),
        })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.open.open()
    }

    /// Caps first (they cost the client nothing to retry later), then the rate: a refused
    /// connection does not spend a token.
    pub fn try_admit(
        &self,
        ip: IpAddr,
        now: Instant,
    ) -> Result<ConnectionPermit, AdmissionRefusal> {
        let permit = self.open.try_acquire(ip).map_err(|r| match r {
            ConcurrencyRefusal::Total => AdmissionRefusal::Total,
            ConcurrencyRefusal::PerIp => AdmissionRefusal::PerIp,
        })?;
        if self.rate.try_take(ip, now) {
            Ok(permit)
        } else {
            Err(AdmissionRefusal::Rate)
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
        let a = Admission::new(AdmissionLimits {
            max_total: 100,
            max_per_ip: 2,
            rate_per_ip: 1000.0,
            burst_per_ip: 1000.0,
        });
        let t = Instant::now();
        let p1 = a.try_admit(ip(1), t).unwrap();
        let _p2 = a.try_admit(ip(1), t).unwrap();
        assert_eq!(a.try_admit(ip(1), t).unwrap_err(), AdmissionRefusal::PerIp);
        // Another client is not affected.
        let _q = a.try_admit(ip(2), t).unwrap();
        drop(p1);
        assert!(a.try_admit(ip(1), t).is_ok());
    }

    #[test]
    fn total_cap() {
        let a = Admission::new(AdmissionLimits {
            max_total: 2,
            ..AdmissionLimits::default()
        });
        let t = Instant::now();
        let _a = a.try_admit(ip(1), t).unwrap();
        let _b = a.try_admit(ip(2), t).unwrap();
        assert_eq!(a.try_admit(ip(3), t).unwrap_err(), AdmissionRefusal::Total);
        assert_eq!(a.open(), 2);
    }

    #[test]
    fn rate_bucket_refills_with_time() {
        let a = Admission::new(AdmissionLimits {
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
        assert_eq!(a.try_admit(ip(1), t).unwrap_err(), AdmissionRefusal::Rate);
        // A refusal by rate holds no place.
        assert_eq!(a.open(), 5);
        // 100 ms later one token is back, not more.
        let later = t + Duration::from_millis(100);
        held.push(a.try_admit(ip(1), later).unwrap());
        assert_eq!(
            a.try_admit(ip(1), later).unwrap_err(),
            AdmissionRefusal::Rate
        );
        // Long idle: the burst, not more.
        let much_later = t + Duration::from_secs(60);
        for _ in 0..5 {
            held.push(a.try_admit(ip(1), much_later).unwrap());
        }
        assert_eq!(
            a.try_admit(ip(1), much_later).unwrap_err(),
            AdmissionRefusal::Rate
        );
    }
}
