//! A token bucket: `rate` tokens per second refill it, up to `burst`.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of zero never refills; `burst` below 1 never grants anything.
    pub fn new(rate_per_second: f64, burst: f64, now: Instant) -> Self {
        let rate = rate_per_second.max(0.0);
        let burst = burst.max(0.0);
        Self {
            rate,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A time before the last refill (callers racing with their clocks) adds nothing.
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if now > self.refilled {
            self.refilled = now;
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely by `now` (it then holds no information and
    /// can be forgotten).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        // 100 ms at 10/s: exactly one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(bucket.try_take(t1));
        assert!(!bucket.try_take(t1));
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(bucket.is_full(t2));
        assert!((0..3).all(|_| bucket.try_take(t2)));
        assert!(!bucket.try_take(t2));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1.0, 1.0, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - Duration::from_secs(5)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(500)));
        assert!(bucket.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn zero_rate_never_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.0, 1.0, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_secs(1000)));
    }
}
