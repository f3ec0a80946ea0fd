//! Session admission: whether a new session may start, decided before its offer is parsed.
//! Sessions in all, sessions not yet connected (in all and per client), and new sessions per
//! second per client are limited; a session not yet connected holds a [`Permit`] until it
//! connects or ends, so a flood of offers that never do ICE fills only its own share.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use deadsfu_limits::{ConcurrencyLimit, ConcurrencyRefusal, PerIpRate, Permit};

use crate::config::AdmissionConfig;
use crate::error::SessionError;

pub(crate) struct SessionAdmission {
    config: AdmissionConfig,
    pending: Arc<ConcurrencyLimit>,
    rate: PerIpRate,
    pub refused_total: AtomicU64,
    pub refused_pending: AtomicU64,
    pub refused_rate: AtomicU64,
}

impl SessionAdmission {
    pub fn new(config: AdmissionConfig) -> Self {
        SessionAdmission {
            pending: ConcurrencyLimit::new(config.max_pending, config.max_pending_per_ip),
            rate: PerIpRate::new(
                config.new_sessions_per_ip_per_second,
                config.new_sessions_per_ip_burst,
            ),
            config,
            refused_total: AtomicU64::new(0),
            refused_pending: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
        }
    }

    /// Admits one more session from `client` (none: a local caller, limited only in total)
    /// while `live` sessions exist. Over a client's own limits: 429; over the server's: 503.
    pub fn admit(
        &self,
        client: Option<IpAddr>,
        live: usize,
        now: Instant,
    ) -> Result<Option<Permit>, SessionError> {
        if live >= self.config.max_sessions {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(SessionError::Unavailable);
        }
        let Some(ip) = client else {
            return Ok(None);
        };
        if !self.rate.try_take(ip, now) {
            self.refused_rate.fetch_add(1, Ordering::Relaxed);
            return Err(SessionError::TooManyRequests);
        }
        match self.pending.try_acquire(ip) {
            Ok(permit) => Ok(Some(permit)),
            Err(ConcurrencyRefusal::PerIp) => {
                self.refused_pending.fetch_add(1, Ordering::Relaxed);
                Err(SessionError::TooManyRequests)
            }
            Err(ConcurrencyRefusal::Total) => {
                self.refused_pending.fetch_add(1, Ordering::Relaxed);
                Err(SessionError::Unavailable)
            }
        }
    }

    /// Sessions not yet connected.
    pub fn pending(&self) -> usize {
        self.pending.open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            max_sessions: 10,
            max_pending: 4,
            max_pending_per_ip: 2,
            new_sessions_per_ip_per_second: 1.0,
            new_sessions_per_ip_burst: 3.0,
        }
    }

    #[test]
    fn limits_pending_sessions_per_client_and_in_all() {
        let a = SessionAdmission::new(AdmissionConfig {
            new_sessions_per_ip_burst: 100.0,
            ..config()
        });
        let now = Instant::now();
        let ip = |n: u8| Some(IpAddr::from([10, 0, 0, n]));
        let p1 = a.admit(ip(1), 0, now).unwrap();
        let _p2 = a.admit(ip(1), 0, now).unwrap();
        assert!(matches!(
            a.admit(ip(1), 0, now),
            Err(SessionError::TooManyRequests)
        ));
        // One connects (its permit is dropped): its client may start another.
        drop(p1);
        let _p3 = a.admit(ip(1), 0, now).unwrap();
        let _p4 = a.admit(ip(2), 0, now).unwrap();
        let _p5 = a.admit(ip(3), 0, now).unwrap();
        assert_eq!(a.pending(), 4);
        assert!(matches!(
            a.admit(ip(4), 0, now),
            Err(SessionError::Unavailable)
        ));
        assert!(matches!(
            a.admit(None, 10, now),
            Err(SessionError::Unavailable)
        ));
        assert!(a.admit(None, 9, now).unwrap().is_none());
    }

    #[test]
    fn limits_new_sessions_per_second_per_client() {
        let a = SessionAdmission::new(AdmissionConfig {
            max_pending_per_ip: 100,
            max_pending: 100,
            ..config()
        });
        let t0 = Instant::now();
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        let granted = (0..10).filter(|_| a.admit(ip, 0, t0).is_ok()).count();
        assert_eq!(granted, 3, "the burst");
        assert!(
            a.admit(ip, 0, t0 + std::time::Duration::from_secs(1))
                .is_ok()
        );
        assert!(
            a.admit(Some(IpAddr::from([10, 0, 0, 2])), 0, t0).is_ok(),
            "others unaffected"
        );
    }
}
