//! Entry points of the fuzz targets in `fuzz/`, kept in the library so the normal test suite
//! runs them over the committed seed corpora without cargo-fuzz.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use deadsfu_media::{Codec, MediaPacket, SourceId};
use str0m::media::{Direction, MediaKind as SdpKind};
use str0m::{Candidate, Rtc};

use crate::answered_formats::{AnsweredFormats, OfferShape, keep_formats};
use crate::config::EngineConfig;
use crate::handshakes::Handshakes;
use crate::messages::{Command, Control, PeerMessage};
use crate::metrics::Counters;
use crate::sdp::{OfferSummary, VideoFamily};
use crate::send_batch::RecordingSink;
use crate::session::{Peer, SessionKind};
use crate::session_setup::{SessionRequest, prepare_session};
use crate::shared::Shared;
use crate::worker_core::WorkerCore;

const PORT: u16 = 5000;

/// A viewer's offer as a str0m client makes it (mids, SSRCs and stream ids at random): the
/// load generator's kind, also used by the unit tests.
pub(crate) fn str0m_viewer_offer() -> String {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
        .build(Instant::now());
    let addr = SocketAddr::from(([127, 0, 0, 1], 6000));
    rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
    let mut api = rtc.sdp_api();
    api.add_media(SdpKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(SdpKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, _) = api.apply().expect("an offer");
    offer.to_sdp_string()
}

/// A viewer's offer, made once (a str0m peer makes a DTLS key when built).
fn viewer_offer() -> &'static str {
    static OFFER: OnceLock<String> = OnceLock::new();
    OFFER.get_or_init(str0m_viewer_offer)
}

/// Drives a worker core with arbitrary input: datagrams from a few sources (some prefixed with
/// a STUN header carrying a live session's ufrag, to get past the demultiplexer), packets from
/// another worker, commands and the passing of time, chosen by tag bytes. The core must not
/// panic, and must never answer a source it has not verified.
pub fn worker_core(data: &[u8]) {
    let config = EngineConfig {
        udp_port: PORT,
        idle_clip: None,
        ..EngineConfig::default()
    };
    let shared = Arc::new(Shared::new(config));
    let counters = Arc::new(Counters::default());
    let sink = RecordingSink::default();
    let mut now = Instant::now();
    let mut core = WorkerCore::new(
        0,
        PORT,
        2,
        shared.clone(),
        counters.clone(),
        Box::new(sink.clone()),
        now,
        SystemTime::now(),
    );
    let mut handshakes = Handshakes::new(shared.clone(), vec![PORT, PORT + 1], counters);
    let offer = viewer_offer();
    let room = shared.rooms.get_or_create("fuzz");
    let room_id = room.id;
    let req = SessionRequest {
        id: "fuzz-session".into(),
        serial: 1,
        kind: SessionKind::Viewer,
        room,
        offer: shared
            .offer_shapes
            .parse(SessionKind::Viewer, None, offer)
            .expect("our own offer parses"),
        offer_sdp: offer.into(),
        summary: OfferSummary::parse(offer).expect("our own offer is summarised"),
        video_family: None,
    };
    let Ok((session, _answer)) = prepare_session(&shared, PORT, req, now) else {
        return;
    };
    let ufrag = session.local_ufrag.clone();
    let Peer::Parked(recipe) = &session.peer else {
        unreachable!("a new session is parked");
    };
    let password = recipe.local.pass.clone();
    core.handle_control(
        now,
        Control {
            command: Command::Adopt(Box::new(session)),
            reply: None,
        },
    );
    let mut rest = data;
    let mut seq = 0u64;
    while let Some((&tag, tail)) = rest.split_first() {
        let len = usize::from(tag >> 3).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        let source = SocketAddr::from(([127, 0, 0, 1 + (tag & 1)], 7000));
        match tag & 0x07 {
            0 | 1 => core.handle_datagram(now, source, chunk),
            2 => {
                // Some signed, as the session's client would (they wake it and bind their
                // source); the rest carry the chunk as attributes.
                let check = if chunk.first().is_some_and(|b| b & 1 == 1) {
                    let mut check = stun_check(&ufrag, &[]);
                    crate::stun::sign(&mut check, &password);
                    check
                } else {
                    stun_check(&ufrag, chunk)
                };
                core.handle_datagram(now, source, &check);
            }
            3 => {
                seq += 1;
                let packet = Arc::new(MediaPacket {
                    source: SourceId(u64::from(chunk.first().copied().unwrap_or(0) & 3)),
                    codec: Codec::H264 { profile: 0x42e0 },
                    seq,
                    timestamp: seq as u32 * 3000,
                    marker: chunk.len() % 2 == 0,
                    keyframe_start: chunk.first().is_some_and(|b| b & 0x1f == 5),
                    arrival: now,
                    capture: now,
                    payload: bytes::Bytes::copy_from_slice(chunk),
                });
                core.handle_peer_message(
                    now,
                    PeerMessage::Packet {
                        room: room_id,
                        packet,
                    },
                );
            }
            4 => {
                let command = match chunk.first().copied().unwrap_or(0) % 3 {
                    0 => Command::SwitchRoom {
                        serial: 1,
                        room: shared.rooms.get_or_create(if seq.is_multiple_of(2) {
                            "a"
                        } else {
                            "b"
                        }),
                    },
                    1 => Command::Close { serial: 1 },
                    _ => Command::RestartIce {
                        serial: 1,
                        remote: str0m::IceCreds {
                            ufrag: String::from_utf8_lossy(chunk).into_owned(),
                            pass: "p".repeat(22),
                        },
                    },
                };
                core.handle_control(
                    now,
                    Control {
                        command,
                        reply: None,
                    },
                );
            }
            5 => {
                let ms = chunk.iter().map(|b| u64::from(*b)).sum::<u64>();
                now += Duration::from_millis(ms);
            }
            _ => core.handle_timeout(now),
        }
        for (to, sent) in sink.take() {
            // A source that never passed a check only ever gets STUN answers, never media.
            if to != source {
                continue;
            }
            assert!(sent.first().is_some_and(|b| *b < 4 || *b >= 20), "{sent:?}");
        }
        let _ = core.drain_peer_messages().count();
        // The handshake thread, in step: the sessions the core woke connect there.
        let jobs: Vec<_> = core.drain_handshake_jobs().collect();
        for job in jobs {
            handshakes.handle_job(now, 0, job);
        }
        handshakes.start_waiting(now, usize::MAX);
        handshakes.handle_timeout(now);
        for t in handshakes.drain_transmits() {
            // Answers and handshakes go only to sources whose checks were signed.
            assert!(t.to != source || t.contents.first().is_some_and(|b| *b < 4 || *b >= 20));
        }
        let commands: Vec<_> = handshakes.drain_commands().collect();
        for (_, command) in commands {
            core.handle_control(
                now,
                Control {
                    command,
                    reply: None,
                },
            );
        }
    }
    core.shutdown(now);
}

/// A STUN Binding request whose USERNAME names `ufrag`, followed by `rest` as attributes.
fn stun_check(ufrag: &str, rest: &[u8]) -> Vec<u8> {
    let username = format!("{ufrag}:peer");
    let padded = username.len().div_ceil(4) * 4;
    let body_len = 4 + padded + rest.len();
    let mut d = Vec::with_capacity(20 + body_len);
    d.extend_from_slice(&[0x00, 0x01]);
    d.extend_from_slice(&(body_len as u16).to_be_bytes());
    d.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    d.extend_from_slice(&[7; 12]);
    d.extend_from_slice(&[0x00, 0x06]);
    d.extend_from_slice(&(username.len() as u16).to_be_bytes());
    d.extend_from_slice(username.as_bytes());
    d.resize(20 + 4 + padded, 0);
    d.extend_from_slice(rest);
    d
}

/// The offer checks that run before str0m sees an offer: summary, publish and view checks,
/// its shape, and its cut to an answer's formats (itself, read as an answer).
pub fn offer_summary(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(summary) = OfferSummary::parse(text) {
        let _ = summary.check_publish();
        let _ = summary.check_view();
        let _ = summary.receivable_codecs();
        let _ = summary.media().count();
    }
    let _ = crate::sdp::TrickleFragment::parse(text);
    let _ = OfferShape::of(SessionKind::Publisher, Some(VideoFamily::H264), text);
    let _ = keep_formats(text, &AnsweredFormats::of_answer(text));
}

/// The STUN routing of datagrams from unknown sources.
pub fn stun_demux(data: &[u8]) {
    if let Some(ufrag) = crate::stun::local_ufrag(data) {
        assert!(data.len() >= 20 + 4 + ufrag.len());
    }
    let _ = crate::stun::is_binding_success(data);
}

/// A viewer's NACKs: arbitrary (ssrc, pid, blp) reports against a sent history.
pub fn viewer_nacks(data: &[u8]) {
    crate::egress::fuzz_nacks(data);
}

/// Arbitrary datagrams to a passive DTLS connection (`dtls_openssl.rs`), as a peer could send
/// them before, during and after a handshake. Input: datagrams, each a big-endian `u16` length
/// and its bytes (a short last one is taken as it is). The connection must not panic or hang,
/// and must never report itself connected: that takes a client's Finished over this
/// connection's own random values, which no input made in advance can carry.
pub fn dtls_passive(data: &[u8]) {
    use str0m::crypto::dtls::{DtlsOutput, DtlsProvider, DtlsVersion};
    let (provider, cert) = dtls_fixture();
    let now = Instant::now();
    let Ok(mut conn) = provider.new_dtls(cert, now, DtlsVersion::Dtls12, None) else {
        return;
    };
    conn.set_active(false);
    let mut buf = vec![0u8; 2048];
    let mut rest = data;
    while !rest.is_empty() {
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
            _ => rest.len(),
        };
        let body = rest.get(2..).unwrap_or_default();
        let (packet, after) = body.split_at(len.min(body.len()));
        rest = after;
        let _ = conn.handle_packet(packet);
        let _ = conn.handle_timeout(now);
        // Everything it has to say, up to its idle timeout (bounded: a bug must not hang).
        for _ in 0..64 {
            match conn.poll_output(&mut buf) {
                DtlsOutput::Connected => panic!("connected to a peer that never shook hands"),
                DtlsOutput::Timeout(at) if at > now + Duration::from_secs(1000) => break,
                _ => {}
            }
        }
    }
}

/// The fuzzed connection's provider and certificate, made once.
fn dtls_fixture() -> &'static (
    crate::dtls_openssl::SharedContextDtls,
    str0m::crypto::dtls::DtlsCert,
) {
    use str0m::crypto::dtls::DtlsProvider;
    static FIXTURE: OnceLock<(
        crate::dtls_openssl::SharedContextDtls,
        str0m::crypto::dtls::DtlsCert,
    )> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let provider = crate::dtls_openssl::SharedContextDtls::new(
            str0m::crypto::from_feature_flags().dtls_provider,
        );
        let cert = provider.generate_certificate().expect("a certificate");
        (provider, cert)
    })
}
