//! The synthetic stream the load generator publishes: H264-shaped video (STAP-A with SPS/PPS
//! before each IDR, FU-A fragments) at a chosen bitrate, and Opus-sized audio at 50 packets/s.
//!
//! Every media payload except the STAP-A carries the time it was built (nanoseconds since
//! [`epoch`]) in 8 bytes after its NAL or TOC header, so a viewer that decrypts can tell how
//! long the packet spent in the SFU. A viewer that does not decrypt recognises the start of a
//! keyframe by size alone: the STAP-A is the only video payload shorter than
//! [`MIN_MEDIA_PAYLOAD`] bytes.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use deadsfu_client::synthetic::STAP_A_LEN;
use deadsfu_client::synthetic::h264_access_unit;
use deadsfu_media::h264_packetize::{FU_A, STAP_A};
#[cfg(test)]
use deadsfu_media::keyframe::h264_keyframe_start;

/// Every other payload is at least this long.
pub const MIN_MEDIA_PAYLOAD: usize = 100;
/// Largest video payload.
pub const MAX_VIDEO_PAYLOAD: usize = 1100;
/// Opus payload length (a 20 ms frame at about 48 kbit/s).
pub const AUDIO_PAYLOAD_LEN: usize = 120;
pub const VIDEO_CLOCK: u32 = 90_000;
pub const AUDIO_CLOCK: u32 = 48_000;
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);

/// The instant payload timestamps count from, shared by the publisher and viewers of one
/// process.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to `at`.
pub fn stamp(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    Video,
    Audio,
}

/// One RTP payload to send.
#[derive(Debug, Clone)]
pub struct Packet {
    pub track: Track,
    pub marker: bool,
    /// RTP timestamp (from 0, in the track's clock).
    pub rtp_time: u32,
    pub payload: Vec<u8>,
    pub keyframe: bool,
}

/// Shape of the stream.
#[derive(Debug, Clone)]
pub struct StreamShape {
    /// Video bits per second (audio comes on top).
    pub video_bps: u64,
    pub fps: u32,
    pub keyframe_interval: Duration,
    pub audio: bool,
}

impl Default for StreamShape {
    fn default() -> Self {
        StreamShape {
            video_bps: 1_000_000,
            fps: 30,
            keyframe_interval: Duration::from_secs(2),
            audio: true,
        }
    }
}

/// Paces the stream: tells when the next packets are due and builds them.
#[derive(Debug)]
pub struct Generator {
    shape: StreamShape,
    start: Instant,
    frame: u64,
    audio_packets: u64,
    frames_per_keyframe: u64,
    /// Bytes of a delta frame; keyframes are three times that.
    frame_bytes: usize,
}

impl Generator {
    pub fn new(shape: StreamShape, start: Instant) -> Self {
        let fps = u64::from(shape.fps.max(1));
        let frames_per_keyframe =
            ((shape.keyframe_interval.as_secs_f64() * fps as f64).round() as u64).max(1);
        // Keyframes are 3x a delta frame; size delta frames so the average meets the bitrate.
        let per_gop = shape.video_bps as f64 / 8.0 / fps as f64 * frames_per_keyframe as f64;
        let frame_bytes = (per_gop / (frames_per_keyframe as f64 + 2.0)) as usize;
        Generator {
            frame_bytes: frame_bytes.max(MIN_MEDIA_PAYLOAD),
            shape,
            start,
            frame: 0,
            audio_packets: 0,
            frames_per_keyframe,
        }
    }

    fn next_video(&self) -> Instant {
        self.start + Duration::from_secs(self.frame) / self.shape.fps.max(1)
    }

    fn next_audio(&self) -> Option<Instant> {
        self.shape
            .audio
            .then(|| self.start + AUDIO_INTERVAL * self.audio_packets as u32)
    }

    /// When the next packet is due.
    pub fn next_due(&self) -> Instant {
        match self.next_audio() {
            Some(a) => a.min(self.next_video()),
            None => self.next_video(),
        }
    }

    /// Appends every packet due by `now` to `out`, each stamped with `now`.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Packet>) {
        let ts = stamp(now);
        while self.next_video() <= now {
            let keyframe = self.frame.is_multiple_of(self.frames_per_keyframe);
            let rtp_time =
                (self.frame * u64::from(VIDEO_CLOCK) / u64::from(self.shape.fps.max(1))) as u32;
            let size = if keyframe {
                self.frame_bytes * 3
            } else {
                self.frame_bytes
            };
            h264_frame(keyframe, size, rtp_time, ts, out);
            self.frame += 1;
        }
        while let Some(at) = self.next_audio()
            && at <= now
        {
            let mut payload = vec![0xfc];
            payload.extend_from_slice(&ts.to_be_bytes());
            payload.resize(AUDIO_PAYLOAD_LEN, 0xff);
            out.push(Packet {
                track: Track::Audio,
                marker: true,
                rtp_time: (self.audio_packets * 960) as u32,
                payload,
                keyframe: false,
            });
            self.audio_packets += 1;
        }
    }
}

/// One H264 access unit as RTP payloads (see [`h264_access_unit`]), each slice payload
/// carrying `ts` and padded to at least [`MIN_MEDIA_PAYLOAD`] bytes.
fn h264_frame(keyframe: bool, size: usize, rtp_time: u32, ts: u64, out: &mut Vec<Packet>) {
    let fill = |payload: &mut Vec<u8>, len: usize| {
        let end = (payload.len() + len).max(MIN_MEDIA_PAYLOAD);
        payload.extend_from_slice(&ts.to_be_bytes());
        payload.resize(end.max(payload.len()), 0xab);
    };
    let emit = |payload: Vec<u8>, marker: bool| {
        out.push(Packet {
            track: Track::Video,
            marker,
            rtp_time,
            payload,
            keyframe,
        })
    };
    h264_access_unit(
        keyframe,
        size.max(MIN_MEDIA_PAYLOAD),
        MAX_VIDEO_PAYLOAD,
        fill,
        emit,
    );
}

/// The send timestamp in a payload of this stream, if it carries one: after the one-byte
/// Opus TOC (`video` false), or after the H264 NAL header (one byte, two for FU-A).
pub fn payload_stamp(payload: &[u8], video: bool) -> Option<u64> {
    let first = *payload.first()?;
    let offset = match first & 0x1f {
        _ if !video => 1,
        FU_A => 2,
        STAP_A => return None,
        _ => 1, // single NAL unit
    };
    let bytes: [u8; 8] = payload.get(offset..offset + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrate_and_packet_rate_match_the_shape() {
        let start = Instant::now();
        let mut g = Generator::new(StreamShape::default(), start);
        let mut out = Vec::new();
        g.due(start + Duration::from_millis(9_999), &mut out);
        let video: Vec<&Packet> = out.iter().filter(|p| p.track == Track::Video).collect();
        let audio = out.len() - video.len();
        let video_bits: usize = video.iter().map(|p| p.payload.len() * 8).sum();
        // 10 s at 1 Mbit/s within 5%.
        assert!(
            (9_500_000..10_500_000).contains(&video_bits),
            "{video_bits}"
        );
        assert_eq!(audio, 500);
        assert!(video.iter().all(|p| p.payload.len() <= MAX_VIDEO_PAYLOAD));
        // Keyframe every 2 s: 5 STAP-As, the only short payloads.
        let short: Vec<&&Packet> = video
            .iter()
            .filter(|p| p.payload.len() < MIN_MEDIA_PAYLOAD)
            .collect();
        assert_eq!(short.len(), 5);
        assert!(short.iter().all(|p| h264_keyframe_start(&p.payload)));
        assert!(
            out.iter()
                .all(|p| p.payload.len() >= MIN_MEDIA_PAYLOAD || p.payload.len() == STAP_A_LEN)
        );
    }

    #[test]
    fn payloads_carry_their_send_time() {
        let start = epoch() + Duration::from_secs(1);
        let mut g = Generator::new(StreamShape::default(), start);
        let mut out = Vec::new();
        let now = start + Duration::from_millis(100);
        g.due(now, &mut out);
        let stamped: Vec<u64> = out
            .iter()
            .filter_map(|p| payload_stamp(&p.payload, p.track == Track::Video))
            .collect();
        assert_eq!(stamped.len(), out.len() - 1, "all but the STAP-A");
        assert!(stamped.iter().all(|&t| t == stamp(now)));
    }

    #[test]
    fn frames_end_with_marker() {
        let start = Instant::now();
        let mut g = Generator::new(StreamShape::default(), start);
        let mut out = Vec::new();
        g.due(start, &mut out);
        let video: Vec<&Packet> = out.iter().filter(|p| p.track == Track::Video).collect();
        assert!(video.last().unwrap().marker);
        assert_eq!(video.iter().filter(|p| p.marker).count(), 1);
        assert_eq!(g.next_due(), start + Duration::from_millis(20));
    }
}
