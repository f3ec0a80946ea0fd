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
        if pkt.keyframe_start {
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
        self.bytes += pkt.payload.len();
        self.packets.push(pkt.clone());
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
