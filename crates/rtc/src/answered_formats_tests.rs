//! Tests of `answered_formats.rs`.

use std::time::Instant;

use super::*;
use crate::fuzz::str0m_viewer_offer as str0m_offer;
use crate::session_setup::prepare_session;
use crate::session_setup::tests::{chromium_offer, test_shared as shared, viewer_request};
use crate::shared::Shared;

/// The same browser's offer from another client: its own origin, ICE credentials,
/// fingerprint, ports, a candidate, and mids of its own (as str0m makes them).
fn another_clients(offer: &str) -> String {
    offer
        .replace("a=group:BUNDLE 0 1\r\n", "a=group:BUNDLE Xa 7q\r\n")
        .replace("a=mid:0\r\n", "a=mid:Xa\r\n")
        .replace("a=mid:1\r\n", "a=mid:7q\r\n")
        .replace("5515343324470364038", "9000000000000000001")
        .replace("nAy0", "Zq81")
        .replace("XOPcJii5BKpe5i2YfNKE49l0", "a0b1c2d3e4f5g6h7i8j9k0l1")
        .replace("6E:0F:17:E1", "01:23:45:67")
        .replace("m=audio 37870", "m=audio 50000")
        .replace("m=video 43929", "m=video 50002")
        .replace(
            "a=rtcp-mux\r\n",
            "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\na=rtcp-mux\r\n",
        )
}

struct Answered {
    answer: String,
    /// Whether the offer was parsed cut, as its shape was answered before.
    cut: bool,
    /// The offer cut to what the answer kept.
    kept: String,
}

fn answer_viewer(shared: &Shared, offer: &str) -> Answered {
    let req = viewer_request(shared, offer);
    let cut = req.offer.seen.expected.is_some();
    let (_, answer) = prepare_session(shared, 5000, req, Instant::now()).unwrap();
    let kept = keep_formats(offer, &AnsweredFormats::of_answer(&answer));
    Answered { answer, cut, kept }
}

/// An answer without what differs from one answer to the next (ICE credentials, SSRCs...).
fn without_identity(answer: &str) -> Box<str> {
    OfferShape::of(SessionKind::Viewer, None, answer).lines
}

#[test]
fn an_offer_of_a_known_shape_is_cut_before_parsing_and_answered_alike() {
    let shared = shared();
    let first = answer_viewer(&shared, &chromium_offer());
    assert!(!first.cut, "the first offer of a shape is parsed whole");

    let offer = another_clients(&chromium_offer());
    let second = answer_viewer(&shared, &offer);
    assert!(second.cut, "the next offer of that shape is parsed cut");
    // As the same offer is answered where its shape is new.
    let alone = answer_viewer(&self::shared(), &offer);
    assert!(!alone.cut);
    assert_eq!(
        without_identity(&second.answer),
        without_identity(&alone.answer)
    );
    assert_eq!(second.kept, alone.kept);
    assert!(second.kept.contains("a=ice-ufrag:Zq81\r\n"));
    assert!(second.answer.contains("a=mid:7q\r\n"));
    assert!(
        second
            .kept
            .contains("a=candidate:1 1 udp 2122260223 127.0.0.1 50000")
    );
    assert!(second.kept.len() < offer.len() * 3 / 4);
}

#[test]
fn an_offer_that_differs_in_its_formats_is_parsed_whole() {
    let shared = shared();
    answer_viewer(&shared, &chromium_offer());
    let other = another_clients(&chromium_offer()).replace("a=rtcp-fb:96 nack pli\r\n", "");
    assert_ne!(other, another_clients(&chromium_offer()));
    let answered = answer_viewer(&shared, &other);
    assert!(!answered.cut);
    // Now it is known too.
    assert!(answer_viewer(&shared, &other).cut);
}

#[test]
fn a_shape_answered_otherwise_is_forgotten() {
    let shared = shared();
    let offer = chromium_offer();
    answer_viewer(&shared, &offer);
    let parsed = shared
        .offer_shapes
        .parse(SessionKind::Viewer, None, &offer)
        .unwrap();
    let answer = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
    let kept = shared
        .offer_shapes
        .answered(&offer, parsed.seen, answer, None);
    assert!(
        kept.contains("m=video 43929 UDP/TLS/RTP/SAVPF 96\r\n"),
        "{kept}"
    );
    assert!(!answer_viewer(&shared, &offer).cut);
}

#[test]
fn an_unparsable_line_in_an_offer_of_a_known_shape_is_refused_as_in_any() {
    let shared = shared();
    answer_viewer(&shared, &chromium_offer());
    let bad = another_clients(&chromium_offer()).replace(
        "a=ice-pwd:a0b1c2d3e4f5g6h7i8j9k0l1",
        "a=ice-pwd:a0b1c2d3e4f5g6h7i8j9k0l1 and more",
    );
    let whole = SdpOffer::from_sdp_string(&bad);
    let parsed = shared.offer_shapes.parse(SessionKind::Viewer, None, &bad);
    assert_eq!(parsed.is_err(), whole.is_err());
    // Values str0m refuses in lines the shape leaves out or abstracts: refused alike.
    let good = another_clients(&chromium_offer());
    for (what, bad) in [
        (
            "a bad origin",
            good.replace("o=- 9000000000000000001", "o=- x"),
        ),
        (
            "an origin past 64 bits",
            good.replace("9000000000000000001", "90000000000000000001"),
        ),
        (
            "an empty connection line",
            good.replacen("c=IN IP4 0.0.0.0", "c=", 1),
        ),
        ("an empty mid", good.replace("a=mid:Xa\r\n", "a=mid:\r\n")),
    ] {
        assert!(SdpOffer::from_sdp_string(&bad).is_err(), "{what}");
        assert!(
            matches!(
                shared.offer_shapes.parse(SessionKind::Viewer, None, &bad),
                Err(SessionError::BadSdp(_))
            ),
            "{what}"
        );
    }
    // An origin line missing or another one, a media line without its port: refused (str0m
    // stops reading at a line it cannot read in a media section and answers what it read).
    for (what, bad) in [
        ("an empty port", good.replace("m=video 50002", "m=video ")),
        (
            "no origin",
            good.replace("o=- 9000000000000000001 2 IN IP4 127.0.0.1\r\n", ""),
        ),
        (
            "a second origin",
            good.replace(
                "a=rtcp-mux\r\n",
                "a=rtcp-mux\r\no=- 1 2 IN IP4 127.0.0.1\r\n",
            ),
        ),
    ] {
        assert!(
            matches!(
                shared.offer_shapes.parse(SessionKind::Viewer, None, &bad),
                Err(SessionError::BadSdp(_))
            ),
            "{what}"
        );
    }
    // Other identity values str0m reads or ignores: a template's answer, as by str0m (whose
    // answer refuses what the session set-up cannot read, see `session_setup_tests.rs`).
    for odd in [
        good.replace(
            "a0b1c2d3e4f5g6h7i8j9k0l1",
            "a0b1c2d3e4f5g6h7i8j9k0l1 and more",
        ),
        good.replace("typ host", "typ nonsense"),
        good.replace("a=msid-semantic: WMS", "a=msid-semantic:"),
    ] {
        assert!(SdpOffer::from_sdp_string(&odd).is_ok());
        assert!(
            shared
                .offer_shapes
                .parse(SessionKind::Viewer, None, &odd)
                .unwrap()
                .template()
                .is_some()
        );
    }
}

#[test]
fn shapes_are_bounded_and_long_offers_not_remembered() {
    let shapes = OfferShapes::default();
    let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
    for n in 0..MAX_SHAPES + 20 {
        let offer =
            format!("v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=x:{n}\r\n");
        let seen = ShapeSeen {
            shape: Some(OfferShape::of(SessionKind::Viewer, None, &offer)),
            expected: None,
        };
        shapes.answered(&offer, seen, answer, None);
    }
    assert_eq!(shapes.known().len(), MAX_SHAPES);

    let filler = "a=x-filler:0123456789012345678901234567890123456789\r\n".repeat(400);
    let long = chromium_offer().replace("a=rtcp-mux\r\n", &format!("{filler}a=rtcp-mux\r\n"));
    assert!(long.len() > MAX_REMEMBERED_OFFER);
    let parsed = shapes.parse(SessionKind::Viewer, None, &long).unwrap();
    assert!(parsed.seen.shape.is_none());
}

#[test]
fn the_shape_leaves_out_identity_lines_and_ports_only() {
    let a = OfferShape::of(SessionKind::Viewer, None, &chromium_offer());
    let b = OfferShape::of(
        SessionKind::Viewer,
        None,
        &another_clients(&chromium_offer()),
    );
    assert_eq!(a, b);
    assert!(a.lines.contains("m=video * UDP/TLS/RTP/SAVPF 96 97 98"));
    assert!(a.lines.contains("a=rtpmap:96 VP8/90000\n"));
    assert!(a.lines.contains("a=group:BUNDLE #0 #1\n") && a.lines.contains("a=mid:#1\n"));
    assert!(!a.lines.contains("nAy0") && !a.lines.contains("37870"));
    let publisher = OfferShape::of(
        SessionKind::Publisher,
        Some(VideoFamily::H264),
        &chromium_offer(),
    );
    assert_ne!(a, publisher);
}

#[test]
fn keeps_only_the_formats_the_answer_accepted() {
    let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n\
        a=rtcp-fb:96 nack\r\na=rtcp-fb:* transport-cc\r\na=rtpmap:97 H264/90000\r\n\
        a=fmtp:97 packetization-mode=1\r\n";
    // Audio refused (port 0), video answered with H264 only.
    let answer = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:1\r\na=rtpmap:97 H264/90000\r\n";
    let kept = keep_formats(offer, &AnsweredFormats::of_answer(answer));
    assert!(
        kept.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
        "{kept}"
    );
    assert!(kept.contains("a=rtpmap:111 opus/48000/2\r\n"));
    assert!(kept.contains("m=video 9 UDP/TLS/RTP/SAVPF 97\r\n"));
    assert!(!kept.contains("VP8") && !kept.contains("a=rtcp-fb:96"));
    assert!(kept.contains("a=rtcp-fb:* transport-cc\r\n"));
    assert!(kept.contains("a=fmtp:97 packetization-mode=1\r\n"));
    assert!(kept.starts_with("v=0\r\n") && kept.contains("a=ice-ufrag:abcd\r\n"));
    // Nothing is lost from an offer the answer took whole.
    let whole = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n";
    assert_eq!(
        keep_formats(offer, &AnsweredFormats::of_answer(whole)),
        offer
    );
}

#[test]
fn offers_of_one_client_library_share_a_shape() {
    let (one, two) = (str0m_offer(), str0m_offer());
    assert_ne!(one, two);
    let shared = shared();
    assert!(!answer_viewer(&shared, &one).cut);
    let second = answer_viewer(&shared, &two);
    assert!(second.cut);
    let alone = answer_viewer(&self::shared(), &two);
    assert_eq!(second.kept, alone.kept);
}
