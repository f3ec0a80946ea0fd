//! The server side of one FTL session, sans-IO.
//!
//! The caller feeds control bytes, datagrams from the client's UDP address, answers to its
//! requests and timeouts through [`ServerSession::handle_input`], then drains
//! [`ServerSession::poll_output`] and arms a timer for [`ServerSession::poll_timeout`]. The
//! session asks the caller to look up a channel's secret and to claim the channel through
//! events, so storage and room rules stay outside.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadsfu_media::keyframe::h264_keyframe_start;
use tracing::{debug, info, warn};

use crate::control::{self, Command, LineReader, ReplyCode};
use crate::media::{FtlMedia, MediaKind};
use crate::nack::{Arrival, NackConfig, NackTracker};
use crate::stream_key::ChannelSecret;
use crate::udp::{self, Datagram, Nack, SenderReport};

/// Default RTP payload types and clock rates of ftl-sdk.
pub const DEFAULT_VIDEO_PAYLOAD_TYPE: u8 = 96;
pub const DEFAULT_AUDIO_PAYLOAD_TYPE: u8 = 97;

/// Length of the HMAC nonce this server hands out.
pub const NONCE_LEN: usize = 64;

/// Most attribute lines accepted in one handshake.
pub const MAX_ATTRIBUTES: usize = 64;

/// Settings of a server session.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The UDP port announced in the reply to `.`.
    pub udp_port: u16,
    /// The whole handshake, `HMAC` to the reply to `.`, must finish within this.
    pub handshake_timeout: Duration,
    /// A streaming session with no `PING` for this long is ended.
    pub ping_timeout: Duration,
    /// A streaming session with no media datagram for this long is ended.
    pub media_timeout: Duration,
    /// Whether to NACK gaps; `None` disables it.
    pub nack: Option<NackConfig>,
}

impl ServerConfig {
    pub fn new(udp_port: u16) -> Self {
        Self {
            udp_port,
            handshake_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            media_timeout: Duration::from_secs(10),
            nack: Some(NackConfig::default()),
        }
    }
}

/// A 64-byte random nonce for [`ServerSession::new`].
pub fn random_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; NONCE_LEN];
    rand::fill(&mut nonce[..]);
    nonce
}

/// The caller's answer to [`ServerEvent::SecretNeeded`].
#[derive(Debug, Clone)]
pub enum SecretLookup {
    Found(ChannelSecret),
    /// The channel is not configured: the client gets 401.
    UnknownChannel,
    /// The lookup failed (store unreachable): the client gets 500.
    Failed,
}

/// The caller's answer to [`ServerEvent::ClaimNeeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The channel is now this session's; the caller releases it when the session ends.
    Claimed,
    /// Another publisher (FTL or WHIP) is live: the client gets 406.
    InUse,
    /// The claim failed: the client gets 500.
    Failed,
}

/// Input to a server session.
#[derive(Debug)]
pub enum ServerInput<'a> {
    /// Bytes read from the control connection.
    Control(&'a [u8]),
    /// The control connection reached end of file or failed.
    ControlClosed,
    /// A datagram from the client's UDP address. Media payloads are handed on as slices of
    /// it, without a copy.
    Datagram(&'a Bytes),
    /// The time from [`ServerSession::poll_timeout`] has come.
    Timeout,
    /// Answer to [`ServerEvent::SecretNeeded`].
    Secret(SecretLookup),
    /// Answer to [`ServerEvent::ClaimNeeded`].
    Claim(ClaimOutcome),
    /// The server ends the stream (shutdown, key removed): the client gets 410.
    Terminate,
}

/// Output of a server session.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerOutput {
    /// Bytes to write, in order, on the control connection.
    Control(Vec<u8>),
    /// A datagram for the client's UDP address (ping echoes, NACKs).
    Datagram(Vec<u8>),
    Event(ServerEvent),
}

/// Something the caller acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// Look up the channel's secret and answer with [`ServerInput::Secret`].
    SecretNeeded {
        channel_id: u32,
    },
    /// The client proved it knows the secret: claim the channel and answer with
    /// [`ServerInput::Claim`].
    ClaimNeeded {
        channel_id: u32,
    },
    /// The handshake finished: media follows on UDP.
    Started(StreamInfo),
    Media(FtlMedia),
    /// A sender report, for audio/video synchronisation.
    SenderReport {
        kind: MediaKind,
        report: SenderReport,
    },
    /// The session is over: flush control output, then close the connection and release any
    /// claim. Nothing else follows.
    Ended(EndReason),
}

/// One announced track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// As announced (`H264`, `OPUS`); not checked here.
    pub codec: String,
    pub payload_type: u8,
    pub ssrc: u32,
}

/// What the client announced in its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub channel_id: u32,
    pub video: Option<TrackInfo>,
    pub audio: Option<TrackInfo>,
    pub protocol_version: Option<String>,
    pub vendor_name: Option<String>,
    pub vendor_version: Option<String>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent `DISCONNECT`.
    Disconnected,
    /// The control connection closed without `DISCONNECT`.
    ConnectionClosed,
    /// The handshake took too long.
    HandshakeTimeout,
    /// No `PING` for the ping timeout.
    PingTimeout,
    /// No media for the media timeout.
    MediaTimeout,
    /// The handshake was refused with this reply (400, 401, 405, 406, 500).
    Rejected(ReplyCode),
    /// The server ended the stream (410).
    Terminated,
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub media_packets: u64,
    pub media_bytes: u64,
    /// Audio dropped because no video keyframe had arrived yet (OBS's speed test).
    pub audio_before_keyframe: u64,
    pub duplicates: u64,
    pub unknown_datagrams: u64,
    pub pings_echoed: u64,
    pub nacked: u64,
    pub recovered: u64,
}

#[derive(Debug)]
enum State {
    /// Waiting for `HMAC`.
    AwaitHmac,
    /// Nonce sent; waiting for `CONNECT`.
    AwaitConnect,
    /// Waiting for the caller's [`SecretLookup`].
    AwaitSecret {
        channel_id: u32,
        hmac: Vec<u8>,
    },
    /// Waiting for the caller's [`ClaimOutcome`].
    AwaitClaim {
        channel_id: u32,
    },
    /// Connected; reading attribute lines until `.`.
    Metadata {
        channel_id: u32,
    },
    Streaming(Box<Streaming>),
    Ended,
}

#[derive(Debug)]
struct Track {
    kind: MediaKind,
    payload_type: u8,
    ssrc: u32,
    nack: Option<NackTracker>,
}

#[derive(Debug)]
struct Streaming {
    channel_id: u32,
    video: Option<Track>,
    audio: Option<Track>,
    last_ping: Instant,
    last_media: Instant,
    keyframe_seen: bool,
}

#[derive(Debug, Default)]
struct Attributes {
    count: usize,
    protocol_version: Option<String>,
    vendor_name: Option<String>,
    vendor_version: Option<String>,
    video: Option<bool>,
    audio: Option<bool>,
    video_codec: Option<String>,
    audio_codec: Option<String>,
    video_payload_type: Option<u8>,
    audio_payload_type: Option<u8>,
    video_ssrc: Option<u32>,
    audio_ssrc: Option<u32>,
}

/// Server side of one FTL session.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    nonce: Vec<u8>,
    lines: LineReader,
    state: State,
    attributes: Attributes,
    handshake_deadline: Instant,
    outputs: VecDeque<ServerOutput>,
    stats: ServerStats,
}

impl ServerSession {
    /// A session for a control connection accepted at `now`. `nonce` is sent in answer to
    /// `HMAC` (use [`random_nonce`]).
    pub fn new(now: Instant, config: ServerConfig, nonce: Vec<u8>) -> Self {
        let handshake_deadline = now + config.handshake_timeout;
        Self {
            config,
            nonce,
            lines: LineReader::default(),
            state: State::AwaitHmac,
            attributes: Attributes::default(),
            handshake_deadline,
            outputs: VecDeque::new(),
            stats: ServerStats::default(),
        }
    }

    /// The channel, once `CONNECT` has named one.
    pub fn channel_id(&self) -> Option<u32> {
        match &self.state {
            State::AwaitSecret { channel_id, .. }
            | State::AwaitClaim { channel_id }
            | State::Metadata { channel_id } => Some(*channel_id),
            State::Streaming(streaming) => Some(streaming.channel_id),
            _ => None,
        }
    }

    /// The (video, audio) SSRCs the session accepts media on, once streaming.
    pub fn media_ssrcs(&self) -> Option<(Option<u32>, Option<u32>)> {
        match &self.state {
            State::Streaming(streaming) => Some((
                streaming.video.as_ref().map(|t| t.ssrc),
                streaming.audio.as_ref().map(|t| t.ssrc),
            )),
            _ => None,
        }
    }

    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming(_))
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Feeds one input. Drain [`poll_output`](Self::poll_output) afterwards.
    pub fn handle_input(&mut self, now: Instant, input: ServerInput<'_>) {
        if self.is_ended() {
            return;
        }
        match input {
            ServerInput::Control(bytes) => {
                if let Err(error) = self.lines.push(bytes) {
                    warn!(%error, "FTL control input rejected");
                    self.end_with_reply(
                        ReplyCode::BadRequest,
                        EndReason::Rejected(ReplyCode::BadRequest),
                    );
                    return;
                }
                self.process_lines(now);
            }
            ServerInput::ControlClosed => self.end(EndReason::ConnectionClosed),
            ServerInput::Datagram(datagram) => self.handle_datagram(now, datagram),
            ServerInput::Timeout => self.handle_timeout(now),
            ServerInput::Secret(lookup) => self.handle_secret(now, lookup),
            ServerInput::Claim(outcome) => self.handle_claim(now, outcome),
            ServerInput::Terminate => {
                self.end_with_reply(ReplyCode::ServerTerminated, EndReason::Terminated)
            }
        }
    }

    /// The next output, or `None` when drained.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.outputs.pop_front()
    }

    /// When to feed [`ServerInput::Timeout`] next; `None` once ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Ended => None,
            State::Streaming(streaming) => {
                let mut at = (streaming.last_ping + self.config.ping_timeout)
                    .min(streaming.last_media + self.config.media_timeout);
                for track in [&streaming.video, &streaming.audio].into_iter().flatten() {
                    if let Some(nack_at) = track.nack.as_ref().and_then(NackTracker::next_timeout) {
                        at = at.min(nack_at);
                    }
                }
                Some(at)
            }
            _ => Some(self.handshake_deadline),
        }
    }

    fn reply(&mut self, bytes: Vec<u8>) {
        self.outputs.push_back(ServerOutput::Control(bytes));
    }

    fn end(&mut self, reason: EndReason) {
        if self.is_ended() {
            return;
        }
        info!(channel_id = ?self.channel_id(), ?reason, stats = ?self.stats, "FTL session ended");
        self.state = State::Ended;
        self.outputs
            .push_back(ServerOutput::Event(ServerEvent::Ended(reason)));
    }

    fn end_with_reply(&mut self, code: ReplyCode, reason: EndReason) {
        if self.is_ended() {
            return;
        }
        self.reply(code.line());
        self.end(reason);
    }

    fn reject(&mut self, code: ReplyCode) {
        self.end_with_reply(code, EndReason::Rejected(code));
    }

    fn awaiting_caller(&self) -> bool {
        matches!(
            self.state,
            State::AwaitSecret { .. } | State::AwaitClaim { .. }
        )
    }

    fn process_lines(&mut self, now: Instant) {
        // While the caller is answering a request, further lines wait in the buffer.
        while !self.is_ended() && !self.awaiting_caller() {
            let line = match self.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return,
                Err(error) => {
                    warn!(channel_id = ?self.channel_id(), %error, "bad FTL control line");
                    self.reject(ReplyCode::BadRequest);
                    return;
                }
            };
            self.handle_line(now, &line);
        }
    }

    fn handle_line(&mut self, now: Instant, line: &str) {
        let command = Command::parse(line);
        match (&mut self.state, command) {
            (_, Ok(Command::Disconnect)) => self.end(EndReason::Disconnected),
            (State::Streaming(streaming), Ok(Command::Ping)) => {
                streaming.last_ping = now;
                self.reply(ReplyCode::Ping.line());
            }
            (State::Streaming(streaming), other) => {
                // Mid-stream, any reply but 201 makes ftl-sdk drop the stream: ignore.
                debug!(channel_id = streaming.channel_id, command = ?other.map(|c| command_name(&c)), "ignored FTL command while streaming");
            }
            (State::AwaitHmac | State::AwaitConnect, Ok(Command::Hmac)) => {
                let reply = control::nonce_reply(&self.nonce);
                self.reply(reply);
                self.state = State::AwaitConnect;
            }
            (State::AwaitConnect, Ok(Command::Connect { channel_id, hmac })) => {
                debug!(channel_id, "FTL CONNECT");
                self.state = State::AwaitSecret { channel_id, hmac };
                self.outputs
                    .push_back(ServerOutput::Event(ServerEvent::SecretNeeded {
                        channel_id,
                    }));
            }
            (State::Metadata { .. }, Ok(Command::Attribute { key, value })) => {
                if let Err(problem) = self.record_attribute(&key, &value) {
                    warn!(channel_id = ?self.channel_id(), key, problem, "bad FTL attribute");
                    self.reject(ReplyCode::BadRequest);
                }
            }
            (State::Metadata { channel_id }, Ok(Command::Dot)) => {
                let channel_id = *channel_id;
                self.start_streaming(now, channel_id);
            }
            (state, command) => {
                warn!(state = state_name(state), command = ?command.map(|c| command_name(&c)), "unexpected FTL command in handshake");
                self.reject(ReplyCode::BadRequest);
            }
        }
    }

    fn record_attribute(&mut self, key: &str, value: &str) -> Result<(), &'static str> {
        let attributes = &mut self.attributes;
        attributes.count += 1;
        if attributes.count > MAX_ATTRIBUTES {
            return Err("too many attributes");
        }
        let flag = |value: &str| value.eq_ignore_ascii_case("true");
        let payload_type = |value: &str| match value.parse::<u8>() {
            Ok(pt) if pt < 128 => Ok(pt),
            _ => Err("payload type is not 0-127"),
        };
        let ssrc = |value: &str| value.parse::<u32>().map_err(|_| "SSRC is not a u32");
        let text = |value: &str| Some(value.to_owned());
        match key.to_ascii_lowercase().as_str() {
            "protocolversion" => attributes.protocol_version = text(value),
            "vendorname" => attributes.vendor_name = text(value),
            "vendorversion" => attributes.vendor_version = text(value),
            "video" => attributes.video = Some(flag(value)),
            "audio" => attributes.audio = Some(flag(value)),
            "videocodec" => attributes.video_codec = text(value),
            "audiocodec" => attributes.audio_codec = text(value),
            "videopayloadtype" => attributes.video_payload_type = Some(payload_type(value)?),
            "audiopayloadtype" => attributes.audio_payload_type = Some(payload_type(value)?),
            "videoingestssrc" => attributes.video_ssrc = Some(ssrc(value)?),
            "audioingestssrc" => attributes.audio_ssrc = Some(ssrc(value)?),
            // Width and height are not trusted (ftl-sdk always sends 1280x720); other keys are
            // accepted silently, as real servers do.
            _ => {}
        }
        Ok(())
    }

    fn handle_secret(&mut self, now: Instant, lookup: SecretLookup) {
        let State::AwaitSecret { channel_id, hmac } = &self.state else {
            debug!("secret answer while not waiting for one");
            return;
        };
        let channel_id = *channel_id;
        match lookup {
            SecretLookup::UnknownChannel => {
                info!(channel_id, "FTL CONNECT for unknown channel");
                self.reject(ReplyCode::Unauthorized);
            }
            SecretLookup::Failed => self.reject(ReplyCode::InternalError),
            SecretLookup::Found(secret) => {
                if crate::hmac::verify(secret.as_bytes(), &self.nonce, hmac) {
                    self.state = State::AwaitClaim { channel_id };
                    self.outputs
                        .push_back(ServerOutput::Event(ServerEvent::ClaimNeeded { channel_id }));
                } else {
                    info!(channel_id, "FTL CONNECT with wrong HMAC");
                    self.reject(ReplyCode::InvalidStreamKey);
                }
            }
        }
        self.process_lines(now);
    }

    fn handle_claim(&mut self, now: Instant, outcome: ClaimOutcome) {
        let State::AwaitClaim { channel_id } = self.state else {
            debug!("claim answer while not waiting for one");
            return;
        };
        match outcome {
            ClaimOutcome::Claimed => {
                self.reply(ReplyCode::Ok.line());
                self.state = State::Metadata { channel_id };
            }
            ClaimOutcome::InUse => {
                info!(channel_id, "FTL channel already live");
                self.reject(ReplyCode::ChannelInUse);
            }
            ClaimOutcome::Failed => self.reject(ReplyCode::InternalError),
        }
        self.process_lines(now);
    }

    fn start_streaming(&mut self, now: Instant, channel_id: u32) {
        let attributes = &self.attributes;
        let enabled = |flag: Option<bool>| flag.unwrap_or(true);
        let video = enabled(attributes.video).then(|| TrackInfo {
            codec: attributes
                .video_codec
                .clone()
                .unwrap_or_else(|| "H264".into()),
            payload_type: attributes
                .video_payload_type
                .unwrap_or(DEFAULT_VIDEO_PAYLOAD_TYPE),
            ssrc: attributes.video_ssrc.unwrap_or(channel_id.wrapping_add(1)),
        });
        let audio = enabled(attributes.audio).then(|| TrackInfo {
            codec: attributes
                .audio_codec
                .clone()
                .unwrap_or_else(|| "OPUS".into()),
            payload_type: attributes
                .audio_payload_type
                .unwrap_or(DEFAULT_AUDIO_PAYLOAD_TYPE),
            ssrc: attributes.audio_ssrc.unwrap_or(channel_id),
        });
        if let (Some(v), Some(a)) = (&video, &audio)
            && (v.ssrc == a.ssrc || v.payload_type == a.payload_type)
        {
            warn!(
                channel_id,
                "FTL video and audio share an SSRC or payload type"
            );
            self.reject(ReplyCode::BadRequest);
            return;
        }
        let info = StreamInfo {
            channel_id,
            video: video.clone(),
            audio: audio.clone(),
            protocol_version: attributes.protocol_version.clone(),
            vendor_name: attributes.vendor_name.clone(),
            vendor_version: attributes.vendor_version.clone(),
        };
        let track = |kind, info: TrackInfo| Track {
            kind,
            payload_type: info.payload_type,
            ssrc: info.ssrc,
            nack: self.config.nack.clone().map(NackTracker::new),
        };
        self.state = State::Streaming(Box::new(Streaming {
            channel_id,
            video: video.map(|info| track(MediaKind::Video, info)),
            audio: audio.map(|info| track(MediaKind::Audio, info)),
            last_ping: now,
            last_media: now,
            keyframe_seen: false,
        }));
        info!(
            channel_id,
            vendor = info.vendor_name.as_deref().unwrap_or("?"),
            version = info.vendor_version.as_deref().unwrap_or("?"),
            "FTL stream started"
        );
        // Started comes before the reply so the caller can route the client's UDP packets
        // before the client learns where to send them.
        self.outputs
            .push_back(ServerOutput::Event(ServerEvent::Started(info)));
        self.reply(control::port_reply(self.config.udp_port));
    }

    fn handle_timeout(&mut self, now: Instant) {
        let reason = match &mut self.state {
            State::Ended => return,
            State::Streaming(streaming) => {
                if now >= streaming.last_ping + self.config.ping_timeout {
                    Some((ReplyCode::ServerTerminated, EndReason::PingTimeout))
                } else if now >= streaming.last_media + self.config.media_timeout {
                    Some((ReplyCode::NoMediaTimeout, EndReason::MediaTimeout))
                } else {
                    for track in [&mut streaming.video, &mut streaming.audio]
                        .into_iter()
                        .flatten()
                    {
                        let Some(tracker) = track.nack.as_mut() else {
                            continue;
                        };
                        let lost = tracker.poll_nacks(now);
                        if !lost.is_empty() {
                            self.stats.nacked += lost.len() as u64;
                            debug!(
                                channel_id = streaming.channel_id,
                                ssrc = track.ssrc,
                                count = lost.len(),
                                "NACK"
                            );
                            let nack = Nack {
                                sender_ssrc: 0,
                                media_ssrc: track.ssrc,
                                lost,
                            };
                            self.outputs
                                .push_back(ServerOutput::Datagram(nack.packet()));
                        }
                    }
                    None
                }
            }
            State::AwaitSecret { .. } | State::AwaitClaim { .. }
                if now >= self.handshake_deadline =>
            {
                // Our own lookup was too slow.
                Some((ReplyCode::InternalError, EndReason::HandshakeTimeout))
            }
            _ if now >= self.handshake_deadline => {
                Some((ReplyCode::BadRequest, EndReason::HandshakeTimeout))
            }
            _ => None,
        };
        if let Some((code, reason)) = reason {
            self.end_with_reply(code, reason);
        }
    }

    fn handle_datagram(&mut self, now: Instant, datagram: &Bytes) {
        let State::Streaming(streaming) = &mut self.state else {
            // ftl-sdk only sends after the reply to `.`; anything earlier is not ours.
            self.stats.unknown_datagrams += 1;
            return;
        };
        match udp::classify(datagram) {
            Datagram::Ping => {
                self.stats.pings_echoed += 1;
                self.outputs
                    .push_back(ServerOutput::Datagram(datagram.to_vec()));
            }
            Datagram::SenderReport(report) => {
                let kind = [&streaming.video, &streaming.audio]
                    .into_iter()
                    .flatten()
                    .find(|track| track.ssrc == report.ssrc)
                    .map(|track| track.kind);
                if let Some(kind) = kind {
                    self.outputs
                        .push_back(ServerOutput::Event(ServerEvent::SenderReport {
                            kind,
                            report,
                        }));
                }
            }
            Datagram::Rtp(rtp) => {
                let track = [&mut streaming.video, &mut streaming.audio]
                    .into_iter()
                    .flatten()
                    .find(|track| track.ssrc == rtp.ssrc && track.payload_type == rtp.payload_type);
                let Some(track) = track else {
                    self.stats.unknown_datagrams += 1;
                    return;
                };
                streaming.last_media = now;
                let kind = track.kind;
                let keyframe_start = kind == MediaKind::Video && h264_keyframe_start(rtp.payload);
                if kind == MediaKind::Video && keyframe_start && !streaming.keyframe_seen {
                    debug!(
                        channel_id = streaming.channel_id,
                        "first FTL video keyframe"
                    );
                    streaming.keyframe_seen = true;
                }
                if kind == MediaKind::Audio && !streaming.keyframe_seen {
                    // OBS's speed test fills the audio SSRC with junk before the stream.
                    self.stats.audio_before_keyframe += 1;
                    return;
                }
                let arrival = match track.nack.as_mut() {
                    Some(tracker) => tracker.on_packet(now, rtp.sequence),
                    None => Arrival::New,
                };
                match arrival {
                    Arrival::Duplicate => {
                        self.stats.duplicates += 1;
                        return;
                    }
                    Arrival::Recovered => self.stats.recovered += 1,
                    Arrival::New | Arrival::Restart => {}
                }
                self.stats.media_packets += 1;
                self.stats.media_bytes += rtp.payload.len() as u64;
                let media = FtlMedia {
                    kind,
                    ssrc: rtp.ssrc,
                    payload_type: rtp.payload_type,
                    sequence: rtp.sequence,
                    timestamp: rtp.timestamp,
                    marker: rtp.marker,
                    payload: datagram.slice_ref(rtp.payload),
                    keyframe_start,
                    retransmitted: arrival == Arrival::Recovered,
                    received_at: now,
                };
                self.outputs
                    .push_back(ServerOutput::Event(ServerEvent::Media(media)));
            }
            Datagram::Nack(_) | Datagram::Unknown => self.stats.unknown_datagrams += 1,
        }
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Hmac => "HMAC",
        Command::Connect { .. } => "CONNECT",
        Command::Attribute { .. } => "attribute",
        Command::Dot => ".",
        Command::Ping => "PING",
        Command::Disconnect => "DISCONNECT",
    }
}

fn state_name(state: &State) -> &'static str {
    match state {
        State::AwaitHmac => "await-hmac",
        State::AwaitConnect => "await-connect",
        State::AwaitSecret { .. } => "await-secret",
        State::AwaitClaim { .. } => "await-claim",
        State::Metadata { .. } => "metadata",
        State::Streaming(_) => "streaming",
        State::Ended => "ended",
    }
}

#[cfg(test)]
mod tests;
