//! Tests of `sdp.rs`.

use super::*;

const OBS_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 H264/90000\r\na=fmtp:97 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

#[test]
fn publish_prefers_h264() {
    let s = OfferSummary::parse(OBS_OFFER).unwrap();
    assert_eq!(s.ice_ufrag.as_deref(), Some("abcd"));
    assert_eq!(s.check_publish().unwrap(), Some(VideoFamily::H264));
    assert!(s.check_view().is_err());
}

#[test]
fn h264_mode0_only_is_not_h264() {
    let offer = OBS_OFFER.replace("packetization-mode=1", "packetization-mode=0");
    let s = OfferSummary::parse(&offer).unwrap();
    assert_eq!(s.check_publish().unwrap(), Some(VideoFamily::Vp8));
}

#[test]
fn recvonly_is_not_a_publisher() {
    let offer = OBS_OFFER.replace("a=sendonly", "a=recvonly");
    let s = OfferSummary::parse(&offer).unwrap();
    assert!(matches!(
        s.check_publish(),
        Err(SessionError::Unsupported(_))
    ));
    s.check_view().unwrap();
    assert_eq!(s.receivable_codecs(), vec!["OPUS", "VP8", "H264"]);
}

#[test]
fn no_common_codec() {
    let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\na=sendonly\r\na=rtpmap:98 H265/90000\r\n";
    let s = OfferSummary::parse(offer).unwrap();
    assert!(matches!(
        s.check_publish(),
        Err(SessionError::Unsupported(_))
    ));
}

#[test]
fn malformed() {
    assert!(matches!(
        OfferSummary::parse("hello"),
        Err(SessionError::BadSdp(_))
    ));
    assert!(matches!(
        OfferSummary::parse("v=0\r\ns=-\r\n"),
        Err(SessionError::BadSdp(_))
    ));
    assert!(matches!(
        OfferSummary::parse("v=0\r\nm=audio\r\n"),
        Err(SessionError::BadSdp(_))
    ));
    assert!(matches!(
        OfferSummary::parse("v=0\r\nm=audio 9 RTP/AVP 0\r\nnonsense\r\n"),
        Err(SessionError::BadSdp(_))
    ));
}

#[test]
fn trickle_fragment() {
    let frag = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\na=end-of-candidates\r\n";
    let f = TrickleFragment::parse(frag).unwrap();
    assert_eq!(f.ice_ufrag.as_deref(), Some("EsAw"));
    assert_eq!(f.candidates.len(), 1);
}
