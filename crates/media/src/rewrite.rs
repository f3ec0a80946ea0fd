//! Per-viewer rewriting of RTP sequence numbers and timestamps.
//!
//! A viewer's outgoing stream must look like one continuous stream even when the source behind
//! it changes (a publisher leaves and another arrives). Each run of packets from one source is a
//! *segment*; at the start of a segment the track picks offsets so that the output continues
//! where it left off: the next sequence number, and a timestamp advanced by the wall time that
//! passed. Video segments may only start at a keyframe, since a decoder cannot begin mid-GOP.

use std::time::Instant;

use crate::packet::{MediaKind, MediaPacket, SourceId};

/// Sequence number and timestamp to put on the packet sent to this viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended sequence number (the rollover count is in the upper bits).
    pub seq: u64,
    pub timestamp: u32,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    source: SourceId,
    first_in_seq: u64,
    seq_offset: i64,
    ts_offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    timestamp: u32,
    at: Instant,
}

/// Rewriting state of one viewer for one kind of media.
#[derive(Debug)]
pub struct ViewerTrack {
    kind: MediaKind,
    initial_seq: u64,
    initial_ts: u32,
    segment: Option<Segment>,
    last: Option<LastOut>,
}

impl ViewerTrack {
    /// `initial_seq` (below 65536, so the SRTP rollover counter starts at 0) and `initial_ts`
    /// should be random, as RFC 3550 asks.
    pub fn new(kind: MediaKind, initial_seq: u16, initial_ts: u32) -> Self {
        ViewerTrack {
            kind,
            initial_seq: initial_seq as u64,
            initial_ts,
            segment: None,
            last: None,
        }
    }

    /// True while the track waits for a packet it may start a segment with.
    pub fn is_waiting(&self) -> bool {
        self.segment.is_none()
    }

    /// Ends the current segment; the next forwarded packet (a keyframe, for video) starts a new
    /// one. Used when the viewer is moved to another room.
    pub fn resync(&mut self) {
        self.segment = None;
    }

    /// Maps `pkt` onto this viewer's stream, or `None` when it must not be sent (video before
    /// the first keyframe of a segment, or a late packet from before the segment began).
    pub fn rewrite(&mut self, pkt: &MediaPacket) -> Option<Rewritten> {
        let segment = match self.segment {
            Some(s) if s.source == pkt.source => {
                if pkt.seq < s.first_in_seq {
                    return None;
                }
                s
            }
            _ => self.start_segment(pkt)?,
        };
        let seq = (pkt.seq as i64 + segment.seq_offset) as u64;
        let timestamp = pkt.timestamp.wrapping_add(segment.ts_offset);
        if self.last.is_none_or(|l| seq > l.seq) {
            self.last = Some(LastOut {
                seq,
                timestamp,
                at: pkt.arrival,
            });
        }
        Some(Rewritten { seq, timestamp })
    }

    fn start_segment(&mut self, pkt: &MediaPacket) -> Option<Segment> {
        if self.kind == MediaKind::Video && !pkt.keyframe_start {
            return None;
        }
        let (out_seq, out_ts) = match self.last {
            None => (self.initial_seq, self.initial_ts),
            Some(last) => {
                // Advance the clock by the wall time since the last packet we sent (at least one
                // tick), so the receiver's jitter buffer sees time moving forward.
                let elapsed = pkt.arrival.saturating_duration_since(last.at);
                let ticks = (elapsed.as_secs_f64() * pkt.codec.clock_rate() as f64) as u64;
                let ticks = ticks.clamp(1, u32::MAX as u64 / 2) as u32;
                (last.seq + 1, last.timestamp.wrapping_add(ticks))
            }
        };
        let segment = Segment {
            source: pkt.source,
            first_in_seq: pkt.seq,
            seq_offset: out_seq as i64 - pkt.seq as i64,
            ts_offset: out_ts.wrapping_sub(pkt.timestamp),
        };
        self.segment = Some(segment);
        Some(segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Codec;
    use std::sync::Arc;
    use std::time::Duration;

    fn pkt(source: u64, seq: u64, ts: u32, key: bool, at: Instant) -> MediaPacket {
        MediaPacket {
            source: SourceId(source),
            codec: Codec::H264 { profile: 0x42e0 },
            seq,
            timestamp: ts,
            marker: false,
            keyframe_start: key,
            arrival: at,
            payload: Arc::from(&[0u8][..]),
        }
    }

    #[test]
    fn video_waits_for_keyframe_then_is_continuous() {
        let t0 = Instant::now();
        let mut track = ViewerTrack::new(MediaKind::Video, 100, 5000);
        assert_eq!(track.rewrite(&pkt(1, 40, 900, false, t0)), None);
        assert!(track.is_waiting());
        let first = track.rewrite(&pkt(1, 41, 3000, true, t0)).unwrap();
        assert_eq!(
            first,
            Rewritten {
                seq: 100,
                timestamp: 5000
            }
        );
        let next = track.rewrite(&pkt(1, 42, 6000, false, t0)).unwrap();
        assert_eq!(
            next,
            Rewritten {
                seq: 101,
                timestamp: 8000
            }
        );
        // A late packet from before the segment began is not sent.
        assert_eq!(track.rewrite(&pkt(1, 39, 0, false, t0)), None);
    }

    #[test]
    fn source_switch_continues_sequence_and_advances_time() {
        let t0 = Instant::now();
        let mut track = ViewerTrack::new(MediaKind::Video, 10, 1000);
        track.rewrite(&pkt(1, 500, 70_000, true, t0)).unwrap();
        let last = track.rewrite(&pkt(1, 501, 73_000, false, t0)).unwrap();
        assert_eq!(last.seq, 11);

        // New publisher, unrelated numbering, half a second later; its first packet is a delta
        // frame, so the viewer keeps waiting.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(track.rewrite(&pkt(2, 9, 123, false, t1)), None);
        let first = track.rewrite(&pkt(2, 10, 456, true, t1)).unwrap();
        assert_eq!(first.seq, 12);
        assert_eq!(first.timestamp, last.timestamp + 45_000);
        let second = track.rewrite(&pkt(2, 11, 456 + 3000, false, t1)).unwrap();
        assert_eq!(second.seq, 13);
        assert_eq!(second.timestamp, first.timestamp + 3000);
    }

    #[test]
    fn audio_needs_no_keyframe_and_handles_wrap() {
        let t0 = Instant::now();
        let mut track = ViewerTrack::new(MediaKind::Audio, 65_535, u32::MAX - 10);
        let mut a = pkt(7, 1, 0, false, t0);
        a.codec = Codec::Opus;
        assert_eq!(
            track.rewrite(&a),
            Some(Rewritten {
                seq: 65_535,
                timestamp: u32::MAX - 10
            })
        );
        let mut b = pkt(7, 2, 960, false, t0);
        b.codec = Codec::Opus;
        // The extended sequence number rolls into the next cycle; the timestamp wraps.
        assert_eq!(
            track.rewrite(&b),
            Some(Rewritten {
                seq: 65_536,
                timestamp: 949
            })
        );
    }

    #[test]
    fn resync_restarts_at_next_keyframe() {
        let t0 = Instant::now();
        let mut track = ViewerTrack::new(MediaKind::Video, 0, 0);
        track.rewrite(&pkt(1, 1, 0, true, t0)).unwrap();
        track.resync();
        assert_eq!(track.rewrite(&pkt(1, 2, 3000, false, t0)), None);
        let r = track.rewrite(&pkt(1, 3, 6000, true, t0)).unwrap();
        assert_eq!(r.seq, 1);
    }
}
