//! The idle picture: a short H264 clip looped to the viewers of a room nobody publishes to, so
//! they see "no signal" rather than black, and switch to the live stream at its first keyframe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::h264_packetize::packetize_nal;
use crate::packet::{Codec, MediaPacket, SourceId};

/// The clip made by `scripts/make-idle-clip` (colour bars, "NO SIGNAL", 640x360, 10 fps).
const BUILTIN_CLIP: &[u8] = include_bytes!("../idle/no-signal.h264");
const BUILTIN_FPS: u32 = 10;
/// Largest RTP payload we cut NAL units into.
const MAX_PAYLOAD: usize = 1100;

#[derive(Debug, thiserror::Error)]
pub enum IdleClipError {
    #[error("the clip holds no H264 frames (is it Annex-B?)")]
    NoFrames,
    #[error("the clip does not start with a keyframe")]
    NoKeyframe,
}

/// A clip cut into RTP payloads once, at start-up.
#[derive(Debug)]
pub struct IdleClip {
    frames: Vec<IdleFrame>,
    fps: u32,
}

#[derive(Debug)]
struct IdleFrame {
    payloads: Vec<Bytes>,
    keyframe: bool,
}

impl IdleClip {
    pub fn builtin() -> IdleClip {
        IdleClip::from_annex_b(BUILTIN_CLIP, BUILTIN_FPS).expect("the built-in clip is valid")
    }

    /// Reads an H264 Annex-B stream with one slice per frame; `fps` gives its timing (Annex-B
    /// carries none).
    pub fn from_annex_b(data: &[u8], fps: u32) -> Result<IdleClip, IdleClipError> {
        let mut frames = Vec::new();
        let mut pending: Vec<&[u8]> = Vec::new();
        for nal in annex_b_nal_units(data) {
            let nal_type = nal[0] & 0x1f;
            match nal_type {
                // Access unit delimiters and SEI carry nothing a decoder needs here.
                6 | 9 => {}
                1..=5 => {
                    pending.push(nal);
                    let keyframe = pending.iter().any(|n| n[0] & 0x1f == 5);
                    let mut payloads = Vec::new();
                    for n in pending.drain(..) {
                        payloads.extend(packetize_nal(n, MAX_PAYLOAD).map(Bytes::from));
                    }
                    frames.push(IdleFrame { payloads, keyframe });
                }
                _ => pending.push(nal),
            }
        }
        match frames.first() {
            None => Err(IdleClipError::NoFrames),
            Some(f) if !f.keyframe => Err(IdleClipError::NoKeyframe),
            Some(_) => Ok(IdleClip {
                frames,
                fps: fps.max(1),
            }),
        }
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs(1) / self.fps
    }

    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

/// NAL units of an Annex-B byte stream (start codes 00 00 01 or 00 00 00 01).
fn annex_b_nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // Trailing zeros belong to the next start code (00 00 00 01).
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .filter(|(s, e)| e > s)
        .map(move |(s, e)| &data[s..e])
}

/// Where one room is in the clip.
#[derive(Debug)]
pub struct IdlePlayer {
    frame: usize,
    seq: u64,
    timestamp: u32,
}

impl Default for IdlePlayer {
    fn default() -> Self {
        IdlePlayer {
            frame: 0,
            seq: 1 << 16,
            timestamp: 0,
        }
    }
}

impl IdlePlayer {
    /// Goes back to the clip's first frame (a keyframe), so viewers get a picture at once.
    pub fn restart(&mut self) {
        self.frame = 0;
    }

    /// The packets of the next frame of the loop, stamped `now`.
    pub fn next_frame(&mut self, clip: &IdleClip, now: Instant, out: &mut Vec<Arc<MediaPacket>>) {
        let frame = &clip.frames[self.frame % clip.frames.len()];
        let last = frame.payloads.len().saturating_sub(1);
        for (i, payload) in frame.payloads.iter().enumerate() {
            out.push(Arc::new(MediaPacket {
                source: SourceId::IDLE,
                codec: Codec::H264 { profile: 0x42e0 },
                seq: self.seq,
                timestamp: self.timestamp,
                marker: i == last,
                keyframe_start: frame.keyframe && i == 0,
                arrival: now,
                capture: now,
                payload: payload.clone(),
            }));
            self.seq += 1;
        }
        self.frame = (self.frame + 1) % clip.frames.len();
        self.timestamp = self.timestamp.wrapping_add(90_000 / clip.fps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyframe::h264_keyframe_start;

    #[test]
    fn builtin_clip_is_playable() {
        let clip = IdleClip::builtin();
        assert_eq!(clip.frame_count(), 20);
        let mut player = IdlePlayer::default();
        let mut out = Vec::new();
        player.next_frame(&clip, Instant::now(), &mut out);
        assert!(out[0].keyframe_start);
        assert!(h264_keyframe_start(&out[0].payload));
        assert!(out.last().unwrap().marker);
        assert!(out.iter().all(|p| p.payload.len() <= MAX_PAYLOAD));
        // Sequence numbers continue across frames; timestamps advance one frame.
        let (seq, ts) = (out.last().unwrap().seq, out[0].timestamp);
        out.clear();
        player.next_frame(&clip, Instant::now(), &mut out);
        assert_eq!(out[0].seq, seq + 1);
        assert_eq!(out[0].timestamp, ts + 9000);
    }

    #[test]
    fn splits_annex_b_and_fragments_big_nal_units() {
        let mut data = vec![0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x65];
        data.extend(std::iter::repeat_n(7u8, 3000));
        data.extend([0, 0, 0, 1, 0x41, 9, 9]);
        let clip = IdleClip::from_annex_b(&data, 10).unwrap();
        assert_eq!(clip.frame_count(), 2);
        let key = &clip.frames[0];
        assert!(key.keyframe);
        assert_eq!(&key.payloads[0][..], &[0x67, 1, 2]);
        assert_eq!(&key.payloads[1][..], &[0x68, 3]);
        // 3000 bytes of IDR become FU-A fragments, start and end flagged.
        let fus = &key.payloads[2..];
        assert_eq!(fus.len(), 3);
        assert_eq!(fus[0][0] & 0x1f, 28);
        assert_eq!(fus[0][1], 0x80 | 5);
        assert_eq!(fus[2][1], 0x40 | 5);
        let total: usize = fus.iter().map(|p| p.len() - 2).sum();
        assert_eq!(total, 3000);
        assert!(!clip.frames[1].keyframe);
    }

    #[test]
    fn refuses_clips_without_frames_or_keyframe() {
        assert!(matches!(
            IdleClip::from_annex_b(b"not h264", 10),
            Err(IdleClipError::NoFrames)
        ));
        assert!(matches!(
            IdleClip::from_annex_b(&[0, 0, 1, 0x41, 1], 10),
            Err(IdleClipError::NoKeyframe)
        ));
    }
}
