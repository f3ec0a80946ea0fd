//! The tokio shell of the FTL proxy.
//!
//! - The accept loop is the `ftl` crate's ([`listener`]), shared with the SFU's ingest: per-IP
//!   connections and connect rate, and the connection slots (when all are taken, the oldest
//!   unauthenticated connection is closed to make room). Refusals are counted and logged once
//!   per interval in aggregate.
//! - One task per control connection owns its [`RelaySession`], the client's and the SFU's TCP
//!   connections and, once streaming, a UDP socket connected to the SFU's media port. It reads
//!   at most [`CONTROL_READ`] bytes at a time and every wait has a deadline (handshake, ping,
//!   write).
//! - One task owns the receive side of the proxy's UDP port: the `ftl` crate's [`Demux`]
//!   (client control IP + announced SSRCs, address learned from the datagrams) picks the
//!   session, and the datagram goes straight from the receive buffer to that session's SFU
//!   socket. Replies from the SFU arrive on the session's own socket and go back to the
//!   client's address from the proxy's UDP port. No datagram is copied or queued in between:
//!   the sockets' kernel buffers are the (bounded) queues.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadsfu_ftl::ChannelSecret;
use deadsfu_ftl::net::demux::{Demux, Route};
use deadsfu_ftl::server::{SecretLookup, random_nonce};
use deadsfu_ftl::udp::MAX_DATAGRAM;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};
use tracing::{Instrument, debug, info, info_span};

use super::FtlProxyConfig;
use super::session::{
    Rejection, RelayConfig, RelayEnd, RelayEvent, RelayInput, RelayOutput, RelaySession,
    SfuUnavailable,
};
use super::stats::{Counters, FtlStats, GaugeGuard};
use crate::ftl_routes::FtlRoutes;
use deadsfu_ftl::net::FtlRefusal;
use deadsfu_ftl::net::listener::{self, Authenticated, Connection, ListenerLimits, ListenerOwner};
use deadsfu_limits::{ConnId, ConnectionPermit as Permit};

/// Largest control read, either side.
pub const CONTROL_READ: usize = 4096;

/// A bound FTL proxy; [`run`](Self::run) serves it.
pub struct FtlProxy {
    listener: TcpListener,
    udp: Arc<UdpSocket>,
    control_addr: SocketAddr,
    udp_addr: SocketAddr,
    config: FtlProxyConfig,
    routes: Arc<dyn FtlRoutes>,
    stats: FtlStats,
}

/// Receive and send buffer asked for on the proxy's UDP port.
const UDP_BUFFER: usize = 8 * 1024 * 1024;

impl FtlProxy {
    /// Binds the control listener and the UDP port (on the listener's IP).
    pub async fn bind(config: FtlProxyConfig, routes: Arc<dyn FtlRoutes>) -> io::Result<Self> {
        let listener = TcpListener::bind(config.control).await?;
        let control_addr = listener.local_addr()?;
        let udp = UdpSocket::bind(SocketAddr::new(control_addr.ip(), config.udp_port)).await?;
        // Every client's media arrives on this one socket: a pause of a millisecond at a few
        // hundred thousand packets a second overflows the kernel's default 208 KiB.
        // Beyond net.core.rmem_max/wmem_max where the process may, as the SFU's sockets do.
        {
            use deadsfu_udp::sockopt::{int_option, set_receive_buffer, set_send_buffer};
            use std::os::fd::AsRawFd;
            let fd = udp.as_raw_fd();
            let _ = set_receive_buffer(fd, UDP_BUFFER);
            let _ = set_send_buffer(fd, UDP_BUFFER);
            // The kernel reports twice what it grants.
            let granted = int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0) / 2;
            if usize::try_from(granted).unwrap_or(0) < UDP_BUFFER {
                debug!("FTL proxy UDP buffer below {UDP_BUFFER} bytes (raise net.core.rmem_max)");
            }
        }
        let udp_addr = udp.local_addr()?;
        let log_interval = config.limits.log_interval;
        info!(control = %control_addr, udp = %udp_addr, "FTL proxy listening");
        Ok(Self {
            listener,
            udp: Arc::new(udp),
            control_addr,
            udp_addr,
            config,
            routes,
            stats: FtlStats::new(log_interval),
        })
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Live counters; keep a clone for `/metrics`.
    pub fn stats(&self) -> FtlStats {
        self.stats.clone()
    }

    /// Serves until `stop` completes, then ends every session (410 to the client,
    /// `DISCONNECT` to the SFU) and waits briefly for them.
    pub async fn run(self, stop: impl Future<Output = ()>) -> io::Result<()> {
        let FtlProxy {
            listener,
            udp,
            config,
            routes,
            stats,
            udp_addr,
            ..
        } = self;
        let limits = config.limits.clone();
        let relay = RelayConfig {
            udp_port: udp_addr.port(),
            handshake_timeout: limits.handshake_timeout,
            ping_timeout: limits.ping_timeout,
            sfu_reply_timeout: limits.sfu_reply_timeout,
        };
        let shared = Arc::new(Shared {
            relay,
            write_timeout: limits.write_timeout,
            sfu_connect_timeout: limits.sfu_connect_timeout,
            backend_source: config.backend_source,
            routes,
            udp,
            table: Mutex::default(),
            counters: stats.0.clone(),
        });
        let udp_task = tokio::spawn(udp_loop(shared.clone()));
        let listener_limits = ListenerLimits {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_per_ip,
            connects_per_second_per_ip: limits.connects_per_second_per_ip,
            connect_burst_per_ip: limits.connect_burst_per_ip,
            log_interval: limits.log_interval,
        };
        let owner = RelaySessions {
            shared: shared.clone(),
        };
        listener::serve(&listener, &listener_limits, &owner, "proxy", stop).await;
        udp_task.abort();
        Ok(())
    }
}

/// The relay's part in the shared accept loop.
struct RelaySessions {
    shared: Arc<Shared>,
}

impl ListenerOwner for RelaySessions {
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
        let session = Session::new(self.shared.clone(), id, peer, stream, authenticated);
        let span = info_span!("ftl_proxy", conn = id, %peer);
        session.run(permit, evict, stop).instrument(span)
    }

    fn refused(&self, why: FtlRefusal, _now: Instant) {
        self.shared.counters.reject(match why {
            FtlRefusal::PerIpConnections => Rejection::PerIpConnections,
            FtlRefusal::ConnectRate => Rejection::ConnectRate,
            FtlRefusal::Full => Rejection::Full,
            FtlRefusal::Evicted => Rejection::Evicted,
            FtlRefusal::HandshakeTimeout => Rejection::HandshakeTimeout,
        });
    }

    fn accepted(&self) {
        self.shared
            .counters
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn log_refusals(&self, now: Instant) {
        self.shared.counters.refusals.log_if_due(now);
    }

    fn flush_refusals(&self) {
        self.shared.counters.refusals.flush();
    }
}

/// What the accept loop, the sessions and the UDP task share.
struct Shared {
    relay: RelayConfig,
    write_timeout: Duration,
    sfu_connect_timeout: Duration,
    backend_source: Option<std::net::IpAddr>,
    routes: Arc<dyn FtlRoutes>,
    /// The proxy's UDP port: receives from clients, sends the SFUs' replies back.
    udp: Arc<UdpSocket>,
    table: Mutex<UdpTable>,
    counters: Arc<Counters>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, UdpTable> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Streaming sessions as the UDP task sees them.
#[derive(Default)]
struct UdpTable {
    demux: Demux,
    paths: HashMap<ConnId, UdpPath>,
}

struct UdpPath {
    /// Connected to the SFU's media port.
    sfu: Arc<UdpSocket>,
    /// Tells the session where its client sends from.
    client: watch::Sender<Option<SocketAddr>>,
    last_client: Option<SocketAddr>,
}

/// Removes a session's media path when its task ends, however it ends.
struct PathGuard {
    shared: Arc<Shared>,
    id: ConnId,
    _streaming: GaugeGuard,
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        let mut table = self.shared.table();
        table.demux.remove(self.id);
        table.paths.remove(&self.id);
    }
}

enum Next {
    Forward(Arc<UdpSocket>),
    Echo,
    Discard,
}

async fn udp_loop(shared: Arc<Shared>) {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &shared.counters;
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match shared.udp.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "FTL proxy UDP receive error");
                continue;
            }
        };
        if len == buffer.len() {
            // Possibly truncated: larger than any FTL packet.
            counters.dropped.fetch_add(1, Relaxed);
            continue;
        }
        let datagram = &buffer[..len];
        let next = {
            let mut table = shared.table();
            let UdpTable { demux, paths } = &mut *table;
            match demux.route(from, datagram) {
                Route::Session(id) => match paths.get_mut(&id) {
                    Some(path) => {
                        if path.last_client != Some(from) {
                            path.last_client = Some(from);
                            path.client.send_replace(Some(from));
                        }
                        Next::Forward(path.sfu.clone())
                    }
                    None => Next::Discard,
                },
                Route::EchoToSender => Next::Echo,
                Route::Drop => Next::Discard,
            }
        };
        match next {
            Next::Forward(sfu) => match sfu.try_send(datagram) {
                Ok(_) => {
                    counters.to_sfu_packets.fetch_add(1, Relaxed);
                    counters.to_sfu_bytes.fetch_add(len as u64, Relaxed);
                }
                Err(_) => {
                    counters.dropped.fetch_add(1, Relaxed);
                }
            },
            Next::Echo => {
                if shared.udp.try_send_to(datagram, from).is_ok() {
                    counters.pings_echoed.fetch_add(1, Relaxed);
                }
            }
            Next::Discard => {
                counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// One control connection and everything it opened.
struct Session {
    shared: Arc<Shared>,
    id: ConnId,
    peer: SocketAddr,
    relay: RelaySession,
    /// The handshake deadline, for the lookups and the SFU connect.
    deadline: tokio::time::Instant,
    client_rd: OwnedReadHalf,
    client_wr: OwnedWriteHalf,
    sfu_rd: Option<OwnedReadHalf>,
    sfu_wr: Option<OwnedWriteHalf>,
    sfu_addr: Option<SocketAddr>,
    /// Connected to the SFU's media port, once streaming.
    media: Option<Arc<UdpSocket>>,
    path: Option<PathGuard>,
    client_udp: Option<watch::Receiver<Option<SocketAddr>>>,
    auth: Authenticated,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        id: ConnId,
        peer: SocketAddr,
        stream: TcpStream,
        auth: Authenticated,
    ) -> Self {
        let now = Instant::now();
        let _ = stream.set_nodelay(true);
        let (client_rd, client_wr) = stream.into_split();
        Self {
            relay: RelaySession::new(now, shared.relay.clone(), random_nonce()),
            deadline: tokio::time::Instant::from_std(now + shared.relay.handshake_timeout),
            shared,
            id,
            peer,
            client_rd,
            client_wr,
            sfu_rd: None,
            sfu_wr: None,
            sfu_addr: None,
            media: None,
            path: None,
            client_udp: None,
            auth,
        }
    }

    async fn run(
        mut self,
        _permit: Permit,
        mut evict: oneshot::Receiver<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        let _open = GaugeGuard::new(&self.shared.counters, |c| &c.open);
        let mut client_buffer = vec![0u8; CONTROL_READ];
        let mut sfu_buffer = vec![0u8; CONTROL_READ];
        let mut udp_buffer = vec![0u8; MAX_DATAGRAM];
        let mut terminating = false;
        debug!("FTL control connection accepted");
        let end = loop {
            if let Some(end) = self.drain().await {
                break end;
            }
            let timeout = self
                .relay
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                read = self.client_rd.read(&mut client_buffer) => match read {
                    Ok(0) | Err(_) => self.relay.handle_input(Instant::now(), RelayInput::ClientClosed),
                    Ok(len) => self.relay.handle_input(Instant::now(), RelayInput::Client(&client_buffer[..len])),
                },
                read = read_some(self.sfu_rd.as_mut(), &mut sfu_buffer) => match read {
                    Ok(0) | Err(_) => {
                        self.sfu_rd = None;
                        self.relay.handle_input(Instant::now(), RelayInput::SfuClosed);
                    }
                    Ok(len) => self.relay.handle_input(Instant::now(), RelayInput::Sfu(&sfu_buffer[..len])),
                },
                received = recv_some(self.media.as_deref(), &mut udp_buffer) => {
                    if let Ok(len) = received {
                        self.relay_to_client(&udp_buffer[..len]);
                    }
                }
                Some(addr) = address_change(self.client_udp.as_mut()) => {
                    self.relay.handle_input(Instant::now(), RelayInput::ClientUdp(addr));
                }
                () = tokio::time::sleep_until(timeout) => self.relay.handle_input(Instant::now(), RelayInput::Timeout),
                _ = &mut evict, if !terminating => {
                    terminating = true;
                    self.relay.handle_input(Instant::now(), RelayInput::Terminate);
                }
                _ = stop.changed(), if !terminating => {
                    terminating = true;
                    self.relay.handle_input(Instant::now(), RelayInput::Terminate);
                }
            }
        };
        let write_timeout = self.shared.write_timeout;
        let _ = tokio::time::timeout(write_timeout, self.client_wr.shutdown()).await;
        if let Some(sfu) = self.sfu_wr.as_mut() {
            let _ = tokio::time::timeout(write_timeout, sfu.shutdown()).await;
        }
        if let RelayEnd::Rejected(rejection) = end {
            self.shared.counters.reject(rejection);
        }
        // Refusals are logged in aggregate only (see `Counters::refusals`).
        if self.relay.is_authenticated() && !matches!(end, RelayEnd::Rejected(_)) {
            info!(channel_id = ?self.relay.channel_id(), sfu = ?self.sfu_addr, ?end, stats = ?self.relay.stats(), "FTL relay ended");
        } else {
            debug!(channel_id = ?self.relay.channel_id(), sfu = ?self.sfu_addr, ?end, "FTL control connection closed");
        }
    }

    /// Carries out the relay's outputs. Returns the end once the relay ended.
    async fn drain(&mut self) -> Option<RelayEnd> {
        let mut ended = None;
        while let Some(output) = self.relay.poll_output() {
            match output {
                RelayOutput::ToClient(bytes) => {
                    if !write_within(&mut self.client_wr, &bytes, self.shared.write_timeout).await {
                        self.relay
                            .handle_input(Instant::now(), RelayInput::ClientClosed);
                    }
                }
                RelayOutput::ToSfu(bytes) => {
                    if let Some(sfu) = self.sfu_wr.as_mut()
                        && !write_within(sfu, &bytes, self.shared.write_timeout).await
                    {
                        self.relay
                            .handle_input(Instant::now(), RelayInput::SfuClosed);
                    }
                }
                RelayOutput::Event(RelayEvent::SecretNeeded { channel_id }) => {
                    let lookup = self.lookup_secret(channel_id).await;
                    self.relay
                        .handle_input(Instant::now(), RelayInput::Secret(lookup));
                }
                RelayOutput::Event(RelayEvent::ConnectSfu { channel_id }) => {
                    self.auth.mark();
                    let input = self.connect_sfu(channel_id).await;
                    self.relay.handle_input(Instant::now(), input);
                }
                RelayOutput::Event(RelayEvent::OpenMediaPath {
                    channel_id,
                    sfu_udp_port,
                    ssrcs,
                }) => {
                    let input = match self.open_media_path(sfu_udp_port, &ssrcs).await {
                        Ok(()) => RelayInput::MediaPathReady,
                        Err(error) => {
                            debug!(channel_id, %error, "FTL media path not set up");
                            RelayInput::MediaPathFailed
                        }
                    };
                    self.relay.handle_input(Instant::now(), input);
                }
                RelayOutput::Event(RelayEvent::Ended(end)) => ended = Some(end),
            }
        }
        ended
    }

    async fn lookup_secret(&self, channel_id: u32) -> SecretLookup {
        let lookup = self.shared.routes.channel_secret(channel_id);
        match tokio::time::timeout_at(self.deadline, lookup).await {
            Ok(Ok(Some(secret))) => SecretLookup::Found(ChannelSecret::new(secret.into_bytes())),
            Ok(Ok(None)) => SecretLookup::UnknownChannel,
            Ok(Err(error)) => {
                debug!(channel_id, %error, "FTL key lookup failed");
                SecretLookup::Failed
            }
            Err(_) => {
                debug!(channel_id, "FTL key lookup timed out");
                SecretLookup::Failed
            }
        }
    }

    async fn connect_sfu(&mut self, channel_id: u32) -> RelayInput<'static> {
        let Some(addr) = self.shared.routes.sfu_for_channel(channel_id) else {
            debug!(channel_id, "no SFU for FTL channel");
            return RelayInput::SfuUnavailable(SfuUnavailable::NoRoute);
        };
        let until = self
            .deadline
            .min(tokio::time::Instant::now() + self.shared.sfu_connect_timeout);
        let connect = crate::net_util::connect_from(self.shared.backend_source, addr);
        match tokio::time::timeout_at(until, connect).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                self.sfu_rd = Some(rd);
                self.sfu_wr = Some(wr);
                self.sfu_addr = Some(addr);
                debug!(channel_id, sfu = %addr, "connected to SFU");
                RelayInput::SfuConnected
            }
            Ok(Err(error)) => {
                debug!(channel_id, sfu = %addr, %error, "FTL SFU unreachable");
                RelayInput::SfuUnavailable(SfuUnavailable::Unreachable)
            }
            Err(_) => {
                debug!(channel_id, sfu = %addr, "FTL SFU connect timed out");
                RelayInput::SfuUnavailable(SfuUnavailable::Unreachable)
            }
        }
    }

    /// A UDP socket connected to the SFU's media port, from the IP of the SFU control
    /// connection (the SFU takes media from its control peer's IP), and the demux entry that
    /// routes the client's datagrams to it.
    async fn open_media_path(&mut self, sfu_udp_port: u16, ssrcs: &[u32]) -> io::Result<()> {
        let (Some(sfu_addr), Some(sfu_wr)) = (self.sfu_addr, self.sfu_wr.as_ref()) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let socket = UdpSocket::bind(SocketAddr::new(sfu_wr.local_addr()?.ip(), 0)).await?;
        socket
            .connect(SocketAddr::new(sfu_addr.ip(), sfu_udp_port))
            .await?;
        let socket = Arc::new(socket);
        let (client_tx, client_rx) = watch::channel(None);
        {
            let mut table = self.shared.table();
            table
                .demux
                .register(self.id, self.peer.ip(), ssrcs)
                .map_err(io::Error::other)?;
            table.paths.insert(
                self.id,
                UdpPath {
                    sfu: socket.clone(),
                    client: client_tx,
                    last_client: None,
                },
            );
        }
        let counters = &self.shared.counters;
        counters
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.path = Some(PathGuard {
            shared: self.shared.clone(),
            id: self.id,
            _streaming: GaugeGuard::new(counters, |c| &c.streaming),
        });
        self.media = Some(socket);
        self.client_udp = Some(client_rx);
        Ok(())
    }

    /// A datagram from the SFU (NACK, ping echo, ...) goes back to the client from the proxy's
    /// UDP port.
    fn relay_to_client(&mut self, datagram: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &self.shared.counters;
        let sent = self
            .relay
            .sfu_datagram(datagram)
            .is_some_and(|to| self.shared.udp.try_send_to(datagram, to).is_ok());
        if sent {
            counters.to_client_packets.fetch_add(1, Relaxed);
            counters
                .to_client_bytes
                .fetch_add(datagram.len() as u64, Relaxed);
        } else {
            counters.dropped.fetch_add(1, Relaxed);
        }
    }
}

async fn write_within(writer: &mut OwnedWriteHalf, bytes: &[u8], limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, writer.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

async fn read_some(reader: Option<&mut OwnedReadHalf>, buffer: &mut [u8]) -> io::Result<usize> {
    match reader {
        Some(reader) => reader.read(buffer).await,
        None => std::future::pending().await,
    }
}

async fn recv_some(socket: Option<&UdpSocket>, buffer: &mut [u8]) -> io::Result<usize> {
    match socket {
        Some(socket) => socket.recv(buffer).await,
        None => std::future::pending().await,
    }
}

async fn address_change(
    receiver: Option<&mut watch::Receiver<Option<SocketAddr>>>,
) -> Option<SocketAddr> {
    let Some(receiver) = receiver else {
        return std::future::pending().await;
    };
    match receiver.changed().await {
        Ok(()) => *receiver.borrow_and_update(),
        Err(_) => std::future::pending().await,
    }
}
