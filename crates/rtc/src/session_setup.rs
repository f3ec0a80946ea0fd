//! A new session's set-up, done off the media workers: the SDP answer is written on the
//! caller's thread, by a str0m peer that is then dropped or, for a viewer whose offer has a
//! known shape, from a template (`answer_template.rs`); the session keeps a [`PeerRecipe`]
//! until the client's first check proves it knows the session's ICE password, when
//! [`build_peer`] makes the peer (on a handshake thread, `handshakes.rs`, where it also
//! connects) as the answer promised it: a viewer's with str0m's direct API, without SDP, a
//! publisher's from its offer. So a storm of joins costs the workers little more than checking
//! first checks and taking in connected peers, and a flood of offers that never connect holds
//! a few KiB each, not a peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::{MediaKind, Room};
use str0m::change::SdpOffer;
use str0m::config::CryptoProvider;
use str0m::media::Mid;
use str0m::rtp::Ssrc;
use str0m::{Candidate, IceCreds, Rtc};

use crate::answer_template::{AnswerTemplate, Answered, Filled};
use crate::answered_formats::OfferToAnswer;
use crate::egress::ViewerEgress;
use crate::error::SessionError;
use crate::sdp::{OfferSummary, SectionKind, VideoFamily};
use crate::session::{
    DirectPeer, MAX_TRICKLED, Peer, PeerRecipe, Publisher, Role, Session, SessionKind,
};
use crate::shared::Shared;

/// str0m's report interval for viewers: never (deadsfu sends their reports).
const NO_REPORTS: Duration = Duration::from_secs(1 << 30);

pub(crate) struct SessionRequest {
    pub id: Arc<str>,
    pub serial: u64,
    pub kind: SessionKind,
    pub room: Arc<Room>,
    pub offer: OfferToAnswer,
    /// The offer as the client sent it.
    pub offer_sdp: Box<str>,
    pub summary: OfferSummary,
    pub video_family: Option<VideoFamily>,
}

/// A str0m peer configured for a session of `kind` on the worker whose socket has
/// `local_port`, with DTLS from `crypto`.
fn new_rtc(
    shared: &Shared,
    local_port: u16,
    kind: SessionKind,
    video_family: Option<VideoFamily>,
    crypto: Arc<CryptoProvider>,
    now: Instant,
) -> Rtc {
    let builder = Rtc::builder()
        .set_crypto_provider(crypto)
        .set_rtp_mode(true)
        .set_ice_lite(true)
        .set_stats_interval(Some(Duration::from_secs(5)))
        .clear_codecs()
        .enable_opus(true, false);
    let builder = match (kind, video_family) {
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
    let builder = if kind == SessionKind::Viewer {
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
    rtc
}

/// Builds the peer of a session whose answer was sent, as the answer promised it: the same
/// ICE credentials and send streams, DTLS with the same certificate.
pub(crate) fn build_peer(
    shared: &Shared,
    local_port: u16,
    recipe: PeerRecipe,
    now: Instant,
) -> Result<Rtc, SessionError> {
    let crypto = crate::dtls_tap::crypto_provider();
    let mut rtc = new_rtc(
        shared,
        local_port,
        recipe.kind,
        recipe.video_family,
        crypto,
        now,
    );
    rtc.direct_api().set_local_ice_credentials(recipe.local);
    if let Some(direct) = recipe.direct {
        let mut api = rtc.direct_api();
        api.set_remote_ice_credentials(recipe.remote.unwrap_or(direct.remote));
        api.set_remote_fingerprint(direct.fingerprint);
        for (mid, kind) in direct.media {
            api.declare_media(mid, kind);
        }
        for (mid, ssrc, rtx) in recipe.send_streams {
            api.declare_stream_tx(ssrc, rtx, mid, None);
        }
        // The answer said a=setup:passive: the client starts the handshake.
        api.start_dtls(false).map_err(|e| {
            tracing::warn!(error = %e, "DTLS not started");
            SessionError::Unavailable
        })?;
        for c in recipe.remote_candidates {
            rtc.add_remote_candidate(c);
        }
        return Ok(rtc);
    }
    // It was parsed and answered once already: a failure now is ours.
    let unanswerable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "an answered offer could not be taken again");
        SessionError::Unavailable
    };
    let offer = SdpOffer::from_sdp_string(&recipe.offer).map_err(|e| unanswerable(&e))?;
    rtc.sdp_api()
        .accept_offer(offer)
        .map_err(|e| unanswerable(&e))?;
    for (mid, ssrc, rtx) in recipe.send_streams {
        if rtc.media(mid).is_none() {
            continue;
        }
        let mut api = rtc.direct_api();
        let made = api.stream_tx_by_mid(mid, None).map(|s| s.ssrc());
        if made != Some(ssrc) {
            if let Some(made) = made {
                api.remove_stream_tx(made);
            }
            api.declare_stream_tx(ssrc, rtx, mid, None);
        }
    }
    if let Some(remote) = recipe.remote {
        rtc.direct_api().set_remote_ice_credentials(remote);
    }
    for c in recipe.remote_candidates {
        rtc.add_remote_candidate(c);
    }
    Ok(rtc)
}

/// The offer's audio and video sections a session of `kind` is answered on (sending for a
/// publisher, receiving for a viewer): kind and mid.
fn answered_mids(summary: &OfferSummary, kind: SessionKind) -> Vec<(MediaKind, Mid)> {
    summary
        .media()
        .filter(|s| match kind {
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
        .collect()
}

/// What a viewer's peer needs of `offer` to be built without SDP, for the answered media
/// `mids`, and the candidates the offer carries; None if the offer lacks any of it (the peer
/// is then built from the offer).
fn direct_peer(
    offer: &str,
    answer: &str,
    mids: &[(MediaKind, Mid)],
    send_streams: &[(Mid, Ssrc, Option<Ssrc>)],
) -> Option<(DirectPeer, Vec<Candidate>)> {
    // The built peer waits for the client's DTLS handshake, as an answer of a=setup:passive
    // says (the answer to an offer of actpass or active).
    let passive = answer
        .lines()
        .any(|l| l.trim_end_matches('\r') == "a=setup:passive");
    let active = answer
        .lines()
        .any(|l| l.trim_end_matches('\r') == "a=setup:active");
    if !passive || active {
        return None;
    }
    let value = |prefix: &str| {
        offer
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
    };
    let remote = IceCreds {
        ufrag: value("a=ice-ufrag:")?.trim().to_owned(),
        pass: value("a=ice-pwd:")?.trim().to_owned(),
    };
    let fingerprint = value("a=fingerprint:")?.trim().parse().ok()?;
    let media = mids
        .iter()
        .filter(|(_, mid)| send_streams.iter().any(|(m, _, _)| m == mid))
        .map(|&(kind, mid)| {
            let kind = match kind {
                MediaKind::Audio => str0m::media::MediaKind::Audio,
                MediaKind::Video => str0m::media::MediaKind::Video,
            };
            (mid, kind)
        })
        .collect();
    let candidates = offer
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .filter_map(|l| Candidate::from_sdp_string(l).ok())
        .take(MAX_TRICKLED)
        .collect();
    let direct = DirectPeer {
        remote,
        fingerprint,
        media,
    };
    Some((direct, candidates))
}

/// Answers the offer of `req` for the worker whose socket has `local_port`; returns the
/// session, parked (see [`PeerRecipe`]), with the SDP answer.
pub(crate) fn prepare_session(
    shared: &Shared,
    local_port: u16,
    mut req: SessionRequest,
    now: Instant,
) -> Result<(Session, String), SessionError> {
    let offer_mids: Vec<Option<&str>> = req
        .summary
        .sections
        .iter()
        .map(|s| s.mid.as_deref())
        .collect();
    let filled = req
        .offer
        .template()
        .and_then(|t| t.fill(&offer_mids, local_port));
    if let Some(filled) = filled {
        let mids = answered_mids(&req.summary, req.kind);
        // Else (an offer without a fingerprint, say) str0m answers it, and says what is wrong.
        if let Some(direct) =
            direct_peer(&req.offer_sdp, &filled.answer, &mids, &filled.send_streams)
        {
            shared.offer_shapes.count_templated();
            return Ok(viewer_from_template(req, filled, direct, now));
        }
    }
    // This peer only answers: its DTLS is never started, so never built.
    let crypto = crate::dtls_tap::answering_crypto_provider();
    let mut rtc = new_rtc(shared, local_port, req.kind, req.video_family, crypto, now);
    let answer = rtc
        .sdp_api()
        .accept_offer(req.offer.take_parsed()?)
        .map_err(|e| {
            tracing::debug!(error = %e, "offer not answered");
            SessionError::Unsupported("the offer cannot be answered".into())
        })?;

    let mids = answered_mids(&req.summary, req.kind);
    let send_streams: Vec<_> = mids
        .iter()
        .filter_map(|&(_, mid)| {
            let mut api = rtc.direct_api();
            let tx = api.stream_tx_by_mid(mid, None)?;
            Some((mid, tx.ssrc(), tx.rtx()))
        })
        .collect();
    let local = rtc.direct_api().local_ice_credentials();
    let answer = answer.to_sdp_string();

    let mut template = None;
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
            let (tracks, cname) = ViewerEgress::plan(&mut rtc, &mids);
            // With a DTLS certificate per peer, its fingerprint would differ per answer.
            if req.offer.shape_is_new() && shared.dtls_cert.is_some() {
                template = AnswerTemplate::learn(&Answered {
                    answer: &answer,
                    offer_mids: &offer_mids,
                    local: &local,
                    send_streams: &send_streams,
                    tracks: &tracks,
                    cname: &cname,
                });
            }
            let egress = ViewerEgress::new(tracks, cname, now);
            if !egress.has_tracks() {
                return Err(SessionError::Unsupported(
                    "no audio or video section could be answered".into(),
                ));
            }
            Role::Viewer(Box::new(egress))
        }
    };
    let local_ufrag = local.ufrag.clone();
    let cut = shared
        .offer_shapes
        .answered(&req.offer_sdp, req.offer.seen, &answer, template);
    let direct = match req.kind {
        SessionKind::Viewer => direct_peer(&req.offer_sdp, &answer, &mids, &send_streams),
        SessionKind::Publisher => None,
    };
    let (offer, direct, remote_candidates) = match direct {
        Some((direct, candidates)) => (Box::default(), Some(direct), candidates),
        None => (cut.into(), None, Vec::new()),
    };
    let recipe = PeerRecipe {
        kind: req.kind,
        video_family: req.video_family,
        offer,
        local,
        remote: None,
        remote_candidates,
        send_streams,
        direct,
    };
    let peer = Peer::Parked(Box::new(recipe));
    let session = Session::new(req.id, req.serial, peer, req.room, role, local_ufrag, now);
    Ok((session, answer))
}

/// A viewer answered from its offer shape's template (`answer_template.rs`), its peer to be
/// built without SDP.
fn viewer_from_template(
    req: SessionRequest,
    filled: Filled,
    (direct, remote_candidates): (DirectPeer, Vec<Candidate>),
    now: Instant,
) -> (Session, String) {
    let Filled {
        answer,
        local,
        send_streams,
        tracks,
        cname,
    } = filled;
    let role = Role::Viewer(Box::new(ViewerEgress::new(tracks, cname, now)));
    let local_ufrag = local.ufrag.clone();
    let recipe = PeerRecipe {
        kind: req.kind,
        video_family: req.video_family,
        offer: Box::default(),
        local,
        remote: None,
        remote_candidates,
        send_streams,
        direct: Some(direct),
    };
    let peer = Peer::Parked(Box::new(recipe));
    let session = Session::new(req.id, req.serial, peer, req.room, role, local_ufrag, now);
    (session, answer)
}

#[cfg(test)]
#[path = "session_setup_tests.rs"]
pub(crate) mod tests;
