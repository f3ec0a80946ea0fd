//! The relay with byte strings and fake time.

use super::*;
use deadsfu_ftl::hmac::{encode_hex, sign};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SECRET: &str = "sesame";
const CHANNEL: u32 = 42;
const PROXY_UDP: u16 = 7000;

#[derive(Debug, Default)]
struct Drained {
    client: String,
    sfu: String,
    events: Vec<RelayEvent>,
}

fn drain(relay: &mut RelaySession) -> Drained {
    let mut out = Drained::default();
    while let Some(output) = relay.poll_output() {
        match output {
            RelayOutput::ToClient(bytes) => out.client += &String::from_utf8(bytes).unwrap(),
            RelayOutput::ToSfu(bytes) => out.sfu += &String::from_utf8(bytes).unwrap(),
            RelayOutput::Event(event) => out.events.push(event),
        }
    }
    out
}

fn cmd(line: &str) -> Vec<u8> {
    format!("{line}\r\n\r\n").into_bytes()
}

const CLIENT_NONCE: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
const SFU_NONCE: [u8; 3] = [1, 2, 3];

/// ftl-sdk's attribute lines for channel 42.
const ATTRIBUTES: [&str; 13] = [
    "ProtocolVersion: 0.9",
    "VendorName: OBS Studio",
    "VendorVersion: 29.1.3",
    "Video: true",
    "VideoCodec: H264",
    "VideoHeight: 720",
    "VideoWidth: 1280",
    "VideoPayloadType: 96",
    "VideoIngestSSRC: 43",
    "Audio: true",
    "AudioCodec: OPUS",
    "AudioPayloadType: 97",
    "AudioIngestSSRC: 42",
];

fn new_relay(now: Instant) -> RelaySession {
    RelaySession::new(now, RelayConfig::new(PROXY_UDP), CLIENT_NONCE.to_vec())
}

fn connect_line(secret: &str) -> Vec<u8> {
    let tag = sign(secret.as_bytes(), &CLIENT_NONCE);
    cmd(&format!("CONNECT {CHANNEL} ${}", encode_hex(&tag)))
}

fn found() -> RelayInput<'static> {
    RelayInput::Secret(SecretLookup::Found(ChannelSecret::new(SECRET)))
}

/// Up to the client's `200` for `CONNECT` (the SFU accepted the proxy's own).
fn to_metadata(relay: &mut RelaySession, now: Instant) {
    relay.handle_input(now, RelayInput::Client(&cmd("HMAC")));
    relay.handle_input(now, RelayInput::Client(&connect_line(SECRET)));
    relay.handle_input(now, found());
    relay.handle_input(now, RelayInput::SfuConnected);
    relay.handle_input(now, RelayInput::Sfu(b"200 010203\n"));
    relay.handle_input(now, RelayInput::Sfu(b"200\n"));
    let out = drain(relay);
    assert!(out.client.ends_with("200\n"), "{out:?}");
}

fn attributes_and_dot() -> Vec<u8> {
    let mut bytes: Vec<u8> = ATTRIBUTES.iter().flat_map(|line| cmd(line)).collect();
    bytes.extend(cmd("."));
    bytes
}

/// Up to streaming, outputs drained.
fn to_streaming(relay: &mut RelaySession, now: Instant) {
    to_metadata(relay, now);
    relay.handle_input(now, RelayInput::Client(&attributes_and_dot()));
    relay.handle_input(now, RelayInput::Sfu(b"200 hi. Use UDP port 9000\n"));
    relay.handle_input(now, RelayInput::MediaPathReady);
    let out = drain(relay);
    assert_eq!(out.client, format!("200 hi. Use UDP port {PROXY_UDP}\n"));
    assert!(relay.is_streaming());
}

#[test]
fn relays_a_whole_session() {
    let t0 = Instant::now();
    let mut relay = new_relay(t0);
    relay.handle_input(t0, RelayInput::Client(&cmd("HMAC")));
    assert_eq!(drain(&mut relay).client, "200 deadbeef\n");

    relay.handle_input(t0, RelayInput::Client(&connect_line(SECRET)));
    let out = drain(&mut relay);
    assert_eq!(
        out.events,
        [RelayEvent::SecretNeeded {
            channel_id: CHANNEL
        }]
    );
    assert_eq!(out.client, "");
    relay.handle_input(t0, found());
    let out = drain(&mut relay);
    assert_eq!(
        out.events,
        [RelayEvent::ConnectSfu {
            channel_id: CHANNEL
        }]
    );
    // The client's 200 waits for the SFU.
    assert_eq!((out.client.as_str(), out.sfu.as_str()), ("", ""));
    assert!(relay.is_authenticated());

    relay.handle_input(t0, RelayInput::SfuConnected);
    assert_eq!(drain(&mut relay).sfu, "HMAC\r\n\r\n");
    relay.handle_input(t0, RelayInput::Sfu(b"200 010203\n"));
    let tag = sign(SECRET.as_bytes(), &SFU_NONCE);
    assert_eq!(
        drain(&mut relay).sfu,
        format!("CONNECT {CHANNEL} ${}\r\n\r\n", encode_hex(&tag))
    );
    relay.handle_input(t0, RelayInput::Sfu(b"200\n"));
    assert_eq!(drain(&mut relay).client, "200\n");

    // Attributes pass through verbatim with `.`; the port reply waits for the SFU.
    relay.handle_input(t0, RelayInput::Client(&attributes_and_dot()));
    let out = drain(&mut relay);
    assert_eq!(out.sfu.as_bytes(), attributes_and_dot());
    assert_eq!(out.client, "");
    relay.handle_input(t0, RelayInput::Sfu(b"200 hi. Use UDP port 9000\n"));
    let out = drain(&mut relay);
    assert_eq!(
        out.events,
        [RelayEvent::OpenMediaPath {
            channel_id: CHANNEL,
            sfu_udp_port: 9000,
            ssrcs: vec![43, 42]
        }]
    );
    assert_eq!(out.client, "");
    relay.handle_input(t0, RelayInput::MediaPathReady);
    assert_eq!(drain(&mut relay).client, "200 hi. Use UDP port 7000\n");

    // Datagrams from the SFU go to the client once its address is known.
    assert_eq!(relay.sfu_datagram(b"nack"), None);
    let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    relay.handle_input(t0, RelayInput::ClientUdp(client));
    assert_eq!(relay.sfu_datagram(b"nack"), Some(client));

    // PING and 201 pass through; other commands are ignored.
    let t1 = t0 + Duration::from_secs(5);
    relay.handle_input(t1, RelayInput::Client(&cmd("PING 42")));
    assert_eq!(drain(&mut relay).sfu, "PING 42\r\n\r\n");
    relay.handle_input(t1, RelayInput::Sfu(b"201\n"));
    assert_eq!(drain(&mut relay).client, "201\n");
    relay.handle_input(t1, RelayInput::Client(&cmd("HMAC")));
    relay.handle_input(t1, RelayInput::Client(&cmd("Video: false")));
    let out = drain(&mut relay);
    assert_eq!((out.client.as_str(), out.sfu.as_str()), ("", ""));
    assert_eq!(
        relay.poll_timeout(),
        Some(t1 + Duration::from_secs(15)),
        "the client's ping deadline"
    );

    relay.handle_input(t1, RelayInput::Client(&cmd("DISCONNECT 42")));
    let out = drain(&mut relay);
    assert_eq!(out.sfu, "DISCONNECT\r\n\r\n");
    assert_eq!(
        out.events,
        [RelayEvent::Ended(RelayEnd::ClientDisconnected)]
    );
    assert_eq!(relay.poll_timeout(), None);
    assert_eq!(relay.sfu_datagram(b"late"), None);
    relay.handle_input(t1, RelayInput::Sfu(b"201\n"));
    assert!(relay.poll_output().is_none());
    assert_eq!(relay.stats().pings_relayed, 1);
    assert_eq!(relay.stats().sfu_datagrams, 1);
}

#[test]
fn works_on_bytes_one_at_a_time() {
    let t0 = Instant::now();
    let mut relay = new_relay(t0);
    let feed_client = |relay: &mut RelaySession, bytes: &[u8]| {
        for byte in bytes {
            relay.handle_input(t0, RelayInput::Client(std::slice::from_ref(byte)));
        }
    };
    let feed_sfu = |relay: &mut RelaySession, bytes: &[u8]| {
        for byte in bytes {
            relay.handle_input(t0, RelayInput::Sfu(std::slice::from_ref(byte)));
        }
    };
    feed_client(&mut relay, &cmd("HMAC"));
    feed_client(&mut relay, &connect_line(SECRET));
    relay.handle_input(t0, found());
    relay.handle_input(t0, RelayInput::SfuConnected);
    feed_sfu(&mut relay, b"200 010203\n200\n");
    feed_client(&mut relay, &attributes_and_dot());
    feed_sfu(&mut relay, b"200 hi. Use UDP port 9000\n");
    relay.handle_input(t0, RelayInput::MediaPathReady);
    let out = drain(&mut relay);
    assert_eq!(
        out.client,
        "200 deadbeef\n200\n200 hi. Use UDP port 7000\n".to_string()
    );
    assert!(out.sfu.ends_with(".\r\n\r\n"));
}

#[test]
fn lines_sent_early_wait_for_their_turn() {
    let t0 = Instant::now();
    let mut relay = new_relay(t0);
    to_metadata(&mut relay, t0);
    // A client that pipelines a PING after `.`: it reaches the SFU only after the port reply
    // reached the client.
    let mut bytes = attributes_and_dot();
    bytes.extend(cmd("PING 42"));
    relay.handle_input(t0, RelayInput::Client(&bytes));
    let out = drain(&mut relay);
    assert!(!out.sfu.contains("PING"));
    relay.handle_input(t0, RelayInput::Sfu(b"200 hi. Use UDP port 9000\n201\n"));
    drain(&mut relay);
    relay.handle_input(t0, RelayInput::MediaPathReady);
    let out = drain(&mut relay);
    assert_eq!(out.client, "200 hi. Use UDP port 7000\n201\n");
    assert_eq!(out.sfu, "PING 42\r\n\r\n");
}

#[test]
fn wrong_key_and_unknown_channel_never_reach_an_sfu() {
    let t0 = Instant::now();
    let cases = [
        (connect_line("wrong"), found(), "405\n", Rejection::WrongKey),
        (
            connect_line(SECRET),
            RelayInput::Secret(SecretLookup::UnknownChannel),
            "401\n",
            Rejection::UnknownChannel,
        ),
        (
            connect_line(SECRET),
            RelayInput::Secret(SecretLookup::Failed),
            "500\n",
            Rejection::LookupFailed,
        ),
    ];
    for (connect, lookup, reply, rejection) in cases {
        let mut relay = new_relay(t0);
        relay.handle_input(t0, RelayInput::Client(&cmd("HMAC")));
        relay.handle_input(t0, RelayInput::Client(&connect));
        drain(&mut relay);
        relay.handle_input(t0, lookup);
        let out = drain(&mut relay);
        assert_eq!(out.client, reply);
        assert_eq!(out.sfu, "");
        assert_eq!(
            out.events,
            [RelayEvent::Ended(RelayEnd::Rejected(rejection))]
        );
        assert!(!relay.is_authenticated());
    }
}

#[test]
fn not_ftl_is_refused_with_400() {
    let t0 = Instant::now();
    let mut relay = new_relay(t0);
    relay.handle_input(t0, RelayInput::Client(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    let out = drain(&mut relay);
    assert_eq!(out.client, "400\n");
    assert_eq!(
        out.events,
        [RelayEvent::Ended(RelayEnd::Rejected(Rejection::BadRequest))]
    );

    // A line longer than the codec takes.
    let mut relay = new_relay(t0);
    relay.handle_input(t0, RelayInput::Client(&[b'A'; 5000]));
    let out = drain(&mut relay);
    assert_eq!(out.client, "400\n");
    assert!(relay.is_ended());
}

#[test]
fn sfu_refusals_reach_the_client() {
    let t0 = Instant::now();
    // At CONNECT: 406 is passed on, anything else becomes 500.
    for (sfu_reply, client_reply, rejection) in [
        (&b"406\n"[..], "406\n", Rejection::ChannelInUse),
        (b"405\n", "500\n", Rejection::SfuRefused),
        (b"bogus\n", "500\n", Rejection::SfuFailed),
    ] {
        let mut relay = new_relay(t0);
        relay.handle_input(t0, RelayInput::Client(&cmd("HMAC")));
        relay.handle_input(t0, RelayInput::Client(&connect_line(SECRET)));
        relay.handle_input(t0, found());
        relay.handle_input(t0, RelayInput::SfuConnected);
        relay.handle_input(t0, RelayInput::Sfu(b"200 010203\n"));
        drain(&mut relay);
        relay.handle_input(t0, RelayInput::Sfu(sfu_reply));
        let out = drain(&mut relay);
        assert_eq!(out.client, client_reply);
        assert_eq!(
            out.events,
            [RelayEvent::Ended(RelayEnd::Rejected(rejection))]
        );
        // A refusing SFU closes by itself; a broken one is told.
        let told = rejection == Rejection::SfuFailed;
        assert_eq!(out.sfu == "DISCONNECT\r\n\r\n", told, "{out:?}");
    }

    // At `.`: the SFU's code instead of the held port reply.
    let mut relay = new_relay(t0);
    to_metadata(&mut relay, t0);
    relay.handle_input(t0, RelayInput::Client(&attributes_and_dot()));
    drain(&mut relay);
    relay.handle_input(t0, RelayInput::Sfu(b"404\n"));
    let out = drain(&mut relay);
    assert_eq!(out.client, "404\n");
    assert_eq!(
        out.events,
        [RelayEvent::Ended(RelayEnd::Rejected(Rejection::SfuRefused))]
    );

    // No SFU for the channel, or none reachable.
    for (why, rejection) in [
        (SfuUnavailable::NoRoute, Rejection::NoSfu),
        (SfuUnavailable::Unreachable, Rejection::SfuFailed),
    ] {
        let mut relay = new_relay(t0);
        relay.handle_input(t0, RelayInput::Client(&cmd("HMAC")));
        relay.handle_input(t0, RelayInput::Client(&connect_line(SECRET)));
        relay.handle_input(t0, found());
        drain(&mut relay);
        relay.handle_input(t0, RelayInput::SfuUnavailable(why));
        let out = drain(&mut relay);
        assert_eq!((out.client.as_str(), out.sfu.as_str()), ("500\n", ""));
        assert_eq!(
            out.events,
            [RelayEvent::Ended(RelayEnd::Rejected(rejection))]
        );
    }

    // The SFU goes away before the client's `.`.
    let mut relay = new_relay(t0);
    to_metadata(&mut relay, t0);
    relay.handle_input(t0, RelayInput::SfuClosed);
    let out = drain(&mut relay);
    assert_eq!((out.client.as_str(), out.sfu.as_str()), ("500\n", ""));
    assert_eq!(
        out.events,
        [RelayEvent::Ended(RelayEnd::Rejected(Rejection::SfuFailed))]
    );

    // The media path cannot be set up.
    let mut relay = new_relay(t0);
    to_metadata(&mut relay, t0);
    relay.handle_input(t0, RelayInput::Client(&attributes_and_dot()));
    relay.handle_input(t0, RelayInput::Sfu(b"200 hi. Use UDP port 9000\n"));
    drain(&mut relay);
    relay.handle_input(t0, RelayInput::MediaPathFailed);
    let out = drain(&mut relay);
    assert_eq!(
        (out.client.as_str(), out.sfu.as_str()),
        ("500\n", "DISCONNECT\r\n\r\n")
    );
}

#[test]
fn the_handshake_has_one_deadline() {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(5);

    // A client that sends nothing.
    let mut relay = new_relay(t0);
    assert_eq!(relay.poll_timeout(), Some(deadline));
    relay.handle_input(deadline - Duration::from_millis(1), RelayInput::Timeout);
    assert!(relay.poll_output().is_none());
    relay.handle_input(deadline, RelayInput::Timeout);
    let out = drain(&mut relay);
    assert_eq!(out.client, "400\n");
    assert_eq!(
        out.events,
        [RelayEvent::Ended(RelayEnd::Rejected(
            Rejection::HandshakeTimeout
        ))]
    );

    // A client that stalls in its attributes: the SFU is told too.
    let mut relay = new_relay(t0);
    to_metadata(&mut relay, t0);
    relay.handle_input(t0, RelayInput::Client(&cmd("Video: true")));
    relay.handle_input(deadline, RelayInput::Timeout);
    let out = drain(&mut relay);
    assert_eq!(
        (out.client.as_str(), out.sfu.as_str()),
        ("400\n", "DISCONNECT\r\n\r\n")
    );
    assert_eq!(
        out.events,
        [RelayEvent::Ended(RelayEnd::Rejected(
            Rejection::HandshakeTimeout
        ))]
    );

    // An SFU that does not answer, before and after `.`: 500 to the client.
    let mut relay = new_relay(t0);
    relay.handle_input(t0, RelayInput::Client(&cmd("HMAC")));
    relay.handle_input(t0, RelayInput::Client(&connect_line(SECRET)));
    relay.handle_input(t0, found());
    relay.handle_input(t0, RelayInput::SfuConnected);
    drain(&mut relay);
    relay.handle_input(deadline, RelayInput::Timeout);
    let out = drain(&mut relay);
    assert_eq!(
        (out.client.as_str(), out.sfu.as_str()),
        ("500\n", "DISCONNECT\r\n\r\n")
    );
    assert_eq!(
        out.events,
        [RelayEvent::Ended(RelayEnd::Rejected(Rejection::SfuFailed))]
    );

    let mut relay = new_relay(t0);
    to_metadata(&mut relay, t0);
    relay.handle_input(t0, RelayInput::Client(&attributes_and_dot()));
    drain(&mut relay);
    relay.handle_input(deadline, RelayInput::Timeout);
    let out = drain(&mut relay);
    assert_eq!(
        (out.client.as_str(), out.sfu.as_str()),
        ("500\n", "DISCONNECT\r\n\r\n")
    );
}

#[test]
fn either_side_ending_ends_both() {
    let t0 = Instant::now();
    let cases: [(RelayInput<'static>, &str, &str, RelayEnd); 6] = [
        (RelayInput::SfuClosed, "410\n", "", RelayEnd::SfuClosed),
        (
            RelayInput::Sfu(b"410\n"),
            "410\n",
            "",
            RelayEnd::SfuEnded(410),
        ),
        (
            RelayInput::Sfu(b"408\n"),
            "408\n",
            "",
            RelayEnd::SfuEnded(408),
        ),
        (
            RelayInput::Sfu(b"HTTP/1.1 400 Bad\n"),
            "410\n",
            "DISCONNECT\r\n\r\n",
            RelayEnd::SfuClosed,
        ),
        (
            RelayInput::ClientClosed,
            "",
            "DISCONNECT\r\n\r\n",
            RelayEnd::ClientClosed,
        ),
        (
            RelayInput::Terminate,
            "410\n",
            "DISCONNECT\r\n\r\n",
            RelayEnd::Terminated,
        ),
    ];
    for (input, client, sfu, end) in cases {
        let mut relay = new_relay(t0);
        to_streaming(&mut relay, t0);
        relay.handle_input(t0, input);
        let out = drain(&mut relay);
        assert_eq!((out.client.as_str(), out.sfu.as_str()), (client, sfu));
        assert_eq!(out.events, [RelayEvent::Ended(end)]);
    }
}

#[test]
fn silent_sides_time_out_while_streaming() {
    let t0 = Instant::now();
    // The client stops pinging.
    let mut relay = new_relay(t0);
    to_streaming(&mut relay, t0);
    let at = relay.poll_timeout().unwrap();
    assert_eq!(at, t0 + Duration::from_secs(15));
    relay.handle_input(at, RelayInput::Timeout);
    let out = drain(&mut relay);
    assert_eq!(
        (out.client.as_str(), out.sfu.as_str()),
        ("410\n", "DISCONNECT\r\n\r\n")
    );
    assert_eq!(out.events, [RelayEvent::Ended(RelayEnd::ClientPingTimeout)]);

    // The client pings every 5 s, the SFU never answers.
    let mut relay = new_relay(t0);
    to_streaming(&mut relay, t0);
    let mut now = t0;
    while !relay.is_ended() {
        now += Duration::from_secs(5);
        relay.handle_input(now, RelayInput::Client(&cmd("PING 42")));
        if let Some(at) = relay.poll_timeout()
            && at <= now
        {
            relay.handle_input(now, RelayInput::Timeout);
        }
    }
    assert_eq!(now, t0 + Duration::from_secs(30));
    let out = drain(&mut relay);
    assert!(out.client.ends_with("410\n"));
    assert_eq!(out.events, [RelayEvent::Ended(RelayEnd::SfuPingTimeout)]);
}

/// Random inputs in random order: no panic, exactly one `Ended`, nothing after it, a timeout
/// while alive and none after.
#[test]
fn fuzz_random_inputs() {
    let client_pieces: Vec<Vec<u8>> = vec![
        cmd("HMAC"),
        connect_line(SECRET),
        connect_line("wrong"),
        cmd("CONNECT 42 $zz"),
        cmd("CONNECT"),
        cmd("Video: true"),
        cmd("VideoIngestSSRC: 43"),
        cmd("VideoPayloadType: 300"),
        cmd("."),
        cmd("PING 42"),
        cmd("DISCONNECT"),
        attributes_and_dot(),
        b"\r\n\r\n".to_vec(),
        b"\xff\xfe\n".to_vec(),
        vec![b'x'; 3000],
    ];
    let sfu_pieces: Vec<Vec<u8>> = vec![
        b"200 010203\n".to_vec(),
        b"200 abc\n".to_vec(),
        b"200\n".to_vec(),
        b"201\n".to_vec(),
        b"406\n".to_vec(),
        b"410\n".to_vec(),
        b"200 hi. Use UDP port 9000\n".to_vec(),
        b"200 hi.\n".to_vec(),
        b"junk\n".to_vec(),
        b"\n\r\n".to_vec(),
        vec![b'9'; 2500],
    ];
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut streamed = 0;
    for run in 0..3000 {
        let t0 = Instant::now();
        let mut now = t0;
        let mut relay = new_relay(t0);
        // Start a third of the runs mid-handshake and a third streaming.
        match run % 3 {
            0 => {}
            1 => to_metadata(&mut relay, t0),
            _ => to_streaming(&mut relay, t0),
        }
        let mut ended = 0;
        for _ in 0..rng.random_range(1..60) {
            let mut random_bytes = vec![0u8; rng.random_range(0..64)];
            rng.fill(&mut random_bytes[..]);
            let piece = |rng: &mut StdRng, pieces: &[Vec<u8>]| {
                let piece = &pieces[rng.random_range(0..pieces.len())];
                // Sometimes only part of it.
                let cut = if rng.random_bool(0.2) {
                    rng.random_range(0..=piece.len())
                } else {
                    piece.len()
                };
                piece[..cut].to_vec()
            };
            let client = piece(&mut rng, &client_pieces);
            let sfu = piece(&mut rng, &sfu_pieces);
            let was_ended = relay.is_ended();
            match rng.random_range(0..17) {
                0..=3 => relay.handle_input(now, RelayInput::Client(&client)),
                4..=6 => relay.handle_input(now, RelayInput::Sfu(&sfu)),
                7 => relay.handle_input(now, RelayInput::Client(&random_bytes)),
                8 => relay.handle_input(now, RelayInput::Sfu(&random_bytes)),
                9 => relay.handle_input(
                    now,
                    RelayInput::Secret(match rng.random_range(0..3) {
                        0 => SecretLookup::Found(ChannelSecret::new(SECRET)),
                        1 => SecretLookup::UnknownChannel,
                        _ => SecretLookup::Failed,
                    }),
                ),
                10 => relay.handle_input(now, RelayInput::SfuConnected),
                11 => {
                    relay.handle_input(now, RelayInput::SfuUnavailable(SfuUnavailable::Unreachable))
                }
                12 => relay.handle_input(
                    now,
                    if rng.random_bool(0.8) {
                        RelayInput::MediaPathReady
                    } else {
                        RelayInput::MediaPathFailed
                    },
                ),
                13 => {
                    let _ = relay.sfu_datagram(&random_bytes);
                    relay.handle_input(now, RelayInput::ClientUdp("127.0.0.1:9".parse().unwrap()));
                }
                14 => {
                    now += Duration::from_millis(rng.random_range(0..8000));
                    relay.handle_input(now, RelayInput::Timeout);
                }
                15 => relay.handle_input(now, RelayInput::ClientClosed),
                _ => relay.handle_input(
                    now,
                    if rng.random_bool(0.5) {
                        RelayInput::SfuClosed
                    } else {
                        RelayInput::Terminate
                    },
                ),
            }
            streamed += u32::from(relay.is_streaming());
            while let Some(output) = relay.poll_output() {
                assert!(!was_ended, "output after the end: {output:?}");
                if let RelayOutput::Event(RelayEvent::Ended(_)) = output {
                    ended += 1;
                    assert!(relay.poll_output().is_none(), "output after Ended");
                }
            }
            assert_eq!(relay.is_ended(), relay.poll_timeout().is_none());
            assert!(ended <= 1);
        }
        assert_eq!(ended == 1, relay.is_ended());
    }
    assert!(streamed > 1000, "too few streaming steps: {streamed}");
}
