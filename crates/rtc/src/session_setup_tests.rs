//! Tests of `session_setup.rs`.

use super::*;
use crate::config::EngineConfig;

/// A viewer's offer as Chromium makes it (audio and video, 43 payload types).
const CHROMIUM_OFFER: &str = include_str!("../fixtures/chromium-offer.sdp");

/// Chromium's viewer offer, with CRLF line ends as sent.
pub(crate) fn chromium_offer() -> String {
    CHROMIUM_OFFER.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// The shared state of an engine whose worker listens on port 5000.
pub(crate) fn test_shared() -> Shared {
    Shared::new(EngineConfig {
        udp_port: 5000,
        idle_clip: None,
        ..EngineConfig::default()
    })
}

/// A viewer's request for `offer` in room "r", its offer parsed as the engine parses it.
pub(crate) fn viewer_request(shared: &Shared, offer: &str) -> SessionRequest {
    SessionRequest {
        id: "s".into(),
        serial: 1,
        kind: SessionKind::Viewer,
        room: shared.rooms.get_or_create("r"),
        offer: shared
            .offer_shapes
            .parse(SessionKind::Viewer, None, offer)
            .unwrap(),
        offer_sdp: offer.into(),
        summary: OfferSummary::parse(offer).unwrap(),
        video_family: None,
    }
}

/// The peer built at the first check is the one the answer described: the same ICE
/// credentials, DTLS fingerprint and send SSRCs, though the peer that wrote the answer is
/// gone and the viewer's is built without SDP.
#[test]
fn the_built_peer_is_the_one_the_answer_promised() {
    let shared = test_shared();
    let offer = chromium_offer();
    let req = viewer_request(&shared, &offer);
    req.summary.check_view().unwrap();
    let (session, answer) = prepare_session(&shared, 5000, req, Instant::now()).unwrap();
    let Peer::Parked(recipe) = &session.peer else {
        panic!("a new session has no peer");
    };
    // A viewer's peer is built without SDP: nothing of the offer's text is kept.
    assert!(recipe.offer.is_empty() && recipe.direct.is_some());
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

    let direct = recipe.direct.is_some();
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
        if direct {
            // Built without SDP: the peer has the media, the egress its formats.
            assert!(rtc.media(Mid::from(mid)).is_some(), "section {mid}");
            continue;
        }
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

#[test]
fn a_viewers_peer_is_built_without_sdp_only_when_the_offer_gives_what_it_needs() {
    let offer = chromium_offer();
    let mids = [
        (MediaKind::Audio, Mid::from("0")),
        (MediaKind::Video, Mid::from("1")),
    ];
    let sends = [(Mid::from("1"), Ssrc::from(5), Some(Ssrc::from(6)))];
    let passive = "v=0\r\na=setup:passive\r\n";
    let (direct, candidates) = direct_peer(&offer, passive, &mids, &sends).unwrap();
    assert_eq!(direct.remote.ufrag, "nAy0");
    assert_eq!(direct.remote.pass, "XOPcJii5BKpe5i2YfNKE49l0");
    assert_eq!(direct.fingerprint.hash_func, "sha-256");
    assert_eq!(direct.fingerprint.bytes.len(), 32);
    // Only the media the answer sends on.
    assert_eq!(
        direct.media,
        vec![(Mid::from("1"), str0m::media::MediaKind::Video)]
    );
    assert!(candidates.is_empty());

    // Its candidates, at most MAX_TRICKLED of them.
    let many: String = (0..40)
        .map(|i| {
            format!(
                "a=candidate:{i} 1 udp 2122260223 127.0.0.1 {} typ host\r\n",
                50000 + i
            )
        })
        .collect();
    let with = offer.replace("a=rtcp-mux\r\n", &format!("{many}a=rtcp-mux\r\n"));
    let (_, candidates) = direct_peer(&with, passive, &mids, &sends).unwrap();
    assert_eq!(candidates.len(), MAX_TRICKLED);

    // An answer that takes the DTLS client's part, or an offer without a fingerprint: by SDP.
    assert!(direct_peer(&offer, "v=0\r\na=setup:active\r\n", &mids, &sends).is_none());
    let unsigned: String = offer
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    assert!(direct_peer(&unsigned, passive, &mids, &sends).is_none());
}
