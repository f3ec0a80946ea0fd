//! One str0m peer connection and what deadsfu does with it: publish into a room or view one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::keyframe::is_keyframe_start;
use deadsfu_media::keyframe_request::KeyframeRequestGate;
use deadsfu_media::{Codec, MediaKind, MediaPacket, Room, SourceId, ViewerTrack};
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState, Input, Rtc};

use crate::codec::{codec_of_spec, negotiated_pts, viewer_pt};
use crate::metrics::Counters;

/// What the session does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// WHIP ingest (or any publisher).
    Publisher,
    /// WHEP playback.
    Viewer,
}

pub(crate) struct Session {
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
    /// NACKs str0m has reported per stream so far.
    nacks_seen: Vec<(Mid, u64)>,
}

pub(crate) enum Role {
    Publisher(Publisher),
    Viewer(Viewer),
}

pub(crate) struct Publisher {
    source: SourceId,
    video_mid: Option<Mid>,
    pts: Vec<(Pt, Codec)>,
    pub keyframe_gate: KeyframeRequestGate,
}

pub(crate) struct Viewer {
    video: Option<TrackOut>,
    audio: Option<TrackOut>,
}

struct TrackOut {
    ssrc: Ssrc,
    pts: Vec<(Pt, Codec)>,
    track: ViewerTrack,
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
            *slot = Some(TrackOut {
                ssrc,
                pts,
                track: ViewerTrack::new(kind, rand::random::<u16>() & 0x7fff, rand::random()),
            });
        }
        viewer
    }

    pub fn has_tracks(&self) -> bool {
        self.video.is_some() || self.audio.is_some()
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
            nacks_seen: Vec::new(),
        }
    }

    pub fn kind(&self) -> SessionKind {
        match self.role {
            Role::Publisher(_) => SessionKind::Publisher,
            Role::Viewer(_) => SessionKind::Viewer,
        }
    }

    /// Queues one room packet for this viewer (str0m sends it when time next advances).
    /// Returns false when nothing was queued.
    pub fn write(&mut self, pkt: &MediaPacket) -> bool {
        let Role::Viewer(viewer) = &mut self.role else {
            return false;
        };
        if !self.connected {
            return false;
        }
        let out = match pkt.kind() {
            MediaKind::Video => &mut viewer.video,
            MediaKind::Audio => &mut viewer.audio,
        };
        let Some(out) = out else {
            return false;
        };
        let Some(pt) = viewer_pt(&out.pts, pkt.codec) else {
            return false;
        };
        let Some(rw) = out.track.rewrite(pkt) else {
            return false;
        };
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx(&out.ssrc) else {
            return false;
        };
        stream.write_rtp(
            RtpWrite::new(
                pt,
                rw.seq.into(),
                rw.timestamp,
                pkt.capture,
                pkt.payload.clone(),
            )
            .marker(pkt.marker)
            .nackable(pkt.kind() == MediaKind::Video),
        );
        true
    }

    /// Sends a cached GOP to this viewer at once. Returns false when nothing was queued.
    pub fn replay(&mut self, gop: &[Arc<MediaPacket>], now: Instant) -> bool {
        let Role::Viewer(viewer) = &mut self.role else {
            return false;
        };
        let (Some(out), Some(first)) = (&mut viewer.video, gop.first()) else {
            return false;
        };
        if !self.connected {
            return false;
        }
        let Some(pt) = viewer_pt(&out.pts, first.codec) else {
            return false;
        };
        let mapped = out.track.replay(gop, now);
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx(&out.ssrc) else {
            return false;
        };
        for (pkt, rw) in gop.iter().zip(&mapped) {
            stream.write_rtp(
                RtpWrite::new(pt, rw.seq.into(), rw.timestamp, now, pkt.payload.clone())
                    .marker(pkt.marker)
                    .nackable(true),
            );
        }
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(session = %self.id, error = %e, "viewer rejected timeout input");
        }
        !mapped.is_empty()
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
                tracing::info!(session = %self.id, room = %self.room.name, kind = ?self.kind(), "connected");
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
            Event::MediaEgressStats(stats) => {
                // str0m reports running NACK totals per stream; count the increase.
                let seen = match self.nacks_seen.iter_mut().find(|e| e.0 == stats.mid) {
                    Some(e) => e,
                    None => {
                        self.nacks_seen.push((stats.mid, 0));
                        self.nacks_seen.last_mut().expect("just pushed")
                    }
                };
                Counters::add(&counters.nacks_received, stats.nacks.saturating_sub(seen.1));
                seen.1 = seen.1.max(stats.nacks);
            }
            _ => {}
        }
    }
}
