//! A media worker: one thread, one UDP socket, the sessions that live on it.
//!
//! Everything a worker owns is touched only by its thread, so nothing on the media path takes
//! a lock. Other threads talk to it through two channels: commands (create, trickle, close,
//! keyframe requests) and an inbox of room packets published on other workers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::rewrite::IDLE_AFTER;
use deadsfu_media::{GopCache, IdlePlayer, MediaKind, MediaPacket, Room, RoomId};
use str0m::media::Mid;
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::RawPacket;
use str0m::{Candidate, Event, IceCreds, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::engine::Shared;
use crate::error::SessionError;
use crate::metrics::Counters;
use crate::sdp::{OfferSummary, SectionKind, VideoFamily};
use crate::send_batch::SendBatch;
use crate::session::{Outbox, Publisher, Role, Session, SessionKind, Viewer};
use crate::stun;

/// Longest a session waits between timer checks, so connect and idle timeouts are noticed.
const MAX_TIMER_GAP: Duration = Duration::from_secs(1);
/// str0m's report interval for viewers: never (deadsfu sends their reports).
const NO_REPORTS: Duration = Duration::from_secs(1 << 30);
/// Datagrams read per wake-up before other work gets a turn.
const RECV_BATCH: usize = 64;

pub(crate) struct CreateSession {
    pub id: Arc<str>,
    pub serial: u64,
    pub kind: SessionKind,
    pub room: Arc<Room>,
    pub offer: str0m::change::SdpOffer,
    pub summary: OfferSummary,
    pub video_family: Option<VideoFamily>,
}

pub(crate) struct Created {
    /// The SDP answer.
    pub answer: String,
}

pub(crate) enum Command {
    Create {
        req: Box<CreateSession>,
        reply: oneshot::Sender<Result<Created, SessionError>>,
    },
    AddCandidates {
        serial: u64,
        candidates: Vec<Candidate>,
    },
    RestartIce {
        serial: u64,
        remote: IceCreds,
        reply: oneshot::Sender<Result<IceCreds, SessionError>>,
    },
    Close {
        serial: u64,
        reply: oneshot::Sender<bool>,
    },
    KeyframeRequest {
        room: RoomId,
    },
    SwitchRoom {
        serial: u64,
        room: Arc<Room>,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    Shutdown,
}

/// A packet published on one worker, for the viewers of `room` on another.
pub(crate) struct RoomPacket {
    pub room: RoomId,
    pub packet: Arc<MediaPacket>,
}

/// How other threads reach a worker.
#[derive(Clone)]
pub(crate) struct WorkerHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub inbox: mpsc::Sender<RoomPacket>,
}

/// A worker's view of one room: its sessions here, and the room's recent video (every worker
/// gets every packet of every live room, so each can start its viewers from the GOP cache).
struct LocalRoom {
    publisher: Option<u64>,
    viewers: Vec<u64>,
    gop: GopCache,
    /// When live video last passed through; the idle clip plays after [`IDLE_AFTER`] without.
    last_live_video: Option<Instant>,
    idle: IdlePlayer,
    idle_playing: bool,
}

/// GOP cache bounds per room: a 4 s GOP at 8 Mbit/s fits.
const GOP_MAX_BYTES: usize = 4 << 20;
const GOP_MAX_PACKETS: usize = 4096;
/// How often rooms without live video or sessions here are tidied away.
const TIDY_EVERY: Duration = Duration::from_secs(1);
impl Default for LocalRoom {
    fn default() -> Self {
        LocalRoom {
            publisher: None,
            viewers: Vec::new(),
            gop: GopCache::new(GOP_MAX_BYTES, GOP_MAX_PACKETS),
            last_live_video: None,
            idle: IdlePlayer::default(),
            idle_playing: false,
        }
    }
}

pub(crate) struct Worker {
    index: usize,
    local_port: u16,
    shared: Arc<Shared>,
    peers: Arc<[WorkerHandle]>,
    counters: Arc<Counters>,
    sessions: HashMap<u64, Session>,
    by_addr: HashMap<SocketAddr, u64>,
    by_ufrag: HashMap<String, u64>,
    rooms: HashMap<RoomId, LocalRoom>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    outbox: Outbox,
    /// Next frame time of the idle clip (when there is one).
    next_idle_frame: Option<Instant>,
    idle_packets: Vec<Arc<MediaPacket>>,
    /// Room packets of this turn, fanned out together at its end (one str0m poll cycle per
    /// viewer per turn rather than per packet).
    pending: Vec<(RoomId, Arc<MediaPacket>)>,
    next_tidy: Instant,
    /// This turn's outgoing datagrams.
    sends: SendBatch,
}

impl Worker {
    /// `send_socket` is a clone of the worker's socket, used for sending.
    pub fn new(
        index: usize,
        local_port: u16,
        shared: Arc<Shared>,
        peers: Arc<[WorkerHandle]>,
        counters: Arc<Counters>,
        send_socket: std::net::UdpSocket,
    ) -> Self {
        Worker {
            index,
            local_port,
            shared,
            peers,
            counters,
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            rooms: HashMap::new(),
            timers: BinaryHeap::new(),
            outbox: Outbox::default(),
            next_idle_frame: None,
            idle_packets: Vec::new(),
            pending: Vec::new(),
            next_tidy: Instant::now(),
            sends: SendBatch::new(send_socket),
        }
    }

    pub fn run(
        mut self,
        socket: std::net::UdpSocket,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut inbox: mpsc::Receiver<RoomPacket>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = self.index, error = %e, "cannot start worker runtime");
                return;
            }
        };
        rt.block_on(async move {
            let socket = match UdpSocket::from_std(socket) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(worker = self.index, error = %e, "cannot register UDP socket");
                    return;
                }
            };
            let mut buf = vec![0u8; 2048];
            loop {
                let deadline = self.next_deadline();
                tokio::select! {
                    biased;
                    cmd = commands.recv() => match cmd {
                        Some(Command::Shutdown) | None => {
                            self.shutdown();
                            // The goodbyes (DTLS close_notify, RTCP BYE) go out before we stop.
                            self.sends.flush(&self.counters);
                            break;
                        }
                        Some(cmd) => self.handle_command(cmd),
                    },
                    res = socket.recv_from(&mut buf) => {
                        match res {
                            Ok((n, from)) => self.handle_datagram(&buf[..n], from),
                            Err(e) => tracing::debug!(worker = self.index, error = %e, "recv"),
                        }
                        // Read what else is waiting before going round the select again.
                        for _ in 0..RECV_BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => self.handle_datagram(&buf[..n], from),
                                Err(_) => break,
                            }
                        }
                    }
                    Some(p) = inbox.recv() => {
                        self.pending.push((p.room, p.packet));
                        while let Ok(p) = inbox.try_recv() {
                            self.pending.push((p.room, p.packet));
                        }
                    }
                    // Due timers are handled at the end of every turn (below), so they run even
                    // when the socket never leaves the loop idle; this only wakes us for them.
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                }
                self.finish_turn();
            }
        });
    }

    /// What every turn of the loop ends with: due timers and idle-clip frames, the fan-out of
    /// the turn's packets, and the datagrams it all produced.
    fn finish_turn(&mut self) {
        self.handle_timers();
        self.play_idle();
        self.tidy_rooms(Instant::now());
        self.flush_fanout();
        self.sends.flush(&self.counters);
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = Instant::now() + MAX_TIMER_GAP;
        if let Some(Reverse((t, _))) = self.timers.peek() {
            deadline = deadline.min(*t);
        }
        if let Some(t) = self.next_idle_frame {
            deadline = deadline.min(t);
        }
        deadline
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Create { req, reply } => {
                let serial = req.serial;
                let result = self.create(*req, now);
                let ok = result.is_ok();
                if reply.send(result).is_err() && ok {
                    // The HTTP request went away: nobody will ever learn this session's URL.
                    self.end_session(serial, "creator went away");
                } else if ok {
                    self.drain(serial, now);
                }
            }
            Command::AddCandidates { serial, candidates } => {
                if let Some(s) = self.sessions.get_mut(&serial) {
                    for c in candidates {
                        s.rtc.add_remote_candidate(c);
                    }
                    self.drain(serial, now);
                }
            }
            Command::RestartIce {
                serial,
                remote,
                reply,
            } => {
                let Some(s) = self.sessions.get_mut(&serial) else {
                    let _ = reply.send(Err(SessionError::NotFound));
                    return;
                };
                let local = IceCreds::new();
                let mut api = s.rtc.direct_api();
                api.set_remote_ice_credentials(remote);
                api.set_local_ice_credentials(local.clone());
                self.by_ufrag.remove(&s.local_ufrag);
                s.local_ufrag = local.ufrag.clone();
                self.by_ufrag.insert(local.ufrag.clone(), serial);
                let _ = reply.send(Ok(local));
                self.drain(serial, now);
            }
            Command::Close { serial, reply } => {
                let found = if let Some(s) = self.sessions.get_mut(&serial) {
                    s.rtc.disconnect();
                    self.drain(serial, now);
                    self.end_session(serial, "closed by DELETE");
                    true
                } else {
                    false
                };
                let _ = reply.send(found);
            }
            Command::KeyframeRequest { room } => self.keyframe_request_local(room, now),
            Command::SwitchRoom {
                serial,
                room,
                reply,
            } => {
                let result = self.switch_room(serial, room, now);
                let _ = reply.send(result);
            }
            Command::Shutdown => {}
        }
    }

    fn create(&mut self, req: CreateSession, now: Instant) -> Result<Created, SessionError> {
        let builder = Rtc::builder()
            .set_crypto_provider(crate::dtls_tap::crypto_provider())
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .set_stats_interval(Some(Duration::from_secs(5)))
            .clear_codecs()
            .enable_opus(true, false);
        let builder = match (req.kind, req.video_family) {
            (SessionKind::Viewer, _) => builder
                .enable_h264(true)
                .enable_vp8(true)
                .enable_vp9(true)
                .enable_av1(true),
            (SessionKind::Publisher, Some(VideoFamily::H264)) => builder.enable_h264(true),
            (SessionKind::Publisher, Some(VideoFamily::Vp8)) => builder.enable_vp8(true),
            (SessionKind::Publisher, Some(VideoFamily::Vp9)) => builder.enable_vp9(true),
            (SessionKind::Publisher, Some(VideoFamily::Av1)) => builder.enable_av1(true),
            (SessionKind::Publisher, None) => builder,
        };
        let builder = match &self.shared.dtls_cert {
            Some(cert) => builder.set_dtls_cert(cert.clone()),
            None => builder,
        };
        // Viewers' media does not pass through str0m (see `Viewer`): its send buffers stay
        // empty, and their RTCP (NACKs) comes to us as raw packets.
        // str0m's sender reports would be wrong (it has sent nothing) and are ours to send, and
        // nobody reads its statistics: both off, which also saves memory per viewer.
        let builder = if req.kind == SessionKind::Viewer {
            builder
                .set_send_buffer_video(1)
                .set_send_buffer_audio(1)
                .enable_raw_packets(true)
                .set_stats_interval(None)
                .set_rtcp_report_interval_audio(NO_REPORTS)
                .set_rtcp_report_interval_video(NO_REPORTS)
        } else {
            builder
        };
        let mut rtc = builder.build(now);
        for ip in &self.shared.config.ice_hosts {
            let addr = SocketAddr::new(*ip, self.local_port);
            match Candidate::host(addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "unusable ICE host address"),
            }
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(req.offer)
            .map_err(|e| SessionError::Unsupported(format!("cannot answer the offer: {e}")))?;

        let mids: Vec<(MediaKind, Mid)> = req
            .summary
            .media()
            .filter(|s| match req.kind {
                SessionKind::Publisher => s.direction.offerer_sends(),
                SessionKind::Viewer => s.direction.offerer_receives(),
            })
            .filter_map(|s| {
                let kind = match s.kind {
                    SectionKind::Audio => MediaKind::Audio,
                    SectionKind::Video => MediaKind::Video,
                    SectionKind::Other => return None,
                };
                Some((kind, Mid::from(s.mid.as_deref()?)))
            })
            .collect();

        let role = match req.kind {
            SessionKind::Publisher => {
                let video_mid = mids
                    .iter()
                    .find(|(k, _)| *k == MediaKind::Video)
                    .map(|(_, m)| *m);
                Role::Publisher(Publisher::new(
                    req.serial,
                    video_mid,
                    self.shared.config.keyframe_request_interval,
                ))
            }
            SessionKind::Viewer => {
                let viewer = Viewer::new(&mut rtc, &mids);
                if !viewer.has_tracks() {
                    return Err(SessionError::Unsupported(
                        "no audio or video section could be answered".into(),
                    ));
                }
                Role::Viewer(Box::new(viewer))
            }
        };

        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let session = Session::new(
            req.id.clone(),
            req.serial,
            rtc,
            req.room.clone(),
            role,
            local_ufrag.clone(),
            now,
        );
        let local = self.rooms.entry(req.room.id).or_default();
        match req.kind {
            SessionKind::Publisher => local.publisher = Some(req.serial),
            SessionKind::Viewer => {
                local.viewers.push(req.serial);
                req.room.viewer_joined();
            }
        }
        self.by_ufrag.insert(local_ufrag, req.serial);
        self.sessions.insert(req.serial, session);
        if self.next_idle_frame.is_none() && self.shared.config.idle_clip.is_some() {
            self.next_idle_frame = Some(now);
        }
        Counters::add(&self.counters.sessions_started, 1);
        tracing::info!(
            session = %req.id,
            room = %req.room.name,
            kind = ?req.kind,
            worker = self.index,
            "session created"
        );
        Ok(Created {
            answer: answer.to_sdp_string(),
        })
    }

    fn handle_datagram(&mut self, buf: &[u8], from: SocketAddr) {
        let now = Instant::now();
        let serial = match self.by_addr.get(&from) {
            Some(s) => *s,
            None => {
                // A new flow: only a STUN check carrying a ufrag we issued may open it.
                let Some(serial) =
                    stun::local_ufrag(buf).and_then(|u| self.by_ufrag.get(u).copied())
                else {
                    return;
                };
                self.by_addr.insert(from, serial);
                if let Some(s) = self.sessions.get_mut(&serial) {
                    s.addrs.push(from);
                }
                serial
            }
        };
        let Some(session) = self.sessions.get_mut(&serial) else {
            self.by_addr.remove(&from);
            return;
        };
        let Ok(contents) = DatagramRecv::try_from(buf) else {
            return;
        };
        let destination = SocketAddr::new(self.shared.local_ip_for(from), self.local_port);
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
        session.last_input = now;
        session.last_source = Some(from);
        self.drain(serial, now);
        if let Some(session) = self.sessions.get_mut(&serial) {
            session.last_source = None;
        }
    }

    /// Drains a session's outputs: sends its datagrams, collects its events, schedules its
    /// next timeout, then acts on what it reported (packets to fan out, keyframe requests, end).
    fn drain(&mut self, serial: u64, now: Instant) {
        let Some(session) = self.sessions.get_mut(&serial) else {
            return;
        };
        drain_session(
            session,
            &mut self.outbox,
            &mut self.timers,
            &mut self.sends,
            &self.counters,
            now,
        );
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
            self.replay_gop(serial, room.id, now);
        }
        if std::mem::take(&mut self.outbox.keyframe_request) {
            self.request_keyframe(&room, now);
        }
        if let Some(reason) = self.outbox.ended.take() {
            self.end_session(serial, reason);
        }
    }

    /// Gives a viewer the room's current GOP at once, so its first picture needs no keyframe
    /// from the publisher.
    fn replay_gop(&mut self, serial: u64, room: RoomId, now: Instant) {
        let Some(local) = self.rooms.get(&room) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&serial) else {
            return;
        };
        if !local.gop.packets().is_empty() {
            session.replay(local.gop.packets(), &mut self.sends, &self.counters, now);
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
        let Some(session) = self.sessions.get_mut(&serial) else {
            self.shared.rooms.release(room);
            return Err(SessionError::NotFound);
        };
        if session.kind() != SessionKind::Viewer {
            self.shared.rooms.release(room);
            return Err(SessionError::Unsupported(
                "only viewers can switch rooms".into(),
            ));
        }
        let old = std::mem::replace(&mut session.room, room.clone());
        session.resync();
        let old_empty = self.rooms.get_mut(&old.id).is_some_and(|local| {
            local.viewers.retain(|s| *s != serial);
            local.viewers.is_empty() && local.publisher.is_none()
        });
        old.viewer_left();
        if old_empty && old.id != room.id {
            self.rooms.remove(&old.id);
        }
        self.rooms.entry(room.id).or_default().viewers.push(serial);
        room.viewer_joined();
        tracing::info!(session = session.serial, from = %old.name, to = %room.name, "viewer switched rooms");
        self.shared.rooms.release(old);
        self.replay_gop(serial, room.id, now);
        self.request_keyframe(&room, now);
        Ok(())
    }

    /// Sends a publisher's packet to every worker (each keeps the room's GOP for its viewers).
    fn route(&mut self, room: &Arc<Room>, pkt: Arc<MediaPacket>) {
        room.record_ingress(pkt.codec, pkt.payload.len());
        for (w, peer) in self.peers.iter().enumerate() {
            if w == self.index {
                continue;
            }
            let msg = RoomPacket {
                room: room.id,
                packet: pkt.clone(),
            };
            if peer.inbox.try_send(msg).is_err() {
                Counters::add(&self.counters.fanout_drops, 1);
            }
        }
        self.pending.push((room.id, pkt));
    }

    /// Forwards this turn's room packets to this worker's viewers, room by room in order.
    fn flush_fanout(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        if pending.windows(2).any(|w| w[0].0 != w[1].0) {
            // Several rooms this turn: group them (a stable sort keeps each room's order).
            pending.sort_by_key(|(room, _)| *room);
        }
        let now = Instant::now();
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
        for serial in &local.viewers {
            if let Some(session) = self.sessions.get_mut(serial) {
                session.write(packets, &mut self.sends, &self.counters, now);
            }
        }
    }

    fn request_keyframe(&mut self, room: &Arc<Room>, now: Instant) {
        match room.publisher_worker() {
            Some(w) if w == self.index => self.keyframe_request_local(room.id, now),
            Some(w) => {
                if let Some(peer) = self.peers.get(w) {
                    let _ = peer
                        .commands
                        .send(Command::KeyframeRequest { room: room.id });
                }
            }
            None => {}
        }
    }

    fn keyframe_request_local(&mut self, room: RoomId, now: Instant) {
        let Some(serial) = self.rooms.get(&room).and_then(|r| r.publisher) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&serial) else {
            return;
        };
        let Role::Publisher(p) = &mut session.role else {
            return;
        };
        if p.keyframe_gate.request(now) && p.send_keyframe_request(&mut session.rtc) {
            Counters::add(&self.counters.keyframe_requests_sent, 1);
            self.drain(serial, now);
        }
    }

    fn handle_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, serial))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(session) = self.sessions.get_mut(&serial) else {
                continue;
            };
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
            self.drain(serial, now);
        }
    }

    /// Forgets, at most once a second, the GOPs of rooms whose live video stopped (a viewer
    /// joining later must not be replayed a departed publisher's last pictures) and the rooms
    /// nothing here uses any more.
    fn tidy_rooms(&mut self, now: Instant) {
        if now < self.next_tidy {
            return;
        }
        self.next_tidy = now + TIDY_EVERY;
        self.rooms.retain(|_, local| {
            let live_recently = local
                .last_live_video
                .is_some_and(|t| now.saturating_duration_since(t) < IDLE_AFTER);
            if !live_recently {
                local.gop.clear();
            }
            live_recently || local.publisher.is_some() || !local.viewers.is_empty()
        });
    }

    /// Sends the next idle-clip frame to viewers of rooms without live video.
    fn play_idle(&mut self) {
        let now = Instant::now();
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
        self.next_idle_frame = Some(next.max(now - clip.frame_interval()) + clip.frame_interval());
        let mut packets = std::mem::take(&mut self.idle_packets);
        for (id, local) in self.rooms.iter_mut() {
            let live_recently = local
                .last_live_video
                .is_some_and(|t| now.saturating_duration_since(t) < IDLE_AFTER);
            if local.viewers.is_empty() || live_recently {
                local.idle_playing = false;
                continue;
            }
            if !local.idle_playing {
                // Start at the clip's keyframe so viewers get a picture at once.
                local.idle.restart();
                local.idle_playing = true;
            }
            local.idle.next_frame(&clip, now, &mut packets);
            self.pending.extend(packets.drain(..).map(|p| (*id, p)));
        }
        self.idle_packets = packets;
        if self.sessions.is_empty() {
            // Nothing to show the clip to: sleep until a session arrives.
            self.next_idle_frame = None;
        }
    }

    fn end_session(&mut self, serial: u64, reason: &str) {
        let Some(session) = self.sessions.remove(&serial) else {
            return;
        };
        for addr in &session.addrs {
            self.by_addr.remove(addr);
        }
        self.by_ufrag.remove(&session.local_ufrag);
        let room = session.room.clone();
        if let Some(local) = self.rooms.get_mut(&room.id) {
            match session.kind() {
                SessionKind::Publisher => {
                    if local.publisher == Some(serial) {
                        local.publisher = None;
                    }
                    room.release_publisher(serial);
                }
                SessionKind::Viewer => {
                    if let Some(i) = local.viewers.iter().position(|s| *s == serial) {
                        local.viewers.swap_remove(i);
                        room.viewer_left();
                    }
                }
            }
        }
        Counters::add(&self.counters.sessions_ended, 1);
        tracing::info!(session = session.serial, room = %room.name, kind = ?session.kind(), reason, "session ended");
        self.shared.forget_session(&session.id);
        drop(session);
        self.shared.rooms.release(room);
    }

    fn shutdown(&mut self) {
        let now = Instant::now();
        let serials: Vec<u64> = self.sessions.keys().copied().collect();
        for serial in serials {
            if let Some(s) = self.sessions.get_mut(&serial) {
                s.rtc.disconnect();
            }
            self.drain(serial, now);
            self.end_session(serial, "server shutting down");
        }
    }
}

/// Drains one session's `poll_output` until it asks for a timeout.
fn drain_session(
    session: &mut Session,
    outbox: &mut Outbox,
    timers: &mut BinaryHeap<Reverse<(Instant, u64)>>,
    sends: &mut SendBatch,
    counters: &Counters,
    now: Instant,
) {
    loop {
        let output = session.rtc.poll_output();
        if let Some(keys) = crate::dtls_tap::take_keys() {
            // str0m finished this session's DTLS handshake in the call just made.
            session.set_srtp_keys(&keys);
        }
        match output {
            Ok(Output::Timeout(at)) => {
                let at = at.min(now + MAX_TIMER_GAP);
                session.timeout = at;
                if session.scheduled.is_none_or(|s| at < s) {
                    session.scheduled = Some(at);
                    timers.push(Reverse((at, session.serial)));
                }
                return;
            }
            Ok(Output::Transmit(t)) => {
                if session.check_transmit(t.destination, &t.contents) {
                    sends.push(t.destination, &t.contents, counters);
                }
            }
            Ok(Output::Event(Event::RawPacket(raw))) => {
                if let RawPacket::RtcpRx(rtcp) = *raw {
                    session.handle_viewer_rtcp(&rtcp, sends, counters);
                }
            }
            Ok(Output::Event(event)) => session.handle_event(event, outbox, counters),
            Err(e) => {
                tracing::debug!(session = %session.id, error = %e, "session failed");
                outbox.ended = Some("WebRTC error");
                return;
            }
        }
    }
}
