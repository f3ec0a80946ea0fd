//! Extending 16-bit RTP sequence numbers to 64 bits, for sources (such as FTL) that hand us the
//! bare header field.

/// Tracks the rollover of one stream's sequence numbers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqExtender {
    highest: Option<u64>,
}

impl SeqExtender {
    /// The extended value of `seq`: the one closest to the highest seen so far, so that late
    /// packets from before a wrap and early ones after it both land right.
    pub fn extend(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            // Start one cycle up, so a slightly older packet still has room below.
            let ext = (1u64 << 16) + seq as u64;
            self.highest = Some(ext);
            return ext;
        };
        let delta = seq.wrapping_sub(highest as u16) as i16 as i64;
        let ext = (highest as i64 + delta).max(0) as u64;
        if ext > highest {
            self.highest = Some(ext);
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_forward_and_handles_late_packets() {
        let mut x = SeqExtender::default();
        let a = x.extend(65_534);
        assert_eq!(x.extend(65_535), a + 1);
        assert_eq!(x.extend(0), a + 2);
        assert_eq!(x.extend(1), a + 3);
        // A late packet from before the wrap.
        assert_eq!(x.extend(65_533), a - 1);
        assert_eq!(x.extend(2), a + 4);
    }
}
