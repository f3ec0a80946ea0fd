//! How many of something are open, in total and per client, with RAII permits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::client_key;

/// Which cap a [`ConcurrencyLimit`] hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConcurrencyRefusal {
    /// `max_total` are open.
    Total,
    /// `max_per_ip` are open for this client.
    PerIp,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Only clients with something open: at most `max_total` entries.
    by_client: HashMap<IpAddr, usize>,
}

/// At most `max_total` open in all and `max_per_ip` per client (keyed by
/// [`client_key`](crate::client_key)); e.g. connections, event-stream subscribers, sessions not
/// yet connected. Each success is a [`Permit`]; dropping it gives the place back.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
}

/// One open thing; gives its place back when dropped.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<ConcurrencyLimit>,
    client: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limit.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

impl Permit {
    /// The client key the permit counts under.
    pub fn client(&self) -> IpAddr {
        self.client
    }
}

impl ConcurrencyLimit {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, ConcurrencyRefusal> {
        let client = client_key(ip);
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err(ConcurrencyRefusal::Total);
        }
        let mine = open.by_client.get(&client).copied().unwrap_or(0);
        if mine >= self.max_per_ip {
            return Err(ConcurrencyRefusal::PerIp);
        }
        open.total += 1;
        open.by_client.insert(client, mine + 1);
        drop(open);
        Ok(Permit {
            limit: self.clone(),
            client,
        })
    }

    /// Open in total.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Open for `ip`'s client key.
    pub fn open_for(&self, ip: IpAddr) -> usize {
        self.lock()
            .by_client
            .get(&client_key(ip))
            .copied()
            .unwrap_or(0)
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn caps_and_release() {
        let limit = ConcurrencyLimit::new(3, 2);
        let a1 = limit.try_acquire(ip(1)).unwrap();
        let _a2 = limit.try_acquire(ip(1)).unwrap();
        assert_eq!(
            limit.try_acquire(ip(1)).unwrap_err(),
            ConcurrencyRefusal::PerIp
        );
        let _b1 = limit.try_acquire(ip(2)).unwrap();
        assert_eq!(
            limit.try_acquire(ip(3)).unwrap_err(),
            ConcurrencyRefusal::Total
        );
        drop(a1);
        assert_eq!(limit.open(), 2);
        assert_eq!(limit.open_for(ip(1)), 1);
        assert!(limit.try_acquire(ip(3)).is_ok());
    }

    #[test]
    fn entries_vanish_with_their_last_permit() {
        let limit = ConcurrencyLimit::new(10, 10);
        let permits: Vec<_> = (0..5).map(|n| limit.try_acquire(ip(n)).unwrap()).collect();
        assert_eq!(limit.lock().by_client.len(), 5);
        drop(permits);
        assert_eq!(limit.lock().by_client.len(), 0);
        assert_eq!(limit.open(), 0);
    }
}
