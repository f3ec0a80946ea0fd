//! A light reading of offers and trickle fragments, for the checks str0m does not make for us:
//! which direction each media section has, which codecs it offers, the ICE credentials.

use crate::error::SessionError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    Audio,
    Video,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn parse(attr: &str) -> Option<Direction> {
        Some(match attr {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    pub fn offerer_sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn offerer_receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// One `m=` section of an offer.
#[derive(Debug, Clone)]
pub struct MediaSection {
    pub kind: SectionKind,
    pub mid: Option<String>,
    pub rejected: bool,
    pub direction: Direction,
    /// (payload type, upper-case encoding name, fmtp parameters)
    pub codecs: Vec<OfferedCodec>,
}

#[derive(Debug, Clone)]
pub struct OfferedCodec {
    pub pt: u8,
    pub name: String,
    pub fmtp: String,
}

impl OfferedCodec {
    /// H264 in packetization-mode 1 (FU-A/STAP-A), the only H264 flavour deadsfu forwards.
    fn is_h264_mode1(&self) -> bool {
        self.name == "H264"
            && self
                .fmtp
                .split(';')
                .any(|kv| kv.trim().eq_ignore_ascii_case("packetization-mode=1"))
    }

    fn supported(&self) -> bool {
        self.is_h264_mode1() || matches!(self.name.as_str(), "VP8" | "VP9" | "AV1" | "OPUS")
    }
}

/// The video codec family a publisher's answer is limited to, best first for viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoFamily {
    H264,
    Vp8,
    Vp9,
    Av1,
}

impl VideoFamily {
    /// The codec a publisher of this family sends (H264's profile is not known yet).
    pub fn codec(self) -> deadsfu_media::Codec {
        use deadsfu_media::Codec;
        match self {
            VideoFamily::H264 => Codec::H264 { profile: 0 },
            VideoFamily::Vp8 => Codec::Vp8,
            VideoFamily::Vp9 => Codec::Vp9,
            VideoFamily::Av1 => Codec::Av1,
        }
    }
}

/// What deadsfu needs to know about an offer before handing it to str0m.
#[derive(Debug, Clone)]
pub struct OfferSummary {
    pub sections: Vec<MediaSection>,
    pub ice_ufrag: Option<String>,
}

impl OfferSummary {
    pub fn parse(sdp: &str) -> Result<OfferSummary, SessionError> {
        let mut lines = sdp.lines().map(|l| l.trim_end_matches('\r'));
        if lines.next() != Some("v=0") {
            return Err(SessionError::BadSdp("an SDP must begin with v=0".into()));
        }
        let mut session_direction = Direction::SendRecv;
        let mut ice_ufrag = None;
        let mut sections: Vec<MediaSection> = Vec::new();
        let mut section_direction: Option<Direction> = None;
        let mut fmtps: Vec<(u8, String)> = Vec::new();

        fn finish(
            sections: &mut [MediaSection],
            dir: Option<Direction>,
            session_dir: Direction,
            fmtps: &mut Vec<(u8, String)>,
        ) {
            if let Some(s) = sections.last_mut() {
                s.direction = dir.unwrap_or(session_dir);
                for (pt, params) in fmtps.drain(..) {
                    if let Some(c) = s.codecs.iter_mut().find(|c| c.pt == pt) {
                        c.fmtp = params;
                    }
                }
            }
        }

        for line in lines {
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(SessionError::BadSdp(format!(
                    "line without '=': {:.40}",
                    line
                )));
            };
            match key {
                "m" => {
                    finish(
                        &mut sections,
                        section_direction.take(),
                        session_direction,
                        &mut fmtps,
                    );
                    let mut parts = value.split_ascii_whitespace();
                    let kind = match parts.next() {
                        Some("audio") => SectionKind::Audio,
                        Some("video") => SectionKind::Video,
                        Some(_) => SectionKind::Other,
                        None => return Err(SessionError::BadSdp("empty m= line".into())),
                    };
                    let port = parts
                        .next()
                        .and_then(|p| p.split('/').next())
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(|| SessionError::BadSdp("m= line without a port".into()))?;
                    if parts.next().is_none() {
                        return Err(SessionError::BadSdp("m= line without a protocol".into()));
                    }
                    sections.push(MediaSection {
                        kind,
                        mid: None,
                        rejected: port == 0,
                        direction: session_direction,
                        codecs: Vec::new(),
                    });
                }
                "a" => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    if let Some(dir) = Direction::parse(name) {
                        if sections.is_empty() {
                            session_direction = dir;
                        } else {
                            section_direction = Some(dir);
                        }
                    } else if name == "mid"
                        && let Some(section) = sections.last_mut()
                    {
                        section.mid = Some(arg.to_owned());
                    } else if name == "ice-ufrag" && ice_ufrag.is_none() {
                        ice_ufrag = Some(arg.to_owned());
                    } else if name == "rtpmap" {
                        let Some(section) = sections.last_mut() else {
                            continue;
                        };
                        let (pt, enc) = arg.split_once(' ').ok_or_else(|| {
                            SessionError::BadSdp(format!("bad rtpmap: {:.40}", arg))
                        })?;
                        let pt = pt.parse::<u8>().map_err(|_| {
                            SessionError::BadSdp(format!("bad rtpmap: {:.40}", arg))
                        })?;
                        let name = enc.split('/').next().unwrap_or("").to_ascii_uppercase();
                        section.codecs.push(OfferedCodec {
                            pt,
                            name,
                            fmtp: String::new(),
                        });
                    } else if name == "fmtp"
                        && let Some((pt, params)) = arg.split_once(' ')
                        && let Ok(pt) = pt.parse::<u8>()
                    {
                        fmtps.push((pt, params.to_owned()));
                    }
                }
                _ => {}
            }
        }
        finish(
            &mut sections,
            section_direction,
            session_direction,
            &mut fmtps,
        );
        if sections.is_empty() {
            return Err(SessionError::BadSdp("no m= sections".into()));
        }
        Ok(OfferSummary {
            sections,
            ice_ufrag,
        })
    }

    /// Audio and video sections that are not rejected.
    pub fn media(&self) -> impl Iterator<Item = &MediaSection> {
        self.sections
            .iter()
            .filter(|s| !s.rejected && s.kind != SectionKind::Other)
    }

    /// Checks a WHIP offer: something is sent, and in a codec we forward. Returns the video
    /// family the answer should be limited to (`None`: audio only).
    pub fn check_publish(&self) -> Result<Option<VideoFamily>, SessionError> {
        let sending: Vec<_> = self
            .media()
            .filter(|s| s.direction.offerer_sends())
            .collect();
        if sending.is_empty() {
            return Err(SessionError::Unsupported(
                "a WHIP offer must have a sendonly or sendrecv audio or video section".into(),
            ));
        }
        if !sending
            .iter()
            .any(|s| s.codecs.iter().any(OfferedCodec::supported))
        {
            return Err(SessionError::Unsupported(
                "no common codec: deadsfu takes H264 (packetization-mode=1), VP8, VP9, AV1 and Opus"
                    .into(),
            ));
        }
        let video: Vec<&OfferedCodec> = sending
            .iter()
            .filter(|s| s.kind == SectionKind::Video)
            .flat_map(|s| s.codecs.iter())
            .collect();
        let family = if video.iter().any(|c| c.is_h264_mode1()) {
            Some(VideoFamily::H264)
        } else if video.iter().any(|c| c.name == "VP8") {
            Some(VideoFamily::Vp8)
        } else if video.iter().any(|c| c.name == "VP9") {
            Some(VideoFamily::Vp9)
        } else if video.iter().any(|c| c.name == "AV1") {
            Some(VideoFamily::Av1)
        } else {
            None
        };
        Ok(family)
    }

    /// Checks a WHEP offer: something is received, in a codec we forward.
    pub fn check_view(&self) -> Result<(), SessionError> {
        let receiving: Vec<_> = self
            .media()
            .filter(|s| s.direction.offerer_receives())
            .collect();
        if receiving.is_empty() {
            return Err(SessionError::Unsupported(
                "a WHEP offer must have a recvonly or sendrecv audio or video section".into(),
            ));
        }
        if !receiving
            .iter()
            .any(|s| s.codecs.iter().any(OfferedCodec::supported))
        {
            return Err(SessionError::Unsupported(
                "no common codec: deadsfu sends H264 (packetization-mode=1), VP8, VP9, AV1 and Opus"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Upper-case names of the codecs the offerer can receive.
    pub fn receivable_codecs(&self) -> Vec<String> {
        self.media()
            .filter(|s| s.direction.offerer_receives())
            .flat_map(|s| s.codecs.iter())
            .filter(|c| c.supported())
            .map(|c| c.name.clone())
            .collect()
    }
}

/// A trickle-ice-sdpfrag (RFC 8840) body of a PATCH.
#[derive(Debug, Default)]
pub struct TrickleFragment {
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    /// `candidate:...` attribute values.
    pub candidates: Vec<String>,
}

impl TrickleFragment {
    pub fn parse(body: &str) -> Result<TrickleFragment, SessionError> {
        let mut frag = TrickleFragment::default();
        for line in body.lines().map(|l| l.trim_end_matches('\r')) {
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(SessionError::BadSdp(format!(
                    "line without '=': {:.40}",
                    line
                )));
            };
            if key != "a" {
                continue;
            }
            if let Some(u) = value.strip_prefix("ice-ufrag:") {
                frag.ice_ufrag = Some(u.to_owned());
            } else if let Some(p) = value.strip_prefix("ice-pwd:") {
                frag.ice_pwd = Some(p.to_owned());
            } else if value.starts_with("candidate:") {
                frag.candidates.push(value.to_owned());
            }
        }
        Ok(frag)
    }
}

#[cfg(test)]
#[path = "sdp_tests.rs"]
mod tests;
