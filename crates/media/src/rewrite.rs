//! Per-viewer rewriting of RTP sequence numbers and timestamps.
//!
//! A viewer's outgoing stream must look like one continuous stream even when the source behind
//! it changes (a publisher leaves and another arrives). Each run of packets from one source is a
//! *segment*; at the start of a segment the track picks offsets so that the output continues
//! where it left off: the next sequence number, and a timestamp advanced by the wall time that
//! passed. Video segments may only start at a keyframe, since a decoder cannot begin mid-GOP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::packet::{MediaKind, MediaPacket, SourceId};

/// How long live video must have been silent before the idle clip may take a viewer over.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);
/// Timestamp spacing of frames replayed from a GOP cache (1 ms at 90 kHz): close enough that
/// the decoder runs through them at once, apart enough to stay distinct frames.
const REPLAY_FRAME_TICKS: u32 = 90;

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
        if pkt.source.is_idle()
            && self.segment.is_some_and(|s| !s.source.is_idle())
            && self
                .last
                .is_some_and(|l| pkt.arrival.saturating_duration_since(l.at) < IDLE_AFTER)
        {
            // Live video holds the viewer until it has been silent for a while.
            return None;
        }
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

    /// Where the next segment starts: the next sequence number, and the last timestamp advanced
    /// by the wall time since the last packet sent (at least one tick), so the receiver's
    /// jitter buffer sees time moving forward.
    fn next_start(&self, now: Instant, clock_rate: u32) -> (u64, u32) {
        match self.last {
            None => (self.initial_seq, self.initial_ts),
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                let ticks = (elapsed.as_secs_f64() * clock_rate as f64) as u64;
                let ticks = ticks.clamp(1, u32::MAX as u64 / 2) as u32;
                (last.seq + 1, last.timestamp.wrapping_add(ticks))
            }
        }
    }

    /// Starts a segment with a cached GOP (keyframe first) and maps all of it at once, for a
    /// viewer that joins or switches rooms. The GOP's frames get timestamps 1 ms apart ending at
    /// the live edge, so the decoder shows the newest picture promptly; live packets of the
    /// same source that follow continue from the GOP's last packet with no gap and no
    /// duplicate. Returns one mapping per GOP packet (nothing for an unusable GOP).
    pub fn replay(&mut self, gop: &[Arc<MediaPacket>], now: Instant) -> Vec<Rewritten> {
        let (Some(first), Some(last_pkt)) = (gop.first(), gop.last()) else {
            return Vec::new();
        };
        if self.kind != MediaKind::Video || !first.keyframe_start {
            return Vec::new();
        }
        let (out_seq, base_ts) = self.next_start(now, first.codec.clock_rate());
        let seq_offset = out_seq as i64 - first.seq as i64;
        let mut out = Vec::with_capacity(gop.len());
        let mut frame = 0u32;
        let mut prev_ts = first.timestamp;
        for p in gop {
            if p.timestamp != prev_ts {
                frame += 1;
                prev_ts = p.timestamp;
            }
            out.push(Rewritten {
                seq: (p.seq as i64 + seq_offset) as u64,
                timestamp: base_ts.wrapping_add(frame * REPLAY_FRAME_TICKS),
            });
        }
        let edge_ts = base_ts.wrapping_add(frame * REPLAY_FRAME_TICKS);
        self.segment = Some(Segment {
            source: first.source,
            first_in_seq: first.seq,
            seq_offset,
            ts_offset: edge_ts.wrapping_sub(last_pkt.timestamp),
        });
        let max_seq = out.iter().map(|r| r.seq).max().unwrap_or(out_seq);
        self.last = Some(LastOut {
            seq: max_seq,
            timestamp: edge_ts,
            at: now,
        });
        out
    }

    fn start_segment(&mut self, pkt: &MediaPacket) -> Option<Segment> {
        if self.kind == MediaKind::Video && !pkt.keyframe_start {
            return None;
        }
        let (out_seq, out_ts) = self.next_start(pkt.arrival, pkt.codec.clock_rate());
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
            capture: at,
            payload: bytes::Bytes::from_static(&[0u8]),
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

    fn gop(
        source: u64,
        first_seq: u64,
        frames: u32,
        packets_per_frame: u64,
        at: Instant,
    ) -> Vec<Arc<MediaPacket>> {
        let mut out = Vec::new();
        let mut seq = first_seq;
        for f in 0..frames {
            for i in 0..packets_per_frame {
                out.push(Arc::new(pkt(
                    source,
                    seq,
                    1000 + f * 3000,
                    f == 0 && i == 0,
                    at,
                )));
                seq += 1;
            }
        }
        out
    }

    #[test]
    fn join_replays_gop_compressed_then_continues_live() {
        let t0 = Instant::now();
        let mut track = ViewerTrack::new(MediaKind::Video, 500, 70_000);
        let cached = gop(3, 100, 4, 2, t0); // 4 frames of 2 packets, seq 100..=107
        let replayed = track.replay(&cached, t0);
        assert_eq!(replayed.len(), 8);
        let seqs: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (500..508).collect::<Vec<_>>());
        // Frames 1 ms apart: 70_000, 70_090, 70_180, 70_270.
        assert_eq!(replayed[0].timestamp, 70_000);
        assert_eq!(replayed[2].timestamp, 70_090);
        assert_eq!(replayed[7].timestamp, 70_270);
        // The next live packet follows without gap or duplicate, one frame later.
        let live = track
            .rewrite(&pkt(3, 108, 1000 + 4 * 3000, false, t0))
            .unwrap();
        assert_eq!(
            live,
            Rewritten {
                seq: 508,
                timestamp: 70_270 + 3000
            }
        );
    }

    #[test]
    fn switch_rooms_replays_the_new_rooms_gop_continuously() {
        let t0 = Instant::now();
        let mut track = ViewerTrack::new(MediaKind::Video, 10, 0);
        track.rewrite(&pkt(1, 40, 0, true, t0)).unwrap();
        let before = track.rewrite(&pkt(1, 41, 3000, false, t0)).unwrap();
        track.resync();
        let t1 = t0 + Duration::from_millis(200);
        let replayed = track.replay(&gop(2, 9000, 2, 1, t1), t1);
        assert_eq!(replayed[0].seq, before.seq + 1);
        assert_eq!(replayed[0].timestamp, before.timestamp + 18_000);
        // Packets of the old room no longer reach the viewer.
        assert_eq!(track.rewrite(&pkt(1, 42, 6000, false, t1)), None);
        assert_eq!(
            track
                .rewrite(&pkt(2, 9002, 1000 + 6000, false, t1))
                .unwrap()
                .seq,
            before.seq + 3
        );
    }

    #[test]
    fn idle_to_live_at_keyframe_and_back_after_silence() {
        let t0 = Instant::now();
        let mut track = ViewerTrack::new(MediaKind::Video, 0, 0);
        let idle = |seq: u64, key: bool, at: Instant| pkt(0, seq, seq as u32 * 9000, key, at);
        assert!(track.rewrite(&idle(1, true, t0)).is_some());
        assert!(track.rewrite(&idle(2, false, t0)).is_some());
        // Live arrives: its delta frames do not interrupt the idle clip, its keyframe takes over.
        assert!(track.rewrite(&pkt(5, 70, 0, false, t0)).is_none());
        assert!(track.rewrite(&idle(3, false, t0)).is_some());
        let live = track.rewrite(&pkt(5, 71, 3000, true, t0)).unwrap();
        assert_eq!(live.seq, 3);
        // While live is fresh the clip is held back, even at its keyframes.
        let t1 = t0 + Duration::from_millis(500);
        assert!(track.rewrite(&idle(4, true, t1)).is_none());
        // After a second of live silence the clip's next keyframe takes over again.
        let t2 = t0 + Duration::from_millis(1500);
        assert!(track.rewrite(&idle(5, false, t2)).is_none());
        let back = track.rewrite(&idle(6, true, t2)).unwrap();
        assert_eq!(back.seq, 4);
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
