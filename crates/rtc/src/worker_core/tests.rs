//! The worker core driven with bytes and fake time: real str0m peers on the other side of a
//! fake network (datagrams handed over in memory), no socket, no thread, no sleep.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deadsfu_media::{Codec, MediaPacket, RoomId, SourceId};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind as SdpKind, Mid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::*;
use crate::config::EngineConfig;
use crate::sdp::OfferSummary;
use crate::send_batch::RecordingSink;
use crate::session_setup::{SessionRequest, prepare_session};
use crate::turn::{DATAGRAMS_PER_TURN, TurnIo, run_turn};

const SERVER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);
const STEP: Duration = Duration::from_millis(5);

struct Net {
    core: WorkerCore,
    sink: RecordingSink,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    now: Instant,
    next_serial: u64,
}

/// A str0m peer on the far side: what it sent waits in `outbox` until the net carries it.
struct Peer {
    rtc: Rtc,
    addr: SocketAddr,
    serial: u64,
    connected: bool,
    /// Video RTP received: (sequence number, payload).
    video: Vec<(u16, Vec<u8>)>,
    audio: usize,
    outbox: VecDeque<Vec<u8>>,
    video_mid: Option<Mid>,
}

fn config() -> EngineConfig {
    EngineConfig {
        udp_port: SERVER.port(),
        idle_clip: None,
        ..EngineConfig::default()
    }
}

impl Net {
    fn new(index: usize, workers: usize, config: EngineConfig) -> Net {
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
        Net {
            core,
            sink,
            shared,
            counters,
            now,
            next_serial: 1,
        }
    }

    fn metrics(&self) -> crate::metrics::MetricsSnapshot {
        let mut m = crate::metrics::MetricsSnapshot::default();
        m.add(&self.counters);
        m
    }

    /// A peer that offers to view (`Direction::RecvOnly`) or publish H264 and Opus, adopted by
    /// the core; not yet connected.
    fn peer(&mut self, room: &str, dir: Direction, port: u16) -> Peer {
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
            offer: SdpOffer::from_sdp_string(&offer).unwrap(),
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
    fn step(&mut self, peers: &mut [&mut Peer]) {
        for p in peers.iter_mut() {
            p.poll(self.now);
            while let Some(d) = p.outbox.pop_front() {
                self.core.handle_datagram(self.now, p.addr, &d);
            }
        }
        self.core.handle_timeout(self.now);
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

    fn connect(&mut self, peers: &mut [&mut Peer]) {
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

    /// Packets of `room` as if from another worker's publisher (or FTL).
    fn inject(&mut self, room: RoomId, packets: &[Arc<MediaPacket>]) {
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
    fn poll(&mut self, now: Instant) {
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

    fn is_video_pt(&self, pt: str0m::media::Pt) -> bool {
        self.rtc
            .codec_config()
            .params()
            .iter()
            .any(|p| p.pt() == pt && p.spec().codec == str0m::format::Codec::H264)
    }

    /// The first STUN check the peer sends (its ICE agent starts after a short while).
    fn first_check(&mut self, now: Instant) -> Vec<u8> {
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
    fn send_pt(&self) -> str0m::media::Pt {
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

    fn video_seqs(&self) -> Vec<u16> {
        self.video.iter().map(|(s, _)| *s).collect()
    }
}

/// A frame of `n` H264 packets from `source`, the first an IDR slice when `key`.
fn frame(
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

fn assert_consecutive(seqs: &[u16]) {
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0].wrapping_add(1),
            "sequence numbers jump: {seqs:?}"
        );
    }
}

#[test]
fn a_connected_viewer_gets_the_rooms_packets_in_order() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    let room = net.shared.rooms.get_or_create("r").id;
    let pkts = frame(7, 100, 9000, 5, true, net.now);
    net.inject(room, &pkts);
    net.step(&mut [&mut v]);
    assert_eq!(v.video.len(), 5);
    assert_consecutive(&v.video_seqs());
    assert_eq!(v.video[0].1, pkts[0].payload.to_vec());
}

#[test]
fn a_joining_viewer_is_replayed_the_gop_at_once() {
    let mut net = Net::new(0, 1, config());
    let room = net.shared.rooms.get_or_create("r").id;
    // The room's GOP arrives before anyone watches: a keyframe and a delta frame.
    let now = net.now;
    let mut gop = frame(7, 100, 9000, 3, true, now);
    gop.extend(frame(7, 103, 12000, 2, false, now));
    net.inject(room, &gop);
    net.step(&mut []);
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    assert_eq!(
        v.video.len(),
        5,
        "the whole GOP, without waiting for a new keyframe"
    );
    assert_consecutive(&v.video_seqs());
}

#[test]
fn a_switch_replays_the_new_rooms_gop_and_is_rate_limited() {
    let mut net = Net::new(0, 1, config());
    let a = net.shared.rooms.get_or_create("a").id;
    let b = net.shared.rooms.get_or_create("b").id;
    let now = net.now;
    net.inject(a, &frame(1, 10, 1000, 2, true, now));
    net.inject(b, &frame(2, 500, 5000, 4, true, now));
    net.step(&mut []);
    let mut v = net.peer("a", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    assert_eq!(v.video.len(), 2);
    let serial = v.serial;
    let switch = |net: &mut Net, to: &str| {
        let room = net.shared.rooms.get_or_create(to);
        let (tx, rx) = std::sync::mpsc::channel();
        let reply: ReplyTo = Box::new(move |r| tx.send(r).is_ok());
        net.core.handle_control(
            net.now,
            Control {
                command: Command::SwitchRoom { serial, room },
                reply: Some(reply),
            },
        );
        match rx.recv().unwrap() {
            Reply::Done(r) => r,
            other => panic!("{other:?}"),
        }
    };
    switch(&mut net, "b").unwrap();
    net.step(&mut [&mut v]);
    assert_eq!(v.video.len(), 6, "room b's GOP follows at once");
    assert_consecutive(&v.video_seqs());
    // A handful of switches a second are allowed; beyond, 429.
    let results: Vec<_> = (0..10)
        .map(|i| switch(&mut net, if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(SessionError::TooManyRequests)))
        .count();
    assert_eq!(refused, 10 - (SWITCHES_PER_SECOND as usize - 1));
}

#[test]
fn a_publishers_packets_reach_this_workers_viewers_and_every_other_worker_shared() {
    let mut net = Net::new(0, 3, config());
    let mut p = net.peer("r", Direction::SendOnly, 6001);
    let mut v = net.peer("r", Direction::RecvOnly, 6002);
    net.connect(&mut [&mut p, &mut v]);
    let _ = net.core.drain_peer_messages().count();
    let mid = p.video_mid.unwrap();
    let pt = p.send_pt();
    for i in 0..3u16 {
        let mut payload = vec![0x41u8; 300];
        if i == 0 {
            payload[0] = 0x65;
        }
        let now = net.now;
        let mut api = p.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).unwrap();
        let write = RtpWrite::new(pt, (1000 + i as u64).into(), 90_000, now, payload)
            .marker(i == 2)
            .nackable(true);
        tx.write_rtp(write);
    }
    net.step(&mut [&mut p, &mut v]);
    net.step(&mut [&mut p, &mut v]);
    assert_eq!(v.video.len(), 3, "this worker's viewer");
    let sent: Vec<(usize, Arc<MediaPacket>)> = net
        .core
        .drain_peer_messages()
        .filter_map(|(w, m)| match m {
            PeerMessage::Packet { packet, .. } => Some((w, packet)),
            PeerMessage::KeyframeRequest { .. } => None,
        })
        .collect();
    assert_eq!(sent.len(), 6, "each packet to workers 1 and 2");
    for pair in sent.chunks(2) {
        assert_eq!((pair[0].0, pair[1].0), (1, 2));
        assert!(Arc::ptr_eq(&pair[0].1, &pair[1].1), "shared, not copied");
    }
}

#[test]
fn the_idle_clip_hands_over_to_live_video_and_back() {
    let mut cfg = config();
    cfg.idle_clip = Some(Arc::new(deadsfu_media::IdleClip::builtin()));
    let mut net = Net::new(0, 1, cfg);
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    for _ in 0..40 {
        net.step(&mut [&mut v]);
    }
    let idle = v.video.len();
    assert!(
        idle > 0,
        "the idle clip plays while the room has no live video"
    );
    // Live video: the viewer switches to it at its keyframe, on one continuous sequence.
    let room = net.shared.rooms.get_or_create("r").id;
    let live_payload = frame(9, 1, 1000, 1, true, net.now)[0].payload.to_vec();
    for i in 0..20u64 {
        let now = net.now;
        net.inject(
            room,
            &frame(9, 1 + i * 2, 1000 + i as u32 * 3000, 2, i == 0, now),
        );
        net.step(&mut [&mut v]);
    }
    let first_live = v.video.iter().position(|(_, p)| *p == live_payload);
    let first_live = first_live.expect("live video reached the viewer");
    assert!(
        v.video[first_live..]
            .iter()
            .all(|(_, p)| p[0] == 0x65 || p[0] == 0x41)
    );
    assert_consecutive(&v.video_seqs());
    // Live video stops: after the idle delay the clip comes back.
    let before = v.video.len();
    for _ in 0..((deadsfu_media::rewrite::IDLE_AFTER.as_millis() / STEP.as_millis()) + 100) {
        net.step(&mut [&mut v]);
    }
    assert!(
        v.video.len() > before + 5,
        "the idle clip resumes after live video stops"
    );
    assert_consecutive(&v.video_seqs());
}

#[test]
fn a_new_publisher_continues_the_viewers_sequence() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    let room = net.shared.rooms.get_or_create("r").id;
    let now = net.now;
    net.inject(room, &frame(1, 100, 1000, 3, true, now));
    net.step(&mut [&mut v]);
    // Another source with unrelated numbering: the viewer's numbering continues.
    let now = net.now;
    net.inject(room, &frame(2, 60_000, 777, 3, true, now));
    net.step(&mut [&mut v]);
    assert_eq!(v.video.len(), 6);
    assert_consecutive(&v.video_seqs());
}

#[test]
fn keyframe_requests_for_a_remote_publisher_merge() {
    let mut net = Net::new(0, 2, config());
    let room = net.shared.rooms.get_or_create("r");
    assert!(
        room.try_claim_publisher(999, Some(1)),
        "publisher on worker 1"
    );
    let mut v1 = net.peer("r", Direction::RecvOnly, 6001);
    let mut v2 = net.peer("r", Direction::RecvOnly, 6002);
    net.connect(&mut [&mut v1, &mut v2]);
    let requests = |net: &mut Net| {
        net.core
            .drain_peer_messages()
            .filter(|(w, m)| *w == 1 && matches!(m, PeerMessage::KeyframeRequest { .. }))
            .count()
    };
    // Both viewers connected within a few steps: their requests merge.
    let first = requests(&mut net);
    assert!(first >= 1);
    assert!(first <= 2, "{first} requests for two joins");
    // A storm of PLIs from one viewer within the merge interval: at most one more request.
    let mid = v1.video_mid.unwrap();
    for _ in 0..50 {
        if let Some(rx) = v1.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
        }
        net.step(&mut [&mut v1, &mut v2]);
    }
    let storm = requests(&mut net);
    let steps_ms = 50 * STEP.as_millis() as usize;
    let most = steps_ms / rooms::KEYFRAME_REQUEST_MERGE.as_millis() as usize + 1;
    assert!(storm <= most, "{storm} requests in {steps_ms} ms");
}

#[test]
fn a_check_binds_its_source_only_when_its_integrity_holds() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    let check = v.first_check(net.now);
    // The same check with a broken MESSAGE-INTEGRITY, from another source.
    let mut forged = check.clone();
    let n = forged.len();
    forged[n - 10] ^= 0xff;
    let attacker = SocketAddr::from(([127, 0, 0, 9], 7000));
    net.core.handle_datagram(net.now, attacker, &forged);
    net.core.handle_timeout(net.now);
    assert!(
        net.sink.take().iter().all(|(to, _)| *to != attacker),
        "no answer to a forgery"
    );
    // Its source is not bound: what it sends next is unknown.
    let before = net.metrics().unknown_datagrams;
    net.core.handle_datagram(net.now, attacker, &[0x80; 40]);
    assert_eq!(net.metrics().unknown_datagrams, before + 1);
    // The genuine check is answered and its source bound.
    net.core.handle_datagram(net.now, v.addr, &check);
    net.core.handle_timeout(net.now);
    assert!(
        net.sink
            .take()
            .iter()
            .any(|(to, d)| *to == v.addr && crate::stun::is_binding_success(d))
    );
    net.connect(&mut [&mut v]);
}

#[test]
fn a_flood_of_checks_for_one_ufrag_is_cut_before_integrity_checks() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    let check = v.first_check(net.now);
    for i in 0..2000u16 {
        let from = SocketAddr::from(([127, 0, 1, (i % 250) as u8], 10_000 + i));
        net.core.handle_datagram(net.now, from, &check);
    }
    let limited = net.metrics().stun_rate_limited;
    assert!(
        limited >= 2000 - demux::CHECKS_PER_UFRAG as u64,
        "{limited}"
    );
    // The session itself still connects once the second has turned.
    net.now += Duration::from_secs(1);
    net.connect(&mut [&mut v]);
}

/// Inputs of a turn from in-memory queues; the socket can be made endless.
#[derive(Default)]
struct FakeIo {
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    endless_datagram: Option<(SocketAddr, Vec<u8>)>,
    peer: VecDeque<PeerMessage>,
    endless_peer: Option<(RoomId, Arc<MediaPacket>)>,
    controls: VecDeque<Control>,
    now: Option<Instant>,
    to_peers: usize,
}

impl TurnIo for FakeIo {
    fn datagram(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let (from, d) = self
            .datagrams
            .pop_front()
            .or_else(|| self.endless_datagram.clone())?;
        buf[..d.len()].copy_from_slice(&d);
        Some((d.len(), from))
    }
    fn peer_message(&mut self) -> Option<PeerMessage> {
        self.peer.pop_front().or_else(|| {
            let (room, packet) = self.endless_peer.clone()?;
            Some(PeerMessage::Packet { room, packet })
        })
    }
    fn control(&mut self) -> Option<Control> {
        self.controls.pop_front()
    }
    fn now(&mut self) -> Instant {
        self.now.unwrap()
    }
    fn send_to_peer(&mut self, _: usize, _: PeerMessage) -> bool {
        self.to_peers += 1;
        true
    }
}

#[test]
fn a_busy_socket_starves_neither_timers_nor_other_workers() {
    let mut cfg = config();
    cfg.connect_timeout = Duration::from_secs(2);
    let mut net = Net::new(0, 2, cfg);
    // A viewer that never connects, and a socket that never runs dry.
    let _v = net.peer("r", Direction::RecvOnly, 6001);
    let room = net.shared.rooms.get_or_create("r").id;
    let mut io = FakeIo {
        endless_datagram: Some((SocketAddr::from(([127, 0, 0, 9], 9)), vec![0x80; 100])),
        now: Some(net.now),
        ..Default::default()
    };
    io.peer.extend(
        frame(1, 1, 1, 3, true, net.now)
            .into_iter()
            .map(|packet| PeerMessage::Packet { room, packet }),
    );
    let mut buf = vec![0u8; 2048];
    let counters = net.counters.clone();
    let report = run_turn(&mut net.core, &mut io, &mut buf, &counters);
    assert_eq!(
        report.datagrams, DATAGRAMS_PER_TURN,
        "a turn reads a bounded share"
    );
    assert_eq!(
        report.peer_messages, 3,
        "other workers' packets are served in the same turn"
    );
    assert_eq!(net.core.session_count(), 1);
    // Time passes beyond the connect deadline, the socket still busy: the timer fires.
    io.now = Some(net.now + Duration::from_secs(3));
    run_turn(&mut net.core, &mut io, &mut buf, &counters);
    assert_eq!(
        net.core.session_count(),
        0,
        "the connect deadline ended the session"
    );
}

#[test]
fn a_flood_from_other_workers_does_not_starve_the_socket() {
    let mut net = Net::new(0, 2, config());
    let room = net.shared.rooms.get_or_create("r").id;
    let pkt = frame(1, 1, 1, 1, true, net.now).remove(0);
    let mut io = FakeIo {
        endless_peer: Some((room, pkt)),
        now: Some(net.now),
        ..Default::default()
    };
    io.datagrams
        .extend((0..10).map(|_| (SocketAddr::from(([127, 0, 0, 9], 9)), vec![0x80; 50])));
    let mut buf = vec![0u8; 2048];
    let counters = net.counters.clone();
    let report = run_turn(&mut net.core, &mut io, &mut buf, &counters);
    assert_eq!(report.datagrams, 10);
    assert_eq!(report.peer_messages, crate::turn::PEER_MESSAGES_PER_TURN);
    let report = run_turn(&mut net.core, &mut io, &mut buf, &counters);
    assert_eq!(
        report.peer_messages,
        crate::turn::PEER_MESSAGES_PER_TURN,
        "bounded every turn"
    );
}
