//! One relayed FTL session, sans-IO: the client's control connection on one side, the proxy's
//! own FTL session with the SFU on the other.
//!
//! The client-facing handshake is the `ftl` crate's [`ServerSession`]: it answers `HMAC` with
//! this proxy's nonce, parses `CONNECT`, asks for the channel's secret, checks the HMAC and
//! answers with FTL's reply codes, then validates the attribute lines. Its "claim" step is
//! where the relay opens the SFU session: the client gets `200` to `CONNECT` only once the SFU
//! accepted the proxy's own `CONNECT` (same channel, same secret, the SFU's nonce), so the
//! SFU's `406` reaches the client where it would without a proxy. The client's attribute
//! lines are recorded as they pass and sent on verbatim with `.`; the reply to `.` (the
//! proxy's UDP port) is held back until the SFU accepted the stream and the caller set up the
//! media path. From then on the relay passes `PING`/`201` and `DISCONNECT` through itself.
//!
//! The SFU-facing side is not the crate's `ClientSession`: that one sends its own attribute
//! set the moment `CONNECT` is accepted and runs its own `PING` loop, where a relay must send
//! the client's attributes (known only later) and pass the client's pings through. It is a few
//! states over the same codec ([`LineReader`], [`Reply`], [`control::client_command`]) and
//! [`deadsfu_ftl::hmac`].
//!
//! Datagrams are not copied through here: the caller asks [`RelaySession::sfu_datagram`] where
//! a datagram from the SFU goes and sends it from its own buffer. Client-to-SFU datagrams are
//! routed by the caller's demux (client address and SSRCs from [`RelayEvent::OpenMediaPath`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use deadsfu_ftl::ChannelSecret;
use deadsfu_ftl::control::{self, Command, LineReader, Reply, ReplyCode};
use deadsfu_ftl::server::{
    ClaimOutcome, EndReason, SecretLookup, ServerConfig, ServerEvent, ServerInput, ServerOutput,
    ServerSession,
};
use tracing::debug;

/// Timing of one relayed session.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The proxy's UDP port, announced to the client in the reply to `.`.
    pub udp_port: u16,
    /// From accept to the reply to `.`, SFU included (ftl-sdk waits 5 s for each reply).
    pub handshake_timeout: Duration,
    /// A streaming client that sends no `PING` for this long is ended (410 to it, `DISCONNECT`
    /// to the SFU).
    pub ping_timeout: Duration,
    /// A streaming SFU that sends no `201` for this long is given up on.
    pub sfu_reply_timeout: Duration,
}

impl RelayConfig {
    pub fn new(udp_port: u16) -> Self {
        Self {
            udp_port,
            handshake_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            sfu_reply_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a connection was refused, for counters and the aggregate log. The first four are
/// decided at accept, the rest by the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Too many open control connections from the client's IP.
    PerIpConnections,
    /// Too many new connections per second from the client's IP.
    ConnectRate,
    /// Every connection slot is held by an authenticated session.
    Full,
    /// An unauthenticated connection closed to make room for a new one.
    Evicted,
    /// The client did not finish its part of the handshake in time (400).
    HandshakeTimeout,
    /// Not FTL, or a malformed command or attribute (400).
    BadRequest,
    /// No key for the channel (401).
    UnknownChannel,
    /// The HMAC does not match the channel's key (405).
    WrongKey,
    /// The key lookup failed or timed out (500).
    LookupFailed,
    /// No SFU for the channel (500).
    NoSfu,
    /// The SFU was unreachable, too slow or broke the protocol (500).
    SfuFailed,
    /// The SFU says the channel is already live (406).
    ChannelInUse,
    /// The SFU refused the stream with another code (passed on, or 500 at `CONNECT`).
    SfuRefused,
    /// The proxy could not set up the UDP path (500).
    MediaPath,
}

impl Rejection {
    pub const ALL: [Rejection; 14] = [
        Rejection::PerIpConnections,
        Rejection::ConnectRate,
        Rejection::Full,
        Rejection::Evicted,
        Rejection::HandshakeTimeout,
        Rejection::BadRequest,
        Rejection::UnknownChannel,
        Rejection::WrongKey,
        Rejection::LookupFailed,
        Rejection::NoSfu,
        Rejection::SfuFailed,
        Rejection::ChannelInUse,
        Rejection::SfuRefused,
        Rejection::MediaPath,
    ];

    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::PerIpConnections => "per_ip_connections",
            Rejection::ConnectRate => "connect_rate",
            Rejection::Full => "full",
            Rejection::Evicted => "evicted",
            Rejection::HandshakeTimeout => "handshake_timeout",
            Rejection::BadRequest => "bad_request",
            Rejection::UnknownChannel => "unknown_channel",
            Rejection::WrongKey => "wrong_key",
            Rejection::LookupFailed => "lookup_failed",
            Rejection::NoSfu => "no_sfu",
            Rejection::SfuFailed => "sfu_failed",
            Rejection::ChannelInUse => "channel_in_use",
            Rejection::SfuRefused => "sfu_refused",
            Rejection::MediaPath => "media_path",
        }
    }

    /// Position in [`Rejection::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl deadsfu_limits::RefusalReason for Rejection {
    const ALL: &'static [Self] = &Rejection::ALL;
    fn index(self) -> usize {
        self.index()
    }
    fn label(self) -> &'static str {
        self.label()
    }
}

/// Why the SFU could not be reached, the caller's answer to [`RelayEvent::ConnectSfu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SfuUnavailable {
    /// Routing knows no usable SFU for the channel.
    NoRoute,
    /// Connecting failed or timed out.
    Unreachable,
}

/// Input to a relay session.
#[derive(Debug)]
pub enum RelayInput<'a> {
    /// Bytes read from the client's control connection.
    Client(&'a [u8]),
    /// The client's control connection reached its end or failed.
    ClientClosed,
    /// Bytes read from the SFU's control connection.
    Sfu(&'a [u8]),
    /// The SFU's control connection reached its end or failed.
    SfuClosed,
    /// Answer to [`RelayEvent::SecretNeeded`].
    Secret(SecretLookup),
    /// Answer to [`RelayEvent::ConnectSfu`]: connected; bytes for the SFU follow.
    SfuConnected,
    /// Answer to [`RelayEvent::ConnectSfu`]: no connection.
    SfuUnavailable(SfuUnavailable),
    /// Answer to [`RelayEvent::OpenMediaPath`]: the client's datagrams are routed.
    MediaPathReady,
    /// Answer to [`RelayEvent::OpenMediaPath`]: they cannot be.
    MediaPathFailed,
    /// The client's UDP address, learned (or changed) from its datagrams.
    ClientUdp(SocketAddr),
    /// The time from [`RelaySession::poll_timeout`] has come.
    Timeout,
    /// The proxy ends the session (shutdown, eviction): 410 to the client.
    Terminate,
}

/// Output of a relay session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutput {
    /// Bytes to write, in order, to the client's control connection.
    ToClient(Vec<u8>),
    /// Bytes to write, in order, to the SFU's control connection.
    ToSfu(Vec<u8>),
    Event(RelayEvent),
}

/// Something the caller acts on, answering with the input named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// Look up the channel's secret; answer with [`RelayInput::Secret`].
    SecretNeeded { channel_id: u32 },
    /// The client proved it knows the secret. Connect to the channel's SFU; answer with
    /// [`RelayInput::SfuConnected`] or [`RelayInput::SfuUnavailable`].
    ConnectSfu { channel_id: u32 },
    /// The SFU accepted the stream. Route datagrams from the client (its control peer IP,
    /// these SSRCs) to the SFU's IP at `sfu_udp_port`; answer with
    /// [`RelayInput::MediaPathReady`] or [`RelayInput::MediaPathFailed`]. The client learns
    /// the proxy's port only after that.
    OpenMediaPath {
        channel_id: u32,
        sfu_udp_port: u16,
        ssrcs: Vec<u32>,
    },
    /// The session is over: write what is queued, then close both connections and the media
    /// path. Nothing else follows.
    Ended(RelayEnd),
}

/// How a relayed session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Refused during the handshake, with FTL's reply code where one was sent.
    Rejected(Rejection),
    /// The client sent `DISCONNECT` (passed on to the SFU).
    ClientDisconnected,
    /// The client's connection closed (the SFU gets `DISCONNECT` in its name).
    ClientClosed,
    /// The SFU ended the stream with this code (passed on to the client).
    SfuEnded(u16),
    /// The SFU's connection closed, or it sent something that is not FTL (410 to the client).
    SfuClosed,
    /// The client stopped sending `PING`.
    ClientPingTimeout,
    /// The SFU stopped answering `PING`.
    SfuPingTimeout,
    /// The client sent something that is not FTL mid-stream.
    BadClientInput,
    /// The proxy ended it (shutdown, eviction).
    Terminated,
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub pings_relayed: u64,
    pub sfu_datagrams: u64,
    pub sfu_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The server session runs the client's `HMAC` and `CONNECT`.
    Hello,
    /// Waiting for the caller's secret lookup.
    AwaitSecret,
    /// Authenticated; waiting for the caller to connect to the SFU.
    SfuConnecting,
    /// `HMAC` sent to the SFU.
    SfuAwaitNonce,
    /// `CONNECT` sent to the SFU.
    SfuAwaitConnect,
    /// The SFU accepted `CONNECT`; the client sends its attributes.
    Metadata,
    /// Attributes and `.` sent to the SFU; the client's port reply is held.
    SfuAwaitPort,
    /// The SFU gave its port; the caller sets up the UDP path.
    AwaitMediaPath,
    Streaming {
        last_client_ping: Instant,
        last_sfu_pong: Instant,
    },
    Ended,
}

/// The relay of one FTL session. Feed [`RelayInput`]s, drain [`RelaySession::poll_output`],
/// arm a timer for [`RelaySession::poll_timeout`].
#[derive(Debug)]
pub struct RelaySession {
    config: RelayConfig,
    state: State,
    /// End of the handshake, accept to the reply to `.`.
    deadline: Instant,
    /// The client-facing handshake, until the client's `.`.
    server: Option<ServerSession>,
    client_lines: LineReader,
    sfu_lines: LineReader,
    channel_id: Option<u32>,
    secret: Option<ChannelSecret>,
    authenticated: bool,
    /// The SFU connection is up and the SFU has not ended the session itself: ending sends it
    /// `DISCONNECT`.
    sfu_open: bool,
    /// The client's attribute lines, as received, for the SFU.
    attributes: Vec<String>,
    /// Replies for the client held until the SFU accepted `.` (the proxy's port reply).
    held: Option<Vec<Vec<u8>>>,
    ssrcs: Vec<u32>,
    client_udp: Option<SocketAddr>,
    /// Why the relay answered the server session's request with a failure (its reply is 500).
    failure: Option<Rejection>,
    outputs: VecDeque<RelayOutput>,
    stats: RelayStats,
}

/// Runs `f` with logging off: the server session logs each refusal on its own, while the proxy
/// counts refusals and logs them in aggregate.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    tracing::dispatcher::with_default(&tracing::Dispatch::none(), f)
}

/// A refusal line for the client: the SFU's code if it is an error, else 500.
fn refusal_line(code: u16) -> Vec<u8> {
    if (400..=599).contains(&code) {
        format!("{code}\n").into_bytes()
    } else {
        ReplyCode::InternalError.line()
    }
}

impl RelaySession {
    /// A relay for a control connection accepted at `now`; `nonce` is the client's HMAC nonce
    /// (see [`deadsfu_ftl::server::random_nonce`]).
    pub fn new(now: Instant, config: RelayConfig, nonce: Vec<u8>) -> Self {
        let mut server_config = ServerConfig::new(config.udp_port);
        server_config.handshake_timeout = config.handshake_timeout;
        // The server session is dropped at the client's `.`, before any media or ping.
        server_config.nack = None;
        let deadline = now + config.handshake_timeout;
        Self {
            state: State::Hello,
            deadline,
            server: Some(ServerSession::new(now, server_config, nonce)),
            client_lines: LineReader::default(),
            sfu_lines: LineReader::default(),
            channel_id: None,
            secret: None,
            authenticated: false,
            sfu_open: false,
            attributes: Vec::new(),
            held: None,
            ssrcs: Vec::new(),
            client_udp: None,
            failure: None,
            outputs: VecDeque::new(),
            stats: RelayStats::default(),
            config,
        }
    }

    /// The channel, once the client named one.
    pub fn channel_id(&self) -> Option<u32> {
        self.channel_id
    }

    /// Whether the client proved it knows the channel's secret.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming { .. })
    }

    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// The next output, or `None` when drained.
    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.outputs.pop_front()
    }

    /// When to feed [`RelayInput::Timeout`]; `None` once ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Ended => None,
            State::Streaming {
                last_client_ping,
                last_sfu_pong,
            } => Some(
                (last_client_ping + self.config.ping_timeout)
                    .min(last_sfu_pong + self.config.sfu_reply_timeout),
            ),
            _ => Some(self.deadline),
        }
    }

    /// Where a datagram from the SFU goes: the client's UDP address, sent from the proxy's UDP
    /// port. `None`: drop it (not streaming, or the client's address is not known yet).
    pub fn sfu_datagram(&mut self, datagram: &[u8]) -> Option<SocketAddr> {
        if !self.is_streaming() {
            return None;
        }
        let to = self.client_udp?;
        self.stats.sfu_datagrams += 1;
        self.stats.sfu_bytes += datagram.len() as u64;
        Some(to)
    }

    /// Feeds one input. Drain [`poll_output`](Self::poll_output) afterwards.
    pub fn handle_input(&mut self, now: Instant, input: RelayInput<'_>) {
        if self.is_ended() {
            return;
        }
        match input {
            RelayInput::Client(bytes) => {
                if self.client_lines.push(bytes).is_err() {
                    self.bad_client_input();
                    return;
                }
                self.pump_client(now);
            }
            RelayInput::ClientClosed => self.end(RelayEnd::ClientClosed),
            RelayInput::Sfu(bytes) => {
                if self.sfu_lines.push(bytes).is_err() {
                    self.sfu_failed(now);
                    return;
                }
                self.pump_sfu(now);
            }
            RelayInput::SfuClosed => {
                self.sfu_open = false;
                self.sfu_failed(now);
            }
            RelayInput::Secret(lookup) => {
                if self.state != State::AwaitSecret {
                    return;
                }
                match &lookup {
                    SecretLookup::Found(secret) => self.secret = Some(secret.clone()),
                    SecretLookup::Failed => self.failure = Some(Rejection::LookupFailed),
                    SecretLookup::UnknownChannel => {}
                }
                self.state = State::Hello;
                self.feed_server(now, ServerInput::Secret(lookup));
                self.pump_client(now);
            }
            RelayInput::SfuConnected => {
                if self.state == State::SfuConnecting {
                    self.sfu_open = true;
                    self.state = State::SfuAwaitNonce;
                    self.send_sfu(control::client_command("HMAC"));
                }
            }
            RelayInput::SfuUnavailable(why) => {
                if self.state == State::SfuConnecting {
                    let rejection = match why {
                        SfuUnavailable::NoRoute => Rejection::NoSfu,
                        SfuUnavailable::Unreachable => Rejection::SfuFailed,
                    };
                    self.claim_failed(now, rejection);
                }
            }
            RelayInput::MediaPathReady => {
                if self.state == State::AwaitMediaPath {
                    self.state = State::Streaming {
                        last_client_ping: now,
                        last_sfu_pong: now,
                    };
                    for reply in self.held.take().unwrap_or_default() {
                        self.send_client(reply);
                    }
                    self.pump_client(now);
                    self.pump_sfu(now);
                }
            }
            RelayInput::MediaPathFailed => {
                if self.state == State::AwaitMediaPath {
                    self.send_client(ReplyCode::InternalError.line());
                    self.end(RelayEnd::Rejected(Rejection::MediaPath));
                }
            }
            RelayInput::ClientUdp(addr) => self.client_udp = Some(addr),
            RelayInput::Timeout => self.handle_timeout(now),
            RelayInput::Terminate => {
                self.send_client(ReplyCode::ServerTerminated.line());
                self.end(RelayEnd::Terminated);
            }
        }
    }

    fn send_client(&mut self, bytes: Vec<u8>) {
        self.outputs.push_back(RelayOutput::ToClient(bytes));
    }

    fn send_sfu(&mut self, bytes: Vec<u8>) {
        self.outputs.push_back(RelayOutput::ToSfu(bytes));
    }

    fn event(&mut self, event: RelayEvent) {
        self.outputs.push_back(RelayOutput::Event(event));
    }

    fn end(&mut self, reason: RelayEnd) {
        if self.is_ended() {
            return;
        }
        if self.sfu_open {
            self.send_sfu(control::client_command("DISCONNECT"));
            self.sfu_open = false;
        }
        debug!(channel_id = ?self.channel_id, ?reason, stats = ?self.stats, "FTL relay ended");
        self.state = State::Ended;
        self.server = None;
        self.held = None;
        self.event(RelayEvent::Ended(reason));
    }

    /// Client bytes that cannot be lines (too long, not text, too much unread).
    fn bad_client_input(&mut self) {
        self.send_client(ReplyCode::BadRequest.line());
        if self.is_streaming() {
            self.end(RelayEnd::BadClientInput);
        } else {
            self.end(RelayEnd::Rejected(Rejection::BadRequest));
        }
    }

    /// Consumes client lines while the state takes them; others wait in the reader.
    fn pump_client(&mut self, now: Instant) {
        while matches!(
            self.state,
            State::Hello | State::Metadata | State::Streaming { .. }
        ) {
            let line = match self.client_lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return,
                Err(_) => return self.bad_client_input(),
            };
            if self.is_streaming() {
                self.client_line_streaming(now, &line);
                continue;
            }
            if self.state == State::Metadata
                && matches!(Command::parse(&line), Ok(Command::Attribute { .. }))
            {
                // Bounded: the server session refuses more than its maximum of attributes.
                self.attributes.push(line.clone());
            }
            let mut bytes = line.into_bytes();
            bytes.push(b'\n');
            self.feed_server(now, ServerInput::Control(&bytes));
        }
    }

    fn client_line_streaming(&mut self, now: Instant, line: &str) {
        match Command::parse(line) {
            Ok(Command::Ping) => {
                if let State::Streaming {
                    last_client_ping, ..
                } = &mut self.state
                {
                    *last_client_ping = now;
                }
                self.stats.pings_relayed += 1;
                self.send_sfu(control::client_command(line));
            }
            Ok(Command::Disconnect) => self.end(RelayEnd::ClientDisconnected),
            // Mid-stream, any reply but 201 would end the client's stream: ignore, as the SFU
            // itself does.
            _ => debug!(channel_id = ?self.channel_id, "ignored FTL command while streaming"),
        }
    }

    fn feed_server(&mut self, now: Instant, input: ServerInput<'_>) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        quietly(|| server.handle_input(now, input));
        let outputs: Vec<ServerOutput> = std::iter::from_fn(|| server.poll_output()).collect();
        for output in outputs {
            match output {
                ServerOutput::Control(bytes) => {
                    if let Some(held) = self.held.as_mut() {
                        held.push(bytes);
                    } else if !self.is_ended() {
                        self.send_client(bytes);
                    }
                }
                // Never fed datagrams.
                ServerOutput::Datagram(_) => {}
                ServerOutput::Event(event) => self.server_event(event),
            }
        }
    }

    fn server_event(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::SecretNeeded { channel_id } => {
                self.channel_id = Some(channel_id);
                self.state = State::AwaitSecret;
                self.event(RelayEvent::SecretNeeded { channel_id });
            }
            ServerEvent::ClaimNeeded { channel_id } => {
                self.authenticated = true;
                self.state = State::SfuConnecting;
                self.event(RelayEvent::ConnectSfu { channel_id });
            }
            ServerEvent::Started(info) => {
                // The client's `.`: its attributes are valid. The server session's part is
                // over; its port reply (the proxy's port) follows and is held.
                self.ssrcs = [&info.video, &info.audio]
                    .into_iter()
                    .flatten()
                    .map(|track| track.ssrc)
                    .collect();
                let mut bytes = Vec::new();
                for line in self.attributes.drain(..) {
                    bytes.extend_from_slice(&control::client_command(&line));
                }
                bytes.extend_from_slice(&control::client_command("."));
                self.send_sfu(bytes);
                self.held = Some(Vec::new());
                self.state = State::SfuAwaitPort;
                self.server = None;
            }
            ServerEvent::Ended(reason) => {
                let end = self.server_end(reason);
                self.end(end);
            }
            ServerEvent::Media(_) | ServerEvent::SenderReport { .. } => {}
        }
    }

    fn server_end(&self, reason: EndReason) -> RelayEnd {
        match reason {
            EndReason::Disconnected => RelayEnd::ClientDisconnected,
            EndReason::ConnectionClosed => RelayEnd::ClientClosed,
            EndReason::HandshakeTimeout => RelayEnd::Rejected(match self.state {
                State::AwaitSecret => Rejection::LookupFailed,
                State::SfuConnecting | State::SfuAwaitNonce | State::SfuAwaitConnect => {
                    Rejection::SfuFailed
                }
                _ => Rejection::HandshakeTimeout,
            }),
            EndReason::Rejected(code) => RelayEnd::Rejected(match code {
                ReplyCode::BadRequest => Rejection::BadRequest,
                ReplyCode::Unauthorized => Rejection::UnknownChannel,
                ReplyCode::InvalidStreamKey => Rejection::WrongKey,
                ReplyCode::ChannelInUse => Rejection::ChannelInUse,
                _ => self.failure.unwrap_or(Rejection::SfuFailed),
            }),
            EndReason::Terminated | EndReason::PingTimeout | EndReason::MediaTimeout => {
                RelayEnd::Terminated
            }
        }
    }

    /// The SFU could not be used before it accepted `CONNECT`: the client gets 500.
    fn claim_failed(&mut self, now: Instant, why: Rejection) {
        self.failure = Some(why);
        self.feed_server(now, ServerInput::Claim(ClaimOutcome::Failed));
    }

    /// The SFU closed, or sent what cannot be read.
    fn sfu_failed(&mut self, now: Instant) {
        match self.state {
            State::SfuAwaitNonce | State::SfuAwaitConnect => {
                self.claim_failed(now, Rejection::SfuFailed)
            }
            State::Metadata | State::SfuAwaitPort | State::AwaitMediaPath => {
                self.send_client(ReplyCode::InternalError.line());
                self.end(RelayEnd::Rejected(Rejection::SfuFailed));
            }
            State::Streaming { .. } => {
                self.send_client(ReplyCode::ServerTerminated.line());
                self.end(RelayEnd::SfuClosed);
            }
            State::Hello | State::AwaitSecret | State::SfuConnecting | State::Ended => {}
        }
    }

    /// Consumes SFU lines while the state takes them.
    fn pump_sfu(&mut self, now: Instant) {
        while matches!(
            self.state,
            State::SfuAwaitNonce
                | State::SfuAwaitConnect
                | State::Metadata
                | State::SfuAwaitPort
                | State::Streaming { .. }
        ) {
            let line = match self.sfu_lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return,
                Err(_) => return self.sfu_failed(now),
            };
            match Reply::parse(&line) {
                Some(reply) => self.sfu_reply(now, reply),
                None => return self.sfu_failed(now),
            }
        }
    }

    fn sfu_reply(&mut self, now: Instant, reply: Reply) {
        let ok = reply.code == ReplyCode::Ok.code();
        match self.state {
            State::SfuAwaitNonce => {
                let nonce = deadsfu_ftl::hmac::decode_hex(&reply.text)
                    .ok()
                    .filter(|nonce| ok && !nonce.is_empty());
                match (nonce, &self.secret, self.channel_id) {
                    (Some(nonce), Some(secret), Some(channel_id)) => {
                        let tag = deadsfu_ftl::hmac::sign(secret.as_bytes(), &nonce);
                        let connect = format!(
                            "CONNECT {channel_id} ${}",
                            deadsfu_ftl::hmac::encode_hex(&tag)
                        );
                        self.send_sfu(control::client_command(&connect));
                        self.state = State::SfuAwaitConnect;
                    }
                    _ if !ok => {
                        self.sfu_open = false;
                        self.claim_failed(now, Rejection::SfuRefused);
                    }
                    _ => self.claim_failed(now, Rejection::SfuFailed),
                }
            }
            State::SfuAwaitConnect => {
                if ok {
                    self.state = State::Metadata;
                    self.feed_server(now, ServerInput::Claim(ClaimOutcome::Claimed));
                    self.pump_client(now);
                } else {
                    // The SFU closes after refusing.
                    self.sfu_open = false;
                    if reply.code == ReplyCode::ChannelInUse.code() {
                        self.feed_server(now, ServerInput::Claim(ClaimOutcome::InUse));
                    } else {
                        self.claim_failed(now, Rejection::SfuRefused);
                    }
                }
            }
            State::Metadata => {
                // The SFU gave up (its own deadline, shutdown) before the client's `.`.
                self.sfu_open = false;
                self.send_client(refusal_line(reply.code));
                self.end(RelayEnd::Rejected(Rejection::SfuRefused));
            }
            State::SfuAwaitPort => {
                if !ok {
                    self.sfu_open = false;
                    self.held = None;
                    self.send_client(refusal_line(reply.code));
                    let rejection = if reply.code == ReplyCode::ChannelInUse.code() {
                        Rejection::ChannelInUse
                    } else {
                        Rejection::SfuRefused
                    };
                    self.end(RelayEnd::Rejected(rejection));
                    return;
                }
                match (reply.udp_port(), self.channel_id) {
                    (Some(sfu_udp_port), Some(channel_id)) => {
                        self.state = State::AwaitMediaPath;
                        self.event(RelayEvent::OpenMediaPath {
                            channel_id,
                            sfu_udp_port,
                            ssrcs: self.ssrcs.clone(),
                        });
                    }
                    _ => {
                        self.send_client(ReplyCode::InternalError.line());
                        self.end(RelayEnd::Rejected(Rejection::SfuFailed));
                    }
                }
            }
            State::Streaming { .. } => {
                if reply.code == ReplyCode::Ping.code() {
                    if let State::Streaming { last_sfu_pong, .. } = &mut self.state {
                        *last_sfu_pong = now;
                    }
                    self.send_client(ReplyCode::Ping.line());
                } else {
                    self.sfu_open = false;
                    self.send_client(if reply.code >= 400 {
                        refusal_line(reply.code)
                    } else {
                        ReplyCode::ServerTerminated.line()
                    });
                    self.end(RelayEnd::SfuEnded(reply.code));
                }
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Ended => {}
            State::Streaming {
                last_client_ping,
                last_sfu_pong,
            } => {
                if now >= last_client_ping + self.config.ping_timeout {
                    self.send_client(ReplyCode::ServerTerminated.line());
                    self.end(RelayEnd::ClientPingTimeout);
                } else if now >= last_sfu_pong + self.config.sfu_reply_timeout {
                    self.send_client(ReplyCode::ServerTerminated.line());
                    self.end(RelayEnd::SfuPingTimeout);
                }
            }
            _ if now < self.deadline => {}
            _ if self.server.is_some() => {
                // The server session has the same deadline: it answers 400 (client too slow)
                // or 500 (we were), and ends.
                self.feed_server(now, ServerInput::Timeout);
                if !self.is_ended() {
                    self.send_client(ReplyCode::BadRequest.line());
                    self.end(RelayEnd::Rejected(Rejection::HandshakeTimeout));
                }
            }
            _ => {
                self.send_client(ReplyCode::InternalError.line());
                self.end(RelayEnd::Rejected(Rejection::SfuFailed));
            }
        }
    }
}

#[cfg(test)]
mod tests;
