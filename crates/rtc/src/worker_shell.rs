//! A media worker's shell: its thread, its UDP socket, its channels and the clock, around the
//! [`WorkerCore`]. Everything the worker owns is touched only by its thread, so nothing on the
//! media path takes a lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use std::os::fd::AsRawFd;

use deadsfu_udp::RecvMmsg;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::handshake_thread::HandshakeThreads;
use crate::messages::{Control, HandshakeJob, PeerMessage, ToWorker};
use crate::metrics::Counters;
use crate::panic_policy::exit_on_panic;
use crate::shared::Shared;
use crate::turn::{TurnIo, run_turn};
use crate::udp_sink::UdpSink;
use crate::worker_core::WorkerCore;

/// Commands waiting for one worker; beyond, the control side waits (it is the HTTP handler of
/// the request that made the command).
pub(crate) const CONTROL_CAPACITY: usize = 1024;
/// Packets and requests from other workers waiting for one worker; beyond, they are dropped
/// and counted.
pub(crate) const INBOX_CAPACITY: usize = 8192;

/// Buffers per `recvmmsg` call, and their size (a coalesced GRO buffer is up to 64 KiB).
const RECV_BATCH: usize = 32;
const RECV_BUFFER: usize = 65_536;

/// How other threads reach a worker.
#[derive(Clone)]
pub(crate) struct WorkerHandle {
    pub control: mpsc::Sender<ToWorker>,
    pub inbox: mpsc::Sender<PeerMessage>,
}

pub(crate) struct WorkerShell {
    pub index: usize,
    pub local_port: u16,
    pub shared: Arc<Shared>,
    pub peers: Arc<[WorkerHandle]>,
    pub counters: Arc<Counters>,
    pub handshakes: HandshakeThreads,
}

struct Io<'a> {
    index: usize,
    handshakes: &'a HandshakeThreads,
    socket: &'a UdpSocket,
    /// The last `recvmmsg` batch, and where in it the next datagram is: the buffer, and the
    /// offset within a coalesced (GRO) buffer.
    received: RecvMmsg,
    next_buffer: usize,
    next_offset: usize,
    control: &'a mut mpsc::Receiver<ToWorker>,
    inbox: &'a mut mpsc::Receiver<PeerMessage>,
    peers: &'a [WorkerHandle],
    /// An input taken while waiting, for the next turn.
    waiting_peer: Option<PeerMessage>,
    waiting_control: Option<ToWorker>,
    shutdown: bool,
}

impl TurnIo for Io<'_> {
    fn datagram(&mut self) -> Option<(SocketAddr, &[u8])> {
        loop {
            let Some(r) = self.received.get(self.next_buffer) else {
                // The batch is used up: read what is waiting, up to a batch.
                self.next_buffer = 0;
                self.next_offset = 0;
                // Through tokio's `try_io`, so that an empty socket clears its readiness (else
                // the wait below would wake at once, for ever).
                let fd = self.socket.as_raw_fd();
                let received = &mut self.received;
                let read = self
                    .socket
                    .try_io(Interest::READABLE, || match received.recv(fd) {
                        Ok(0) => Err(std::io::ErrorKind::WouldBlock.into()),
                        other => other,
                    });
                if read.unwrap_or(0) == 0 {
                    return None;
                }
                continue;
            };
            let buffer = self.next_buffer;
            let size = r.segment_size.filter(|s| *s > 0).unwrap_or(r.data.len());
            let start = self.next_offset;
            let end = (start + size.max(1)).min(r.data.len());
            let from = r.from;
            if end >= r.data.len() {
                self.next_buffer += 1;
                self.next_offset = 0;
            } else {
                self.next_offset = end;
            }
            if let (Some(from), true) = (from, start < end) {
                let r = self.received.get(buffer)?;
                return Some((from, &r.data[start..end]));
            }
        }
    }

    fn peer_message(&mut self) -> Option<PeerMessage> {
        self.waiting_peer
            .take()
            .or_else(|| self.inbox.try_recv().ok())
    }

    fn control(&mut self) -> Option<Control> {
        if self.shutdown {
            return None;
        }
        match self
            .waiting_control
            .take()
            .or_else(|| self.control.try_recv().ok())?
        {
            ToWorker::Control(c) => Some(c),
            ToWorker::Shutdown => {
                self.shutdown = true;
                None
            }
        }
    }

    fn now(&mut self) -> Instant {
        Instant::now()
    }

    fn send_to_peer(&mut self, worker: usize, msg: PeerMessage) -> bool {
        self.peers
            .get(worker)
            .is_some_and(|p| p.inbox.try_send(msg).is_ok())
    }

    fn handshake(&mut self, job: HandshakeJob) -> Result<(), HandshakeJob> {
        self.handshakes.submit(self.index, job)
    }
}

/// Runs a worker; if it panics, the process exits. A worker's sessions, rooms and the claims
/// other threads hold on them are one state that a panic leaves half-changed (rooms claimed
/// forever, viewers waiting on a dead thread); ending the process lets a supervisor (systemd,
/// Docker, Kubernetes) start a clean one, and clients reconnect.
pub(crate) fn run_or_exit(
    shell: WorkerShell,
    socket: std::net::UdpSocket,
    send_socket: std::net::UdpSocket,
    control: mpsc::Receiver<ToWorker>,
    inbox: mpsc::Receiver<PeerMessage>,
) {
    let _worker = tracing::error_span!("media", worker = shell.index).entered();
    exit_on_panic("media worker", move || {
        shell.run(socket, send_socket, control, inbox)
    });
}

/// What ended a wait.
enum Woke {
    Socket,
    Control(ToWorker),
    Peer(PeerMessage),
    Timer,
}

impl WorkerShell {
    pub fn run(
        self,
        socket: std::net::UdpSocket,
        send_socket: std::net::UdpSocket,
        mut control: mpsc::Receiver<ToWorker>,
        mut inbox: mpsc::Receiver<PeerMessage>,
    ) {
        let index = self.index;
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot start worker runtime");
                return;
            }
        };
        let mut core = WorkerCore::new(
            index,
            self.local_port,
            self.peers.len(),
            self.shared.clone(),
            self.counters.clone(),
            Box::new(UdpSink::new(send_socket)),
            Instant::now(),
            SystemTime::now(),
        );
        rt.block_on(async move {
            let socket = match UdpSocket::from_std(socket) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot register UDP socket");
                    return;
                }
            };
            let mut io = Io {
                index,
                handshakes: &self.handshakes,
                socket: &socket,
                received: RecvMmsg::new(RECV_BATCH, RECV_BUFFER),
                next_buffer: 0,
                next_offset: 0,
                control: &mut control,
                inbox: &mut inbox,
                peers: &self.peers,
                waiting_peer: None,
                waiting_control: None,
                shutdown: false,
            };
            loop {
                let report = run_turn(&mut core, &mut io, &self.counters);
                if io.shutdown {
                    break;
                }
                if !report.idle() {
                    continue;
                }
                // Nothing waiting anywhere: sleep until something arrives or a timer is due.
                let deadline = core.poll_timeout(Instant::now());
                let woke = tokio::select! {
                    _ = io.socket.readable() => Woke::Socket,
                    msg = io.control.recv() => Woke::Control(msg.unwrap_or(ToWorker::Shutdown)),
                    Some(msg) = io.inbox.recv() => Woke::Peer(msg),
                    _ = tokio::time::sleep_until(deadline.into()) => Woke::Timer,
                };
                match woke {
                    Woke::Control(msg) => io.waiting_control = Some(msg),
                    Woke::Peer(msg) => io.waiting_peer = Some(msg),
                    Woke::Socket | Woke::Timer => {}
                }
            }
            // The goodbyes (DTLS close_notify, RTCP BYE) go out before we stop.
            core.shutdown(Instant::now());
        });
    }
}
