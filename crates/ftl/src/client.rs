//! The client side of an FTL session, sans-IO, speaking ftl-sdk's dialect: every command ends
//! in `\r\n\r\n`, attribute lines are sent in ftl-sdk's order without waiting for replies, and
//! `PING <channel>` goes out every 5 s once streaming.
//!
//! [`ClientSession`] runs the control connection; [`MediaSender`] numbers, packetizes and
//! keeps media for retransmission and answers the server's NACKs and ping echoes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::control::{self, LineReader, Reply, ReplyCode};
use crate::retransmit::RetransmitBuffer;
use crate::stream_key::StreamKey;
use crate::udp::{self, Datagram, RtpHeader, SenderReport};

/// Settings of a client session.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub key: StreamKey,
    pub vendor_name: String,
    pub vendor_version: String,
    /// Announce a video track (H264, PT 96, SSRC channel + 1).
    pub video: bool,
    /// Announce an audio track (Opus, PT 97, SSRC channel).
    pub audio: bool,
    /// How long to wait for each reply during the handshake (ftl-sdk: 5 s).
    pub reply_timeout: Duration,
    /// Interval of `PING` (ftl-sdk: 5 s).
    pub ping_interval: Duration,
    /// Give up when no `201` arrived for this long (ftl-sdk: 30 s).
    pub ping_reply_timeout: Duration,
}

impl ClientConfig {
    pub fn new(key: StreamKey) -> Self {
        Self {
            key,
            vendor_name: "deadsfu".into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            video: true,
            audio: true,
            reply_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            ping_reply_timeout: Duration::from_secs(30),
        }
    }
}

/// Input to a client session.
#[derive(Debug)]
pub enum ClientInput<'a> {
    /// Bytes read from the control connection.
    Control(&'a [u8]),
    /// The control connection closed or failed.
    ControlClosed,
    /// The time from [`ClientSession::poll_timeout`] has come.
    Timeout,
    /// Stop streaming: sends `DISCONNECT`.
    Disconnect,
}

/// Output of a client session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Bytes to write on the control connection.
    Control(Vec<u8>),
    Event(ClientEvent),
}

/// Something the caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Handshake done: send media to the server's IP at this UDP port.
    Connected { udp_port: u16 },
    /// The session is over; close the connection. Nothing else follows.
    Ended(ClientEnd),
}

/// Why a client session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEnd {
    /// We sent `DISCONNECT`.
    Disconnected,
    /// The server refused the handshake with this code (401, 405, 406, ...).
    Rejected(u16),
    /// The server ended the stream with this code (410, 408, ...).
    EndedByServer(u16),
    /// The server sent something that is not an FTL reply.
    BadReply,
    /// The control connection closed.
    ConnectionClosed,
    /// No reply within the reply timeout during the handshake.
    ReplyTimeout,
    /// No `201` for the ping reply timeout.
    PingTimeout,
}

#[derive(Debug)]
enum State {
    Idle,
    AwaitNonce {
        since: Instant,
    },
    AwaitConnect {
        since: Instant,
    },
    AwaitPort {
        since: Instant,
    },
    Streaming {
        next_ping: Instant,
        last_pong: Instant,
    },
    Ended,
}

/// Client side of one FTL control session.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    lines: LineReader,
    state: State,
    outputs: VecDeque<ClientOutput>,
}

impl ClientSession {
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            lines: LineReader::default(),
            state: State::Idle,
            outputs: VecDeque::new(),
        }
    }

    /// Starts the handshake on a freshly connected control connection.
    pub fn start(&mut self, now: Instant) {
        if matches!(self.state, State::Idle) {
            self.send("HMAC");
            self.state = State::AwaitNonce { since: now };
        }
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming { .. })
    }

    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// When to feed [`ClientInput::Timeout`]; `None` when idle or ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reply_timeout = self.config.reply_timeout;
        match self.state {
            State::AwaitNonce { since }
            | State::AwaitConnect { since }
            | State::AwaitPort { since } => Some(since + reply_timeout),
            State::Streaming {
                next_ping,
                last_pong,
            } => Some(next_ping.min(last_pong + self.config.ping_reply_timeout)),
            State::Idle | State::Ended => None,
        }
    }

    pub fn handle_input(&mut self, now: Instant, input: ClientInput<'_>) {
        if self.is_ended() {
            return;
        }
        match input {
            ClientInput::Control(bytes) => {
                if let Err(error) = self.lines.push(bytes) {
                    warn!(%error, "FTL server reply rejected");
                    self.end(ClientEnd::BadReply);
                    return;
                }
                loop {
                    match self.lines.next_line() {
                        Ok(Some(line)) => self.handle_line(now, &line),
                        Ok(None) => break,
                        Err(error) => {
                            warn!(%error, "bad FTL server reply");
                            self.end(ClientEnd::BadReply);
                        }
                    }
                    if self.is_ended() {
                        break;
                    }
                }
            }
            ClientInput::ControlClosed => self.end(ClientEnd::ConnectionClosed),
            ClientInput::Timeout => self.handle_timeout(now),
            ClientInput::Disconnect => {
                if !matches!(self.state, State::Idle) {
                    self.send("DISCONNECT");
                }
                self.end(ClientEnd::Disconnected);
            }
        }
    }

    fn send(&mut self, command: &str) {
        self.outputs
            .push_back(ClientOutput::Control(control::client_command(command)));
    }

    fn end(&mut self, end: ClientEnd) {
        if !self.is_ended() {
            info!(
                channel_id = self.config.key.channel_id,
                ?end,
                "FTL client session ended"
            );
            self.state = State::Ended;
            self.outputs
                .push_back(ClientOutput::Event(ClientEvent::Ended(end)));
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitNonce { since }
            | State::AwaitConnect { since }
            | State::AwaitPort { since }
                if now >= since + self.config.reply_timeout =>
            {
                self.end(ClientEnd::ReplyTimeout)
            }
            State::Streaming {
                next_ping,
                last_pong,
            } => {
                if now >= last_pong + self.config.ping_reply_timeout {
                    self.end(ClientEnd::PingTimeout);
                } else if now >= next_ping {
                    let ping = format!("PING {}", self.config.key.channel_id);
                    self.send(&ping);
                    self.state = State::Streaming {
                        next_ping: now + self.config.ping_interval,
                        last_pong,
                    };
                }
            }
            _ => {}
        }
    }

    fn handle_line(&mut self, now: Instant, line: &str) {
        let Some(reply) = Reply::parse(line) else {
            warn!("FTL server sent a line that is not a reply");
            self.end(ClientEnd::BadReply);
            return;
        };
        let ok = reply.code == ReplyCode::Ok.code();
        match self.state {
            State::AwaitNonce { .. } => {
                // ftl-sdk needs an even number of hex digits here.
                let nonce = match crate::hmac::decode_hex(&reply.text) {
                    Ok(nonce) if ok && !nonce.is_empty() => nonce,
                    _ if !ok => return self.end(ClientEnd::Rejected(reply.code)),
                    _ => return self.end(ClientEnd::BadReply),
                };
                let tag = crate::hmac::sign(self.config.key.secret.as_bytes(), &nonce);
                let connect = format!(
                    "CONNECT {} ${}",
                    self.config.key.channel_id,
                    crate::hmac::encode_hex(&tag)
                );
                self.send(&connect);
                self.state = State::AwaitConnect { since: now };
            }
            State::AwaitConnect { .. } => {
                if !ok {
                    return self.end(ClientEnd::Rejected(reply.code));
                }
                for attribute in self.attribute_lines() {
                    self.send(&attribute);
                }
                self.send(".");
                self.state = State::AwaitPort { since: now };
            }
            State::AwaitPort { .. } => {
                if !ok {
                    return self.end(ClientEnd::Rejected(reply.code));
                }
                // Without a port ftl-sdk falls back to 65535; do the same.
                let udp_port = reply.udp_port().unwrap_or(u16::MAX);
                info!(
                    channel_id = self.config.key.channel_id,
                    udp_port, "FTL connected"
                );
                self.state = State::Streaming {
                    next_ping: now + self.config.ping_interval,
                    last_pong: now,
                };
                self.outputs
                    .push_back(ClientOutput::Event(ClientEvent::Connected { udp_port }));
            }
            State::Streaming { next_ping, .. } => {
                if reply.code == ReplyCode::Ping.code() {
                    self.state = State::Streaming {
                        next_ping,
                        last_pong: now,
                    };
                } else {
                    // Any other line mid-stream is how a server ends a stream.
                    self.end(ClientEnd::EndedByServer(reply.code));
                }
            }
            State::Idle | State::Ended => {}
        }
    }

    /// The attribute lines, in the order ftl-sdk sends them.
    fn attribute_lines(&self) -> Vec<String> {
        let key = &self.config.key;
        let mut lines = vec![
            "ProtocolVersion: 0.9".to_owned(),
            format!("VendorName: {}", self.config.vendor_name),
            format!("VendorVersion: {}", self.config.vendor_version),
        ];
        if self.config.video {
            lines.extend([
                "Video: true".to_owned(),
                "VideoCodec: H264".to_owned(),
                "VideoHeight: 720".to_owned(),
                "VideoWidth: 1280".to_owned(),
                format!("VideoPayloadType: {VIDEO_PAYLOAD_TYPE}"),
                format!("VideoIngestSSRC: {}", key.video_ssrc()),
            ]);
        }
        if self.config.audio {
            lines.extend([
                "Audio: true".to_owned(),
                "AudioCodec: OPUS".to_owned(),
                format!("AudioPayloadType: {AUDIO_PAYLOAD_TYPE}"),
                format!("AudioIngestSSRC: {}", key.audio_ssrc()),
            ]);
        }
        lines
    }
}

/// ftl-sdk's payload types.
pub const VIDEO_PAYLOAD_TYPE: u8 = 96;
pub const AUDIO_PAYLOAD_TYPE: u8 = 97;

/// Largest RTP payload sent in one packet; larger H264 NAL units are split into FU-A.
pub const MAX_RTP_PAYLOAD: usize = 1380;

/// Numbering, retransmission store and counters of one outgoing RTP stream.
#[derive(Debug)]
pub struct OutgoingTrack {
    pub payload_type: u8,
    pub ssrc: u32,
    next_sequence: u16,
    sent: RetransmitBuffer,
    packets: u32,
    octets: u32,
    last_timestamp: Option<(u32, Instant)>,
}

impl OutgoingTrack {
    pub fn new(payload_type: u8, ssrc: u32) -> Self {
        Self {
            payload_type,
            ssrc,
            next_sequence: 0,
            sent: RetransmitBuffer::default(),
            packets: 0,
            octets: 0,
            last_timestamp: None,
        }
    }

    /// Builds the next packet, keeps it for retransmission and returns it.
    pub fn packet(&mut self, now: Instant, timestamp: u32, marker: bool, payload: &[u8]) -> Bytes {
        let sequence = self.next_sequence;
        self.next_sequence = sequence.wrapping_add(1);
        let packet = Bytes::from(
            RtpHeader {
                marker,
                payload_type: self.payload_type,
                sequence,
                timestamp,
                ssrc: self.ssrc,
            }
            .packet(payload),
        );
        self.sent.insert(sequence, packet.clone());
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload.len() as u32);
        self.last_timestamp = Some((timestamp, now));
        packet
    }

    /// A sender report for `wall_clock_ntp` (NTP time of `now`); `None` before any media.
    pub fn sender_report(
        &self,
        now: Instant,
        wall_clock_ntp: u64,
        clock_rate: u32,
    ) -> Option<SenderReport> {
        let (timestamp, at) = self.last_timestamp?;
        // Project the last timestamp to `now` so NTP and RTP time describe the same instant.
        let elapsed = now.saturating_duration_since(at);
        let advance = (elapsed.as_micros() * u128::from(clock_rate) / 1_000_000) as u32;
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp_time: wall_clock_ntp,
            rtp_timestamp: timestamp.wrapping_add(advance),
            packet_count: self.packets,
            octet_count: self.octets,
        })
    }

    /// The stored packet for a NACKed sequence number.
    pub fn retransmission(&self, sequence: u16) -> Option<Bytes> {
        self.sent.get(sequence).cloned()
    }
}

/// What the client does with a datagram from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerDatagram {
    /// Packets to send again, answering a NACK.
    Retransmit(Vec<Bytes>),
    /// An echo of our ping: its clock, as sent.
    PingEcho {
        seconds: i64,
        microseconds: i64,
    },
    Ignored,
}

/// Answers a datagram from the server against the tracks' stores.
pub fn handle_server_datagram(tracks: &[&OutgoingTrack], datagram: &[u8]) -> ServerDatagram {
    match udp::classify(datagram) {
        Datagram::Nack(nack) => {
            let Some(track) = tracks.iter().find(|t| t.ssrc == nack.media_ssrc) else {
                return ServerDatagram::Ignored;
            };
            // A NACK can name many packets; answer at most a window's worth.
            let packets: Vec<Bytes> = nack
                .lost
                .iter()
                .take(512)
                .filter_map(|&sequence| track.retransmission(sequence))
                .collect();
            debug!(
                ssrc = nack.media_ssrc,
                asked = nack.lost.len(),
                found = packets.len(),
                "NACK"
            );
            ServerDatagram::Retransmit(packets)
        }
        Datagram::Ping => match udp::ping_time(datagram) {
            Some((seconds, microseconds)) => ServerDatagram::PingEcho {
                seconds,
                microseconds,
            },
            None => ServerDatagram::Ignored,
        },
        _ => ServerDatagram::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(session: &mut ClientSession) -> (String, Vec<ClientEvent>) {
        let mut text = String::new();
        let mut events = Vec::new();
        while let Some(output) = session.poll_output() {
            match output {
                ClientOutput::Control(bytes) => text += &String::from_utf8(bytes).unwrap(),
                ClientOutput::Event(event) => events.push(event),
            }
        }
        (text, events)
    }

    fn new_session() -> (ClientSession, Instant) {
        let key = StreamKey::parse("1234-sesame").unwrap();
        let now = Instant::now();
        let mut session = ClientSession::new(ClientConfig::new(key));
        session.start(now);
        (session, now)
    }

    #[test]
    fn speaks_ftl_sdk_dialect() {
        let (mut session, now) = new_session();
        assert_eq!(drain(&mut session).0, "HMAC\r\n\r\n");
        session.handle_input(now, ClientInput::Control(b"200 0001ff\n"));
        let (text, _) = drain(&mut session);
        let tag = crate::hmac::sign(b"sesame", &[0, 1, 0xff]);
        assert_eq!(
            text,
            format!("CONNECT 1234 ${}\r\n\r\n", crate::hmac::encode_hex(&tag))
        );
        session.handle_input(now, ClientInput::Control(b"200\n"));
        let (text, _) = drain(&mut session);
        let expected = [
            "ProtocolVersion: 0.9",
            "VendorName: deadsfu",
            &format!("VendorVersion: {}", env!("CARGO_PKG_VERSION")),
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
            ".",
        ]
        .map(|line| format!("{line}\r\n\r\n"))
        .concat();
        assert_eq!(text, expected);
        session.handle_input(now, ClientInput::Control(b"200 hi. Use UDP port 8085\n"));
        assert_eq!(
            drain(&mut session).1,
            [ClientEvent::Connected { udp_port: 8085 }]
        );

        // PING every 5 s.
        assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(5)));
        session.handle_input(now + Duration::from_secs(5), ClientInput::Timeout);
        assert_eq!(drain(&mut session).0, "PING 1234\r\n\r\n");
        session.handle_input(now + Duration::from_secs(5), ClientInput::Control(b"201\n"));
        assert!(session.is_streaming());

        session.handle_input(now + Duration::from_secs(6), ClientInput::Disconnect);
        let (text, events) = drain(&mut session);
        assert_eq!(text, "DISCONNECT\r\n\r\n");
        assert_eq!(events, [ClientEvent::Ended(ClientEnd::Disconnected)]);
    }

    #[test]
    fn reports_rejections_and_server_ends() {
        let (mut session, now) = new_session();
        session.handle_input(now, ClientInput::Control(b"200 00\n"));
        session.handle_input(now, ClientInput::Control(b"405\n"));
        assert_eq!(
            drain(&mut session).1,
            [ClientEvent::Ended(ClientEnd::Rejected(405))]
        );

        let (mut session, now) = new_session();
        session.handle_input(
            now,
            ClientInput::Control(b"200 00\n200\n200 hi. Use UDP port 1\n410\n"),
        );
        assert_eq!(
            drain(&mut session).1,
            [
                ClientEvent::Connected { udp_port: 1 },
                ClientEvent::Ended(ClientEnd::EndedByServer(410))
            ]
        );

        let (mut session, now) = new_session();
        session.handle_input(now, ClientInput::Control(b"200 abc\n"));
        assert_eq!(
            drain(&mut session).1,
            [ClientEvent::Ended(ClientEnd::BadReply)]
        );
    }

    #[test]
    fn times_out_waiting_for_replies_and_pongs() {
        let (mut session, now) = new_session();
        session.handle_input(now + Duration::from_secs(5), ClientInput::Timeout);
        assert_eq!(
            drain(&mut session).1,
            [ClientEvent::Ended(ClientEnd::ReplyTimeout)]
        );

        let (mut session, now) = new_session();
        session.handle_input(
            now,
            ClientInput::Control(b"200 00\n200\n200 hi. Use UDP port 1\n"),
        );
        drain(&mut session);
        let mut t = now;
        while !session.is_ended() {
            t = session.poll_timeout().unwrap();
            session.handle_input(t, ClientInput::Timeout);
        }
        assert_eq!(t, now + Duration::from_secs(30));
        assert!(
            drain(&mut session)
                .1
                .contains(&ClientEvent::Ended(ClientEnd::PingTimeout))
        );
    }

    #[test]
    fn answers_nacks_from_the_store() {
        let now = Instant::now();
        let mut video = OutgoingTrack::new(96, 11);
        let sent: Vec<Bytes> = (0..5)
            .map(|i| video.packet(now, i * 3000, true, &[0x41, i as u8]))
            .collect();
        let nack = udp::Nack {
            sender_ssrc: 0,
            media_ssrc: 11,
            lost: vec![1, 3, 99],
        }
        .packet();
        assert_eq!(
            handle_server_datagram(&[&video], &nack),
            ServerDatagram::Retransmit(vec![sent[1].clone(), sent[3].clone()])
        );
        let ping = udp::ping_packet(7, 8);
        assert_eq!(
            handle_server_datagram(&[&video], &ping),
            ServerDatagram::PingEcho {
                seconds: 7,
                microseconds: 8
            }
        );
        let report = video
            .sender_report(now + Duration::from_secs(1), 5, 90_000)
            .unwrap();
        assert_eq!(report.rtp_timestamp, 12_000 + 90_000);
        assert_eq!((report.packet_count, report.octet_count), (5, 10));
    }
}
