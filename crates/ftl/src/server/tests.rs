use super::*;
use crate::udp::RtpHeader;

const CHANNEL: u32 = 1234;
const SECRET: &[u8] = b"sesame";
const PORT: u16 = 9000;

struct Harness {
    session: ServerSession,
    start: Instant,
    nonce: Vec<u8>,
}

#[derive(Debug, Default)]
struct Drained {
    control: Vec<u8>,
    datagrams: Vec<Vec<u8>>,
    events: Vec<ServerEvent>,
}

impl Drained {
    fn text(&self) -> String {
        String::from_utf8(self.control.clone()).unwrap()
    }

    fn media(&self) -> Vec<&FtlMedia> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Media(m) => Some(m),
                _ => None,
            })
            .collect()
    }
}

impl Harness {
    fn new() -> Self {
        let start = Instant::now();
        let nonce: Vec<u8> = (0..64).collect();
        Self {
            session: ServerSession::new(start, ServerConfig::new(PORT), nonce.clone()),
            start,
            nonce,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn input(&mut self, ms: u64, input: ServerInput<'_>) -> Drained {
        let now = self.at(ms);
        self.session.handle_input(now, input);
        let mut drained = Drained::default();
        while let Some(output) = self.session.poll_output() {
            match output {
                ServerOutput::Control(bytes) => drained.control.extend(bytes),
                ServerOutput::Datagram(bytes) => drained.datagrams.push(bytes),
                ServerOutput::Event(event) => drained.events.push(event),
            }
        }
        drained
    }

    fn control(&mut self, ms: u64, bytes: &[u8]) -> Drained {
        self.input(ms, ServerInput::Control(bytes))
    }

    fn connect_line(&self, secret: &[u8]) -> String {
        let tag = crate::hmac::sign(secret, &self.nonce);
        format!(
            "CONNECT {CHANNEL} ${}\r\n\r\n",
            crate::hmac::encode_hex(&tag)
        )
    }

    /// Runs the handshake as ftl-sdk does; returns the output of `.`.
    fn handshake(&mut self) -> Drained {
        let out = self.control(0, b"HMAC\r\n\r\n");
        assert_eq!(
            out.text(),
            "200 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\n"
        );
        let out = self.control(1, self.connect_line(SECRET).as_bytes());
        assert_eq!(
            out.events,
            [ServerEvent::SecretNeeded {
                channel_id: CHANNEL
            }]
        );
        assert!(out.control.is_empty());
        let out = self.input(
            2,
            ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
        );
        assert_eq!(
            out.events,
            [ServerEvent::ClaimNeeded {
                channel_id: CHANNEL
            }]
        );
        let out = self.input(3, ServerInput::Claim(ClaimOutcome::Claimed));
        assert_eq!(out.text(), "200\n");
        for line in [
            "ProtocolVersion: 0.9",
            "VendorName: OBS Studio",
            "VendorVersion: 29.1.3",
            "Video: true",
            "VideoCodec: H264",
            "VideoHeight: 720",
            "VideoWidth: 1280",
            "VideoPayloadType: 96",
            "VideoIngestSSRC: 1235",
            "Audio: true",
            "AudioCodec: OPUS",
            "AudioPayloadType: 97",
            "AudioIngestSSRC: 1234",
        ] {
            let out = self.control(4, format!("{line}\r\n\r\n").as_bytes());
            assert!(
                out.control.is_empty() && out.events.is_empty(),
                "reply to {line}"
            );
        }
        let out = self.control(5, b".\r\n\r\n");
        assert_eq!(out.text(), "200 hi. Use UDP port 9000\n");
        out
    }

    fn ended(drained: &Drained) -> Option<EndReason> {
        drained.events.iter().find_map(|e| match e {
            ServerEvent::Ended(reason) => Some(*reason),
            _ => None,
        })
    }
}

fn video(sequence: u16, payload: &[u8]) -> Bytes {
    RtpHeader {
        marker: true,
        payload_type: 96,
        sequence,
        timestamp: 0,
        ssrc: CHANNEL + 1,
    }
    .packet(payload)
    .into()
}

fn audio(sequence: u16) -> Bytes {
    RtpHeader {
        marker: false,
        payload_type: 97,
        sequence,
        timestamp: 0,
        ssrc: CHANNEL,
    }
    .packet(&[0xfc, 1, 2])
    .into()
}

#[test]
fn full_handshake_ping_and_disconnect() {
    let mut h = Harness::new();
    let out = h.handshake();
    let ServerEvent::Started(info) = &out.events[0] else {
        panic!("no Started: {:?}", out.events)
    };
    assert_eq!(info.channel_id, CHANNEL);
    assert_eq!(
        info.video,
        Some(TrackInfo {
            codec: "H264".into(),
            payload_type: 96,
            ssrc: 1235
        })
    );
    assert_eq!(info.audio.as_ref().unwrap().ssrc, 1234);
    assert_eq!(info.vendor_name.as_deref(), Some("OBS Studio"));
    assert!(h.session.is_streaming());
    assert_eq!(h.session.media_ssrcs(), Some((Some(1235), Some(1234))));

    assert_eq!(h.control(5000, b"PING 1234\r\n\r\n").text(), "201\n");
    let out = h.control(6000, b"DISCONNECT\r\n\r\n");
    assert!(out.control.is_empty());
    assert_eq!(Harness::ended(&out), Some(EndReason::Disconnected));
    assert!(h.session.is_ended());
    assert_eq!(h.session.poll_timeout(), None);
    // Input after the end is ignored.
    assert!(h.control(6001, b"PING 1\n").control.is_empty());
}

#[test]
fn handshake_merged_into_one_read_waits_for_the_caller() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    let all = format!(
        "{}ProtocolVersion: 0.9\r\n\r\nVendorName: x:y:z\r\n\r\n.\r\n\r\nPING 1234\r\n\r\n",
        h.connect_line(SECRET)
    );
    let out = h.control(1, all.as_bytes());
    assert_eq!(
        out.events,
        [ServerEvent::SecretNeeded {
            channel_id: CHANNEL
        }]
    );
    h.input(
        2,
        ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
    );
    let out = h.input(3, ServerInput::Claim(ClaimOutcome::Claimed));
    assert_eq!(out.text(), "200\n200 hi. Use UDP port 9000\n201\n");
    let ServerEvent::Started(info) = &out.events[0] else {
        panic!()
    };
    assert_eq!(info.vendor_name.as_deref(), Some("x:y:z"));
    // Defaults follow ftl-sdk when the attributes are missing.
    assert_eq!(info.video.as_ref().unwrap().ssrc, CHANNEL + 1);
    assert_eq!(info.audio.as_ref().unwrap().payload_type, 97);
}

#[test]
fn handshake_byte_by_byte_with_bare_newlines() {
    let mut h = Harness::new();
    let mut text = String::new();
    for &b in b"hmac\n" {
        text += &h.control(0, &[b]).text();
    }
    assert!(text.starts_with("200 ") && text.ends_with('\n'));
    let connect = h.connect_line(SECRET).replace("\r\n\r\n", "\n");
    for &b in connect.as_bytes() {
        h.control(1, &[b]);
    }
    h.input(
        2,
        ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
    );
    h.input(3, ServerInput::Claim(ClaimOutcome::Claimed));
    let out = h.control(4, b"VIDEO: FALSE\naudio: True\n.\n");
    let ServerEvent::Started(info) = &out.events[0] else {
        panic!("{out:?}")
    };
    assert_eq!(info.video, None);
    assert!(info.audio.is_some());
}

#[test]
fn unknown_channel_gets_401() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, h.connect_line(SECRET).as_bytes());
    let out = h.input(2, ServerInput::Secret(SecretLookup::UnknownChannel));
    assert_eq!(out.text(), "401\n");
    assert_eq!(
        Harness::ended(&out),
        Some(EndReason::Rejected(ReplyCode::Unauthorized))
    );
}

#[test]
fn wrong_hmac_gets_405_and_no_claim() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, h.connect_line(b"not the secret").as_bytes());
    let out = h.input(
        2,
        ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
    );
    assert_eq!(out.text(), "405\n");
    assert!(
        !out.events
            .iter()
            .any(|e| matches!(e, ServerEvent::ClaimNeeded { .. }))
    );
    assert_eq!(
        Harness::ended(&out),
        Some(EndReason::Rejected(ReplyCode::InvalidStreamKey))
    );
}

#[test]
fn hmac_of_wrong_length_gets_405() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, b"CONNECT 1234 $abcd\r\n\r\n");
    let out = h.input(
        2,
        ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
    );
    assert_eq!(out.text(), "405\n");
}

#[test]
fn live_channel_gets_406() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, h.connect_line(SECRET).as_bytes());
    h.input(
        2,
        ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
    );
    let out = h.input(3, ServerInput::Claim(ClaimOutcome::InUse));
    assert_eq!(out.text(), "406\n");
    assert_eq!(
        Harness::ended(&out),
        Some(EndReason::Rejected(ReplyCode::ChannelInUse))
    );
}

#[test]
fn internal_failures_get_500() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, h.connect_line(SECRET).as_bytes());
    assert_eq!(
        h.input(2, ServerInput::Secret(SecretLookup::Failed)).text(),
        "500\n"
    );

    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, h.connect_line(SECRET).as_bytes());
    h.input(
        2,
        ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
    );
    assert_eq!(
        h.input(3, ServerInput::Claim(ClaimOutcome::Failed)).text(),
        "500\n"
    );
}

#[test]
fn malformed_handshakes_get_400() {
    let cases: &[&[u8]] = &[
        b"CONNECT 1234 $00\r\n\r\n",          // CONNECT before HMAC
        b".\r\n\r\n",                         // `.` before CONNECT
        b"PING 1234\r\n\r\n",                 // PING before streaming
        b"Video: true\r\n\r\n",               // attribute before CONNECT
        b"GET / HTTP/1.1\r\n\r\n",            // not FTL
        b"HMAC\r\n\r\nCONNECT x $00\r\n\r\n", // bad channel id
        b"HMAC\r\n\r\nCONNECT 1 $0g\r\n\r\n", // bad hex
        b"HMAC\r\n\r\nCONNECT 1\r\n\r\n",     // missing HMAC
        b"HMAC\r\n\r\n.\r\n\r\n",             // `.` right after the nonce
        b"\xff\xff\n",                        // not text
    ];
    for case in cases {
        let mut h = Harness::new();
        let out = h.control(0, case);
        assert!(
            out.text().ends_with("400\n"),
            "{:?}: {:?}",
            String::from_utf8_lossy(case),
            out.text()
        );
        assert_eq!(
            Harness::ended(&out),
            Some(EndReason::Rejected(ReplyCode::BadRequest)),
            "{:?}",
            String::from_utf8_lossy(case)
        );
    }
}

#[test]
fn bad_attributes_get_400() {
    for line in [
        "VideoPayloadType: 200",
        "AudioPayloadType: x",
        "VideoIngestSSRC: -1",
        "AudioIngestSSRC: 99999999999",
    ] {
        let mut h = Harness::new();
        h.control(0, b"HMAC\r\n\r\n");
        h.control(1, h.connect_line(SECRET).as_bytes());
        h.input(
            2,
            ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
        );
        h.input(3, ServerInput::Claim(ClaimOutcome::Claimed));
        let out = h.control(4, format!("{line}\r\n\r\n").as_bytes());
        assert_eq!(out.text(), "400\n", "{line}");
    }
    // Colliding SSRCs.
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, h.connect_line(SECRET).as_bytes());
    h.input(
        2,
        ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
    );
    h.input(3, ServerInput::Claim(ClaimOutcome::Claimed));
    let out = h.control(4, b"VideoIngestSSRC: 7\nAudioIngestSSRC: 7\n.\n");
    assert_eq!(out.text(), "400\n");
}

#[test]
fn too_many_attributes_get_400() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, h.connect_line(SECRET).as_bytes());
    h.input(
        2,
        ServerInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET))),
    );
    h.input(3, ServerInput::Claim(ClaimOutcome::Claimed));
    let mut text = String::new();
    for i in 0..=MAX_ATTRIBUTES {
        text += &h.control(4, format!("X{i}: y\n").as_bytes()).text();
    }
    assert_eq!(text, "400\n");
}

#[test]
fn over_long_lines_get_400() {
    let mut h = Harness::new();
    let out = h.control(0, &vec![b'A'; control::MAX_LINE_LEN + 1]);
    assert_eq!(out.text(), "400\n");

    // Over-long mid-stream too.
    let mut h = Harness::new();
    h.handshake();
    let mut line = vec![b'A'; control::MAX_LINE_LEN + 1];
    line.push(b'\n');
    let out = h.control(10, &line);
    assert_eq!(out.text(), "400\n");
    // And a flood with no newline at all hits the buffer bound.
    let mut h = Harness::new();
    let out = h.control(0, &vec![b'\n'; control::MAX_BUFFERED + 1]);
    assert_eq!(out.text(), "400\n");
}

#[test]
fn unexpected_commands_mid_stream_get_no_reply() {
    let mut h = Harness::new();
    h.handshake();
    let out = h.control(
        10,
        b"HMAC\r\n\r\nVideo: true\r\n\r\nnonsense\r\n\r\n.\r\n\r\n",
    );
    assert!(out.control.is_empty());
    assert!(out.events.is_empty());
    assert!(h.session.is_streaming());
}

#[test]
fn handshake_must_finish_in_five_seconds() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    assert_eq!(h.session.poll_timeout(), Some(h.at(5000)));
    assert!(h.input(4999, ServerInput::Timeout).events.is_empty());
    let out = h.input(5000, ServerInput::Timeout);
    assert_eq!(out.text(), "400\n");
    assert_eq!(Harness::ended(&out), Some(EndReason::HandshakeTimeout));

    // A slow secret lookup is our fault: 500.
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    h.control(1, h.connect_line(SECRET).as_bytes());
    let out = h.input(5000, ServerInput::Timeout);
    assert_eq!(out.text(), "500\n");
    // A late answer is ignored.
    assert!(
        h.input(5001, ServerInput::Secret(SecretLookup::UnknownChannel))
            .control
            .is_empty()
    );
}

#[test]
fn no_ping_for_fifteen_seconds_ends_the_stream() {
    let mut h = Harness::new();
    h.handshake();
    // Media keeps flowing; pings stop after 5 s.
    h.control(5005, b"PING 1234\r\n\r\n");
    for (sequence, ms) in (1005..=20_005).step_by(1000).enumerate() {
        h.input(ms, ServerInput::Datagram(&video(sequence as u16, &[0x41])));
        let out = h.input(ms, ServerInput::Timeout);
        if ms < 20_005 {
            assert!(Harness::ended(&out).is_none(), "ended at {ms}");
        } else {
            assert_eq!(out.text(), "410\n");
            assert_eq!(Harness::ended(&out), Some(EndReason::PingTimeout));
        }
    }
}

#[test]
fn no_media_for_ten_seconds_ends_the_stream() {
    let mut h = Harness::new();
    h.handshake();
    assert_eq!(h.session.poll_timeout(), Some(h.at(10_005)));
    h.control(5000, b"PING 1234\r\n\r\n");
    h.input(6000, ServerInput::Datagram(&video(0, &[0x67])));
    assert_eq!(h.session.poll_timeout(), Some(h.at(16_000)));
    h.control(10_000, b"PING 1234\r\n\r\n");
    h.control(15_000, b"PING 1234\r\n\r\n");
    assert!(Harness::ended(&h.input(15_999, ServerInput::Timeout)).is_none());
    let out = h.input(16_000, ServerInput::Timeout);
    assert_eq!(out.text(), "408\n");
    assert_eq!(Harness::ended(&out), Some(EndReason::MediaTimeout));
}

#[test]
fn terminate_sends_410() {
    let mut h = Harness::new();
    h.handshake();
    let out = h.input(100, ServerInput::Terminate);
    assert_eq!(out.text(), "410\n");
    assert_eq!(Harness::ended(&out), Some(EndReason::Terminated));
}

#[test]
fn connection_close_ends_the_session() {
    let mut h = Harness::new();
    h.control(0, b"HMAC\r\n\r\n");
    let out = h.input(1, ServerInput::ControlClosed);
    assert!(out.control.is_empty());
    assert_eq!(Harness::ended(&out), Some(EndReason::ConnectionClosed));
}

#[test]
fn audio_waits_for_the_first_video_keyframe() {
    let mut h = Harness::new();
    h.handshake();
    // OBS speed test: junk on the audio SSRC.
    for seq in 0..20 {
        let out = h.input(10, ServerInput::Datagram(&audio(seq)));
        assert!(out.media().is_empty());
    }
    // A P-slice first does not open audio either.
    let out = h.input(11, ServerInput::Datagram(&video(5, &[0x41, 0])));
    assert_eq!(out.media().len(), 1);
    assert!(
        h.input(12, ServerInput::Datagram(&audio(0)))
            .media()
            .is_empty()
    );
    let out = h.input(13, ServerInput::Datagram(&video(6, &[0x67, 0x42])));
    let media = out.media();
    assert_eq!(media[0].kind, MediaKind::Video);
    assert!(media[0].keyframe_start);
    assert_eq!(media[0].sequence, 6);
    assert_eq!(&media[0].payload[..], &[0x67, 0x42]);
    let out = h.input(14, ServerInput::Datagram(&audio(1)));
    assert_eq!(out.media()[0].kind, MediaKind::Audio);
    assert_eq!(h.session.stats().audio_before_keyframe, 21);
}

#[test]
fn echoes_pings_unchanged_and_reports_sender_reports() {
    let mut h = Harness::new();
    h.handshake();
    let ping = udp::ping_packet(1, 2);
    let out = h.input(10, ServerInput::Datagram(&Bytes::copy_from_slice(&ping)));
    assert_eq!(out.datagrams, [ping.to_vec()]);
    let report = SenderReport {
        ssrc: CHANNEL,
        ntp_time: 1,
        rtp_timestamp: 2,
        packet_count: 3,
        octet_count: 4,
    };
    let out = h.input(
        11,
        ServerInput::Datagram(&Bytes::copy_from_slice(&report.packet())),
    );
    assert_eq!(
        out.events,
        [ServerEvent::SenderReport {
            kind: MediaKind::Audio,
            report
        }]
    );
}

#[test]
fn ignores_foreign_datagrams() {
    let mut h = Harness::new();
    // Before streaming.
    assert!(
        h.input(0, ServerInput::Datagram(&video(0, &[0x67])))
            .events
            .is_empty()
    );
    h.handshake();
    let wrong_ssrc = RtpHeader {
        marker: false,
        payload_type: 96,
        sequence: 0,
        timestamp: 0,
        ssrc: 999,
    }
    .packet(&[0x67]);
    let datagrams: [&[u8]; 4] = [&wrong_ssrc, &[], &[0x80, 0x60], b"garbage"];
    for datagram in datagrams {
        let out = h.input(10, ServerInput::Datagram(&Bytes::copy_from_slice(datagram)));
        assert!(out.events.is_empty() && out.datagrams.is_empty());
    }
    assert_eq!(h.session.stats().unknown_datagrams, 5);
}

#[test]
fn nacks_gaps_and_marks_retransmissions() {
    let mut h = Harness::new();
    h.handshake();
    h.input(10, ServerInput::Datagram(&video(0, &[0x67])));
    h.input(11, ServerInput::Datagram(&video(3, &[0x41])));
    let at = h.session.poll_timeout().unwrap();
    assert_eq!(at, h.at(16));
    let out = h.input(16, ServerInput::Timeout);
    assert_eq!(out.datagrams.len(), 1);
    assert_eq!(
        udp::classify(&out.datagrams[0]),
        Datagram::Nack(Nack {
            sender_ssrc: 0,
            media_ssrc: CHANNEL + 1,
            lost: vec![1, 2]
        })
    );
    let out = h.input(20, ServerInput::Datagram(&video(1, &[0x41])));
    assert!(out.media()[0].retransmitted);
    // A second copy is a duplicate.
    assert!(
        h.input(21, ServerInput::Datagram(&video(1, &[0x41])))
            .media()
            .is_empty()
    );
    let stats = h.session.stats();
    assert_eq!((stats.nacked, stats.recovered, stats.duplicates), (2, 1, 1));
}

#[test]
fn media_payload_is_a_slice_of_the_datagram_not_a_copy() {
    let mut h = Harness::new();
    h.handshake();
    let datagram = video(1, &[0x67, 0x42, 0x00]);
    let out = h.input(10, ServerInput::Datagram(&datagram));
    let payload = &out.media()[0].payload;
    assert_eq!(&payload[..], &[0x67, 0x42, 0x00]);
    let within = datagram.as_ptr_range();
    assert!(within.contains(&payload.as_ptr()), "payload was copied");
}
