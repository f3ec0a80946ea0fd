//! The load generator's bookkeeping, sans-IO: what arrived on one RTP stream (loss, late and
//! reordered packets, duplicates) and distributions of latencies and start-up times.
//!
//! Nothing here reads a clock or a socket, so the unit tests drive it with constructed
//! sequence numbers.

/// How far (in packets) a stream's newest sequence number may run ahead of a missing one
/// before the missing packet counts as lost. A retransmission arriving later is "late".
pub const DEFAULT_REPAIR_WINDOW: u16 = 256;

/// Largest supported repair window (the size of the bitmap of recently seen packets).
const MAX_WINDOW: usize = 4096;

/// What arrived on one RTP stream (one SSRC), from its 16-bit sequence numbers.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    window: u64,
    /// Extended sequence number of the newest packet, once one arrived.
    highest: Option<u64>,
    /// Extended sequence number of the first packet: nothing before it is expected.
    first: u64,
    /// Bit `seq % MAX_WINDOW` is set when packet `seq` (within the window) arrived.
    seen: Box<[u64; MAX_WINDOW / 64]>,
    counts: SeqCounts,
}

/// Totals of a [`SeqTracker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCounts {
    /// Distinct packets that arrived in time (within the repair window).
    pub received: u64,
    /// Packets missing when the window moved past them.
    pub lost: u64,
    /// Packets that arrived after they had been counted lost.
    pub late: u64,
    /// Packets that arrived after a newer one, but within the window.
    pub reordered: u64,
    /// Packets that arrived twice (within the window).
    pub duplicates: u64,
}

impl SeqCounts {
    /// Share of expected packets that were lost, in percent.
    pub fn loss_pct(&self) -> f64 {
        let expected = self.received + self.lost;
        if expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / expected as f64
        }
    }

    pub fn add(&mut self, other: &SeqCounts) {
        self.received += other.received;
        self.lost += other.lost;
        self.late += other.late;
        self.reordered += other.reordered;
        self.duplicates += other.duplicates;
    }
}

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker::new(DEFAULT_REPAIR_WINDOW)
    }
}

impl SeqTracker {
    /// A tracker that waits `window` packets (at most 4095) for a gap to be repaired.
    pub fn new(window: u16) -> Self {
        SeqTracker {
            window: u64::from(window).clamp(1, MAX_WINDOW as u64 - 1),
            highest: None,
            first: 0,
            seen: Box::new([0; MAX_WINDOW / 64]),
            counts: SeqCounts::default(),
        }
    }

    pub fn counts(&self) -> SeqCounts {
        self.counts
    }

    /// Extends a 16-bit sequence number to the one nearest the newest seen.
    fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            None => u64::from(seq) + (1 << 16),
            Some(h) => {
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                (h as i64 + delta).max(0) as u64
            }
        }
    }

    fn bit(&self, ext: u64) -> bool {
        let i = (ext % MAX_WINDOW as u64) as usize;
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, ext: u64, on: bool) {
        let i = (ext % MAX_WINDOW as u64) as usize;
        if on {
            self.seen[i / 64] |= 1 << (i % 64);
        } else {
            self.seen[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Records the packet with sequence number `seq`.
    pub fn packet(&mut self, seq: u16) {
        let ext = self.extend(seq);
        let Some(highest) = self.highest else {
            // Start one above 2^16 so that packets a little older than the first still extend
            // to a positive number.
            self.highest = Some(ext);
            self.first = ext;
            self.set(ext, true);
            self.counts.received += 1;
            return;
        };
        if ext > highest {
            // Packets leaving the window are settled: lost unless they arrived.
            let settle_from = highest.saturating_sub(self.window - 1).max(self.first);
            let settle_to = ext.saturating_sub(self.window); // exclusive upper bound + 1
            let mut s = settle_from;
            while s <= settle_to && s <= highest {
                if !self.bit(s) {
                    self.counts.lost += 1;
                }
                self.set(s, false);
                s += 1;
            }
            // Slots between the old and the new highest start empty; a jump past the whole
            // window loses what it skipped without visiting each slot.
            let fresh_from = (highest + 1).max(settle_to + 1);
            if settle_to > highest {
                self.counts.lost += settle_to - highest;
            }
            let mut s = fresh_from;
            while s < ext {
                self.set(s, false);
                s += 1;
            }
            self.set(ext, true);
            self.highest = Some(ext);
            self.counts.received += 1;
        } else if ext + self.window <= highest || ext < self.first {
            // Its slot was settled already (counted lost), or it predates the stream.
            if ext >= self.first {
                self.counts.late += 1;
            }
        } else if self.bit(ext) {
            self.counts.duplicates += 1;
        } else {
            self.set(ext, true);
            self.counts.received += 1;
            self.counts.reordered += 1;
        }
    }

    /// Settles the packets still in the window (at the end of a run): missing ones are lost.
    pub fn finish(&mut self) {
        let Some(highest) = self.highest else {
            return;
        };
        let from = highest.saturating_sub(self.window - 1).max(self.first);
        for s in from..=highest {
            if !self.bit(s) {
                self.counts.lost += 1;
            }
            self.set(s, true);
        }
    }
}

/// A set of samples (microseconds) from which percentiles are read.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn push(&mut self, micros: u64) {
        self.values.push(micros);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: &Samples) {
        self.values.extend_from_slice(&other.values);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// The `p`-th percentile (0-100) by the nearest-rank method, or `None` with no samples.
    pub fn percentile(&mut self, p: f64) -> Option<u64> {
        if self.values.is_empty() {
            return None;
        }
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.values.len() as f64).ceil() as usize;
        Some(self.values[rank.clamp(1, self.values.len()) - 1])
    }

    pub fn max(&self) -> Option<u64> {
        self.values.iter().copied().max()
    }

    /// Percentile in milliseconds (NaN-free: `None` when empty).
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        self.percentile(p).map(|us| us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(window: u16, seqs: impl IntoIterator<Item = u16>) -> SeqCounts {
        let mut t = SeqTracker::new(window);
        for s in seqs {
            t.packet(s);
        }
        t.finish();
        t.counts()
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let c = run(16, 0..1000);
        assert_eq!(c.received, 1000);
        assert_eq!(c.lost, 0);
        assert_eq!(c.reordered, 0);
        assert_eq!(c.loss_pct(), 0.0);
    }

    #[test]
    fn wraparound_is_not_a_gap() {
        let c = run(16, (65500u16..=65535).chain(0..100));
        assert_eq!(c.received, 136);
        assert_eq!(c.lost, 0);
    }

    #[test]
    fn gap_counts_as_lost_once_window_passes() {
        let mut t = SeqTracker::new(8);
        for s in (0..10).chain(12..15) {
            t.packet(s);
        }
        // 10 and 11 are missing but still inside the window: not yet lost.
        assert_eq!(t.counts().lost, 0);
        for s in 15..30 {
            t.packet(s);
        }
        assert_eq!(t.counts().lost, 2);
        t.finish();
        assert_eq!(t.counts().lost, 2);
        assert_eq!(t.counts().received, 28);
    }

    #[test]
    fn repair_within_window_is_reordering_not_loss() {
        let c = run(8, [0, 1, 2, 4, 5, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(c.lost, 0);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.received, 15);
    }

    #[test]
    fn repair_after_window_is_late_and_stays_lost() {
        let mut seqs: Vec<u16> = (0..5).chain(6..20).collect();
        seqs.push(5);
        let c = run(8, seqs);
        assert_eq!(c.lost, 1);
        assert_eq!(c.late, 1);
        assert_eq!(c.received, 19);
    }

    #[test]
    fn duplicates_are_counted_apart() {
        let c = run(8, [0, 1, 2, 2, 3, 1]);
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.received, 4);
        assert_eq!(c.lost, 0);
    }

    #[test]
    fn jump_far_beyond_window_loses_what_it_skipped() {
        let c = run(8, [0, 1, 2, 1003, 1004]);
        assert_eq!(c.lost, 1000);
        assert_eq!(c.received, 5);
        assert!((c.loss_pct() - 100.0 * 1000.0 / 1005.0).abs() < 1e-9);
    }

    #[test]
    fn trailing_gap_is_settled_by_finish() {
        let mut t = SeqTracker::new(64);
        for s in [0u16, 1, 2, 5] {
            t.packet(s);
        }
        assert_eq!(t.counts().lost, 0);
        t.finish();
        assert_eq!(t.counts().lost, 2);
    }

    #[test]
    fn packet_older_than_first_is_ignored() {
        let c = run(8, [100, 101, 99, 102]);
        assert_eq!(c.received, 3);
        assert_eq!(c.lost, 0);
        assert_eq!(c.late, 0);
    }

    #[test]
    fn loss_percentage_across_trackers() {
        let mut total = SeqCounts::default();
        total.add(&run(8, (0..100).filter(|s| s % 10 != 0)));
        total.add(&run(8, 0..100));
        // 9 of 100 lost in the first (the leading 0 was never expected), none in the second.
        assert_eq!(total.lost, 9);
        assert!((total.loss_pct() - 9.0 * 100.0 / 199.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s = Samples::default();
        assert_eq!(s.percentile(50.0), None);
        for v in (1..=100).rev() {
            s.push(v);
        }
        assert_eq!(s.percentile(50.0), Some(50));
        assert_eq!(s.percentile(99.0), Some(99));
        assert_eq!(s.percentile(100.0), Some(100));
        assert_eq!(s.percentile(0.0), Some(1));
        assert_eq!(s.max(), Some(100));
        assert_eq!(s.percentile_ms(50.0), Some(0.05));
    }
}
