//! One WebRTC peer connection (str0m, RTP mode) against a WHIP or WHEP endpoint.
//!
//! The peer runs on its own tokio task with its own UDP socket. Its statistics are shared with
//! the caller, who can wait for a condition on them (with a timeout) instead of sleeping.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadsfu_media::keyframe::{h264_keyframe_start, vp8_keyframe_start};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::ClientError;
use crate::cert::{self, KeyType};
use crate::signaling::{SessionResource, Signaling};
use crate::synthetic::{StreamSpec, VideoCodec, audio_payload};

/// Publish a synthetic stream (WHIP) or receive (WHEP).
#[derive(Debug, Clone)]
pub enum Role {
    Publish(StreamSpec),
    View,
}

/// How the client tells the server its ICE candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateMode {
    /// In the offer, as most browsers do after gathering.
    InOffer,
    /// Not at all: the server learns the address from our connectivity checks (peer-reflexive),
    /// as with FFmpeg's WHIP muxer.
    None,
    /// In a PATCH after the POST (trickle ICE).
    Trickle,
}

#[derive(Debug, Clone)]
pub struct PeerOptions {
    pub local_ip: IpAddr,
    pub token: Option<String>,
    pub candidates: CandidateMode,
    /// Offer `a=setup:active` instead of `actpass`.
    pub setup_active: bool,
    pub key_type: KeyType,
    pub audio: bool,
    pub video: bool,
    /// Video codecs a viewer offers (a publisher offers its stream's codec).
    pub view_codecs: Vec<VideoCodec>,
    /// Share (0-100) of incoming RTP datagrams to drop, to make the peer NACK.
    pub drop_incoming_percent: f64,
    /// Share (0-100) of outgoing RTP datagrams to drop, to make the far end NACK.
    pub drop_outgoing_percent: f64,
    /// A viewer asks for keyframes (PLI) this many times a second: 0 for only what its
    /// RTP stack asks by itself; high rates play a misbehaving viewer.
    pub keyframe_requests_per_second: u32,
    /// The HTTP client for signaling (see [`Signaling::with_client`]); `None` makes a default
    /// one. Set it to reach HTTPS endpoints with a test root or a host override.
    pub http_client: Option<reqwest::Client>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            local_ip: IpAddr::from([127, 0, 0, 1]),
            token: None,
            candidates: CandidateMode::InOffer,
            setup_active: false,
            key_type: KeyType::Ecdsa,
            audio: true,
            video: true,
            view_codecs: vec![VideoCodec::H264, VideoCodec::Vp8],
            drop_incoming_percent: 0.0,
            drop_outgoing_percent: 0.0,
            keyframe_requests_per_second: 0,
            http_client: None,
        }
    }
}

/// What one received track looked like.
#[derive(Debug, Clone, Default)]
pub struct TrackStats {
    pub packets: u64,
    /// Packets whose sequence number had been received before.
    pub duplicates: u64,
    pub keyframes: u64,
    /// Last byte of the last payload (synthetic streams fill payloads with one byte value).
    pub last_fill: u8,
    /// When the first packet and the first keyframe arrived.
    pub first_packet_at: Option<Instant>,
    pub first_keyframe_at: Option<Instant>,
    pub ssrcs: Vec<u32>,
    pub payload_types: Vec<u8>,
    seqs: BTreeSet<u64>,
}

impl TrackStats {
    /// Sequence numbers missing between the lowest and highest received.
    pub fn gaps(&self) -> u64 {
        match (self.seqs.first(), self.seqs.last()) {
            (Some(a), Some(b)) => (b - a + 1) - self.seqs.len() as u64,
            _ => 0,
        }
    }

    pub fn distinct_seqs(&self) -> usize {
        self.seqs.len()
    }
}

#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    pub connected: bool,
    pub closed: bool,
    pub sent_packets: u64,
    /// Keyframe requests (PLI or FIR) a publisher received.
    pub keyframe_requests: u64,
    /// Keyframe requests a viewer sent (see [`PeerOptions::keyframe_requests_per_second`]).
    pub keyframe_requests_sent: u64,
    pub video: TrackStats,
    pub audio: TrackStats,
}

/// A running peer. Dropping it stops the task without telling the server.
pub struct Peer {
    pub session: SessionResource,
    signaling: Signaling,
    stats: Arc<Mutex<PeerStats>>,
    changes: watch::Receiver<u64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Peer {
    /// POSTs an offer to `url` (a WHIP or WHEP endpoint) and starts the connection.
    pub async fn connect(url: &str, role: Role, opts: PeerOptions) -> Result<Peer, ClientError> {
        let socket = UdpSocket::bind(SocketAddr::new(opts.local_ip, 0)).await?;
        let local_addr = socket.local_addr()?;

        let mut cfg = Rtc::builder().set_rtp_mode(true).clear_codecs();
        if opts.audio {
            cfg = cfg.enable_opus(true, false);
        }
        let codecs: Vec<VideoCodec> = match &role {
            Role::Publish(spec) => vec![spec.codec],
            Role::View => opts.view_codecs.clone(),
        };
        for c in &codecs {
            cfg = match c {
                VideoCodec::H264 => cfg.enable_h264(true),
                VideoCodec::Vp8 => cfg.enable_vp8(true),
            };
        }
        if opts.key_type == KeyType::Rsa {
            cfg = cfg.set_dtls_cert(cert::self_signed(KeyType::Rsa)?);
        }
        let mut rtc = cfg.build(Instant::now());
        let candidate = Candidate::host(local_addr, "udp")
            .map_err(|e| ClientError::Sdp(format!("local candidate: {e}")))?;
        if opts.candidates == CandidateMode::InOffer {
            rtc.add_local_candidate(candidate.clone());
        }
        let dir = match role {
            Role::Publish(_) => Direction::SendOnly,
            Role::View => Direction::RecvOnly,
        };
        let mut api = rtc.sdp_api();
        let mut mids = Vec::new();
        if opts.audio {
            mids.push((
                MediaKind::Audio,
                api.add_media(MediaKind::Audio, dir, None, None, None),
            ));
        }
        if opts.video {
            mids.push((
                MediaKind::Video,
                api.add_media(MediaKind::Video, dir, None, None, None),
            ));
        }
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| ClientError::Sdp("nothing to offer".into()))?;
        let mut offer = offer.to_sdp_string();
        if opts.setup_active {
            offer = offer.replace("a=setup:actpass", "a=setup:active");
        }
        let signaling = match &opts.http_client {
            Some(http) => Signaling::with_client(http.clone(), opts.token.clone()),
            None => Signaling::new(opts.token.clone()),
        };
        let session = signaling.post_offer(url, offer).await?;
        let answer = SdpAnswer::from_sdp_string(&session.answer)
            .map_err(|e| ClientError::Sdp(e.to_string()))?;
        rtc.sdp_api().accept_answer(pending, answer)?;
        if opts.candidates != CandidateMode::InOffer {
            rtc.add_local_candidate(candidate.clone());
        }
        if opts.candidates == CandidateMode::Trickle {
            let creds = rtc.direct_api().local_ice_credentials();
            let status = signaling
                .patch_candidates(
                    &session,
                    &creds.ufrag,
                    &creds.pass,
                    &[candidate.to_sdp_string()],
                )
                .await?;
            if status != 204 {
                return Err(ClientError::Status {
                    status,
                    body: "trickle PATCH refused".into(),
                });
            }
        }

        let stats = Arc::new(Mutex::new(PeerStats::default()));
        let (changed, changes) = watch::channel(0u64);
        let (stop, stop_rx) = oneshot::channel();
        let driver = Driver {
            drop_in: opts.drop_incoming_percent / 100.0,
            drop_out: opts.drop_outgoing_percent / 100.0,
            keyframe_request_every: (opts.keyframe_requests_per_second > 0)
                .then(|| Duration::from_secs(1) / opts.keyframe_requests_per_second),
            rtc,
            socket,
            local_addr,
            role,
            mids,
            stats: stats.clone(),
            changed,
        };
        let task = tokio::spawn(driver.run(stop_rx));
        Ok(Peer {
            session,
            signaling,
            stats,
            changes,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn stats(&self) -> PeerStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `pred` holds for the peer's statistics, or fails after `timeout`.
    pub async fn wait_until(
        &mut self,
        what: &'static str,
        timeout: Duration,
        pred: impl Fn(&PeerStats) -> bool,
    ) -> Result<PeerStats, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return Ok(stats);
            }
            match tokio::time::timeout_at(deadline, self.changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // The task ended: one last look.
                    let stats = self.stats();
                    return if pred(&stats) {
                        Ok(stats)
                    } else {
                        Err(ClientError::Timeout(what))
                    };
                }
                Err(_) => return Err(ClientError::Timeout(what)),
            }
        }
    }

    /// Stops the peer (DTLS close) and DELETEs the session; returns the DELETE status.
    pub async fn delete(mut self) -> Result<u16, ClientError> {
        self.halt().await;
        self.signaling.delete(&self.session.url).await
    }

    /// Stops the peer without telling the server (as a crashed client would).
    pub async fn vanish(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

struct Driver {
    drop_in: f64,
    drop_out: f64,
    keyframe_request_every: Option<Duration>,
    rtc: Rtc,
    socket: UdpSocket,
    local_addr: SocketAddr,
    role: Role,
    mids: Vec<(MediaKind, Mid)>,
    stats: Arc<Mutex<PeerStats>>,
    changed: watch::Sender<u64>,
}

/// Where a publisher is in its synthetic stream.
struct Sender {
    spec: StreamSpec,
    video: Option<(Mid, Pt)>,
    audio: Option<(Mid, Pt)>,
    frame: u64,
    video_seq: u64,
    video_ts: u32,
    audio_seq: u64,
    audio_ts: u32,
    next_video: Instant,
    next_audio: Instant,
}

impl Driver {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut buf = vec![0u8; 2048];
        let mut sender = match &self.role {
            Role::Publish(spec) => Some(self.sender(spec.clone())),
            Role::View => None,
        };
        let mut next_keyframe_request = Instant::now();
        loop {
            let Some(timeout) = self.drain().await else {
                return self.mark_closed();
            };
            let connected = self.rtc.is_connected();
            let mut wake = timeout;
            if let Some(s) = &sender
                && connected
            {
                wake = wake.min(s.next_video).min(s.next_audio);
            }
            if let Some(every) = self.keyframe_request_every
                && connected
            {
                let now = Instant::now();
                if next_keyframe_request <= now {
                    // str0m turns a pending request into a PLI at its next timeout.
                    if self.request_keyframe() {
                        self.update(|st| st.keyframe_requests_sent += 1);
                    }
                    next_keyframe_request = now + every;
                    wake = now;
                }
                wake = wake.min(next_keyframe_request);
            }
            tokio::select! {
                _ = &mut stop => {
                    self.rtc.disconnect();
                    let _ = self.drain().await;
                    return self.mark_closed();
                }
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    if is_rtp(&buf[..n]) && rand::random::<f64>() < self.drop_in {
                        continue;
                    }
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source: from,
                        destination: self.local_addr,
                        contents,
                    });
                    if self.rtc.handle_input(input).is_err() {
                        return self.mark_closed();
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if let Some(s) = &mut sender && connected {
                        let sent = s.send_due(&mut self.rtc, now);
                        if sent > 0 {
                            self.update(|st| st.sent_packets += sent);
                        }
                    }
                    if self.rtc.handle_input(Input::Timeout(now)).is_err() {
                        return self.mark_closed();
                    }
                }
            }
        }
    }

    fn sender(&mut self, spec: StreamSpec) -> Sender {
        let mut video = None;
        let mut audio = None;
        for &(kind, mid) in &self.mids {
            let want = match (kind, spec.codec) {
                (MediaKind::Audio, _) => Codec::Opus,
                (MediaKind::Video, VideoCodec::H264) => Codec::H264,
                (MediaKind::Video, VideoCodec::Vp8) => Codec::Vp8,
            };
            if let Some(pt) = send_payload_type(&self.rtc, mid, want) {
                match kind {
                    MediaKind::Audio => audio = Some((mid, pt)),
                    MediaKind::Video => video = Some((mid, pt)),
                }
            }
        }
        let now = Instant::now();
        Sender {
            spec,
            video,
            audio,
            frame: 0,
            video_seq: rand::random::<u16>() as u64 & 0x3fff,
            video_ts: rand::random(),
            audio_seq: rand::random::<u16>() as u64 & 0x3fff,
            audio_ts: rand::random(),
            next_video: now,
            next_audio: now,
        }
    }

    /// Sends pending datagrams and handles events; returns str0m's next timeout, or `None`
    /// when the connection is over.
    async fn drain(&mut self) -> Option<Instant> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    return self.rtc.is_alive().then_some(t);
                }
                Ok(Output::Transmit(t)) => {
                    if is_rtp(&t.contents) && rand::random::<f64>() < self.drop_out {
                        continue;
                    }
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => self.handle_event(e),
                Err(_) => return None,
            }
        }
    }

    /// Asks the sender of the received video for a keyframe; false when there is none yet.
    fn request_keyframe(&mut self) -> bool {
        let Some(&(_, mid)) = self.mids.iter().find(|(k, _)| *k == MediaKind::Video) else {
            return false;
        };
        match self.rtc.direct_api().stream_rx_by_mid(mid, None) {
            Some(rx) => {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                true
            }
            None => false,
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.update(|s| s.connected = true),
            Event::KeyframeRequest(_) => self.update(|s| s.keyframe_requests += 1),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.update(|s| s.closed = true)
            }
            Event::RtpPacket(p) => {
                let pt = p.header.payload_type;
                let codec = self
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|c| c.pt() == pt)
                    .map(|c| c.spec().codec);
                let Some(codec) = codec else { return };
                let keyframe = match codec {
                    Codec::H264 => h264_keyframe_start(&p.payload),
                    Codec::Vp8 => vp8_keyframe_start(&p.payload),
                    _ => false,
                };
                let seq = *p.seq_no;
                let ssrc = *p.header.ssrc;
                let fill = p.payload.last().copied().unwrap_or(0);
                self.update(|s| {
                    let track = if codec.is_audio() {
                        &mut s.audio
                    } else {
                        &mut s.video
                    };
                    track.packets += 1;
                    if !track.seqs.insert(seq) {
                        track.duplicates += 1;
                    }
                    let now = Instant::now();
                    track.first_packet_at.get_or_insert(now);
                    if keyframe {
                        track.keyframes += 1;
                        track.first_keyframe_at.get_or_insert(now);
                    }
                    track.last_fill = fill;
                    if !track.ssrcs.contains(&ssrc) {
                        track.ssrcs.push(ssrc);
                    }
                    if !track.payload_types.contains(&(*pt)) {
                        track.payload_types.push(*pt);
                    }
                });
            }
            _ => {}
        }
    }

    fn update(&self, f: impl FnOnce(&mut PeerStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_modify(|v| *v += 1);
    }

    fn mark_closed(&self) {
        self.update(|s| s.closed = true);
    }
}

impl Sender {
    /// Writes every frame and audio packet that is due by `now`; returns how many packets.
    fn send_due(&mut self, rtc: &mut Rtc, now: Instant) -> u64 {
        let mut sent = 0;
        while self.next_video <= now {
            if let Some((mid, pt)) = self.video {
                for pkt in self.spec.video_frame(self.frame) {
                    if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
                        tx.write_rtp(
                            RtpWrite::new(
                                pt,
                                self.video_seq.into(),
                                self.video_ts,
                                now,
                                pkt.payload,
                            )
                            .marker(pkt.marker)
                            .nackable(true),
                        );
                        sent += 1;
                    }
                    self.video_seq += 1;
                }
            }
            self.frame += 1;
            self.video_ts = self.video_ts.wrapping_add(self.spec.ticks_per_frame());
            self.next_video += self.spec.frame_interval();
        }
        while self.next_audio <= now {
            if let Some((mid, pt)) = self.audio
                && let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None)
            {
                tx.write_rtp(
                    RtpWrite::new(
                        pt,
                        self.audio_seq.into(),
                        self.audio_ts,
                        now,
                        audio_payload(),
                    )
                    .marker(true),
                );
                sent += 1;
            }
            self.audio_seq += 1;
            self.audio_ts = self.audio_ts.wrapping_add(960);
            self.next_audio += Duration::from_millis(20);
        }
        sent
    }
}

/// The payload type negotiated for sending `codec` on `mid` (H264 only in packetization mode 1).
pub fn send_payload_type(rtc: &Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let remote = rtc.media(mid)?.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| {
            remote.contains(&p.pt())
                && p.spec().codec == codec
                && (codec != Codec::H264 || p.spec().format.packetization_mode == Some(1))
        })
        .map(|p| p.pt())
}

/// An (S)RTP packet, as opposed to STUN, DTLS or RTCP (RFC 7983, RFC 5761).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1])
}
