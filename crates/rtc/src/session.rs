//! One str0m peer connection and what deadsfu does with it: publish into a room or view one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadsfu_media::keyframe::is_keyframe_start;
use deadsfu_media::keyframe_request::KeyframeRequestGate;
use deadsfu_media::rewrite::Rewritten;
use deadsfu_media::{Codec, MediaKind, MediaPacket, Room, SourceId, ViewerTrack};
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::rtp::rtcp::Rtcp;
use str0m::rtp::{Extension, Ssrc};
use str0m::{Event, IceConnectionState, Rtc};

use crate::codec::{codec_of_spec, negotiated_pts, viewer_pt};
use crate::dtls_tap::SrtpKeys;
use crate::metrics::Counters;
use crate::send_batch::SendBatch;
use crate::srtp::{RTCP_OVERHEAD, RTP_OVERHEAD, SCRATCH, SrtpSender};

/// What the session does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub rtc: Rtc,
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
}

pub(crate) enum Role {
    Publisher(Publisher),
    Viewer(Box<Viewer>),
}

pub(crate) struct Publisher {
    source: SourceId,
    video_mid: Option<Mid>,
    pts: Vec<(Pt, Codec)>,
    pub keyframe_gate: KeyframeRequestGate,
}

/// A viewer's media goes out without str0m: once DTLS has given the SRTP keys, the worker
/// rewrites each room packet, encrypts it straight into its send buffer and sends it to the
/// peer's nominated address. str0m keeps ICE, DTLS and the viewer's RTCP (which it decrypts and
/// shows us); its own RTCP for these streams never leaves, since the reports are ours.
pub(crate) struct Viewer {
    video: Option<TrackOut>,
    audio: Option<TrackOut>,
    /// Present from the end of the DTLS handshake.
    srtp: Option<SrtpSender>,
    /// Where str0m sends this peer's datagrams (the nominated ICE pair).
    destination: Option<SocketAddr>,
    cname: String,
    next_report: Option<Instant>,
    resends: ResendBudget,
}

/// Retransmissions a viewer may have per second. A NACK is one small packet that can name 17
/// lost ones, so a misbehaving peer must not turn NACKs into unbounded work for the worker; a
/// healthy viewer of an 8 Mbit/s stream at 25% loss stays below this.
const RESENDS_PER_SECOND: u32 = 500;

struct ResendBudget {
    left: u32,
    window: Instant,
}

impl ResendBudget {
    fn new(now: Instant) -> Self {
        ResendBudget {
            left: RESENDS_PER_SECOND,
            window: now,
        }
    }

    /// Whether one more retransmission fits in this second.
    fn take(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.left = RESENDS_PER_SECOND;
        }
        let ok = self.left > 0;
        self.left = self.left.saturating_sub(1);
        ok
    }
}

/// Sender reports go out this often per stream (RFC 3550 allows 5 s; browsers use the mapping
/// for lip sync, so sooner is better after a start or switch).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Video packets kept per viewer for retransmission (the packets themselves are shared): 2 s at
/// 1 Mbit/s, a quarter second at 8 Mbit/s, 24 bytes each.
const HISTORY: usize = 256;

struct TrackOut {
    ssrc: Ssrc,
    pts: Vec<(Pt, Codec)>,
    track: ViewerTrack,
    clock_rate: u32,
    /// The RTP header extension block (SDES MID), the same on every packet.
    extension: ([u8; 24], usize),
    /// Sent packets by sequence number, for NACKs (video only).
    history: Vec<Option<Sent>>,
    packets: u32,
    octets: u32,
    /// Timestamp and capture time of the newest packet, for sender reports.
    last: Option<(u32, Instant)>,
}

/// Where a viewer's packets go, and how.
struct Wire<'a> {
    srtp: &'a mut SrtpSender,
    to: SocketAddr,
    sends: &'a mut SendBatch,
    counters: &'a Counters,
}

/// A packet as it was sent to one viewer.
struct Sent {
    index: u64,
    timestamp: u32,
    pt: u8,
    marker: bool,
    packet: Arc<MediaPacket>,
}

impl TrackOut {
    fn new(
        ssrc: Ssrc,
        pts: Vec<(Pt, Codec)>,
        kind: MediaKind,
        mid: Mid,
        mid_id: Option<u8>,
    ) -> Self {
        let mut extension = ([0u8; 24], 0);
        if let Some(id) = mid_id.filter(|id| (1..=14).contains(id))
            && (1..=16).contains(&mid.len())
        {
            // RFC 8285 one-byte header: 0xBEDE, length in words, then id/len and the MID.
            let body = 1 + mid.len();
            let words = body.div_ceil(4);
            let e = &mut extension.0;
            e[..2].copy_from_slice(&[0xbe, 0xde]);
            e[2..4].copy_from_slice(&(words as u16).to_be_bytes());
            e[4] = (id << 4) | (mid.len() as u8 - 1);
            e[5..5 + mid.len()].copy_from_slice(mid.as_bytes());
            extension.1 = 4 + 4 * words;
        }
        let history = match kind {
            MediaKind::Video => (0..HISTORY).map(|_| None).collect(),
            MediaKind::Audio => Vec::new(),
        };
        TrackOut {
            ssrc,
            pts,
            track: ViewerTrack::new(kind, rand::random::<u16>() & 0x7fff, rand::random()),
            clock_rate: match kind {
                MediaKind::Video => 90_000,
                MediaKind::Audio => 48_000,
            },
            extension,
            history,
            packets: 0,
            octets: 0,
            last: None,
        }
    }

    /// Encrypts and queues one packet.
    fn send(&self, wire: &mut Wire, p: &Sent) {
        let mut header = [0u8; 12 + 24];
        let ext_len = self.extension.1;
        header[0] = if ext_len > 0 { 0x90 } else { 0x80 };
        header[1] = ((p.marker as u8) << 7) | (p.pt & 0x7f);
        header[2..4].copy_from_slice(&(p.index as u16).to_be_bytes());
        header[4..8].copy_from_slice(&p.timestamp.to_be_bytes());
        header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        header[12..12 + ext_len].copy_from_slice(&self.extension.0[..ext_len]);
        let header = &header[..12 + ext_len];
        let payload = &p.packet.payload;
        let max = header.len() + payload.len() + RTP_OVERHEAD + SCRATCH;
        let srtp = &mut *wire.srtp;
        let counters = wire.counters;
        wire.sends.write(wire.to, max, counters, |out| {
            // Fail closed: a packet that could not be sealed is dropped and counted.
            srtp.protect_rtp(header, payload, p.index, out)
                .unwrap_or_else(|| {
                    Counters::add(&counters.seal_failures, 1);
                    0
                })
        });
    }

    /// Sends `pkt` (already rewritten) and remembers it for NACKs.
    fn send_new(
        &mut self,
        wire: &mut Wire,
        pt: u8,
        rw: Rewritten,
        pkt: &Arc<MediaPacket>,
        capture: Instant,
    ) {
        let sent = Sent {
            index: rw.seq,
            timestamp: rw.timestamp,
            pt,
            marker: pkt.marker,
            packet: pkt.clone(),
        };
        self.send(wire, &sent);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(pkt.payload.len() as u32);
        self.last = Some((rw.timestamp, capture));
        if !self.history.is_empty() {
            self.history[rw.seq as usize % HISTORY] = Some(sent);
        }
    }

    /// Sends packet `seq` again if it is still in the history.
    fn resend(&self, seq: u16, wire: &mut Wire) -> bool {
        if self.history.is_empty() {
            return false;
        }
        match &self.history[seq as usize % HISTORY] {
            Some(sent) if sent.index as u16 == seq => {
                self.send(wire, sent);
                true
            }
            _ => false,
        }
    }

    /// The SR and SDES compound packet for this stream at `now`, in `out`; returns its length.
    fn report(&self, cname: &str, now: Instant, wall: SystemTime, out: &mut [u8]) -> usize {
        let Some((ts, at)) = self.last else {
            return 0;
        };
        let ticks = now.saturating_duration_since(at).as_secs_f64() * self.clock_rate as f64;
        let rtp_time = ts.wrapping_add(ticks as u64 as u32);
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        // NTP counts from 1900.
        let ntp_secs = since_epoch.as_secs() + 2_208_988_800;
        let ntp_frac = ((since_epoch.subsec_nanos() as u64) << 32) / 1_000_000_000;
        // SR: header, SSRC, NTP, RTP time, packet and octet counts (RFC 3550 6.4.1).
        out[0] = 0x80;
        out[1] = 200;
        out[2..4].copy_from_slice(&6u16.to_be_bytes());
        out[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        out[8..12].copy_from_slice(&(ntp_secs as u32).to_be_bytes());
        out[12..16].copy_from_slice(&(ntp_frac as u32).to_be_bytes());
        out[16..20].copy_from_slice(&rtp_time.to_be_bytes());
        out[20..24].copy_from_slice(&self.packets.to_be_bytes());
        out[24..28].copy_from_slice(&self.octets.to_be_bytes());
        // SDES with the CNAME (RFC 3550 6.5), padded to a word boundary with the end item.
        let name = &cname.as_bytes()[..cname.len().min(255)];
        let chunk = 4 + 2 + name.len() + 1;
        let chunk_padded = chunk.div_ceil(4) * 4;
        let sdes = &mut out[28..28 + 4 + chunk_padded];
        sdes.fill(0);
        sdes[0] = 0x81;
        sdes[1] = 202;
        sdes[2..4].copy_from_slice(&((chunk_padded / 4) as u16).to_be_bytes());
        sdes[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        sdes[8] = 1; // CNAME
        sdes[9] = name.len() as u8;
        sdes[10..10 + name.len()].copy_from_slice(name);
        28 + 4 + chunk_padded
    }
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

impl Viewer {
    /// Finds the send streams str0m made for the answer's first video and audio sections.
    pub fn new(rtc: &mut Rtc, mids: &[(MediaKind, Mid)]) -> Self {
        let mut viewer = Viewer {
            video: None,
            audio: None,
            srtp: None,
            destination: None,
            cname: String::new(),
            next_report: None,
            resends: ResendBudget::new(Instant::now()),
        };
        for &(kind, mid) in mids {
            let slot = match kind {
                MediaKind::Video => &mut viewer.video,
                MediaKind::Audio => &mut viewer.audio,
            };
            if slot.is_some() {
                continue;
            }
            let pts = negotiated_pts(rtc, mid);
            if pts.is_empty() {
                continue;
            }
            let Some(ssrc) = rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc())
            else {
                continue;
            };
            let Some(media) = rtc.media(mid) else {
                continue;
            };
            let mid_id = media.remote_extmap().id_of(Extension::RtpMid);
            if viewer.cname.is_empty() {
                viewer.cname = media.cname().to_string();
            }
            *slot = Some(TrackOut::new(ssrc, pts, kind, mid, mid_id));
        }
        viewer
    }

    pub fn has_tracks(&self) -> bool {
        self.video.is_some() || self.audio.is_some()
    }

    /// Sends what is due of the sender reports.
    fn send_reports(&mut self, sends: &mut SendBatch, counters: &Counters, now: Instant) {
        if self.next_report.is_some_and(|t| now < t) {
            return;
        }
        let (Some(srtp), Some(to)) = (&mut self.srtp, self.destination) else {
            return;
        };
        self.next_report = Some(now + REPORT_INTERVAL);
        let wall = SystemTime::now();
        for track in [&self.video, &self.audio].into_iter().flatten() {
            let mut plain = [0u8; 28 + 4 + 8 + 256];
            let len = track.report(&self.cname, now, wall, &mut plain);
            if len == 0 {
                continue;
            }
            sends.write(to, len + RTCP_OVERHEAD + SCRATCH, counters, |out| {
                srtp.protect_rtcp(&plain[..len], out).unwrap_or_else(|| {
                    Counters::add(&counters.seal_failures, 1);
                    0
                })
            });
        }
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Arc<str>,
        serial: u64,
        rtc: Rtc,
        room: Arc<Room>,
        role: Role,
        local_ufrag: String,
        now: Instant,
    ) -> Self {
        Session {
            id,
            serial,
            rtc,
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
        }
    }

    pub fn kind(&self) -> SessionKind {
        match self.role {
            Role::Publisher(_) => SessionKind::Publisher,
            Role::Viewer(_) => SessionKind::Viewer,
        }
    }

    /// Sends room packets to this viewer (rewritten, encrypted and queued in `sends`), then
    /// a sender report when one is due. Returns false when nothing was sent.
    pub fn write(
        &mut self,
        packets: &[(deadsfu_media::RoomId, Arc<MediaPacket>)],
        sends: &mut SendBatch,
        counters: &Counters,
        now: Instant,
    ) -> bool {
        let Role::Viewer(viewer) = &mut self.role else {
            return false;
        };
        if !self.connected {
            return false;
        }
        let (Some(srtp), Some(to)) = (&mut viewer.srtp, viewer.destination) else {
            return false;
        };
        let mut wire = Wire {
            srtp,
            to,
            sends,
            counters,
        };
        let mut sent = false;
        for (_, pkt) in packets {
            let out = match pkt.kind() {
                MediaKind::Video => &mut viewer.video,
                MediaKind::Audio => &mut viewer.audio,
            };
            let Some(out) = out else {
                continue;
            };
            let Some(pt) = viewer_pt(&out.pts, pkt.codec) else {
                continue;
            };
            let Some(rw) = out.track.rewrite(pkt) else {
                continue;
            };
            out.send_new(&mut wire, *pt, rw, pkt, pkt.capture);
            sent = true;
        }
        if sent {
            viewer.send_reports(sends, counters, now);
        }
        sent
    }

    /// Sends a cached GOP to this viewer at once.
    pub fn replay(
        &mut self,
        gop: &[Arc<MediaPacket>],
        sends: &mut SendBatch,
        counters: &Counters,
        now: Instant,
    ) {
        let Role::Viewer(viewer) = &mut self.role else {
            return;
        };
        let (Some(out), Some(first)) = (&mut viewer.video, gop.first()) else {
            return;
        };
        if !self.connected {
            return;
        }
        let (Some(srtp), Some(to)) = (&mut viewer.srtp, viewer.destination) else {
            return;
        };
        let Some(pt) = viewer_pt(&out.pts, first.codec) else {
            return;
        };
        let mut wire = Wire {
            srtp,
            to,
            sends,
            counters,
        };
        let mapped = out.track.replay(gop, now);
        for (pkt, rw) in gop.iter().zip(&mapped) {
            out.send_new(&mut wire, *pt, *rw, pkt, now);
        }
    }

    /// Takes the SRTP keys of a completed DTLS handshake: from now on this viewer's media is
    /// sent by the worker.
    pub fn set_srtp_keys(&mut self, keys: &SrtpKeys) {
        let Role::Viewer(viewer) = &mut self.role else {
            return;
        };
        viewer.srtp = SrtpSender::new(&crate::dtls_tap::crypto_provider(), keys);
        if viewer.srtp.is_none() {
            tracing::warn!(session = self.serial, ?keys, "unusable SRTP keys");
        }
    }

    /// Looks at a datagram str0m wants to send; false when it must not go out. For viewers, the
    /// destination of str0m's non-STUN datagrams is the nominated pair's, where media goes, and
    /// str0m's own RTCP is held back: it knows nothing of the media we sent.
    pub fn check_transmit(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        let Role::Viewer(viewer) = &mut self.role else {
            return true;
        };
        let first = data.first().copied().unwrap_or(0);
        if first < 4 {
            return true; // STUN (RFC 7983): replies go to whoever asked.
        }
        viewer.destination = Some(to);
        let rtcp =
            (128..192).contains(&first) && data.get(1).is_some_and(|b| (192..224).contains(b));
        !(rtcp && viewer.srtp.is_some())
    }

    /// Acts on RTCP from a viewer: media follows its path, NACKed packets are sent again.
    pub fn handle_viewer_rtcp(&mut self, rtcp: &Rtcp, sends: &mut SendBatch, counters: &Counters) {
        self.follow_rtcp_source();
        if let Rtcp::Nack(nack) = rtcp {
            let entries = nack.reports.iter().map(|e| (e.pid, e.blp));
            self.resend_lost(*nack.ssrc, entries, sends, counters);
        }
    }

    /// The viewer's RTCP came authenticated (str0m decrypted it) in the datagram being
    /// handled: media follows the path the peer uses, which after an ICE restart is a new one.
    fn follow_rtcp_source(&mut self) {
        if let (Role::Viewer(viewer), Some(from)) = (&mut self.role, self.last_source) {
            viewer.destination = Some(from);
        }
    }

    /// Sends again the video packets a NACK reports lost: (pid, blp) pairs of RFC 4585 6.2.1.
    fn resend_lost(
        &mut self,
        ssrc: u32,
        entries: impl Iterator<Item = (u16, u16)>,
        sends: &mut SendBatch,
        counters: &Counters,
    ) {
        let Role::Viewer(viewer) = &mut self.role else {
            return;
        };
        let (Some(srtp), Some(to)) = (&mut viewer.srtp, viewer.destination) else {
            return;
        };
        let Some(track) = viewer.video.as_ref().filter(|t| *t.ssrc == ssrc) else {
            return;
        };
        let mut wire = Wire {
            srtp,
            to,
            sends,
            counters,
        };
        let now = Instant::now();
        for (pid, blp) in entries {
            // The packet `pid`, and those of the set bits of `blp` after it.
            let lost = std::iter::once(pid).chain(
                (0..16u16)
                    .filter(|bit| blp & (1 << bit) != 0)
                    .map(|bit| pid.wrapping_add(bit + 1)),
            );
            for seq in lost {
                Counters::add(&counters.nacks_received, 1);
                if viewer.resends.take(now) && track.resend(seq, &mut wire) {
                    Counters::add(&counters.retransmissions, 1);
                }
            }
        }
    }

    /// Ends the current segments: the viewer restarts at the next keyframe (room switch).
    pub fn resync(&mut self) {
        if let Role::Viewer(viewer) = &mut self.role {
            for t in [&mut viewer.video, &mut viewer.audio].into_iter().flatten() {
                t.track.resync();
            }
        }
    }

    pub fn handle_event(&mut self, event: Event, out: &mut Outbox, counters: &Counters) {
        match event {
            Event::Connected => {
                self.connected = true;
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
                let Some(codec) = p.codec_of(&self.rtc, rtp.header.payload_type) else {
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
                    payload: rtp.payload,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::tests::test_keys;

    fn viewer_session(dest: SocketAddr) -> Session {
        let now = Instant::now();
        let track = TrackOut::new(
            Ssrc::from(1111),
            vec![(Pt::from(96), Codec::H264 { profile: 0x42e0 })],
            MediaKind::Video,
            Mid::from("0"),
            Some(4),
        );
        let crypto = crate::dtls_tap::crypto_provider();
        let viewer = Viewer {
            video: Some(track),
            audio: None,
            srtp: SrtpSender::new(&crypto, &test_keys()),
            destination: Some(dest),
            cname: "test".into(),
            next_report: None,
            resends: ResendBudget::new(Instant::now()),
        };
        let rooms = deadsfu_media::Rooms::new();
        let room = rooms.get_or_create("r");
        let mut s = Session::new(
            "s1".into(),
            1,
            Rtc::new(now),
            room,
            Role::Viewer(Box::new(viewer)),
            "ufrag".into(),
            now,
        );
        s.connected = true;
        s
    }

    fn packets(
        room: deadsfu_media::RoomId,
        n: u64,
    ) -> Vec<(deadsfu_media::RoomId, Arc<MediaPacket>)> {
        let now = Instant::now();
        (0..n)
            .map(|i| {
                let pkt = MediaPacket {
                    source: SourceId(7),
                    codec: Codec::H264 { profile: 0x42e0 },
                    seq: 1000 + i,
                    timestamp: 90_000,
                    marker: i + 1 == n,
                    // An IDR slice: the segment may start here.
                    keyframe_start: i == 0,
                    arrival: now,
                    capture: now,
                    payload: vec![0x65; 1000].into(),
                };
                (room, Arc::new(pkt))
            })
            .collect()
    }

    /// Packets go out as one GSO run to the viewer; NACKed ones go out again, byte for byte, to
    /// wherever the viewer's authenticated RTCP now comes from.
    #[test]
    fn resends_nacked_packets_on_the_viewers_current_path() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sends = SendBatch::new(socket);
        let counters = Counters::default();
        let mut s = viewer_session(a);
        let room = s.room.id;
        assert!(s.write(&packets(room, 4), &mut sends, &counters, Instant::now()));
        let sent = sends.queued();
        // Four media packets, then the first sender report (SR + SDES).
        assert_eq!(sent.len(), 5, "{sent:?}");
        assert!(sent.iter().all(|(to, _)| *to == a));
        let first_seq = {
            let Role::Viewer(v) = &s.role else {
                unreachable!()
            };
            let t = v.video.as_ref().unwrap();
            t.history.iter().flatten().map(|h| h.index).min().unwrap() as u16
        };

        // RTCP from another address (an ICE restart moved the viewer): NACK packets 2 and 4.
        s.last_source = Some(b);
        s.follow_rtcp_source();
        s.resend_lost(
            1111,
            [(first_seq + 1, 0b10)].into_iter(),
            &mut sends,
            &counters,
        );
        let resent = &sends.queued()[5..];
        assert_eq!(resent.len(), 2, "{resent:?}");
        assert!(resent.iter().all(|(to, len)| *to == b && *len == sent[1].1));
        // An unknown sequence number is not resent.
        let unknown = first_seq.wrapping_add(200);
        s.resend_lost(1111, [(unknown, 0)].into_iter(), &mut sends, &counters);
        assert_eq!(sends.queued().len(), 7);
        let mut snap = crate::metrics::MetricsSnapshot::default();
        snap.add(&counters);
        assert_eq!((snap.nacks_received, snap.retransmissions), (3, 2));
    }

    #[test]
    fn resends_are_capped_per_second() {
        let t0 = Instant::now();
        let mut budget = ResendBudget::new(t0);
        let granted = (0..2 * RESENDS_PER_SECOND)
            .filter(|_| budget.take(t0 + Duration::from_millis(900)))
            .count();
        assert_eq!(granted, RESENDS_PER_SECOND as usize);
        assert!(
            budget.take(t0 + Duration::from_secs(1)),
            "a new second, a new budget"
        );
    }
}
