//! The media worker's core, without I/O: the sessions of one worker, the rooms they are in and
//! their timers. It is fed a received datagram with its source, a packet or keyframe request from
//! another worker, a control command, or the time; it gives datagrams to its [`DatagramSink`],
//! messages for other workers, and its next deadline. No socket, thread, channel or clock: the
//! shell (`worker_shell.rs`) owns those, and the tests drive the core with bytes and fake time.

mod demux;
mod rooms;
mod sessions;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deadsfu_media::{IdleClip, MediaKind, MediaPacket, Room, RoomId};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::RawPacket;
use str0m::{Candidate, Event, IceCreds, Input, Output};

use crate::egress::WallClock;
use crate::engine::Shared;
use crate::error::SessionError;
use crate::metrics::Counters;
use crate::send_batch::{DatagramSink, SendBatch};
use crate::session::{Outbox, Role, Session, SessionKind};
use crate::stun;
pub(crate) use demux::Slot;
use demux::{Demux, Refused};
use rooms::LocalRoom;
use sessions::Sessions;

/// Longest a session waits between timer checks, so connect and idle timeouts are noticed.
const MAX_TIMER_GAP: Duration = Duration::from_secs(1);
/// How often rooms without live video or sessions here are tidied away.
const TIDY_EVERY: Duration = Duration::from_secs(1);
/// Room switches a viewer may make per second; and the GOP bytes replayed to one viewer per
/// second (beyond it a switch starts at the room's next keyframe instead).
pub(crate) const SWITCHES_PER_SECOND: u32 = 5;
pub(crate) const REPLAY_BYTES_PER_SECOND: usize = 8 << 20;

/// A command from the control side.
pub(crate) enum Command {
    /// Take in a session prepared off the worker (`session_setup.rs`).
    Adopt(Box<Session>),
    AddCandidates {
        serial: u64,
        candidates: Vec<Candidate>,
    },
    RestartIce {
        serial: u64,
        remote: IceCreds,
    },
    Close {
        serial: u64,
    },
    SwitchRoom {
        serial: u64,
        room: Arc<Room>,
    },
}

/// The answer to a command.
#[derive(Debug)]
pub(crate) enum Reply {
    Done(Result<(), SessionError>),
    IceRestarted(Result<IceCreds, SessionError>),
}

/// Delivers a reply; false when nobody waits for it any more.
pub(crate) type ReplyTo = Box<dyn FnOnce(Reply) -> bool + Send>;

/// A command and where its answer goes.
pub(crate) struct Control {
    pub command: Command,
    pub reply: Option<ReplyTo>,
}

/// What one worker sends another.
pub(crate) enum PeerMessage {
    /// A packet of `room` published elsewhere, for this worker's viewers (and GOP).
    Packet {
        room: RoomId,
        packet: Arc<MediaPacket>,
    },
    /// Viewers elsewhere need a keyframe of `room`, whose publisher is here.
    KeyframeRequest { room: RoomId },
}

pub(crate) struct WorkerCore {
    index: usize,
    local_port: u16,
    workers: usize,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    clock: WallClock,
    sessions: Sessions,
    demux: Demux,
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
            demux: Demux::default(),
            rooms: HashMap::new(),
            timers: BinaryHeap::new(),
            outbox: Outbox::default(),
            next_idle_frame: None,
            idle_packets: Vec::new(),
            pending: Vec::new(),
            next_tidy: now,
            sends: SendBatch::new(sink),
            to_peers: Vec::new(),
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
        deadline
    }

    /// Messages for other workers (worker index, message), to be taken after each input.
    pub fn drain_peer_messages(&mut self) -> std::vec::Drain<'_, (usize, PeerMessage)> {
        self.to_peers.drain(..)
    }

    #[cfg(test)]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Ends a turn of the shell's loop: due timers and idle-clip frames, then the fan-out of the
    /// turn's packets and the datagrams it all produced.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timers(now);
        self.play_idle(now);
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
                        s.rtc.add_remote_candidate(c);
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
                let mut api = s.rtc.direct_api();
                api.set_remote_ice_credentials(remote);
                api.set_local_ice_credentials(local.clone());
                self.demux.remove_ufrag(&s.local_ufrag);
                s.local_ufrag = local.ufrag.clone();
                self.demux.add_ufrag(local.ufrag.clone(), slot);
                answer(reply, Reply::IceRestarted(Ok(local)));
                self.drain(slot, now);
            }
            Command::Close { serial } => {
                let found = self.sessions.slot_of(serial).is_some_and(|slot| {
                    self.sessions.get_mut(slot).rtc.disconnect();
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
        }
    }

    pub fn handle_peer_message(&mut self, now: Instant, msg: PeerMessage) {
        match msg {
            PeerMessage::Packet { room, packet } => self.pending.push((room, packet)),
            PeerMessage::KeyframeRequest { room } => self.keyframe_request_local(room, now),
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
        let Ok(contents) = DatagramRecv::try_from(buf) else {
            return;
        };
        let destination = SocketAddr::new(self.shared.local_ip_for(from), self.local_port);
        let session = self.sessions.get_mut(slot);
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination,
                contents,
            },
        );
        if let Err(e) = session.rtc.handle_input(input) {
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
                self.sessions.get_mut(slot).rtc.disconnect();
                self.drain(slot, now);
            }
            self.end_session(serial, "server shutting down");
        }
        self.sends.flush(&self.counters);
    }

    fn adopt(&mut self, session: Session, now: Instant) {
        let serial = session.serial;
        let kind = session.kind();
        let room = session.room.clone();
        let ufrag = session.local_ufrag.clone();
        let slot = self.sessions.insert(session);
        let local = self.rooms.entry(room.id).or_default();
        match kind {
            SessionKind::Publisher => local.publisher = Some(slot),
            SessionKind::Viewer => {
                local.viewers.push(slot);
                room.viewer_joined();
            }
        }
        self.demux.add_ufrag(ufrag, slot);
        if self.next_idle_frame.is_none() && self.shared.config.idle_clip.is_some() {
            self.next_idle_frame = Some(now);
        }
        Counters::add(&self.counters.sessions_started, 1);
        tracing::info!(session = serial, room = %room.name, ?kind, worker = self.index, "session created");
        self.drain(slot, now);
    }

    /// Drains a session's outputs: sends its datagrams, collects its events, schedules its
    /// next timeout, then acts on what it reported (packets to fan out, keyframe requests, end).
    fn drain(&mut self, slot: Slot, now: Instant) {
        let Some(session) = self.sessions.try_get_mut(slot) else {
            return;
        };
        let answered = drain_session(
            session,
            &mut self.outbox,
            &mut self.timers,
            &mut self.sends,
            &self.counters,
            now,
        );
        if let Some(from) = answered {
            // str0m answered a check from this source: its integrity held, so bind it.
            let session = self.sessions.get_mut(slot);
            self.demux.bind(from, slot, &mut session.addrs);
        }
        let session = self.sessions.get_mut(slot);
        let serial = session.serial;
        let room = session.room.clone();
        if !self.outbox.packets.is_empty() {
            let mut packets = std::mem::take(&mut self.outbox.packets);
            for pkt in packets.drain(..) {
                self.route(&room, pkt);
            }
            // Hand the (empty) vector back so its capacity is reused.
            self.outbox.packets = packets;
        }
        if std::mem::take(&mut self.outbox.viewer_connected) {
            self.replay_gop(slot, room.id, now);
            if let Some(local) = self.rooms.get_mut(&room.id)
                && !local.live_recently(now)
            {
                // The idle clip starts again at its keyframe, so the newcomer has a picture at
                // the next frame rather than at the clip's next loop.
                local.idle_playing = false;
            }
        }
        if std::mem::take(&mut self.outbox.keyframe_request) {
            self.request_keyframe(&room, now);
        }
        if let Some(reason) = self.outbox.ended.take() {
            self.end_session(serial, reason);
        }
    }

    /// Gives a viewer the room's current GOP at once, so its first picture needs no keyframe
    /// from the publisher; within its replay budget.
    fn replay_gop(&mut self, slot: Slot, room: RoomId, now: Instant) {
        let Some(local) = self.rooms.get(&room) else {
            return;
        };
        let gop = local.gop.packets();
        if gop.is_empty() {
            return;
        }
        let session = self.sessions.get_mut(slot);
        if !session.take_replay_budget(local.gop.bytes(), now) {
            Counters::add(&self.counters.replays_refused, 1);
            return;
        }
        if let Some(viewer) = session.connected_viewer() {
            viewer.replay(gop, &mut self.sends, &self.counters, now);
        }
    }

    /// Moves a viewer to another room without renegotiation: its tracks restart at the new
    /// room's GOP (or next keyframe), with SSRC, sequence numbers and timestamps continuing.
    fn switch_room(
        &mut self,
        serial: u64,
        room: Arc<Room>,
        now: Instant,
    ) -> Result<(), SessionError> {
        let Some(slot) = self.sessions.slot_of(serial) else {
            self.shared.rooms.release(room);
            return Err(SessionError::NotFound);
        };
        let session = self.sessions.get_mut(slot);
        let Role::Viewer(viewer) = &mut session.role else {
            self.shared.rooms.release(room);
            return Err(SessionError::Unsupported(
                "only viewers can switch rooms".into(),
            ));
        };
        if !session.switches.take(now) {
            self.shared.rooms.release(room);
            return Err(SessionError::TooManyRequests);
        }
        viewer.resync();
        let old = std::mem::replace(&mut session.room, room.clone());
        let old_empty = self.rooms.get_mut(&old.id).is_some_and(|local| {
            local.remove_viewer(slot);
            local.viewers.is_empty() && local.publisher.is_none()
        });
        old.viewer_left();
        if old_empty && old.id != room.id {
            self.rooms.remove(&old.id);
        }
        self.rooms.entry(room.id).or_default().viewers.push(slot);
        room.viewer_joined();
        tracing::info!(session = serial, from = %old.name, to = %room.name, "viewer switched rooms");
        self.shared.rooms.release(old);
        self.replay_gop(slot, room.id, now);
        self.request_keyframe(&room, now);
        Ok(())
    }

    /// Sends a publisher's packet to every other worker (each keeps the room's GOP for its
    /// viewers) and queues it for this worker's viewers.
    fn route(&mut self, room: &Arc<Room>, pkt: Arc<MediaPacket>) {
        room.record_ingress(pkt.codec, pkt.payload.len());
        for w in (0..self.workers).filter(|w| *w != self.index) {
            let packet = pkt.clone();
            self.to_peers.push((
                w,
                PeerMessage::Packet {
                    room: room.id,
                    packet,
                },
            ));
        }
        self.pending.push((room.id, pkt));
    }

    /// Forwards this turn's room packets to this worker's viewers, room by room in order.
    fn flush_fanout(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        if pending.windows(2).any(|w| w[0].0 != w[1].0) {
            // Several rooms this turn: group them (a stable sort keeps each room's order).
            pending.sort_by_key(|(room, _)| *room);
        }
        let mut start = 0;
        while start < pending.len() {
            let room = pending[start].0;
            let len = pending[start..]
                .iter()
                .take_while(|(r, _)| *r == room)
                .count();
            self.fanout_batch(room, &pending[start..start + len], now);
            start += len;
        }
        pending.clear();
        // Hand the (empty) vector back so its capacity is reused.
        self.pending = pending;
    }

    /// Forwards packets of one room to this worker's viewers of it, viewer by viewer, so each
    /// viewer's packets of the turn leave together.
    fn fanout_batch(&mut self, room: RoomId, packets: &[(RoomId, Arc<MediaPacket>)], now: Instant) {
        let local = self.rooms.entry(room).or_default();
        for (_, pkt) in packets {
            if pkt.kind() == MediaKind::Video && !pkt.source.is_idle() {
                if self.shared.config.gop_cache {
                    local.gop.push(pkt);
                }
                local.last_live_video = Some(pkt.arrival);
            }
        }
        for slot in &local.viewers {
            if let Some(viewer) = self.sessions.get_mut(*slot).connected_viewer() {
                viewer.write(packets, &mut self.sends, &self.counters, now, &self.clock);
            }
        }
    }

    /// Asks the room's publisher for a keyframe, wherever it is; requests within a short
    /// interval merge into one.
    fn request_keyframe(&mut self, room: &Arc<Room>, now: Instant) {
        let Some(worker) = room.publisher_worker() else {
            return;
        };
        if worker == self.index {
            self.keyframe_request_local(room.id, now);
            return;
        }
        let local = self.rooms.entry(room.id).or_default();
        if local.take_keyframe_request(now) {
            self.to_peers
                .push((worker, PeerMessage::KeyframeRequest { room: room.id }));
        }
    }

    fn keyframe_request_local(&mut self, room: RoomId, now: Instant) {
        let Some(slot) = self.rooms.get(&room).and_then(|r| r.publisher) else {
            return;
        };
        let session = self.sessions.get_mut(slot);
        let Role::Publisher(p) = &mut session.role else {
            return;
        };
        if p.keyframe_gate.request(now) && p.send_keyframe_request(&mut session.rtc) {
            Counters::add(&self.counters.keyframe_requests_sent, 1);
            self.drain(slot, now);
        }
    }

    fn handle_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, serial))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.sessions.slot_of(serial) else {
                continue;
            };
            let session = self.sessions.get_mut(slot);
            if session.scheduled != Some(at) {
                continue; // superseded by an earlier entry that already ran
            }
            session.scheduled = None;
            let config = &self.shared.config;
            if !session.connected && now.duration_since(session.created) > config.connect_timeout {
                self.end_session(serial, "did not connect in time");
                continue;
            }
            if session.connected && now.duration_since(session.last_input) > config.idle_timeout {
                self.end_session(serial, "nothing received (consent timeout)");
                continue;
            }
            if let Role::Publisher(p) = &mut session.role
                && p.keyframe_gate.poll(now)
                && p.send_keyframe_request(&mut session.rtc)
            {
                Counters::add(&self.counters.keyframe_requests_sent, 1);
            }
            if session.timeout <= now
                && let Err(e) = session.rtc.handle_input(Input::Timeout(now))
            {
                tracing::debug!(session = %session.id, error = %e, "timeout input rejected");
            }
            self.drain(slot, now);
        }
    }

    /// Tidies the rooms at most once a second (see [`LocalRoom::tidy`]).
    fn tidy_rooms(&mut self, now: Instant) {
        if now < self.next_tidy {
            return;
        }
        self.next_tidy = now + TIDY_EVERY;
        self.rooms.retain(|_, local| local.tidy(now));
    }

    /// Sends the next idle-clip frame to viewers of rooms without live video.
    fn play_idle(&mut self, now: Instant) {
        let Some(next) = self.next_idle_frame else {
            return;
        };
        if now < next {
            return;
        }
        let Some(clip) = self.shared.config.idle_clip.clone() else {
            self.next_idle_frame = None;
            return;
        };
        let clip: &IdleClip = &clip;
        self.next_idle_frame = Some(next.max(now - clip.frame_interval()) + clip.frame_interval());
        let mut packets = std::mem::take(&mut self.idle_packets);
        for (id, local) in self.rooms.iter_mut() {
            if local.viewers.is_empty() || local.live_recently(now) {
                local.idle_playing = false;
                continue;
            }
            if !local.idle_playing {
                // Start at the clip's keyframe so viewers get a picture at once.
                local.idle.restart();
                local.idle_playing = true;
            }
            local.idle.next_frame(clip, now, &mut packets);
            self.pending.extend(packets.drain(..).map(|p| (*id, p)));
        }
        self.idle_packets = packets;
        if self.sessions.len() == 0 {
            // Nothing to show the clip to: sleep until a session arrives.
            self.next_idle_frame = None;
        }
    }

    fn end_session(&mut self, serial: u64, reason: &str) {
        let Some((slot, session)) = self.sessions.remove(serial) else {
            return;
        };
        for addr in &session.addrs {
            self.demux.remove_addr(addr);
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
                SessionKind::Viewer => {
                    if local.remove_viewer(slot) {
                        room.viewer_left();
                    }
                }
            }
        }
        Counters::add(&self.counters.sessions_ended, 1);
        tracing::info!(session = serial, room = %room.name, kind = ?session.kind(), reason, "session ended");
        self.shared.forget_session(&session.id);
        drop(session);
        self.shared.rooms.release(room);
    }
}

/// Drains one session's `poll_output` until it asks for a timeout. Returns the source of the
/// datagram being handled when str0m answered its STUN check (a Binding success response).
fn drain_session(
    session: &mut Session,
    outbox: &mut Outbox,
    timers: &mut BinaryHeap<Reverse<(Instant, u64)>>,
    sends: &mut SendBatch,
    counters: &Counters,
    now: Instant,
) -> Option<SocketAddr> {
    let mut answered = None;
    loop {
        let output = session.rtc.poll_output();
        if let Some(keys) = crate::dtls_tap::take_keys()
            && let Role::Viewer(viewer) = &mut session.role
            && !viewer.set_srtp_keys(&keys)
        {
            // str0m finished this session's DTLS handshake in the call just made.
            tracing::warn!(session = session.serial, ?keys, "unusable SRTP keys");
        }
        match output {
            Ok(Output::Timeout(at)) => {
                let at = at.min(now + MAX_TIMER_GAP);
                session.timeout = at;
                if session.scheduled.is_none_or(|s| at < s) {
                    session.scheduled = Some(at);
                    timers.push(Reverse((at, session.serial)));
                }
                return answered;
            }
            Ok(Output::Transmit(t)) => {
                if session.last_source == Some(t.destination)
                    && stun::is_binding_success(&t.contents)
                {
                    answered = Some(t.destination);
                }
                if session.check_transmit(t.destination, &t.contents) {
                    sends.push(t.destination, &t.contents, counters);
                }
            }
            Ok(Output::Event(Event::RawPacket(raw))) => {
                if let RawPacket::RtcpRx(rtcp) = *raw {
                    session.handle_viewer_rtcp(&rtcp, sends, counters, now);
                }
            }
            Ok(Output::Event(event)) => session.handle_event(event, outbox, counters),
            Err(e) => {
                tracing::debug!(session = %session.id, error = %e, "session failed");
                outbox.ended = Some("WebRTC error");
                return answered;
            }
        }
    }
}
