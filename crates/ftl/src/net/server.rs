//! The FTL ingest server: a TCP listener for control connections and one UDP socket shared by
//! all sessions. Each control connection runs in its own task that owns its
//! [`ServerSession`]; one task owns the UDP socket's receive side and routes datagrams to the
//! sessions (see [`demux`](super::demux)).
//!
//! Channel secrets and room rules live with the caller, behind [`ChannelDirectory`]; media
//! leaves through the [`FtlPublisher`] that a successful claim returns.
//!
//! The accept loop (shared with the proxy's relay, see [`listener`](super::listener)) owns the
//! limits: connections and new connections per second per client IP, and a fixed number of
//! connection slots: when all are taken, the oldest connection that has not proved its key is
//! closed to make room, so idle or stalled connections cannot keep a streamer out. A client that does not finish the handshake within
//! the session's handshake timeout is closed. Refusals are counted ([`FtlServerHandle`]) and
//! logged in aggregate, one line per interval at most.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use deadsfu_limits::{ConnectionPermit, RefusalReason, Refusals};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::demux::{Demux, Route, SessionId, SsrcInUse};
use super::listener::{self, Authenticated, Connection, ListenerLimits, ListenerOwner};
use crate::media::{FtlMedia, MediaKind};
use crate::server::{
    ClaimOutcome, EndReason, SecretLookup, ServerConfig, ServerEvent, ServerInput, ServerOutput,
    ServerSession, StreamInfo, random_nonce,
};
use crate::stream_key::ChannelSecret;
use crate::udp::{MAX_DATAGRAM, SenderReport};

/// A boxed future, for the object-safe [`ChannelDirectory`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A secret lookup that could not be answered (store unreachable, ...): the client gets 500.
#[derive(Debug, thiserror::Error)]
#[error("channel directory failed: {0}")]
pub struct DirectoryError(pub String);

/// Why a channel could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another publisher (FTL or WHIP) is live on the channel's room: the client gets 406.
    #[error("channel is already live")]
    InUse,
    /// Anything else: the client gets 500.
    #[error("channel claim failed: {0}")]
    Failed(String),
}

/// Where the server gets channel secrets and publishing rights.
pub trait ChannelDirectory: Send + Sync + 'static {
    /// The channel's secret, or `None` for an unknown channel (401).
    fn secret(
        &self,
        channel_id: u32,
    ) -> BoxFuture<'_, Result<Option<ChannelSecret>, DirectoryError>>;

    /// Makes the session the channel's live publisher. Called only after the client proved it
    /// knows the secret. Dropping the returned publisher releases the channel.
    fn claim(&self, channel_id: u32) -> BoxFuture<'_, Result<Box<dyn FtlPublisher>, ClaimError>>;
}

/// Receives one session's stream. Called from the session's task; keep the calls short (hand
/// the packets on through a channel or a lock-free fan-out). Dropped when the session ends.
pub trait FtlPublisher: Send + 'static {
    /// The handshake finished; media follows.
    fn started(&mut self, _info: &StreamInfo) {}
    /// One media packet (audio only after the first video keyframe).
    fn media(&mut self, media: FtlMedia);
    /// A sender report, for audio/video synchronisation.
    fn sender_report(&mut self, _kind: MediaKind, _report: SenderReport) {}
    /// The session ended; the publisher is dropped right after.
    fn ended(&mut self, _reason: EndReason) {}
}

/// Settings of the FTL server.
#[derive(Debug, Clone)]
pub struct FtlServerConfig {
    /// Control listener (FTL clients always use port 8084).
    pub control_addr: SocketAddr,
    /// The shared UDP socket; port 0 picks an ephemeral port.
    pub udp_addr: SocketAddr,
    /// UDP port to announce instead of the bound one (behind port forwarding).
    pub announced_udp_port: Option<u16>,
    /// Per-session settings; its `udp_port` is replaced by the announced port.
    pub session: ServerConfig,
    /// Most concurrent control connections. When all are taken, the oldest connection that
    /// has not proved its key is closed for a newcomer; if all have, the newcomer is closed.
    pub max_sessions: usize,
    /// Most concurrent control connections per client IP (IPv6: per /64).
    pub max_connections_per_ip: usize,
    /// New control connections per second per client IP...
    pub connects_per_second_per_ip: f64,
    /// ...and the burst allowed above that rate.
    pub connect_burst_per_ip: f64,
    /// Refusals are logged at most once per this interval (with counts by reason).
    pub refusal_log_interval: Duration,
}

impl FtlServerConfig {
    pub fn new(control_addr: SocketAddr, udp_addr: SocketAddr) -> Self {
        Self {
            control_addr,
            udp_addr,
            announced_udp_port: None,
            session: ServerConfig::new(0),
            max_sessions: 1024,
            // OBS and ftl-sdk use one control connection per stream, and reconnect every few
            // seconds at most when a stream fails.
            max_connections_per_ip: 8,
            connects_per_second_per_ip: 2.0,
            connect_burst_per_ip: 10.0,
            refusal_log_interval: Duration::from_secs(10),
        }
    }
}

/// How long a session may block on writing one control reply.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams queued per session before newer ones are dropped.
const SESSION_DATAGRAM_QUEUE: usize = 1024;
/// Largest control read.
const CONTROL_READ: usize = 4096;

/// Why a control connection was closed before or during its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FtlRefusal {
    /// Too many open connections from the client's IP.
    PerIpConnections,
    /// Too many new connections per second from the client's IP.
    ConnectRate,
    /// Every slot holds an authenticated session.
    Full,
    /// Closed to make room for a newcomer before it authenticated.
    Evicted,
    /// Did not finish the handshake in time (including clients that send nothing).
    HandshakeTimeout,
}

impl RefusalReason for FtlRefusal {
    const ALL: &'static [Self] = &[
        FtlRefusal::PerIpConnections,
        FtlRefusal::ConnectRate,
        FtlRefusal::Full,
        FtlRefusal::Evicted,
        FtlRefusal::HandshakeTimeout,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            FtlRefusal::PerIpConnections => "per_ip_connections",
            FtlRefusal::ConnectRate => "connect_rate",
            FtlRefusal::Full => "full",
            FtlRefusal::Evicted => "evicted",
            FtlRefusal::HandshakeTimeout => "handshake_timeout",
        }
    }
}

struct Shared {
    /// Live channels and how to end each.
    channels: Mutex<HashMap<u32, mpsc::Sender<()>>>,
    refusals: Refusals<FtlRefusal>,
    /// Open control connections.
    open: AtomicUsize,
}

/// Controls a running server from elsewhere (e.g. when a key is removed).
#[derive(Clone)]
pub struct FtlServerHandle {
    shared: Arc<Shared>,
}

impl FtlServerHandle {
    /// Ends the channel's live session with 410. Returns whether one was live.
    pub fn end_channel(&self, channel_id: u32) -> bool {
        let sender = self
            .shared
            .channels
            .lock()
            .expect("not poisoned")
            .get(&channel_id)
            .cloned();
        sender.is_some_and(|sender| sender.try_send(()).is_ok())
    }

    /// Refusals for `reason` since the start.
    pub fn refused(&self, reason: FtlRefusal) -> u64 {
        self.shared.refusals.count(reason)
    }

    /// Appends the listener's counters in Prometheus text format (`deadsfu_ftl_*`).
    pub fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        self.shared.refusals.write_prometheus(
            "deadsfu_ftl_refused_total",
            "FTL control connections refused or closed before authenticating, by reason",
            "reason",
            out,
        );
        let _ = writeln!(
            out,
            "# HELP deadsfu_ftl_connections Open FTL control connections"
        );
        let _ = writeln!(out, "# TYPE deadsfu_ftl_connections gauge");
        let _ = writeln!(
            out,
            "deadsfu_ftl_connections {}",
            self.shared.open.load(Ordering::Relaxed)
        );
    }

    /// Channels with a claimed session.
    pub fn live_channels(&self) -> Vec<u32> {
        let mut channels: Vec<u32> = self
            .shared
            .channels
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        channels.sort_unstable();
        channels
    }
}

/// A bound FTL server; [`run`](Self::run) serves it.
pub struct FtlServer {
    listener: TcpListener,
    udp: Arc<UdpSocket>,
    config: FtlServerConfig,
    directory: Arc<dyn ChannelDirectory>,
    shared: Arc<Shared>,
}

/// Receive buffer asked for on the ingest's UDP socket: every FTL publisher's media arrives on
/// this one socket, and at a few hundred thousand packets a second a pause of a millisecond
/// overflows the kernel's default (208 KiB). Granted up to `net.core.rmem_max` unless the
/// process may exceed it.
pub const UDP_RECEIVE_BUFFER: usize = 8 << 20;

/// The receive buffer the kernel granted `udp` (it reports twice the usable size).
fn udp_receive_buffer(udp: &UdpSocket) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        deadsfu_udp::sockopt::int_option(udp.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF)
            .ok()
            .and_then(|b| usize::try_from(b).ok())
            .map(|b| b / 2)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = udp;
        None
    }
}

impl FtlServer {
    /// Binds the control listener and the UDP socket.
    pub async fn bind(
        mut config: FtlServerConfig,
        directory: Arc<dyn ChannelDirectory>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(config.control_addr).await?;
        let udp = UdpSocket::bind(config.udp_addr).await?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let _ = deadsfu_udp::sockopt::set_receive_buffer(udp.as_raw_fd(), UDP_RECEIVE_BUFFER);
        }
        config.session.udp_port = config
            .announced_udp_port
            .unwrap_or(udp.local_addr()?.port());
        let receive_buffer = udp_receive_buffer(&udp);
        info!(
            control = %listener.local_addr()?,
            udp = %udp.local_addr()?,
            announced_udp_port = config.session.udp_port,
            udp_receive_buffer_kib = receive_buffer.map(|b| b / 1024),
            "FTL ingest listening"
        );
        if receive_buffer.is_some_and(|b| b < UDP_RECEIVE_BUFFER) {
            warn!(
                "small FTL UDP receive buffer: bursts from many publishers may be dropped; raise \
                 net.core.rmem_max (e.g. sysctl -w net.core.rmem_max=8388608) or run with \
                 CAP_NET_ADMIN"
            );
        }
        let shared = Arc::new(Shared {
            channels: Mutex::default(),
            refusals: Refusals::new("ftl", config.refusal_log_interval),
            open: AtomicUsize::new(0),
        });
        Ok(Self {
            listener,
            udp: Arc::new(udp),
            config,
            directory,
            shared,
        })
    }

    pub fn control_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn udp_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The UDP socket's receive buffer as the kernel granted it (None where unknown).
    pub fn udp_receive_buffer(&self) -> Option<usize> {
        udp_receive_buffer(&self.udp)
    }

    pub fn handle(&self) -> FtlServerHandle {
        FtlServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` completes, then ends every session with 410 and waits briefly
    /// for them to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let (demux_tx, demux_rx) = mpsc::unbounded_channel();
        let udp_task = tokio::spawn(udp_loop(self.udp.clone(), demux_rx));
        let limits = ListenerLimits {
            max_connections: self.config.max_sessions,
            max_per_ip: self.config.max_connections_per_ip,
            connects_per_second_per_ip: self.config.connects_per_second_per_ip,
            connect_burst_per_ip: self.config.connect_burst_per_ip,
            log_interval: self.config.refusal_log_interval,
        };
        let owner = IngestSessions {
            udp: self.udp.clone(),
            demux: demux_tx,
            directory: self.directory.clone(),
            config: self.config.session.clone(),
            shared: self.shared.clone(),
        };
        listener::serve(&self.listener, &limits, &owner, "ingest", shutdown).await;
        udp_task.abort();
        Ok(())
    }
}

/// The ingest server's part in the shared accept loop.
struct IngestSessions {
    udp: Arc<UdpSocket>,
    demux: mpsc::UnboundedSender<DemuxCommand>,
    directory: Arc<dyn ChannelDirectory>,
    config: ServerConfig,
    shared: Arc<Shared>,
}

impl ListenerOwner for IngestSessions {
    fn session(&self, connection: Connection) -> impl Future<Output = ()> + Send + 'static {
        let Connection {
            id,
            peer,
            stream,
            permit,
            evict,
            stop,
            authenticated,
        } = connection;
        let task = SessionTask {
            id,
            peer,
            udp: self.udp.clone(),
            demux: self.demux.clone(),
            directory: self.directory.clone(),
            config: self.config.clone(),
            shared: self.shared.clone(),
            stop,
            authenticated,
            _permit: permit,
        };
        let span = info_span!("ftl_session", session = id, %peer);
        task.run(stream, evict).instrument(span)
    }

    fn refused(&self, why: FtlRefusal, now: Instant) {
        self.shared.refusals.refuse(why, now);
    }

    fn open(&self, count: usize) {
        self.shared.open.store(count, Ordering::Relaxed);
    }

    fn log_refusals(&self, now: Instant) {
        self.shared.refusals.log_if_due(now);
    }

    fn flush_refusals(&self) {
        self.shared.refusals.flush();
    }
}

enum DemuxCommand {
    Register {
        id: SessionId,
        peer_ip: IpAddr,
        ssrcs: Vec<u32>,
        datagrams: mpsc::Sender<(SocketAddr, Bytes)>,
        done: oneshot::Sender<Result<(), SsrcInUse>>,
    },
    Remove {
        id: SessionId,
    },
}

async fn udp_loop(udp: Arc<UdpSocket>, mut commands: mpsc::UnboundedReceiver<DemuxCommand>) {
    let mut demux = Demux::default();
    let mut sessions: HashMap<SessionId, mpsc::Sender<(SocketAddr, Bytes)>> = HashMap::new();
    // Datagrams are read into one large buffer and split off it, so a session gets its
    // datagram (and the fan-out its payload) without a copy: one allocation per
    // RECEIVE_CHUNK bytes rather than one per datagram.
    let mut buffer = BytesMut::new();
    let mut dropped: u64 = 0;
    loop {
        tokio::select! {
            // Registrations first, so a session is routable before its client sends.
            biased;
            command = commands.recv() => match command {
                None => return,
                Some(DemuxCommand::Register { id, peer_ip, ssrcs, datagrams, done }) => {
                    let result = demux.register(id, peer_ip, &ssrcs);
                    if result.is_ok() {
                        sessions.insert(id, datagrams);
                    }
                    let _ = done.send(result);
                }
                Some(DemuxCommand::Remove { id }) => {
                    demux.remove(id);
                    sessions.remove(&id);
                }
            },
            received = recv_datagram(&udp, &mut buffer) => {
                let (datagram, from) = match received {
                    Ok(received) => received,
                    Err(error) => {
                        debug!(%error, "FTL UDP receive error");
                        continue;
                    }
                };
                if datagram.len() >= MAX_DATAGRAM {
                    // Possibly truncated: larger than any FTL packet.
                    continue;
                }
                match demux.route(from, &datagram) {
                    Route::Session(id) => {
                        let Some(session) = sessions.get(&id) else { continue };
                        if session.try_send((from, datagram)).is_err() {
                            dropped += 1;
                            if dropped.is_power_of_two() {
                                warn!(dropped, "FTL session too slow; datagrams dropped");
                            }
                        }
                    }
                    Route::EchoToSender => {
                        let _ = udp.try_send_to(&datagram, from);
                    }
                    Route::Drop => {}
                }
            }
        }
    }
}

/// Bytes of receive buffer allocated at a time (about 50 media datagrams).
const RECEIVE_CHUNK: usize = 64 * 1024;

/// Reads one datagram into the free end of `buffer` and splits it off.
async fn recv_datagram(
    udp: &UdpSocket,
    buffer: &mut BytesMut,
) -> std::io::Result<(Bytes, SocketAddr)> {
    if buffer.capacity() < MAX_DATAGRAM {
        // The earlier chunk is still shared by datagrams in flight: start a new one.
        *buffer = BytesMut::with_capacity(RECEIVE_CHUNK);
    }
    let (_, from) = udp.recv_buf_from(buffer).await?;
    Ok((buffer.split().freeze(), from))
}

struct SessionTask {
    id: SessionId,
    peer: SocketAddr,
    udp: Arc<UdpSocket>,
    demux: mpsc::UnboundedSender<DemuxCommand>,
    directory: Arc<dyn ChannelDirectory>,
    config: ServerConfig,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    /// Tells the accept loop when the session proved its key (it is then no longer evicted).
    authenticated: Authenticated,
    /// The session's place in the per-IP limits.
    _permit: ConnectionPermit,
}

/// What a session task holds beyond the sans-IO session.
struct SessionIo {
    publisher: Option<Box<dyn FtlPublisher>>,
    /// The channel this task registered in `Shared::channels`.
    live_channel: Option<u32>,
    registered: bool,
    client_udp: Option<SocketAddr>,
    end_tx: mpsc::Sender<()>,
    datagram_tx: mpsc::Sender<(SocketAddr, Bytes)>,
}

impl SessionTask {
    async fn run(mut self, stream: TcpStream, mut evict: oneshot::Receiver<()>) {
        let accepted_at = Instant::now();
        let handshake_deadline =
            tokio::time::Instant::from_std(accepted_at + self.config.handshake_timeout);
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let mut session = ServerSession::new(accepted_at, self.config.clone(), random_nonce());
        let (datagram_tx, mut datagram_rx) = mpsc::channel(SESSION_DATAGRAM_QUEUE);
        let (end_tx, mut end_rx) = mpsc::channel(1);
        let mut io = SessionIo {
            publisher: None,
            live_channel: None,
            registered: false,
            client_udp: None,
            end_tx,
            datagram_tx,
        };
        let mut read_buffer = vec![0u8; CONTROL_READ];
        let mut stopping = false;
        let mut evict_done = false;
        debug!("FTL control connection accepted");
        let reason = loop {
            if let Some(reason) = self
                .drain(&mut session, &mut io, &mut writer, handshake_deadline)
                .await
            {
                break reason;
            }
            let timeout = session
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                read = reader.read(&mut read_buffer) => match read {
                    Ok(0) | Err(_) => session.handle_input(Instant::now(), ServerInput::ControlClosed),
                    Ok(len) => session.handle_input(Instant::now(), ServerInput::Control(&read_buffer[..len])),
                },
                Some((from, datagram)) = datagram_rx.recv() => {
                    io.client_udp = Some(from);
                    session.handle_input(Instant::now(), ServerInput::Datagram(&datagram));
                }
                () = tokio::time::sleep_until(timeout) => session.handle_input(Instant::now(), ServerInput::Timeout),
                Some(()) = end_rx.recv() => session.handle_input(Instant::now(), ServerInput::Terminate),
                evicted = &mut evict, if !evict_done => {
                    evict_done = true;
                    // An error only means the accept loop is gone (shutdown handles that).
                    if evicted.is_ok() {
                        session.handle_input(Instant::now(), ServerInput::Terminate);
                    }
                }
                changed = self.stop.changed(), if !stopping => {
                    stopping = true;
                    if changed.is_err() || *self.stop.borrow() {
                        session.handle_input(Instant::now(), ServerInput::Terminate);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.shutdown()).await;
        if io.registered {
            let _ = self.demux.send(DemuxCommand::Remove { id: self.id });
        }
        if let Some(channel_id) = io.live_channel {
            self.shared
                .channels
                .lock()
                .expect("not poisoned")
                .remove(&channel_id);
        }
        if reason == EndReason::HandshakeTimeout {
            self.shared
                .refusals
                .refuse(FtlRefusal::HandshakeTimeout, Instant::now());
        }
        if let Some(mut publisher) = io.publisher.take() {
            publisher.ended(reason);
        }
        debug!(?reason, stats = ?session.stats(), "FTL session task done");
    }

    /// Carries out the session's outputs. Returns the end reason once the session ended.
    async fn drain(
        &self,
        session: &mut ServerSession,
        io: &mut SessionIo,
        writer: &mut tokio::net::tcp::OwnedWriteHalf,
        handshake_deadline: tokio::time::Instant,
    ) -> Option<EndReason> {
        let mut ended = None;
        while let Some(output) = session.poll_output() {
            match output {
                ServerOutput::Control(bytes) => {
                    let written =
                        tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes)).await;
                    if !matches!(written, Ok(Ok(()))) {
                        session.handle_input(Instant::now(), ServerInput::ControlClosed);
                    }
                }
                ServerOutput::Datagram(bytes) => {
                    if let Some(client) = io.client_udp {
                        let _ = self.udp.try_send_to(&bytes, client);
                    }
                }
                ServerOutput::Event(event) => {
                    if let Some(reason) = self
                        .handle_event(session, io, event, handshake_deadline)
                        .await
                    {
                        ended = Some(reason);
                    }
                }
            }
        }
        ended
    }

    async fn handle_event(
        &self,
        session: &mut ServerSession,
        io: &mut SessionIo,
        event: ServerEvent,
        handshake_deadline: tokio::time::Instant,
    ) -> Option<EndReason> {
        match event {
            ServerEvent::SecretNeeded { channel_id } => {
                let lookup = match tokio::time::timeout_at(
                    handshake_deadline,
                    self.directory.secret(channel_id),
                )
                .await
                {
                    Ok(Ok(Some(secret))) => SecretLookup::Found(secret),
                    Ok(Ok(None)) => SecretLookup::UnknownChannel,
                    Ok(Err(error)) => {
                        warn!(channel_id, %error, "FTL secret lookup failed");
                        SecretLookup::Failed
                    }
                    Err(_) => {
                        warn!(channel_id, "FTL secret lookup timed out");
                        SecretLookup::Failed
                    }
                };
                session.handle_input(Instant::now(), ServerInput::Secret(lookup));
            }
            ServerEvent::ClaimNeeded { channel_id } => {
                // The client proved its key (claims come only after that).
                self.authenticated.mark();
                let outcome = match tokio::time::timeout_at(
                    handshake_deadline,
                    self.directory.claim(channel_id),
                )
                .await
                {
                    Ok(Ok(publisher)) => {
                        io.publisher = Some(publisher);
                        let previous = self
                            .shared
                            .channels
                            .lock()
                            .expect("not poisoned")
                            .insert(channel_id, io.end_tx.clone());
                        if previous.is_some() {
                            // The directory allowed a second claim; the newer session wins
                            // the end-channel handle. Room rules are the directory's job.
                            warn!(channel_id, "FTL channel claimed twice");
                        }
                        io.live_channel = Some(channel_id);
                        ClaimOutcome::Claimed
                    }
                    Ok(Err(ClaimError::InUse)) => ClaimOutcome::InUse,
                    Ok(Err(error)) => {
                        warn!(channel_id, %error, "FTL channel claim failed");
                        ClaimOutcome::Failed
                    }
                    Err(_) => {
                        warn!(channel_id, "FTL channel claim timed out");
                        ClaimOutcome::Failed
                    }
                };
                session.handle_input(Instant::now(), ServerInput::Claim(outcome));
            }
            ServerEvent::Started(info) => {
                let ssrcs: Vec<u32> = [&info.video, &info.audio]
                    .into_iter()
                    .flatten()
                    .map(|track| track.ssrc)
                    .collect();
                let (done_tx, done_rx) = oneshot::channel();
                let _ = self.demux.send(DemuxCommand::Register {
                    id: self.id,
                    peer_ip: self.peer.ip(),
                    ssrcs,
                    datagrams: io.datagram_tx.clone(),
                    done: done_tx,
                });
                match done_rx.await {
                    Ok(Ok(())) => {
                        io.registered = true;
                        if let Some(publisher) = io.publisher.as_mut() {
                            publisher.started(&info);
                        }
                    }
                    Ok(Err(error)) => {
                        warn!(channel_id = info.channel_id, %error, "FTL session not routable");
                        session.handle_input(Instant::now(), ServerInput::Terminate);
                    }
                    Err(_) => session.handle_input(Instant::now(), ServerInput::Terminate),
                }
            }
            ServerEvent::Media(media) => {
                if let Some(publisher) = io.publisher.as_mut() {
                    publisher.media(media);
                }
            }
            ServerEvent::SenderReport { kind, report } => {
                if let Some(publisher) = io.publisher.as_mut() {
                    publisher.sender_report(kind, report);
                }
            }
            ServerEvent::Ended(reason) => return Some(reason),
        }
        None
    }
}
