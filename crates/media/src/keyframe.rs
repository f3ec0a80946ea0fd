//! Does this RTP payload start a keyframe? Viewers that join or switch source wait for one,
//! because a decoder cannot start from a delta frame.

use crate::packet::Codec;

/// True when `payload` is the first packet of a keyframe (or carries the parameter sets that
/// precede one). Codecs we cannot inspect report `true` so that they are never held back.
pub fn is_keyframe_start(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::H264 { .. } => h264_keyframe_start(payload),
        Codec::Vp8 => vp8_keyframe_start(payload),
        Codec::Vp9 => vp9_keyframe_start(payload),
        Codec::Av1 | Codec::Opus => true,
    }
}

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

fn h264_starts_picture(nal_type: u8) -> bool {
    nal_type == H264_IDR || nal_type == H264_SPS
}

/// Whether this H264 RTP payload (RFC 6184) starts a keyframe, i.e. a decoder may begin here.
/// It does when it carries the beginning of an IDR slice (NAL type 5) or of an SPS (type 7),
/// in any packetization form:
///
/// - a single NAL unit packet holding an IDR slice or an SPS;
/// - a STAP-A aggregate holding an IDR slice or an SPS anywhere in it;
/// - the start fragment (S bit set) of an FU-A of an IDR slice (or of an SPS).
///
/// A PPS alone does not count: encoders send it after the SPS, and counting it would cut a
/// keyframe's GOP between its SPS and PPS. Anything else (delta slices, non-start FU-A
/// fragments, SEI, truncated or empty payloads) is `false`; malformed input never panics.
pub fn h264_keyframe_start(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        t @ 1..=23 => h264_starts_picture(t),
        H264_STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                if size == 0 || rest.len() < 2 + size {
                    return false;
                }
                if h264_starts_picture(rest[2] & 0x1f) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        H264_FU_A => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && h264_starts_picture(fu & 0x1f)),
        _ => false,
    }
}

/// RFC 7741: the payload descriptor, then the VP8 frame header whose P bit is 0 on keyframes.
pub fn vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    let start_of_partition = b0 & 0x10 != 0;
    let partition_id = b0 & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = payload.get(i) else {
            return false;
        };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits depending on its M bit.
            let Some(&pid) = payload.get(i) else {
                return false;
            };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    payload.get(i).is_some_and(|&h| h & 0x01 == 0)
}

/// VP9 payload descriptor (draft-ietf-payload-vp9): a keyframe is a non-inter-predicted (P=0)
/// start of frame (B=1).
pub fn vp9_keyframe_start(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|&b| b & 0x40 == 0 && b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_single_nal() {
        assert!(h264_keyframe_start(&[0x65, 0x88]));
        assert!(h264_keyframe_start(&[0x67, 0x42]));
        assert!(h264_keyframe_start(&[0x25, 0x88])); // IDR with a lower NRI
        assert!(!h264_keyframe_start(&[0x41, 0x9a]));
        assert!(!h264_keyframe_start(&[0x06, 0x05])); // SEI
        assert!(!h264_keyframe_start(&[0x09, 0xf0])); // access unit delimiter
        assert!(!h264_keyframe_start(&[0x68, 0xce])); // PPS alone does not start a picture
        assert!(!h264_keyframe_start(&[]));
    }

    #[test]
    fn h264_stap_a() {
        // STAP-A holding SPS (3 bytes) and PPS (2 bytes).
        let stap = [0x78, 0, 3, 0x67, 0x42, 0x00, 0, 2, 0x68, 0xce];
        assert!(h264_keyframe_start(&stap));
        // STAP-A holding only delta NALs.
        let stap = [0x78, 0, 2, 0x41, 0x00, 0, 2, 0x41, 0x01];
        assert!(!h264_keyframe_start(&stap));
        // The SPS need not be the first unit (an AUD may precede it).
        assert!(h264_keyframe_start(&[0x78, 0, 1, 0x09, 0, 2, 0x67, 0x42]));
        // IDR inside the aggregate.
        assert!(h264_keyframe_start(&[0x78, 0, 2, 0x65, 0x88]));
        // Truncated aggregates must not panic.
        assert!(!h264_keyframe_start(&[0x78, 0, 9, 0x67]));
        assert!(!h264_keyframe_start(&[0x78, 0]));
        assert!(!h264_keyframe_start(&[0x78]));
    }

    #[test]
    fn h264_fu_a() {
        assert!(h264_keyframe_start(&[0x7c, 0x85, 0x88])); // start of IDR
        assert!(!h264_keyframe_start(&[0x7c, 0x05, 0x88])); // middle of IDR
        assert!(!h264_keyframe_start(&[0x7c, 0x81, 0x9a])); // start of non-IDR
        assert!(!h264_keyframe_start(&[0x7c, 0x45, 0x88])); // end of IDR
        assert!(h264_keyframe_start(&[0x7c, 0x87, 0x42])); // start of a (rare) fragmented SPS
        assert!(!h264_keyframe_start(&[0x7c]));
    }

    #[test]
    fn vp8() {
        // S=1, PID=0, no extension; frame header P bit 0 => keyframe.
        assert!(vp8_keyframe_start(&[0x10, 0x50, 0x2a]));
        assert!(!vp8_keyframe_start(&[0x10, 0x51, 0x2a]));
        // Not a start of partition.
        assert!(!vp8_keyframe_start(&[0x00, 0x50]));
        // X=1, I=1 with a 15-bit picture id, then the frame header.
        assert!(vp8_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x50]));
        assert!(!vp8_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x51]));
        assert!(!vp8_keyframe_start(&[0x90, 0x80]));
    }

    #[test]
    fn vp9() {
        assert!(vp9_keyframe_start(&[0x08]));
        assert!(!vp9_keyframe_start(&[0x48]));
        assert!(!vp9_keyframe_start(&[0x00]));
    }
}
