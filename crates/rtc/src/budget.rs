//! A per-second allowance, for what one session may make the worker do (retransmissions, room
//! switches, GOP replay bytes): time is passed in, so it is tested with fake time.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct PerSecond {
    limit: u64,
    left: u64,
    window: Instant,
}

impl PerSecond {
    pub fn new(limit: u64, now: Instant) -> Self {
        PerSecond {
            limit,
            left: limit,
            window: now,
        }
    }

    /// Whether `n` more fit in the current second (taken if so).
    pub fn take_n(&mut self, n: u64, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.left = self.limit;
        }
        if self.left < n {
            return false;
        }
        self.left -= n;
        true
    }

    pub fn take(&mut self, now: Instant) -> bool {
        self.take_n(1, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_limit_per_second_then_renews() {
        let t0 = Instant::now();
        let mut b = PerSecond::new(500, t0);
        let granted = (0..1000)
            .filter(|_| b.take(t0 + Duration::from_millis(900)))
            .count();
        assert_eq!(granted, 500);
        assert!(
            b.take(t0 + Duration::from_secs(1)),
            "a new second, a new budget"
        );
        assert!(
            !b.take_n(500, t0 + Duration::from_secs(1)),
            "one was taken already"
        );
        assert!(b.take_n(499, t0 + Duration::from_secs(1)));
    }
}
