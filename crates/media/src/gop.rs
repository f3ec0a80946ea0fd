//! The current GOP of a room: the video packets since the last keyframe, so that a viewer who
//! joins (or switches in) gets a picture at once instead of waiting for the next keyframe.

use std::sync::Arc;

use crate::packet::{MediaKind, MediaPacket, SourceId};

/// Bounded list of the packets since the last video keyframe of the current source.
#[derive(Debug)]
pub struct GopCache {
    packets: Vec<Arc<MediaPacket>>,
    source: Option<SourceId>,
    bytes: usize,
    max_bytes: usize,
    max_packets: usize,
}

impl GopCache {
    pub fn new(max_bytes: usize, max_packets: usize) -> Self {
        GopCache {
            packets: Vec::new(),
            source: None,
            bytes: 0,
            max_bytes,
            max_packets,
        }
    }

    /// Takes note of a packet forwarded in the room (audio and idle packets are ignored).
    pub fn push(&mut self, pkt: &Arc<MediaPacket>) {
        if pkt.kind() != MediaKind::Video || pkt.source.is_idle() {
            return;
        }
        // Parameter sets (SPS/PPS) and the IDR slice all count as a keyframe start; the GOP begins
        // at the first of them, so later ones of the same picture must not restart it.
        let same_picture = self
            .packets
            .first()
            .is_some_and(|f| f.source == pkt.source && f.timestamp == pkt.timestamp);
        if pkt.keyframe_start && !same_picture {
            self.clear();
            self.source = Some(pkt.source);
        } else if self.source != Some(pkt.source) || self.packets.is_empty() {
            // Mid-GOP of a source we have no keyframe of: nothing decodable to keep.
            self.clear();
            return;
        }
        if self.packets.len() >= self.max_packets || self.bytes + pkt.payload.len() > self.max_bytes
        {
            // A GOP too long to keep whole is useless in part: wait for the next keyframe.
            self.clear();
            return;
        }
        // Keep sequence order: retransmissions (NACK repairs) arrive after their neighbours.
        match self.packets.last() {
            Some(last) if last.seq >= pkt.seq => {
                match self.packets.binary_search_by_key(&pkt.seq, |p| p.seq) {
                    Ok(_) => return,  // a duplicate
                    Err(0) => return, // from before the keyframe
                    Err(at) => self.packets.insert(at, pkt.clone()),
                }
            }
            _ => self.packets.push(pkt.clone()),
        }
        self.bytes += pkt.payload.len();
    }

    pub fn clear(&mut self) {
        self.packets.clear();
        self.source = None;
        self.bytes = 0;
    }

    /// The cached GOP, keyframe first; empty when there is none.
    pub fn packets(&self) -> &[Arc<MediaPacket>] {
        &self.packets
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Codec;
    use std::time::Instant;

    fn video(source: u64, seq: u64, key: bool, len: usize) -> Arc<MediaPacket> {
        Arc::new(MediaPacket {
            source: SourceId(source),
            codec: Codec::H264 { profile: 0x42e0 },
            seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            keyframe_start: key,
            arrival: Instant::now(),
            capture: Instant::now(),
            payload: vec![0u8; len].into(),
        })
    }

    #[test]
    fn keeps_packets_since_last_keyframe() {
        let mut gop = GopCache::new(10_000, 100);
        gop.push(&video(1, 1, false, 10)); // before any keyframe: useless
        assert!(gop.packets().is_empty());
        gop.push(&video(1, 2, true, 10));
        gop.push(&video(1, 3, false, 10));
        assert_eq!(gop.packets().len(), 2);
        gop.push(&video(1, 4, true, 10));
        assert_eq!(
            gop.packets().iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![4]
        );
        assert_eq!(gop.bytes(), 10);
    }

    #[test]
    fn parameter_sets_stay_with_their_idr() {
        let mut gop = GopCache::new(10_000, 100);
        let at = |seq: u64, ts: u32, key: bool| {
            let mut p = Arc::try_unwrap(video(1, seq, key, 10)).unwrap();
            p.timestamp = ts;
            Arc::new(p)
        };
        gop.push(&at(1, 9000, true)); // SPS
        gop.push(&at(2, 9000, false)); // PPS
        gop.push(&at(3, 9000, true)); // IDR, first FU-A fragment
        gop.push(&at(4, 12000, false));
        assert_eq!(
            gop.packets().iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        gop.push(&at(5, 15000, true)); // the next keyframe starts a new GOP
        assert_eq!(gop.packets().len(), 1);
    }

    #[test]
    fn repairs_are_put_in_sequence_order_and_duplicates_dropped() {
        let mut gop = GopCache::new(10_000, 100);
        gop.push(&video(1, 10, true, 10));
        gop.push(&video(1, 12, false, 10));
        gop.push(&video(1, 11, false, 10)); // a NACK repair
        gop.push(&video(1, 12, false, 10)); // a duplicate
        gop.push(&video(1, 9, false, 10)); // from before the keyframe
        assert_eq!(
            gop.packets().iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![10, 11, 12]
        );
        assert_eq!(gop.bytes(), 30);
    }

    #[test]
    fn new_source_needs_its_own_keyframe() {
        let mut gop = GopCache::new(10_000, 100);
        gop.push(&video(1, 1, true, 10));
        gop.push(&video(2, 50, false, 10));
        assert!(gop.packets().is_empty());
        gop.push(&video(2, 51, true, 10));
        assert_eq!(gop.packets().len(), 1);
    }

    #[test]
    fn over_long_gop_is_dropped_whole() {
        let mut gop = GopCache::new(25, 100);
        gop.push(&video(1, 1, true, 10));
        gop.push(&video(1, 2, false, 10));
        gop.push(&video(1, 3, false, 10));
        assert!(gop.packets().is_empty());
        gop.push(&video(1, 4, false, 10));
        assert!(
            gop.packets().is_empty(),
            "stays empty until the next keyframe"
        );
        gop.push(&video(1, 5, true, 10));
        assert_eq!(gop.packets().len(), 1);
    }
}
