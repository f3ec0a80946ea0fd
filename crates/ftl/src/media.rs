//! Media as the FTL ingest hands it to the rest of deadsfu.

use std::time::Instant;

use bytes::Bytes;

/// Which track a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// H264, 90 kHz clock.
    Video,
    /// Opus, 48 kHz clock.
    Audio,
}

/// One received RTP media packet of an FTL stream, header fields parsed, payload shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtlMedia {
    pub kind: MediaKind,
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// The RTP payload (H264 NAL unit / FU-A fragment, or one Opus packet).
    pub payload: Bytes,
    /// Whether this video packet starts a keyframe (SPS, PPS or the start of an IDR slice).
    pub keyframe_start: bool,
    /// True for a packet that arrived after being NACKed (it may be out of order).
    pub retransmitted: bool,
    pub received_at: Instant,
}

/// H264 NAL unit types that matter here.
mod nal_type {
    pub const IDR: u8 = 5;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const STAP_A: u8 = 24;
    pub const FU_A: u8 = 28;
}

/// Whether an H264 RTP payload (RFC 6184) carries the start of a keyframe: an SPS, a PPS or
/// the first fragment of an IDR slice. ftl-sdk sends SPS, PPS and IDR as separate packets and
/// starts every stream at an SPS.
pub fn h264_keyframe_start(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        nal_type::IDR | nal_type::SPS | nal_type::PPS => true,
        nal_type::FU_A => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && fu & 0x1f == nal_type::IDR),
        nal_type::STAP_A => {
            // Not sent by ftl-sdk, but cheap to accept from other clients.
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + len) else {
                    return false;
                };
                if matches!(
                    nal.first().map(|b| b & 0x1f),
                    Some(nal_type::IDR | nal_type::SPS)
                ) {
                    return true;
                }
                rest = &rest[2 + len..];
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_keyframe_starts() {
        assert!(h264_keyframe_start(&[0x67, 0x42]));
        assert!(h264_keyframe_start(&[0x68, 0xce]));
        assert!(h264_keyframe_start(&[0x65, 0x88]));
        assert!(h264_keyframe_start(&[0x7c, 0x85, 0x88])); // FU-A start of IDR
        assert!(!h264_keyframe_start(&[0x7c, 0x05, 0x88])); // FU-A middle of IDR
        assert!(!h264_keyframe_start(&[0x7c, 0x81, 0x88])); // FU-A start of non-IDR
        assert!(!h264_keyframe_start(&[0x41, 0x9a])); // P slice
        assert!(!h264_keyframe_start(&[]));
        assert!(!h264_keyframe_start(&[0x7c]));
        assert!(h264_keyframe_start(&[0x78, 0, 1, 0x09, 0, 2, 0x67, 0x42]));
        assert!(!h264_keyframe_start(&[0x78, 0, 9, 0x67]));
    }
}
