//! Per-client rate limits: one [`TokenBucket`] per client key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::TokenBucket;

/// The key per-IP limits count under: the address itself for IPv4, its /64 for IPv6 (one
/// subscriber's usual allocation, so a client cannot escape its limit by cycling through its
/// own addresses), IPv4-mapped IPv6 as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// `rate` events per second per client, with a `burst` above it; for new connections, new
/// sessions, requests of one kind. Clients are keyed by [`client_key`].
///
/// Memory is bounded: at most `max_clients` buckets are kept. When that many are tracked,
/// buckets that have refilled (idle clients) are forgotten; if all are busy the table is
/// cleared, which forgives everyone at once rather than refusing clients never seen before.
#[derive(Debug)]
pub struct PerIpRate {
    rate: f64,
    burst: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

/// Buckets kept at most by default.
const DEFAULT_MAX_CLIENTS: usize = 100_000;

impl PerIpRate {
    pub fn new(rate_per_second: f64, burst: f64) -> Self {
        Self::with_max_clients(rate_per_second, burst, DEFAULT_MAX_CLIENTS)
    }

    pub fn with_max_clients(rate_per_second: f64, burst: f64, max_clients: usize) -> Self {
        Self {
            rate: rate_per_second,
            burst,
            max_clients: max_clients.max(1),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token from `ip`'s bucket; `false` means over the rate.
    pub fn try_take(&self, ip: IpAddr, now: Instant) -> bool {
        let key = client_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_clients && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= self.max_clients {
                buckets.clear();
            }
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .try_take(now)
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
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
    fn each_client_has_its_own_bucket() {
        let rate = PerIpRate::new(1.0, 2.0);
        let t0 = Instant::now();
        assert!(rate.try_take(ip(1), t0));
        assert!(rate.try_take(ip(1), t0));
        assert!(!rate.try_take(ip(1), t0));
        assert!(rate.try_take(ip(2), t0));
        assert!(rate.try_take(ip(1), t0 + Duration::from_secs(1)));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let rate = PerIpRate::new(0.0, 1.0);
        let t0 = Instant::now();
        assert!(rate.try_take("2001:db8:1:2:aaaa::1".parse().unwrap(), t0));
        assert!(!rate.try_take("2001:db8:1:2:bbbb::2".parse().unwrap(), t0));
        assert!(rate.try_take("2001:db8:1:3::1".parse().unwrap(), t0));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn table_is_bounded_and_forgets_idle_clients_first() {
        let rate = PerIpRate::with_max_clients(1.0, 1.0, 2);
        let t0 = Instant::now();
        assert!(rate.try_take(ip(1), t0));
        assert!(rate.try_take(ip(2), t0 + Duration::from_secs(5)));
        // ip(1) has refilled by now and is forgotten; ip(2) is still empty and kept.
        let t1 = t0 + Duration::from_millis(5500);
        assert!(rate.try_take(ip(3), t1));
        assert_eq!(rate.tracked(), 2);
        assert!(!rate.try_take(ip(2), t1));
    }
}
