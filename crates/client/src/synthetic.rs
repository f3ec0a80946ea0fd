//! A synthetic live stream: RTP payloads shaped like H264 or VP8 video (with real keyframe
//! markers, so an SFU's keyframe logic sees the real thing) and Opus-sized audio.
//!
//! [`h264_access_unit`] is also what the load generator (`deadsfu-loadtest`) builds its frames
//! with; it fills the bodies with send timestamps instead of a constant byte.

use std::sync::Arc;
use std::time::Duration;

use deadsfu_media::h264_packetize::{fragments, write_stap_a};

/// SPS and PPS (constrained baseline) that open every synthetic keyframe.
const SPS: [u8; 7] = [0x67, 0x42, 0xe0, 0x1f, 0x8c, 0x8d, 0x40];
const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];
/// Length of the STAP-A (SPS + PPS) payload that opens every synthetic keyframe.
pub const STAP_A_LEN: usize = 1 + 2 + SPS.len() + 2 + PPS.len();

/// One synthetic H264 access unit as RTP payloads, handed to `emit` with their marker bits:
/// before an IDR, a STAP-A with SPS and PPS (as encoders send them); then one slice NAL unit
/// of `slice_len` bytes, IDR or not, packetized by [`deadsfu_media::h264_packetize`] into
/// payloads of at most `max_payload` bytes. Only headers are real: `fill_body(payload, len)`
/// appends the `len` bytes of slice content each payload carries after its headers.
pub fn h264_access_unit(
    keyframe: bool,
    slice_len: usize,
    max_payload: usize,
    mut fill_body: impl FnMut(&mut Vec<u8>, usize),
    mut emit: impl FnMut(Vec<u8>, bool),
) {
    if keyframe {
        let mut stap = Vec::with_capacity(STAP_A_LEN);
        write_stap_a(&[&SPS, &PPS], &mut stap);
        emit(stap, false);
    }
    let nal_header = if keyframe { 0x65 } else { 0x41 };
    let slice_len = slice_len.max(2);
    for fragment in fragments(nal_header, slice_len, max_payload) {
        let mut payload = Vec::with_capacity(fragment.len());
        payload.extend_from_slice(fragment.prefix());
        let mut body = fragment.body.len();
        if fragment.body.start == 0 {
            // A single NAL unit packet: its body starts with the NAL header.
            payload.push(nal_header);
            body -= 1;
        }
        fill_body(&mut payload, body);
        emit(payload, fragment.last);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Vp8,
}

#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub codec: VideoCodec,
    pub bitrate_bps: u32,
    pub fps: u32,
    /// Frames between keyframes.
    pub keyframe_interval: u32,
    /// Largest RTP payload.
    pub max_payload: usize,
    /// Byte the payloads are filled with, so a viewer can tell streams apart.
    pub fill: u8,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            codec: VideoCodec::H264,
            bitrate_bps: 500_000,
            fps: 30,
            keyframe_interval: 30,
            max_payload: 1100,
            fill: 0xab,
        }
    }
}

/// One RTP payload of a video frame.
#[derive(Debug, Clone)]
pub struct VideoPacket {
    pub payload: Arc<[u8]>,
    pub marker: bool,
}

impl StreamSpec {
    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs(1) / self.fps.max(1)
    }

    pub fn ticks_per_frame(&self) -> u32 {
        90_000 / self.fps.max(1)
    }

    /// The packets of frame number `n`.
    pub fn video_frame(&self, n: u64) -> Vec<VideoPacket> {
        let keyframe = n.is_multiple_of(self.keyframe_interval.max(1) as u64);
        let mut size = (self.bitrate_bps / 8 / self.fps.max(1)) as usize;
        if keyframe {
            size *= 3;
        }
        let size = size.max(16);
        match self.codec {
            VideoCodec::H264 => self.h264_frame(keyframe, size),
            VideoCodec::Vp8 => self.vp8_frame(keyframe, size),
        }
    }

    fn h264_frame(&self, keyframe: bool, size: usize) -> Vec<VideoPacket> {
        let mut out = Vec::new();
        h264_access_unit(
            keyframe,
            size,
            self.max_payload,
            |payload, len| payload.resize(payload.len() + len, self.fill),
            |payload, marker| {
                out.push(VideoPacket {
                    payload: payload.into(),
                    marker,
                })
            },
        );
        out
    }

    fn vp8_frame(&self, keyframe: bool, size: usize) -> Vec<VideoPacket> {
        let chunk = self.max_payload - 1;
        let pieces = size.div_ceil(chunk).max(1);
        (0..pieces)
            .map(|i| {
                let end = i + 1 == pieces;
                let mut p = Vec::with_capacity(chunk + 1);
                // Payload descriptor: S=1 and partition 0 on the first packet only.
                p.push(if i == 0 { 0x10 } else { 0x00 });
                if i == 0 {
                    // Frame header: P bit clear on keyframes.
                    p.push(if keyframe { 0x50 } else { 0x51 });
                }
                let len = if end { size - chunk * i } else { chunk };
                p.resize(len.max(2) + 1, self.fill);
                VideoPacket {
                    payload: p.into(),
                    marker: end,
                }
            })
            .collect()
    }
}

/// One 20 ms Opus packet's worth of bytes (the content is not real Opus).
pub fn audio_payload() -> Arc<[u8]> {
    let mut p = vec![0xfcu8];
    p.resize(120, 0xff);
    p.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadsfu_media::keyframe::h264_keyframe_start;

    #[test]
    fn h264_keyframe_opens_with_parameter_sets_and_fragments_big_slices() {
        let spec = StreamSpec::default();
        let key = spec.video_frame(0);
        assert_eq!(key[0].payload.len(), STAP_A_LEN);
        assert!(h264_keyframe_start(&key[0].payload));
        assert!(h264_keyframe_start(&key[1].payload));
        assert!(key[1..].iter().all(|p| p.payload.len() <= spec.max_payload));
        assert_eq!(key.iter().filter(|p| p.marker).count(), 1);
        assert!(key.last().unwrap().marker);
        assert_eq!(*key.last().unwrap().payload.last().unwrap(), spec.fill);
        let delta = spec.video_frame(1);
        assert!(!delta.iter().any(|p| h264_keyframe_start(&p.payload)));
        let bytes: usize = delta.iter().map(|p| p.payload.len()).sum();
        // The slice's bytes plus two bytes of FU-A headers per fragment, minus its NAL header.
        assert_eq!(bytes, 500_000 / 8 / 30 - 1 + 2 * delta.len());
    }
}
