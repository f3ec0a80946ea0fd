//! A synthetic live stream: RTP payloads shaped like H264 or VP8 video (with real keyframe
//! markers, so an SFU's keyframe logic sees the real thing) and Opus-sized audio.

use std::sync::Arc;
use std::time::Duration;

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
        if keyframe {
            // STAP-A with SPS and PPS, as encoders send before an IDR.
            let sps = [0x67u8, 0x42, 0xe0, 0x1f, 0x8c, 0x8d, 0x40];
            let pps = [0x68u8, 0xce, 0x3c, 0x80];
            let mut stap = vec![0x78u8];
            for nal in [&sps[..], &pps[..]] {
                stap.extend((nal.len() as u16).to_be_bytes());
                stap.extend_from_slice(nal);
            }
            out.push(VideoPacket {
                payload: stap.into(),
                marker: false,
            });
        }
        let nal_type = if keyframe { 5u8 } else { 1u8 };
        let nal_header = 0x60 | nal_type;
        let chunk = self.max_payload - 2;
        let pieces = size.div_ceil(chunk);
        if pieces <= 1 {
            let mut p = vec![nal_header];
            p.resize(size, self.fill);
            out.push(VideoPacket {
                payload: p.into(),
                marker: true,
            });
            return out;
        }
        for i in 0..pieces {
            let start = i == 0;
            let end = i + 1 == pieces;
            let len = if end { size - chunk * i } else { chunk };
            let mut p = Vec::with_capacity(len + 2);
            p.push(0x60 | 28); // FU-A indicator
            p.push((if start { 0x80 } else { 0 }) | (if end { 0x40 } else { 0 }) | nal_type);
            p.resize(len + 2, self.fill);
            out.push(VideoPacket {
                payload: p.into(),
                marker: end,
            });
        }
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
