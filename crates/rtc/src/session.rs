//! One str0m peer connection and what deadsfu does with it: publish into a room or view one.
//! A viewer's outgoing media is its [`ViewerEgress`]; this file keeps the peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::keyframe::is_keyframe_start;
use deadsfu_media::keyframe_request::KeyframeRequestGate;
use deadsfu_media::{Codec, MediaKind, MediaPacket, Room, SourceId};
use str0m::config::Fingerprint;
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::Ssrc;
use str0m::rtp::rtcp::Rtcp;
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Rtc, RtcError};

use crate::budget::PerSecond;
use crate::codec::codec_of_spec;
use crate::egress::{RecentVideo, ViewerEgress};
use crate::metrics::Counters;
use crate::sdp::VideoFamily;
use crate::send_batch::SendBatch;

/// Room switches a viewer may make per second; and the GOP bytes replayed to one viewer per
/// second (beyond it a switch starts at the room's next keyframe instead).
pub(crate) const SWITCHES_PER_SECOND: u32 = 5;
pub(crate) const REPLAY_BYTES_PER_SECOND: usize = 8 << 20;

/// Hands str0m a datagram that came to `to` from `from`; one that is not STUN, DTLS, RTP or
/// RTCP is ignored.
pub(crate) fn feed_datagram(
    rtc: &mut Rtc,
    now: Instant,
    from: SocketAddr,
    to: SocketAddr,
    bytes: &[u8],
) -> Result<(), RtcError> {
    let Ok(contents) = DatagramRecv::try_from(bytes) else {
        return Ok(());
    };
    let receive = Receive {
        proto: Protocol::Udp,
        source: from,
        destination: to,
        contents,
    };
    rtc.handle_input(Input::Receive(now, receive))
}

/// What the session does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// WHIP ingest (or any publisher).
    Publisher,
    /// WHEP playback.
    Viewer,
}

pub(crate) struct Session {
    /// The session's URL segment: a capability, so logged at debug level only (info lines use
    /// `serial`).
    pub id: Arc<str>,
    pub serial: u64,
    pub peer: Peer,
    pub room: Arc<Room>,
    pub role: Role,
    pub created: Instant,
    pub last_input: Instant,
    pub connected: bool,
    /// Our ICE ufrag: STUN from unknown addresses is routed by it.
    pub local_ufrag: String,
    /// Remote addresses routed to this session.
    pub addrs: Vec<SocketAddr>,
    /// str0m's next timeout.
    pub timeout: Instant,
    /// Earliest entry this session has in the worker's timer heap.
    pub scheduled: Option<Instant>,
    /// Source of the datagram being handled.
    pub last_source: Option<SocketAddr>,
    /// Room switches this second, and GOP bytes replayed to it this second.
    pub switches: PerSecond,
    pub replay_bytes: PerSecond,
    /// When the viewer last switched rooms, and when a coalesced switch's GOP replay is due.
    pub last_switch: Option<Instant>,
    pub replay_at: Option<Instant>,
    /// The session's place among those not yet connected, given back when it connects.
    pub pending: Option<deadsfu_limits::Permit>,
}

/// The session's str0m peer. Until the client's first check proves it knows the session's ICE
/// password, there is none: only what it takes to build one (the answer is already sent),
/// mostly the offer's text, a few KiB where a peer costs about 70, so that offers that never
/// connect are cheap to hold. From that check until it connects, the peer lives on a handshake
/// thread (`handshakes.rs`), so that ICE and DTLS never run on a media worker.
pub(crate) enum Peer {
    /// Answered, not contacted yet.
    Parked(Box<PeerRecipe>),
    /// Connecting on a handshake thread: the worker passes its datagrams on, checks from new
    /// sources only when signed with `ice_pass`, and at most `datagrams` a second.
    Handshaking {
        ice_pass: Box<str>,
        datagrams: PerSecond,
    },
    Live(Box<Rtc>),
}

/// Candidates a client may trickle before its first check; more are ignored (its host
/// candidates come first, and ICE-lite needs none of them to answer its checks).
pub(crate) const MAX_TRICKLED: usize = 32;

/// What it takes to build a session's str0m peer after its answer was sent: the offer (or, for
/// a viewer, what its peer takes from it), and what a new peer would otherwise choose
/// differently from the answer.
pub(crate) struct PeerRecipe {
    pub kind: SessionKind,
    pub video_family: Option<VideoFamily>,
    pub offer: Box<str>,
    /// Our ICE credentials as the answer (or an ICE restart since) gave them.
    pub local: IceCreds,
    /// The client's credentials from an ICE restart made before the peer was built.
    pub remote: Option<IceCreds>,
    pub remote_candidates: Vec<Candidate>,
    /// The send streams the answer announced: mid, SSRC and RTX SSRC.
    pub send_streams: Vec<(Mid, Ssrc, Option<Ssrc>)>,
    /// For a viewer, what its peer needs of the offer to be built without SDP (then `offer`
    /// is empty): see `build_peer` in `session_setup.rs`.
    pub direct: Option<DirectPeer>,
}

/// What a viewer's peer takes from the offer when built without SDP: a viewer's peer only runs
/// ICE and DTLS and reads RTCP (its media goes out through `egress`), so str0m needs no
/// formats or extensions, only the client's credentials and fingerprint and the media the
/// answer sends on.
pub(crate) struct DirectPeer {
    pub remote: IceCreds,
    pub fingerprint: Fingerprint,
    pub media: Vec<(Mid, str0m::media::MediaKind)>,
}

impl PeerRecipe {
    /// A candidate trickled before the peer exists (beyond `MAX_TRICKLED`, ignored).
    pub fn add_remote_candidate(&mut self, c: Candidate) {
        if self.remote_candidates.len() < MAX_TRICKLED {
            self.remote_candidates.push(c);
        }
    }
}

/// Datagrams a connecting session may have passed to its handshake thread per second (a DTLS
/// handshake is a dozen, ICE checks a few a second).
pub(crate) const HANDSHAKE_DATAGRAMS_PER_SECOND: u64 = 100;

impl Peer {
    pub fn live(&mut self) -> Option<&mut Rtc> {
        match self {
            Peer::Live(rtc) => Some(rtc),
            _ => None,
        }
    }
}

pub(crate) enum Role {
    Publisher(Publisher),
    Viewer(Box<ViewerEgress>),
}

pub(crate) struct Publisher {
    source: SourceId,
    video_mid: Option<Mid>,
    pts: Vec<(Pt, Codec)>,
    pub keyframe_gate: KeyframeRequestGate,
}

/// Work a session hands back to its worker after an input.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Packets received from a publisher, for the room's viewers.
    pub packets: Vec<Arc<MediaPacket>>,
    /// A viewer needs a keyframe.
    pub keyframe_request: bool,
    /// A viewer just connected: it gets the room's GOP.
    pub viewer_connected: bool,
    /// The session is over.
    pub ended: Option<&'static str>,
}

impl Publisher {
    pub fn new(serial: u64, video_mid: Option<Mid>, gate_interval: Duration) -> Self {
        Publisher {
            source: SourceId(serial),
            video_mid,
            pts: Vec::new(),
            keyframe_gate: KeyframeRequestGate::new(gate_interval),
        }
    }

    fn codec_of(&mut self, rtc: &Rtc, pt: Pt) -> Option<Codec> {
        if let Some((_, c)) = self.pts.iter().find(|(p, _)| *p == pt) {
            return Some(*c);
        }
        // First packet of this payload type: learn the mapping once. Payload types are unique
        // across the bundle, so the session-wide table is enough.
        let params = rtc.codec_config().params().iter().find(|p| p.pt() == pt)?;
        let codec = codec_of_spec(&params.spec())?;
        self.pts.push((pt, codec));
        Some(codec)
    }

    /// Asks the publisher for a keyframe now.
    pub fn send_keyframe_request(&self, rtc: &mut Rtc) -> bool {
        let Some(mid) = self.video_mid else {
            return false;
        };
        let mut api = rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, None) else {
            return false;
        };
        rx.request_keyframe(KeyframeRequestKind::Pli);
        true
    }
}

impl Session {
    pub fn new(
        id: Arc<str>,
        serial: u64,
        peer: Peer,
        room: Arc<Room>,
        role: Role,
        local_ufrag: String,
        now: Instant,
    ) -> Self {
        Session {
            id,
            serial,
            peer,
            room,
            role,
            created: now,
            last_input: now,
            connected: false,
            local_ufrag,
            addrs: Vec::new(),
            timeout: now,
            scheduled: None,
            last_source: None,
            switches: PerSecond::new(SWITCHES_PER_SECOND.into(), now),
            replay_bytes: PerSecond::new(REPLAY_BYTES_PER_SECOND as u64, now),
            pending: None,
            last_switch: None,
            replay_at: None,
        }
    }

    pub fn kind(&self) -> SessionKind {
        match self.role {
            Role::Publisher(_) => SessionKind::Publisher,
            Role::Viewer(_) => SessionKind::Viewer,
        }
    }

    /// Whether a GOP replay of `bytes` fits this second's budget (taken if so).
    pub fn take_replay_budget(&mut self, bytes: usize, now: Instant) -> bool {
        self.replay_bytes.take_n(bytes as u64, now)
    }

    /// The viewer's egress, once it is connected.
    pub fn connected_viewer(&mut self) -> Option<&mut ViewerEgress> {
        match &mut self.role {
            Role::Viewer(v) if self.connected => Some(v),
            _ => None,
        }
    }

    /// Looks at a datagram str0m wants to send; false when it must not go out.
    pub fn check_transmit(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        match &mut self.role {
            Role::Viewer(v) => v.check_transmit(to, data),
            Role::Publisher(_) => true,
        }
    }

    /// Acts on RTCP from a viewer: media follows its path, NACKed packets are sent again.
    /// `recent` is the viewer's room's recent video on this worker (what NACKs are answered
    /// from).
    pub fn handle_viewer_rtcp(
        &mut self,
        rtcp: &Rtcp,
        recent: Option<&RecentVideo>,
        sends: &mut SendBatch,
        counters: &Counters,
        now: Instant,
    ) {
        let Role::Viewer(viewer) = &mut self.role else {
            return;
        };
        if let Some(from) = self.last_source {
            viewer.follow(from);
        }
        if let Rtcp::Nack(nack) = rtcp {
            let entries = nack.reports.iter().map(|e| (e.pid, e.blp));
            viewer.resend_lost(*nack.ssrc, entries, recent, sends, counters, now);
        }
    }

    pub fn handle_event(&mut self, event: Event, out: &mut Outbox, counters: &Counters) {
        match event {
            Event::Connected => {
                self.connected = true;
                self.pending = None;
                tracing::info!(session = self.serial, room = %self.room.name, kind = ?self.kind(), "connected");
                if matches!(self.role, Role::Viewer(_)) {
                    out.viewer_connected = true;
                    out.keyframe_request = true;
                }
            }
            Event::IceConnectionStateChange(state) => {
                tracing::debug!(session = %self.id, ?state, "ICE state");
                if state == IceConnectionState::Disconnected {
                    out.ended = Some("ICE disconnected");
                }
            }
            Event::Closed => out.ended = Some("peer closed"),
            Event::MediaAdded(m) => {
                if let Role::Publisher(p) = &mut self.role
                    && m.kind == str0m::media::MediaKind::Video
                    && p.video_mid.is_none()
                {
                    p.video_mid = Some(m.mid);
                }
            }
            Event::RtpPacket(rtp) => {
                let Role::Publisher(p) = &mut self.role else {
                    return;
                };
                let Peer::Live(rtc) = &self.peer else {
                    return;
                };
                let Some(codec) = p.codec_of(rtc, rtp.header.payload_type) else {
                    return;
                };
                Counters::add(&counters.packets_in, 1);
                Counters::add(&counters.bytes_in, rtp.payload.len() as u64);
                let keyframe_start =
                    codec.kind() == MediaKind::Video && is_keyframe_start(codec, &rtp.payload);
                out.packets.push(Arc::new(MediaPacket {
                    source: p.source,
                    codec,
                    seq: *rtp.seq_no,
                    timestamp: rtp.header.timestamp,
                    marker: rtp.header.marker,
                    keyframe_start,
                    arrival: rtp.timestamp,
                    capture: rtp.timestamp,
                    // str0m's buffer, shared rather than copied.
                    payload: bytes::Bytes::from_owner(rtp.payload),
                }));
            }
            Event::KeyframeRequest(_) => {
                if matches!(self.role, Role::Viewer(_)) {
                    Counters::add(&counters.keyframe_requests_received, 1);
                    out.keyframe_request = true;
                }
            }
            _ => {}
        }
    }
}
