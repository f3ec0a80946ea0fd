//! A new session's set-up, done off the media workers: the SDP answer is written on the
//! caller's thread, and the str0m peer that answered is then dropped; the session keeps a
//! [`PeerRecipe`] until the client's first check proves it knows the session's ICE password,
//! when [`build_peer`] makes the peer again (on a handshake thread, `handshakes.rs`, where it
//! also connects) as the answer promised it. So a storm of joins costs the workers little more
//! than checking first checks and taking in connected peers, and a flood of offers that never
//! connect holds a few KiB each, not a peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::{MediaKind, Room};
use str0m::change::SdpOffer;
use str0m::config::CryptoProvider;
use str0m::media::Mid;
use str0m::{Candidate, Rtc};

use crate::answer_template::{AnswerTemplate, Answered, Filled};
use crate::answered_formats::OfferToAnswer;
use crate::egress::ViewerEgress;
use crate::error::SessionError;
use crate::sdp::{OfferSummary, SectionKind, VideoFamily};
use crate::session::{Peer, PeerRecipe, Publisher, Role, Session, SessionKind};
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
        shared.offer_shapes.count_templated();
        return Ok(viewer_from_template(req, filled, now));
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
    let recipe = PeerRecipe {
        kind: req.kind,
        video_family: req.video_family,
        offer: shared
            .offer_shapes
            .answered(&req.offer_sdp, req.offer.seen, &answer, template)
            .into(),
        local,
        remote: None,
        remote_candidates: Vec::new(),
        send_streams,
    };
    let peer = Peer::Parked(Box::new(recipe));
    let session = Session::new(req.id, req.serial, peer, req.room, role, local_ufrag, now);
    Ok((session, answer))
}

/// A viewer answered from its offer shape's template (`answer_template.rs`).
fn viewer_from_template(req: SessionRequest, filled: Filled, now: Instant) -> (Session, String) {
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
        offer: req.offer.into_cut().unwrap_or_default().into(),
        local,
        remote: None,
        remote_candidates: Vec::new(),
        send_streams,
    };
    let peer = Peer::Parked(Box::new(recipe));
    let session = Session::new(req.id, req.serial, peer, req.room, role, local_ufrag, now);
    (session, answer)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::EngineConfig;

    /// A viewer's offer as Chromium makes it (audio and video, 43 payload types).
    const CHROMIUM_OFFER: &str = include_str!("../fixtures/chromium-offer.sdp");

    /// The peer built at the first check is the one the answer described: the same ICE
    /// credentials, DTLS fingerprint and send SSRCs, though the peer that wrote the answer is
    /// gone.
    #[test]
    fn the_built_peer_is_the_one_the_answer_promised() {
        let shared = Shared::new(EngineConfig {
            udp_port: 5000,
            idle_clip: None,
            ..EngineConfig::default()
        });
        let offer = CHROMIUM_OFFER.replace("\r\n", "\n").replace('\n', "\r\n");
        let summary = OfferSummary::parse(&offer).unwrap();
        summary.check_view().unwrap();
        let now = Instant::now();
        let req = SessionRequest {
            id: "s".into(),
            serial: 1,
            kind: SessionKind::Viewer,
            room: shared.rooms.get_or_create("r"),
            offer: shared
                .offer_shapes
                .parse(SessionKind::Viewer, None, &offer)
                .unwrap(),
            offer_sdp: offer.as_str().into(),
            summary,
            video_family: None,
        };
        let (session, answer) = prepare_session(&shared, 5000, req, now).unwrap();
        let Peer::Parked(recipe) = &session.peer else {
            panic!("a new session has no peer");
        };
        assert!(
            recipe.offer.len() < offer.len() * 3 / 4,
            "the refused payload types are not kept: {} of {} bytes",
            recipe.offer.len(),
            offer.len()
        );
        assert_peer_keeps_answer(&shared, session, &answer);
    }

    /// The peer `build_peer` makes for `session` is the one its `answer` described: the same
    /// ICE credentials, DTLS fingerprint, send SSRCs and payload types, though the peer that
    /// wrote the answer (if str0m wrote it) is gone; and its egress sends with SSRCs and a
    /// CNAME the answer announced.
    pub(crate) fn assert_peer_keeps_answer(shared: &Shared, session: Session, answer: &str) {
        let now = Instant::now();
        if let Role::Viewer(egress) = &session.role {
            let (ssrcs, cname) = egress.sent_as();
            assert!(!ssrcs.is_empty());
            for ssrc in ssrcs {
                assert!(
                    answer.contains(&format!("a=ssrc:{ssrc} cname:")),
                    "the egress sends on SSRC {ssrc}: {answer}"
                );
            }
            // The first track's (str0m gives each section a CNAME of its own).
            assert!(
                answer.contains(&format!(" cname:{cname}\r\n")),
                "{cname}: {answer}"
            );
        }
        let Peer::Parked(recipe) = session.peer else {
            panic!("a new session has no peer");
        };
        let announced: Vec<u32> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("a=ssrc:"))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert!(announced.len() >= 2, "audio and video SSRCs in {answer}");

        let mut rtc = build_peer(shared, 5000, *recipe, now).unwrap();
        let mut api = rtc.direct_api();
        let creds = api.local_ice_credentials();
        assert!(answer.contains(&format!("a=ice-ufrag:{}\r\n", creds.ufrag)));
        assert!(answer.contains(&format!("a=ice-pwd:{}\r\n", creds.pass)));
        let fingerprint = api.local_dtls_fingerprint().to_string();
        assert!(answer.contains(&format!("a=fingerprint:{fingerprint}\r\n")));
        let mut sending = Vec::new();
        for mid in answer.lines().filter_map(|l| l.strip_prefix("a=mid:")) {
            if let Some(tx) = api.stream_tx_by_mid(Mid::from(mid), None) {
                sending.push(*tx.ssrc());
                sending.extend(tx.rtx().map(|r| *r));
            }
        }
        for ssrc in announced {
            assert!(
                sending.contains(&ssrc),
                "the built peer sends on SSRC {ssrc}, announced in the answer ({sending:?})"
            );
        }
        // The same payload types in each section as the answer gave.
        for section in answer.split("\r\nm=").skip(1) {
            let formats: Vec<u8> = section
                .split("\r\n")
                .next()
                .unwrap()
                .split(' ')
                .skip(3)
                .map(|f| f.parse().unwrap())
                .collect();
            let mid = section
                .split("\r\n")
                .find_map(|l| l.strip_prefix("a=mid:"))
                .unwrap();
            let mut negotiated: Vec<u8> = rtc
                .media(Mid::from(mid))
                .unwrap()
                .remote_pts()
                .iter()
                .map(|pt| **pt)
                .collect();
            // remote_pts lists the primary formats; RTX goes with them.
            let rtx: Vec<u8> = section
                .split("\r\n")
                .filter_map(|l| l.strip_prefix("a=rtpmap:"))
                .filter(|l| l.contains(" rtx/"))
                .filter_map(|l| l.split(' ').next()?.parse().ok())
                .collect();
            let mut expected: Vec<u8> = formats.into_iter().filter(|f| !rtx.contains(f)).collect();
            negotiated.sort();
            expected.sort();
            assert_eq!(negotiated, expected, "section {mid}");
        }
    }
}
