//! A received RTP packet in the form that is shared by every viewer of a room.

use std::time::Instant;

use bytes::Bytes;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

/// The codecs deadsfu forwards. The publisher's payload type is mapped to one of these on
/// ingest and back to each viewer's own payload type on egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H264 with packetization-mode 1; `profile` is the profile_idc and constraint byte
    /// (the first two bytes of profile-level-id), used to prefer an exact match.
    H264 {
        profile: u16,
    },
    Vp8,
    Vp9,
    Av1,
    Opus,
}

impl Codec {
    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            _ => 90_000,
        }
    }

    /// Whether `self` (what a viewer negotiated) can carry packets of `other` (what the
    /// publisher sends). H264 profiles are not compared: decoders take any of the common ones.
    pub fn carries(self, other: Codec) -> bool {
        matches!(
            (self, other),
            (Codec::H264 { .. }, Codec::H264 { .. })
                | (Codec::Vp8, Codec::Vp8)
                | (Codec::Vp9, Codec::Vp9)
                | (Codec::Av1, Codec::Av1)
                | (Codec::Opus, Codec::Opus)
        )
    }

    /// A small number for the codec, for keeping it in an atomic (0 is "none").
    pub fn code(self) -> u8 {
        match self {
            Codec::H264 { .. } => 1,
            Codec::Vp8 => 2,
            Codec::Vp9 => 3,
            Codec::Av1 => 4,
            Codec::Opus => 5,
        }
    }

    /// The name of the codec with this [`Codec::code`].
    pub fn name_of_code(code: u8) -> Option<&'static str> {
        Some(match code {
            1 => "H264",
            2 => "VP8",
            3 => "VP9",
            4 => "AV1",
            5 => "opus",
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 { .. } => "H264",
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::Av1 => "AV1",
            Codec::Opus => "opus",
        }
    }
}

/// Identifies one ingest (one publisher session). A viewer that sees a new `SourceId` knows the
/// publisher changed and re-anchors its rewriting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(pub u64);

impl SourceId {
    /// The "no signal" clip a room shows while nobody publishes.
    pub const IDLE: SourceId = SourceId(0);

    pub fn is_idle(self) -> bool {
        self == SourceId::IDLE
    }
}

/// One RTP packet as received from a publisher, immutable and shared (`Arc`) by all viewers.
#[derive(Debug)]
pub struct MediaPacket {
    pub source: SourceId,
    pub codec: Codec,
    /// Extended (rollover-counted) sequence number from the publisher.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// First packet of a keyframe: a viewer waiting for a decodable start may begin here.
    pub keyframe_start: bool,
    pub arrival: Instant,
    /// When the sample was captured, in local time (from the publisher's sender reports when
    /// it sends them, else `arrival`): the wallclock viewers' sender reports are built from.
    pub capture: Instant,
    /// Shared by every viewer and worker (one reference count each), never copied: from FTL a
    /// slice of the datagram it arrived in, from WebRTC str0m's own buffer.
    pub payload: Bytes,
}

impl MediaPacket {
    pub fn kind(&self) -> MediaKind {
        self.codec.kind()
    }
}
