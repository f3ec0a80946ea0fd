//! Mapping between str0m's negotiated payload types and deadsfu's codec identities.

use deadsfu_media::Codec;
use str0m::Rtc;
use str0m::format::{Codec as SdpCodec, CodecSpec};
use str0m::media::{Mid, Pt};

pub(crate) fn codec_of_spec(spec: &CodecSpec) -> Option<Codec> {
    Some(match spec.codec {
        SdpCodec::H264 => {
            if spec.format.packetization_mode == Some(0) {
                return None;
            }
            let profile = spec.format.profile_level_id.unwrap_or(0x42e01f) >> 8;
            Codec::H264 {
                profile: profile as u16,
            }
        }
        SdpCodec::Vp8 => Codec::Vp8,
        SdpCodec::Vp9 => Codec::Vp9,
        SdpCodec::Av1 => Codec::Av1,
        SdpCodec::Opus => Codec::Opus,
        _ => return None,
    })
}

/// The payload types negotiated for `mid`, with the codec each one carries.
pub(crate) fn negotiated_pts(rtc: &Rtc, mid: Mid) -> Vec<(Pt, Codec)> {
    let Some(media) = rtc.media(mid) else {
        return Vec::new();
    };
    let remote = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| remote.contains(&p.pt()))
        .filter_map(|p| codec_of_spec(&p.spec()).map(|c| (p.pt(), c)))
        .collect()
}

/// The payload type a viewer should use for packets in `codec`, preferring an exact match
/// (same H264 profile) over a merely compatible one.
pub(crate) fn viewer_pt(pts: &[(Pt, Codec)], codec: Codec) -> Option<Pt> {
    pts.iter()
        .find(|(_, c)| *c == codec)
        .or_else(|| pts.iter().find(|(_, c)| c.carries(codec)))
        .map(|(pt, _)| *pt)
}
