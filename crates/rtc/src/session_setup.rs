//! A new session's set-up, done on the caller's thread rather than a media worker's: the str0m
//! peer is built and the SDP answer written here, so a storm of joins costs the workers nothing
//! but taking in the finished sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::{MediaKind, Room};
use str0m::media::Mid;
use str0m::{Candidate, Rtc};

use crate::egress::ViewerEgress;
use crate::error::SessionError;
use crate::sdp::{OfferSummary, SectionKind, VideoFamily};
use crate::session::{Publisher, Role, Session, SessionKind};
use crate::shared::Shared;

/// str0m's report interval for viewers: never (deadsfu sends their reports).
const NO_REPORTS: Duration = Duration::from_secs(1 << 30);

pub(crate) struct SessionRequest {
    pub id: Arc<str>,
    pub serial: u64,
    pub kind: SessionKind,
    pub room: Arc<Room>,
    pub offer: str0m::change::SdpOffer,
    pub summary: OfferSummary,
    pub video_family: Option<VideoFamily>,
}

/// Builds the session for `req`, to live on the worker whose socket has `local_port`; returns
/// it with the SDP answer.
pub(crate) fn prepare_session(
    shared: &Shared,
    local_port: u16,
    req: SessionRequest,
    now: Instant,
) -> Result<(Session, String), SessionError> {
    let builder = Rtc::builder()
        .set_crypto_provider(crate::dtls_tap::crypto_provider())
        .set_rtp_mode(true)
        .set_ice_lite(true)
        .set_stats_interval(Some(Duration::from_secs(5)))
        .clear_codecs()
        .enable_opus(true, false);
    let builder = match (req.kind, req.video_family) {
        (SessionKind::Viewer, _) => builder
            .enable_h264(true)
            .enable_vp8(true)
            .enable_vp9(true)
            .enable_av1(true),
        (SessionKind::Publisher, Some(VideoFamily::H264)) => builder.enable_h264(true),
        (SessionKind::Publisher, Some(VideoFamily::Vp8)) => builder.enable_vp8(true),
        (SessionKind::Publisher, Some(VideoFamily::Vp9)) => builder.enable_vp9(true),
        (SessionKind::Publisher, Some(VideoFamily::Av1)) => builder.enable_av1(true),
        (SessionKind::Publisher, None) => builder,
    };
    let builder = match &shared.dtls_cert {
        Some(cert) => builder.set_dtls_cert(cert.clone()),
        None => builder,
    };
    // Viewers' media does not pass through str0m (see `egress.rs`): its send buffers stay
    // empty, and their RTCP (NACKs) comes to us as raw packets. str0m's sender reports would be
    // wrong (it has sent nothing) and are ours to send, and nobody reads its statistics: both
    // off, which also saves memory per viewer.
    let builder = if req.kind == SessionKind::Viewer {
        builder
            .set_send_buffer_video(1)
            .set_send_buffer_audio(1)
            .enable_raw_packets(true)
            .set_stats_interval(None)
            .set_rtcp_report_interval_audio(NO_REPORTS)
            .set_rtcp_report_interval_video(NO_REPORTS)
    } else {
        builder
    };
    let mut rtc = builder.build(now);
    for ip in &shared.config.ice_hosts {
        let addr = SocketAddr::new(*ip, local_port);
        match Candidate::host(addr, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => tracing::warn!(%addr, error = %e, "unusable ICE host address"),
        }
    }
    let answer = rtc.sdp_api().accept_offer(req.offer).map_err(|e| {
        tracing::debug!(error = %e, "offer not answered");
        SessionError::Unsupported("the offer cannot be answered".into())
    })?;

    let mids: Vec<(MediaKind, Mid)> = req
        .summary
        .media()
        .filter(|s| match req.kind {
            SessionKind::Publisher => s.direction.offerer_sends(),
            SessionKind::Viewer => s.direction.offerer_receives(),
        })
        .filter_map(|s| {
            let kind = match s.kind {
                SectionKind::Audio => MediaKind::Audio,
                SectionKind::Video => MediaKind::Video,
                SectionKind::Other => return None,
            };
            Some((kind, Mid::from(s.mid.as_deref()?)))
        })
        .collect();

    let role = match req.kind {
        SessionKind::Publisher => {
            let video_mid = mids
                .iter()
                .find(|(k, _)| *k == MediaKind::Video)
                .map(|(_, m)| *m);
            Role::Publisher(Publisher::new(
                req.serial,
                video_mid,
                shared.config.keyframe_request_interval,
            ))
        }
        SessionKind::Viewer => {
            let egress = ViewerEgress::new(&mut rtc, &mids, now);
            if !egress.has_tracks() {
                return Err(SessionError::Unsupported(
                    "no audio or video section could be answered".into(),
                ));
            }
            Role::Viewer(Box::new(egress))
        }
    };
    let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
    let session = Session::new(req.id, req.serial, rtc, req.room, role, local_ufrag, now);
    Ok((session, answer.to_sdp_string()))
}
