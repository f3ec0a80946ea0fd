//! The worker core driven with bytes and fake time: real str0m peers on the other side of a
//! fake network (datagrams handed over in memory), no socket, no thread, no sleep.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deadsfu_media::{Codec, MediaPacket, RoomId, SourceId};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind as SdpKind, Mid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::*;

mod demux_tests;
mod media_tests;
use crate::config::EngineConfig;
use crate::handshakes::Handshakes;
use crate::messages::HandshakeJob;
use crate::sdp::OfferSummary;
use crate::send_batch::RecordingSink;
use crate::session_setup::{SessionRequest, prepare_session};

pub(crate) const SERVER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);
pub(crate) const STEP: Duration = Duration::from_millis(5);

pub(crate) struct Net {
    pub(crate) core: WorkerCore,
    /// The handshake thread's core, run in step with the worker's.
    pub(crate) handshakes: Handshakes,
    pub(crate) sink: RecordingSink,
    pub(crate) shared: Arc<Shared>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) now: Instant,
    pub(crate) next_serial: u64,
}

/// A str0m peer on the far side: what it sent waits in `outbox` until the net carries it.
pub(crate) struct Peer {
    pub(crate) rtc: Rtc,
    pub(crate) addr: SocketAddr,
    pub(crate) serial: u64,
    pub(crate) connected: bool,
    /// Video RTP received: (sequence number, payload).
    pub(crate) video: Vec<(u16, Vec<u8>)>,
    pub(crate) audio: usize,
    pub(crate) outbox: VecDeque<Vec<u8>>,
    pub(crate) video_mid: Option<Mid>,
}

pub(crate) fn config() -> EngineConfig {
    EngineConfig {
        udp_port: SERVER.port(),
        idle_clip: None,
        ..EngineConfig::default()
    }
}

impl Net {
    pub(crate) fn new(index: usize, workers: usize, config: EngineConfig) -> Net {
        let shared = Arc::new(Shared::new(config));
        let counters = Arc::new(Counters::default());
        let sink = RecordingSink::default();
        let now = Instant::now();
        let core = WorkerCore::new(
            index,
            SERVER.port(),
            workers,
            shared.clone(),
            counters.clone(),
            Box::new(sink.clone()),
            now,
            SystemTime::now(),
        );
        let handshakes = Handshakes::new(
            shared.clone(),
            vec![SERVER.port(); workers],
            counters.clone(),
        );
        Net {
            core,
            handshakes,
            sink,
            shared,
            counters,
            now,
            next_serial: 1,
        }
    }

    pub(crate) fn metrics(&self) -> crate::metrics::MetricsSnapshot {
        let mut m = crate::metrics::MetricsSnapshot::default();
        m.add(&self.counters);
        m
    }

    /// A peer that offers to view (`Direction::RecvOnly`) or publish H264 and Opus, adopted by
    /// the core; not yet connected.
    pub(crate) fn peer(&mut self, room: &str, dir: Direction, port: u16) -> Peer {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_h264(true)
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        api.add_media(SdpKind::Audio, dir, None, None, None);
        let video_mid = api.add_media(SdpKind::Video, dir, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let offer = offer.to_sdp_string();
        let summary = OfferSummary::parse(&offer).unwrap();
        let kind = if dir == Direction::RecvOnly {
            SessionKind::Viewer
        } else {
            SessionKind::Publisher
        };
        let video_family = match kind {
            SessionKind::Publisher => summary.check_publish().unwrap(),
            SessionKind::Viewer => None,
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        let room = self.shared.rooms.get_or_create(room);
        if kind == SessionKind::Publisher {
            assert!(room.try_claim_publisher(serial, Some(self.core.index)));
        }
        let req = SessionRequest {
            id: format!("session-{serial}").into(),
            serial,
            kind,
            room,
            offer: self
                .shared
                .offer_shapes
                .parse(kind, video_family, &offer)
                .unwrap(),
            offer_sdp: offer.as_str().into(),
            summary,
            video_family,
        };
        let (session, answer) =
            prepare_session(&self.shared, SERVER.port(), req, self.now).unwrap();
        self.core.handle_control(
            self.now,
            Control {
                command: Command::Adopt(Box::new(session)),
                reply: None,
            },
        );
        let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        Peer {
            rtc,
            addr,
            serial,
            connected: false,
            video: Vec::new(),
            audio: 0,
            outbox: VecDeque::new(),
            video_mid: Some(video_mid),
        }
    }

    /// One step of the fake network: each peer's output to the core, the core's turn, and the
    /// core's datagrams to the peers; then time moves on.
    pub(crate) fn step(&mut self, peers: &mut [&mut Peer]) {
        for p in peers.iter_mut() {
            p.poll(self.now);
            while let Some(d) = p.outbox.pop_front() {
                self.core.handle_datagram(self.now, p.addr, &d);
            }
        }
        self.core.handle_timeout(self.now);
        self.build_peers();
        for (to, data) in self.sink.take() {
            if let Some(p) = peers.iter_mut().find(|p| p.addr == to) {
                let input = Input::Receive(
                    self.now,
                    Receive {
                        proto: Protocol::Udp,
                        source: SERVER,
                        destination: to,
                        contents: DatagramRecv::try_from(&data[..]).unwrap(),
                    },
                );
                let _ = p.rtc.handle_input(input);
                p.poll(self.now);
            }
        }
        self.now += STEP;
        for p in peers.iter_mut() {
            let _ = p.rtc.handle_input(Input::Timeout(self.now));
        }
    }

    pub(crate) fn connect(&mut self, peers: &mut [&mut Peer]) {
        for _ in 0..400 {
            self.step(peers);
            if peers.iter().all(|p| p.connected) {
                // A few more steps: the server side's Connected follows the peer's.
                for _ in 0..3 {
                    self.step(peers);
                }
                return;
            }
        }
        panic!("peers did not connect");
    }

    /// Runs the handshake thread's jobs the core made, as the thread would: their datagrams
    /// go out with the core's, their commands come back in a turn of their own.
    pub(crate) fn build_peers(&mut self) {
        let jobs: Vec<_> = self.core.drain_handshake_jobs().collect();
        for job in jobs {
            self.handshakes.handle_job(self.now, self.core.index, job);
        }
        self.run_handshakes();
    }

    /// Hands one job to the handshake thread and runs it.
    pub(crate) fn finish_build(&mut self, job: HandshakeJob) {
        self.handshakes.handle_job(self.now, self.core.index, job);
        self.run_handshakes();
    }

    /// The handshake thread's timers, datagrams and commands.
    pub(crate) fn run_handshakes(&mut self) {
        self.handshakes.start_waiting(self.now, usize::MAX);
        self.handshakes.handle_timeout(self.now);
        let sent: Vec<_> = self
            .handshakes
            .drain_transmits()
            .map(|t| (t.to, t.contents))
            .collect();
        self.sink.sent.lock().unwrap().extend(sent);
        let commands: Vec<_> = self.handshakes.drain_commands().collect();
        if commands.is_empty() {
            return;
        }
        for (_, command) in commands {
            self.core.handle_control(
                self.now,
                Control {
                    command,
                    reply: None,
                },
            );
        }
        self.core.handle_timeout(self.now);
        // Whatever the commands made (a failed session's cancel) goes to the thread too.
        let jobs: Vec<_> = self.core.drain_handshake_jobs().collect();
        for job in jobs {
            self.handshakes.handle_job(self.now, self.core.index, job);
        }
    }

    /// Whether the core answered a check of the peer at `addr` since the sink was last taken.
    pub(crate) fn answered(&mut self, addr: SocketAddr) -> bool {
        self.sink
            .take()
            .iter()
            .any(|(to, d)| *to == addr && crate::stun::is_binding_success(d))
    }

    /// Packets of `room` as if from another worker's publisher (or FTL).
    pub(crate) fn inject(&mut self, room: RoomId, packets: &[Arc<MediaPacket>]) {
        for p in packets {
            let msg = PeerMessage::Packet {
                room,
                packet: p.clone(),
            };
            self.core.handle_peer_message(self.now, msg);
        }
    }
}

impl Peer {
    pub(crate) fn poll(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(_)) | Err(_) => return,
                Ok(Output::Transmit(t)) => self.outbox.push_back(t.contents.to_vec()),
                Ok(Output::Event(Event::Connected)) => self.connected = true,
                Ok(Output::Event(Event::RtpPacket(rtp))) => {
                    if self.is_video_pt(rtp.header.payload_type) {
                        self.video.push((*rtp.seq_no as u16, rtp.payload.to_vec()));
                    } else {
                        self.audio += 1;
                    }
                }
                Ok(Output::Event(_)) => {}
            }
            let _ = now;
        }
    }

    pub(crate) fn is_video_pt(&self, pt: str0m::media::Pt) -> bool {
        self.rtc
            .codec_config()
            .params()
            .iter()
            .any(|p| p.pt() == pt && p.spec().codec == str0m::format::Codec::H264)
    }

    /// The first STUN check the peer sends (its ICE agent starts after a short while).
    pub(crate) fn first_check(&mut self, now: Instant) -> Vec<u8> {
        for i in 0..100u32 {
            let _ = self.rtc.handle_input(Input::Timeout(now + STEP * i));
            self.poll(now);
            if let Some(d) = self
                .outbox
                .iter()
                .find(|d| crate::stun::local_ufrag(d).is_some())
            {
                return d.clone();
            }
        }
        panic!("the peer sends no STUN check");
    }

    /// The payload type the answer accepted for our H264.
    pub(crate) fn send_pt(&self) -> str0m::media::Pt {
        let mid = self.video_mid.unwrap();
        let remote = self.rtc.media(mid).unwrap().remote_pts().to_vec();
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| remote.contains(&p.pt()) && p.spec().codec == str0m::format::Codec::H264)
            .map(|p| p.pt())
            .unwrap()
    }

    pub(crate) fn video_seqs(&self) -> Vec<u16> {
        self.video.iter().map(|(s, _)| *s).collect()
    }
}

/// A frame of `n` H264 packets from `source`, the first an IDR slice when `key`.
pub(crate) fn frame(
    source: u64,
    first_seq: u64,
    ts: u32,
    n: u64,
    key: bool,
    now: Instant,
) -> Vec<Arc<MediaPacket>> {
    (0..n)
        .map(|i| {
            let mut payload = vec![0x41; 200];
            if key && i == 0 {
                payload[0] = 0x65;
            }
            payload[1] = (first_seq + i) as u8;
            Arc::new(MediaPacket {
                source: SourceId(source),
                codec: Codec::H264 { profile: 0x42e0 },
                seq: first_seq + i,
                timestamp: ts,
                marker: i + 1 == n,
                keyframe_start: key && i == 0,
                arrival: now,
                capture: now,
                payload: payload.into(),
            })
        })
        .collect()
}

pub(crate) fn assert_consecutive(seqs: &[u16]) {
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0].wrapping_add(1),
            "sequence numbers jump: {seqs:?}"
        );
    }
}
