//! Viewers' keyframe requests (PLI/FIR), merged and rate-limited toward the publisher.
//!
//! Every viewer that joins or loses a packet may ask for a keyframe; forwarding each request
//! would make the publisher send keyframes back to back. Requests within `min_interval` of the
//! last one sent are merged into one that goes out when the interval ends.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct KeyframeRequestGate {
    min_interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeRequestGate {
    pub fn new(min_interval: Duration) -> Self {
        KeyframeRequestGate {
            min_interval,
            last_sent: None,
            pending: false,
        }
    }

    /// A viewer asked for a keyframe. Returns true when the request should go out now.
    pub fn request(&mut self, now: Instant) -> bool {
        self.pending = true;
        self.poll(now)
    }

    /// Returns true when a merged request is due now.
    pub fn poll(&mut self, now: Instant) -> bool {
        if !self.pending {
            return false;
        }
        if self.last_sent.is_some_and(|t| now < t + self.min_interval) {
            return false;
        }
        self.pending = false;
        self.last_sent = Some(now);
        true
    }

    /// When a merged request becomes due, if one is waiting.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        // A pending request always follows a sent one (the first goes out at once).
        self.last_sent.map(|t| t + self.min_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_requests_within_interval() {
        let t0 = Instant::now();
        let mut gate = KeyframeRequestGate::new(Duration::from_millis(500));
        assert!(gate.request(t0));
        assert!(!gate.request(t0 + Duration::from_millis(10)));
        assert!(!gate.request(t0 + Duration::from_millis(20)));
        assert_eq!(gate.deadline(), Some(t0 + Duration::from_millis(500)));
        assert!(!gate.poll(t0 + Duration::from_millis(499)));
        assert!(gate.poll(t0 + Duration::from_millis(500)));
        // The merged request went out; nothing more is pending.
        assert!(!gate.poll(t0 + Duration::from_secs(5)));
        assert_eq!(gate.deadline(), None);
    }
}
