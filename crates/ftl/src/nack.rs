//! Server-side loss tracking for one RTP stream: finds sequence gaps and decides which
//! sequence numbers to NACK and when. Bounded in how many gaps it remembers, how old they may
//! get and how often each is asked for, so a lossy or hostile sender cannot grow it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Limits of a [`NackTracker`].
#[derive(Debug, Clone)]
pub struct NackConfig {
    /// Most missing packets remembered; the oldest are forgotten first.
    pub max_missing: usize,
    /// A missing packet older than this is given up on.
    pub max_age: Duration,
    /// How many NACKs are sent for one packet.
    pub max_nacks: u8,
    /// Time between NACKs for the same packet (about a round trip).
    pub retry_interval: Duration,
    /// Wait this long after a gap appears before the first NACK, in case of reordering.
    pub reorder_delay: Duration,
    /// A forward jump larger than this is treated as a restart, not as loss.
    pub max_gap: u16,
    /// Most sequence numbers named in one poll.
    pub max_per_poll: usize,
}

impl Default for NackConfig {
    fn default() -> Self {
        Self {
            max_missing: 512,
            max_age: Duration::from_millis(1500),
            max_nacks: 4,
            retry_interval: Duration::from_millis(100),
            reorder_delay: Duration::from_millis(5),
            max_gap: 1000,
            max_per_poll: 128,
        }
    }
}

/// What a received sequence number turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first packet, or a newer one than any before.
    New,
    /// A packet that was missing (a retransmission or a late one).
    Recovered,
    /// Already received, or too old to track: drop it.
    Duplicate,
    /// A jump too large to be loss; tracking restarted from here.
    Restart,
}

#[derive(Debug, Clone)]
struct Missing {
    since: Instant,
    last_nack: Option<Instant>,
    nacks: u8,
}

/// Gap tracker for one SSRC.
#[derive(Debug)]
pub struct NackTracker {
    config: NackConfig,
    /// Highest sequence number seen, extended with a rollover count so wrapping is linear.
    highest: Option<u64>,
    missing: BTreeMap<u64, Missing>,
}

impl NackTracker {
    pub fn new(config: NackConfig) -> Self {
        Self {
            config,
            highest: None,
            missing: BTreeMap::new(),
        }
    }

    /// How many packets are currently missing.
    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }

    /// Records a received sequence number.
    pub fn on_packet(&mut self, now: Instant, sequence: u16) -> Arrival {
        let Some(highest) = self.highest else {
            // Start well above zero so extended numbers never go negative.
            self.highest = Some((1 << 32) + u64::from(sequence));
            return Arrival::New;
        };
        let delta = sequence.wrapping_sub(highest as u16) as i16;
        let extended = highest.wrapping_add_signed(i64::from(delta));
        if delta > 0 {
            if delta as u16 > self.config.max_gap {
                self.restart(extended);
                return Arrival::Restart;
            }
            for lost in highest + 1..extended {
                self.missing.insert(
                    lost,
                    Missing {
                        since: now,
                        last_nack: None,
                        nacks: 0,
                    },
                );
            }
            while self.missing.len() > self.config.max_missing {
                self.missing.pop_first();
            }
            self.highest = Some(extended);
            return Arrival::New;
        }
        if self.missing.remove(&extended).is_some() {
            return Arrival::Recovered;
        }
        if delta.unsigned_abs() > self.config.max_gap {
            // A large step back: the sender restarted its numbering.
            self.restart(extended);
            return Arrival::Restart;
        }
        Arrival::Duplicate
    }

    fn restart(&mut self, extended: u64) {
        self.missing.clear();
        self.highest = Some(extended);
    }

    /// Sequence numbers to NACK now (possibly none); forgets packets too old to matter.
    pub fn poll_nacks(&mut self, now: Instant) -> Vec<u16> {
        let config = &self.config;
        self.missing
            .retain(|_, missing| now.saturating_duration_since(missing.since) < config.max_age);
        let mut due = Vec::new();
        for (&extended, missing) in self.missing.iter_mut() {
            if due.len() >= config.max_per_poll {
                break;
            }
            if missing.nacks >= config.max_nacks {
                continue;
            }
            let ready_at = match missing.last_nack {
                None => missing.since + config.reorder_delay,
                Some(last) => last + config.retry_interval,
            };
            if ready_at <= now {
                missing.last_nack = Some(now);
                missing.nacks += 1;
                due.push(extended as u16);
            }
        }
        due
    }

    /// When [`poll_nacks`](Self::poll_nacks) next has something to do.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.missing
            .values()
            .map(|missing| {
                if missing.nacks >= self.config.max_nacks {
                    missing.since + self.config.max_age
                } else {
                    match missing.last_nack {
                        None => missing.since + self.config.reorder_delay,
                        Some(last) => last + self.config.retry_interval,
                    }
                }
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nacks_a_gap_after_the_reorder_delay_then_retries() {
        let start = Instant::now();
        let mut tracker = NackTracker::new(NackConfig::default());
        assert_eq!(tracker.on_packet(start, 10), Arrival::New);
        assert_eq!(tracker.on_packet(start, 13), Arrival::New);
        assert_eq!(tracker.missing_count(), 2);
        assert!(tracker.poll_nacks(start).is_empty());
        assert_eq!(tracker.next_timeout(), Some(start + ms(5)));
        assert_eq!(tracker.poll_nacks(start + ms(5)), [11, 12]);
        assert!(tracker.poll_nacks(start + ms(50)).is_empty());
        assert_eq!(tracker.on_packet(start + ms(60), 11), Arrival::Recovered);
        assert_eq!(tracker.on_packet(start + ms(61), 11), Arrival::Duplicate);
        assert_eq!(tracker.poll_nacks(start + ms(105)), [12]);
    }

    #[test]
    fn stops_after_max_nacks_and_forgets_after_max_age() {
        let start = Instant::now();
        let config = NackConfig::default();
        let mut tracker = NackTracker::new(config.clone());
        tracker.on_packet(start, 0);
        tracker.on_packet(start, 2);
        let mut sent = 0;
        let mut now = start;
        while now < start + ms(1000) {
            sent += tracker.poll_nacks(now).len();
            now += ms(10);
        }
        assert_eq!(sent, usize::from(config.max_nacks));
        assert_eq!(tracker.next_timeout(), Some(start + config.max_age));
        tracker.poll_nacks(start + config.max_age);
        assert_eq!(tracker.missing_count(), 0);
        assert_eq!(tracker.next_timeout(), None);
        // A packet arriving after it was given up on is dropped, not delivered twice.
        assert_eq!(tracker.on_packet(start + ms(1600), 1), Arrival::Duplicate);
    }

    #[test]
    fn bounds_the_number_of_missing_packets() {
        let start = Instant::now();
        let mut tracker = NackTracker::new(NackConfig::default());
        tracker.on_packet(start, 0);
        for step in 1..=10u16 {
            tracker.on_packet(start, step * 900);
        }
        assert_eq!(tracker.missing_count(), 512);
        // The oldest were dropped: the newest gap is kept whole.
        let nacked = tracker.poll_nacks(start + ms(5));
        assert_eq!(nacked.len(), 128);
        assert!(nacked.iter().all(|&s| s > 8000));
    }

    #[test]
    fn handles_wraparound() {
        let start = Instant::now();
        let mut tracker = NackTracker::new(NackConfig::default());
        tracker.on_packet(start, 65534);
        assert_eq!(tracker.on_packet(start, 1), Arrival::New);
        assert_eq!(tracker.poll_nacks(start + ms(5)), [65535, 0]);
        assert_eq!(tracker.on_packet(start, 0), Arrival::Recovered);
    }

    #[test]
    fn big_jumps_restart_instead_of_nacking() {
        let start = Instant::now();
        let mut tracker = NackTracker::new(NackConfig::default());
        tracker.on_packet(start, 100);
        assert_eq!(tracker.on_packet(start, 5000), Arrival::Restart);
        assert_eq!(tracker.missing_count(), 0);
        // Sequence numbers reset to zero (OBS after its speed test).
        assert_eq!(tracker.on_packet(start, 0), Arrival::Restart);
        assert_eq!(tracker.on_packet(start, 1), Arrival::New);
        assert!(tracker.poll_nacks(start + ms(5)).is_empty());
    }
}
