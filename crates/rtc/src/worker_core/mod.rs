//! The media worker's core, without I/O: the sessions of one worker, the rooms they are in and
//! their timers. It is fed a received datagram with its source, a packet or keyframe request from
//! another worker, a control command, or the time; it gives datagrams to its [`DatagramSink`],
//! messages for other workers, and its next deadline. No socket, thread, channel or clock: the
//! shell (`worker_shell.rs`) owns those, and the tests drive the core with bytes and fake time.

mod connecting;
mod demux;
mod drain;
mod fanout;
mod gop_handover;
mod rooms;
mod sessions;
#[cfg(test)]
pub(crate) mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deadsfu_media::{MediaPacket, RoomId};

use str0m::IceCreds;

use crate::egress::WallClock;
use crate::error::SessionError;
use crate::messages::HandshakeJob;
pub(crate) use crate::messages::{
    Command, Control, HeldCheck, PeerBuild, PeerMessage, Reply, ReplyTo,
};
use crate::metrics::Counters;
use crate::send_batch::{DatagramSink, SendBatch};
#[cfg(test)]
use crate::session::SWITCHES_PER_SECOND;
use crate::session::{Outbox, Peer, Session, SessionKind, feed_datagram};
use crate::shared::Shared;
use crate::stun;
pub(crate) use demux::Slot;
use demux::{DeferredChecks, Demux, Refused};
use rooms::LocalRoom;
use sessions::Sessions;

/// Longest a session waits between timer checks, so connect and idle timeouts are noticed.
const MAX_TIMER_GAP: Duration = Duration::from_secs(1);
/// Switches of one viewer closer together than this are coalesced (see `switch_room`).
const SWITCH_COALESCE: Duration = Duration::from_millis(200);
/// How often rooms without live video or sessions here are tidied away.
const TIDY_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct WorkerCore {
    index: usize,
    local_port: u16,
    workers: usize,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    clock: WallClock,
    sessions: Sessions,
    demux: Demux,
    deferred_checks: DeferredChecks,
    rooms: HashMap<RoomId, LocalRoom>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    outbox: Outbox,
    /// Next frame time of the idle clip (when there is one).
    next_idle_frame: Option<Instant>,
    idle_packets: Vec<Arc<MediaPacket>>,
    /// Room packets of this turn, fanned out together at its end (one pass per viewer per turn
    /// rather than per packet).
    pending: Vec<(RoomId, Arc<MediaPacket>)>,
    next_tidy: Instant,
    sends: SendBatch,
    to_peers: Vec<(usize, PeerMessage)>,
    handshake_jobs: Vec<HandshakeJob>,
    /// Rooms waiting for their GOP from its keeper, and until when (`gop_handover.rs`).
    gop_waits: Vec<(RoomId, Instant)>,
}

impl WorkerCore {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        local_port: u16,
        workers: usize,
        shared: Arc<Shared>,
        counters: Arc<Counters>,
        sink: Box<dyn DatagramSink>,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        WorkerCore {
            index,
            local_port,
            workers,
            shared,
            counters,
            clock: WallClock::new(now, wall),
            sessions: Sessions::default(),
            demux: Demux::new(now),
            deferred_checks: DeferredChecks::default(),
            rooms: HashMap::new(),
            timers: BinaryHeap::new(),
            outbox: Outbox::default(),
            next_idle_frame: None,
            idle_packets: Vec::new(),
            pending: Vec::new(),
            next_tidy: now,
            sends: SendBatch::new(sink),
            to_peers: Vec::new(),
            handshake_jobs: Vec::new(),
            gop_waits: Vec::new(),
        }
    }

    /// When the core next needs [`WorkerCore::handle_timeout`], at the latest.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let mut deadline = now + MAX_TIMER_GAP;
        if let Some(Reverse((t, _))) = self.timers.peek() {
            deadline = deadline.min(*t);
        }
        if let Some(t) = self.next_idle_frame {
            deadline = deadline.min(t);
        }
        if let Some(t) = self.next_gop_wait() {
            deadline = deadline.min(t);
        }
        deadline
    }

    /// Messages for other workers (worker index, message), to be taken after each input.
    pub fn drain_peer_messages(&mut self) -> std::vec::Drain<'_, (usize, PeerMessage)> {
        self.to_peers.drain(..)
    }

    /// Jobs for the handshake threads, to be taken after each input.
    pub fn drain_handshake_jobs(&mut self) -> std::vec::Drain<'_, HandshakeJob> {
        self.handshake_jobs.drain(..)
    }

    #[cfg(test)]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Ends a turn of the shell's loop: the checks from new sources held back during it, due
    /// timers and idle-clip frames, then the fan-out of the turn's packets and the datagrams it
    /// all produced.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_deferred_checks();
        self.handle_timers(now);
        self.play_idle(now);
        self.expire_gop_waits(now);
        self.tidy_rooms(now);
        self.flush_fanout(now);
        self.sends.flush(&self.counters);
    }

    pub fn handle_control(&mut self, now: Instant, control: Control) {
        let Control { command, reply } = control;
        let answer = |reply: Option<ReplyTo>, r: Reply| reply.is_none_or(|f| f(r));
        match command {
            Command::Adopt(session) => {
                let serial = session.serial;
                self.adopt(*session, now);
                if !answer(reply, Reply::Done(Ok(()))) {
                    // The HTTP request went away: nobody will ever learn this session's URL.
                    self.end_session(serial, "creator went away");
                }
            }
            Command::AddCandidates { serial, candidates } => {
                if let Some(slot) = self.sessions.slot_of(serial) {
                    let s = self.sessions.get_mut(slot);
                    for c in candidates {
                        match &mut s.peer {
                            Peer::Live(rtc) => rtc.add_remote_candidate(c),
                            Peer::Parked(recipe) => recipe.add_remote_candidate(c),
                            // Its first check has come: ICE-lite needs no more.
                            Peer::Handshaking { .. } => {}
                        }
                    }
                    self.drain(slot, now);
                }
                answer(reply, Reply::Done(Ok(())));
            }
            Command::RestartIce { serial, remote } => {
                let Some(slot) = self.sessions.slot_of(serial) else {
                    answer(reply, Reply::IceRestarted(Err(SessionError::NotFound)));
                    return;
                };
                let s = self.sessions.get_mut(slot);
                let local = IceCreds::new();
                match &mut s.peer {
                    Peer::Live(rtc) => {
                        let mut api = rtc.direct_api();
                        api.set_remote_ice_credentials(remote);
                        api.set_local_ice_credentials(local.clone());
                    }
                    Peer::Parked(recipe) => {
                        recipe.remote = Some(remote);
                        recipe.local = local.clone();
                    }
                    Peer::Handshaking { .. } => {
                        // The peer connecting has the old credentials: try again shortly.
                        answer(reply, Reply::IceRestarted(Err(SessionError::Unavailable)));
                        return;
                    }
                }
                self.demux.remove_ufrag(&s.local_ufrag);
                s.local_ufrag = local.ufrag.clone();
                self.demux.add_ufrag(local.ufrag.clone(), slot, now);
                answer(reply, Reply::IceRestarted(Ok(local)));
                self.drain(slot, now);
            }
            Command::Close { serial } => {
                let found = self.sessions.slot_of(serial).is_some_and(|slot| {
                    if let Some(rtc) = self.sessions.get_mut(slot).peer.live() {
                        rtc.disconnect();
                    }
                    self.drain(slot, now);
                    self.end_session(serial, "closed by DELETE");
                    true
                });
                let result = if found {
                    Ok(())
                } else {
                    Err(SessionError::NotFound)
                };
                answer(reply, Reply::Done(result));
            }
            Command::SwitchRoom { serial, room } => {
                let result = self.switch_room(serial, room, now);
                answer(reply, Reply::Done(result));
            }
            Command::PeerConnected(handover) => self.peer_connected(*handover, now),
            Command::PeerFailed { serial, reason } => self.end_session(serial, reason),
            Command::LateDatagram { serial, datagram } => {
                if let Some(slot) = self.sessions.slot_of(serial) {
                    let at = datagram.at.max(now);
                    self.receive(at, datagram.from, slot, true, &datagram.bytes);
                }
            }
        }
    }

    pub fn handle_peer_message(&mut self, now: Instant, msg: PeerMessage) {
        match msg {
            PeerMessage::Packet { room, packet } => self.pending.push((room, packet)),
            PeerMessage::KeyframeRequest { room } => self.keyframe_request_local(room, now),
            PeerMessage::GopRequest { room, from } => self.send_gop(room, from),
            PeerMessage::Gop { room, packets } => self.gop_arrived(room, Some(packets), now),
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let (slot, known) = match self.demux.route(from, || stun::local_ufrag(buf), now) {
            Ok(routed) => routed,
            Err(Refused::Unknown) => {
                Counters::add(&self.counters.unknown_datagrams, 1);
                return;
            }
            Err(Refused::RateLimited) => {
                Counters::add(&self.counters.stun_rate_limited, 1);
                return;
            }
        };
        if known {
            self.receive(now, from, slot, true, buf);
            return;
        }
        // A check from a source not bound yet: after this turn's media (see `DeferredChecks`).
        if self.deferred_checks.is_full() {
            self.handle_deferred_checks();
        }
        let serial = self.sessions.get_mut(slot).serial;
        self.deferred_checks.push(now, from, slot, serial, buf);
    }

    /// The checks held back this turn, in arrival order, for sessions still there.
    fn handle_deferred_checks(&mut self) {
        let (checks, bytes) = self.deferred_checks.take();
        for check in &checks {
            if self.sessions.slot_of(check.serial) == Some(check.slot) {
                self.receive(check.at, check.from, check.slot, false, check.bytes(&bytes));
            }
        }
        self.deferred_checks.give_back(checks, bytes);
    }

    /// Feeds a routed datagram to its session; `known`: from an address bound to it.
    fn receive(&mut self, now: Instant, from: SocketAddr, slot: Slot, known: bool, buf: &[u8]) {
        let session = self.sessions.get_mut(slot);
        let rtc = match &mut session.peer {
            Peer::Live(rtc) => rtc,
            _ => {
                self.receive_connecting(now, from, slot, known, buf);
                return;
            }
        };
        let to = SocketAddr::new(self.shared.local_ip_for(from), self.local_port);
        if let Err(e) = feed_datagram(rtc, now, from, to, buf) {
            tracing::debug!(session = %session.id, error = %e, "input rejected");
        }
        if known {
            session.last_input = now;
        }
        session.last_source = Some(from);
        self.drain(slot, now);
        if let Some(session) = self.sessions.try_get_mut(slot) {
            session.last_source = None;
        }
    }

    /// Ends every session (the server is stopping); their goodbyes go out.
    pub fn shutdown(&mut self, now: Instant) {
        for serial in self.sessions.serials() {
            if let Some(slot) = self.sessions.slot_of(serial) {
                if let Some(rtc) = self.sessions.get_mut(slot).peer.live() {
                    rtc.disconnect();
                }
                self.drain(slot, now);
            }
            self.end_session(serial, "server shutting down");
        }
        self.sends.flush(&self.counters);
    }

    pub(super) fn adopt(&mut self, session: Session, now: Instant) {
        // Test hook (debug builds only): a worker that fails, for the panic policy's test.
        #[cfg(debug_assertions)]
        if std::env::var("DEADSFU_TEST_PANIC_ROOM").is_ok_and(|r| r == session.room.name) {
            panic!(
                "test hook: worker panics on a session in room {}",
                session.room.name
            );
        }
        let serial = session.serial;
        let kind = session.kind();
        let room = session.room.clone();
        let ufrag = session.local_ufrag.clone();
        let slot = self.sessions.insert(session);
        match kind {
            SessionKind::Publisher => self.rooms.entry(room.id).or_default().publisher = Some(slot),
            SessionKind::Viewer => self.viewer_added(&room, slot, now),
        }
        self.demux.add_ufrag(ufrag, slot, now);
        if self.next_idle_frame.is_none() && self.shared.config.idle_clip.is_some() {
            self.next_idle_frame = Some(now);
        }
        Counters::add(&self.counters.sessions_started, 1);
        tracing::info!(session = serial, room = %room.name, ?kind, worker = self.index, "session created");
        self.drain(slot, now);
    }

    pub(super) fn end_session(&mut self, serial: u64, reason: &str) {
        let Some((slot, session)) = self.sessions.remove(serial) else {
            return;
        };
        for addr in &session.addrs {
            self.demux.remove_addr(addr);
        }
        if matches!(session.peer, Peer::Handshaking { .. }) {
            self.handshake_jobs.push(HandshakeJob::Cancel { serial });
        }
        self.demux.remove_ufrag(&session.local_ufrag);
        let room = session.room.clone();
        if let Some(local) = self.rooms.get_mut(&room.id) {
            match session.kind() {
                SessionKind::Publisher => {
                    if local.publisher == Some(slot) {
                        local.publisher = None;
                    }
                    room.release_publisher(serial);
                }
                SessionKind::Viewer => self.viewer_removed(&room, slot),
            }
        }
        Counters::add(&self.counters.sessions_ended, 1);
        tracing::info!(session = serial, room = %room.name, kind = ?session.kind(), reason, "session ended");
        self.shared.forget_session(&session.id);
        drop(session);
        self.shared.rooms.release(room);
    }
}
