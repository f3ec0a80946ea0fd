//! Entry points of the fuzz targets in `fuzz/`, kept in the library so the normal test suite
//! can run them over the seed corpus without cargo-fuzz.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::server::{
    ClaimOutcome, SecretLookup, ServerConfig, ServerEvent, ServerInput, ServerOutput, ServerSession,
};
use crate::stream_key::ChannelSecret;

/// Drives a server session with arbitrary bytes: the input is cut into control reads,
/// datagrams, timeouts and answers to the session's requests, chosen by tag bytes. Checks that
/// every reply is a `\n`-terminated line and that the session ends at most once. Returns how
/// far the session got, so seed corpora can be checked to reach deep states.
pub fn server_session(data: &[u8]) -> SessionOutcome {
    let start = Instant::now();
    let mut now = start;
    let nonce = vec![0x5a; 64];
    let mut session = ServerSession::new(start, ServerConfig::new(4000), nonce);
    let mut rest = data;
    let mut ended = 0;
    let mut outcome = SessionOutcome::default();
    while let Some((&tag, tail)) = rest.split_first() {
        let len = usize::from(tag >> 3).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        let owned = Bytes::copy_from_slice(chunk);
        rest = tail;
        let input = match tag & 0x07 {
            0..=2 => ServerInput::Control(chunk),
            3 => ServerInput::Datagram(&owned),
            4 => {
                now += Duration::from_millis(u64::from(tag) * 40);
                ServerInput::Timeout
            }
            5 => ServerInput::Secret(match chunk.first() {
                Some(0) => SecretLookup::UnknownChannel,
                Some(1) => SecretLookup::Failed,
                _ => SecretLookup::Found(ChannelSecret::new(chunk)),
            }),
            6 => ServerInput::Claim(match chunk.first() {
                Some(0) => ClaimOutcome::InUse,
                Some(1) => ClaimOutcome::Failed,
                _ => ClaimOutcome::Claimed,
            }),
            _ => ServerInput::Terminate,
        };
        session.handle_input(now, input);
        while let Some(output) = session.poll_output() {
            match output {
                ServerOutput::Control(bytes) => {
                    assert_eq!(bytes.last(), Some(&b'\n'));
                    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
                }
                ServerOutput::Datagram(bytes) => assert!(!bytes.is_empty()),
                ServerOutput::Event(ServerEvent::Ended(_)) => ended += 1,
                ServerOutput::Event(ServerEvent::Started(_)) => outcome.started = true,
                ServerOutput::Event(ServerEvent::Media(_)) => outcome.media += 1,
                ServerOutput::Event(_) => {}
            }
        }
        if let Some(at) = session.poll_timeout() {
            assert!(at >= start);
        }
    }
    assert!(ended <= 1);
    outcome.ended = ended == 1;
    outcome
}

/// How far [`server_session`] got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionOutcome {
    pub started: bool,
    pub media: u64,
    pub ended: bool,
}

/// Classifies arbitrary bytes as an FTL datagram and checks that what parses re-encodes
/// consistently.
pub fn udp_datagram(data: &[u8]) {
    use crate::udp::{self, Datagram};
    match udp::classify(data) {
        Datagram::Rtp(rtp) => {
            assert!(rtp.payload.len() + udp::RTP_HEADER_LEN <= data.len());
            let rebuilt = udp::RtpHeader {
                marker: rtp.marker,
                payload_type: rtp.payload_type,
                sequence: rtp.sequence,
                timestamp: rtp.timestamp,
                ssrc: rtp.ssrc,
            }
            .packet(rtp.payload);
            assert_eq!(
                udp::parse_rtp(&rebuilt).map(|r| r.payload),
                Some(rtp.payload)
            );
            let _ = deadsfu_media::keyframe::h264_keyframe_start(rtp.payload);
        }
        Datagram::SenderReport(report) => {
            assert_eq!(
                udp::classify(&report.packet()),
                Datagram::SenderReport(report)
            );
        }
        Datagram::Nack(nack) => {
            assert!(nack.lost.len() <= data.len() / 4 * 17);
            if let Datagram::Nack(again) = udp::classify(&nack.packet()) {
                assert_eq!(again.media_ssrc, nack.media_ssrc);
            } else {
                panic!("NACK did not re-encode");
            }
        }
        Datagram::Ping | Datagram::Unknown => {}
    }
    // The client's handling of the same bytes must not panic either.
    let track = crate::client::OutgoingTrack::new(96, 1);
    let _ = crate::client::handle_server_datagram(&[&track], data);
}
