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
    /// Whether this video packet starts a keyframe, as [`deadsfu_media::keyframe::h264_keyframe_start`]
    /// defines it (an SPS, or the start of an IDR slice).
    pub keyframe_start: bool,
    /// True for a packet that arrived after being NACKed (it may be out of order).
    pub retransmitted: bool,
    pub received_at: Instant,
}
