//! Viewers, many per thread. A shard is one thread with one epoll set (mio) over its viewers'
//! UDP sockets and one timer heap for their str0m timeouts.
//!
//! A cheap viewer hands str0m only STUN, DTLS and RTCP, so ICE consent, DTLS and reports keep
//! working; its RTP is counted from the clear header (SSRC, sequence number, length) and never
//! decrypted. A full viewer hands str0m everything and reads the send time out of decrypted
//! payloads, for the latency figures. Viewer sockets take coalesced (GRO) buffers; both kinds
//! cut them into their datagrams first ([`crate::recv`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadsfu_media::keyframe::h264_keyframe_start;
use deadsfu_udp::RecvMmsg;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use crate::accounting::{SeqCounts, SeqTracker};
use crate::stream::{MIN_MEDIA_PAYLOAD, payload_stamp, stamp};
use crate::wire::{DatagramKind, PayloadTypes, PtUse, classify, rtp_header};

const WAKE: Token = Token(usize::MAX);
/// How often a shard publishes its totals.
const REPORT_INTERVAL: Duration = Duration::from_millis(200);
/// Shortest time between two str0m timeouts of a connected cheap viewer.
const CHEAP_TIMER_FLOOR: Duration = Duration::from_millis(250);
/// Longest a shard sleeps, so it notices the stop flag.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// A negotiated viewer, handed to a shard to run.
pub struct NewViewer {
    pub rtc: Rtc,
    pub socket: std::net::UdpSocket,
    /// Payload types the server sends, from its SDP.
    pub pts: PayloadTypes,
    /// Decrypt everything (latency sample) instead of counting headers.
    pub full: bool,
    /// When the viewer's request (WHEP POST, or Janus watch) was sent.
    pub started: Instant,
}

impl NewViewer {
    /// A viewer that was never signalled (its str0m has no remote side), for benchmarks of the
    /// receiving machinery itself: it counts whatever RTP reaches `socket` with payload types
    /// from `sdp` (as if it were the server's answer).
    pub fn unsignalled(socket: std::net::UdpSocket, sdp: &str) -> NewViewer {
        let now = Instant::now();
        let mut builder = Rtc::builder();
        if let Some(cert) = crate::signal::viewer_cert() {
            builder = builder.set_dtls_cert(cert);
        }
        NewViewer {
            rtc: builder.set_rtp_mode(true).build(now),
            socket,
            pts: PayloadTypes::from_sdp(sdp),
            full: false,
            started: now,
        }
    }
}

/// A shard's totals since it started, plus the samples taken since the last [`ShardReport::take`].
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub viewers: usize,
    pub connected: usize,
    pub receiving: usize,
    pub failed: usize,
    /// Viewers whose socket takes coalesced (GRO) buffers.
    pub gro: usize,
    /// Audio and video RTP packets.
    pub packets: u64,
    /// Other RTP packets (retransmissions, padding).
    pub other_packets: u64,
    /// Bytes of all RTP datagrams.
    pub bytes: u64,
    /// Buffers read from viewer sockets, and the datagrams in them (more datagrams than
    /// buffers: the server sent GSO buffers and they arrived whole).
    pub buffers: u64,
    pub datagrams: u64,
    /// str0m timeouts run (each a poll of one viewer's session).
    pub timeouts: u64,
    pub seq: SeqCounts,
    /// Forwarding latencies (µs) from full viewers.
    pub latency_us: Vec<u64>,
    /// Request to first RTP packet (µs), per viewer.
    pub first_packet_us: Vec<u64>,
    /// Request to first keyframe start (µs), per viewer.
    pub first_keyframe_us: Vec<u64>,
    /// When the shard made this report.
    pub at: Option<Instant>,
}

/// A running shard.
pub struct Shard {
    tx: Sender<NewViewer>,
    waker: Arc<Waker>,
    report: Arc<Mutex<ShardReport>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shard {
    /// Starts a shard whose viewer sockets take coalesced (GRO) buffers where the kernel can.
    pub fn start(index: usize) -> anyhow::Result<Shard> {
        Shard::start_with(index, true)
    }

    /// Starts a shard; `gro`: whether its viewer sockets ask for coalesced buffers.
    pub fn start_with(index: usize, gro: bool) -> anyhow::Result<Shard> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, rx) = channel();
        let report = Arc::new(Mutex::new(ShardReport::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let runner = Runner {
            poll,
            rx,
            viewers: Vec::new(),
            timers: BinaryHeap::new(),
            batch: crate::recv::viewer_batch(),
            report: report.clone(),
            stop: stop.clone(),
            totals: Totals::default(),
            gro,
        };
        let thread = std::thread::Builder::new()
            .name(format!("viewers-{index}"))
            .spawn(move || runner.run())?;
        Ok(Shard {
            tx,
            waker,
            report,
            stop,
            thread: Some(thread),
        })
    }

    pub fn add(&self, viewer: NewViewer) {
        if self.tx.send(viewer).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// The totals and the samples since the last call.
    pub fn take(&self) -> ShardReport {
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        let out = r.clone();
        r.latency_us.clear();
        r.first_packet_us.clear();
        r.first_keyframe_us.clear();
        out
    }

    /// Stops the thread; its last report (with every stream's window settled) stays readable.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.stop();
    }
}

struct ViewerState {
    /// Boxed: a str0m session is some 10 KiB, and the fields the hot path reads (below) should
    /// share a few cache lines rather than be spread over it.
    rtc: Box<Rtc>,
    socket: UdpSocket,
    local_addr: SocketAddr,
    pts: PayloadTypes,
    full: bool,
    started: Instant,
    connected: bool,
    dead: bool,
    first_packet: bool,
    first_keyframe: bool,
    streams: Vec<(u32, SeqTracker)>,
    /// Earliest entry this viewer has in the timer heap.
    scheduled: Option<Instant>,
}

#[derive(Default)]
struct Totals {
    packets: u64,
    other_packets: u64,
    bytes: u64,
    buffers: u64,
    datagrams: u64,
    timeouts: u64,
    latency_us: Vec<u64>,
    first_packet_us: Vec<u64>,
    first_keyframe_us: Vec<u64>,
    /// Counts of streams of viewers that are gone.
    retired: SeqCounts,
    /// Viewer sockets with `UDP_GRO` on.
    gro_sockets: usize,
}

struct Runner {
    poll: Poll,
    rx: Receiver<NewViewer>,
    viewers: Vec<Option<ViewerState>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    batch: RecvMmsg,
    report: Arc<Mutex<ShardReport>>,
    stop: Arc<AtomicBool>,
    totals: Totals,
    gro: bool,
}

impl Runner {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_report = Instant::now() + REPORT_INTERVAL;
        loop {
            let now = Instant::now();
            let wake = self
                .timers
                .peek()
                .map_or(now + MAX_SLEEP, |Reverse((t, _))| *t)
                .min(now + MAX_SLEEP)
                .min(next_report);
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(wake.saturating_duration_since(now)))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "viewer shard poll failed");
                break;
            }
            for event in events.iter() {
                if event.token() == WAKE {
                    self.accept_new();
                } else {
                    self.readable(event.token().0);
                }
            }
            self.run_timers();
            let now = Instant::now();
            if now >= next_report {
                self.publish(false);
                next_report = now + REPORT_INTERVAL;
            }
            if self.stop.load(Ordering::Relaxed) {
                self.publish(true);
                return;
            }
        }
    }

    fn accept_new(&mut self) {
        while let Ok(v) = self.rx.try_recv() {
            let Ok(local_addr) = v.socket.local_addr() else {
                continue;
            };
            if v.socket.set_nonblocking(true).is_err() {
                continue;
            }
            let gro = if self.gro {
                crate::recv::setup_socket(v.socket.as_raw_fd())
            } else {
                let _ = deadsfu_udp::sockopt::set_receive_buffer(
                    v.socket.as_raw_fd(),
                    crate::recv::VIEWER_RECEIVE_BUFFER,
                );
                false
            };
            let mut socket = UdpSocket::from_std(v.socket);
            let index = self.viewers.len();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut socket, Token(index), Interest::READABLE)
            {
                tracing::warn!(error = %e, "cannot register viewer socket");
                continue;
            }
            self.totals.gro_sockets += usize::from(gro);
            self.viewers.push(Some(ViewerState {
                rtc: Box::new(v.rtc),
                socket,
                local_addr,
                pts: v.pts,
                full: v.full,
                started: v.started,
                connected: false,
                dead: false,
                first_packet: false,
                first_keyframe: false,
                streams: Vec::with_capacity(2),
                scheduled: None,
            }));
            let now = Instant::now();
            self.feed(index, Input::Timeout(now), now);
        }
    }

    fn readable(&mut self, index: usize) {
        let Runner {
            viewers,
            batch,
            totals,
            timers,
            ..
        } = self;
        let Some(Some(v)) = viewers.get_mut(index) else {
            return;
        };
        let fd = v.socket.as_raw_fd();
        loop {
            let n = match batch.recv(fd) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "viewer recv");
                    return;
                }
            };
            let now = Instant::now();
            totals.buffers += n as u64;
            for i in 0..n {
                let Some(received) = batch.get(i) else {
                    break;
                };
                // A coalesced (GRO) buffer is cut back into its datagrams: each one is counted,
                // or handed to str0m, on its own.
                for d in received.segments() {
                    totals.datagrams += 1;
                    let kind = classify(d);
                    if kind == DatagramKind::Rtp {
                        if !v.full {
                            count_clear_rtp(v, d, now, totals);
                            continue;
                        }
                        totals.bytes += d.len() as u64;
                        let media = rtp_header(d).and_then(|h| v.pts.get(h.payload_type));
                        if matches!(media, Some(PtUse::Audio | PtUse::Video)) {
                            totals.packets += 1;
                        } else {
                            totals.other_packets += 1;
                        }
                    }
                    let (Some(from), Ok(contents)) = (received.from, DatagramRecv::try_from(d))
                    else {
                        continue;
                    };
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: from,
                            destination: v.local_addr,
                            contents,
                        },
                    );
                    if v.rtc.handle_input(input).is_err() {
                        v.dead = true;
                    }
                    drain(index, v, now, timers, totals);
                }
            }
            if n < crate::recv::BATCH {
                return;
            }
        }
    }

    fn feed(&mut self, index: usize, input: Input, now: Instant) {
        let Some(Some(v)) = self.viewers.get_mut(index) else {
            return;
        };
        if v.rtc.handle_input(input).is_err() {
            v.dead = true;
        }
        drain(index, v, now, &mut self.timers, &mut self.totals);
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, index))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(Some(v)) = self.viewers.get_mut(index) else {
                continue;
            };
            if v.scheduled != Some(at) {
                continue; // superseded
            }
            v.scheduled = None;
            self.totals.timeouts += 1;
            self.feed(index, Input::Timeout(now), now);
        }
    }

    fn publish(&mut self, last: bool) {
        let mut r = ShardReport {
            viewers: 0,
            packets: self.totals.packets,
            other_packets: self.totals.other_packets,
            bytes: self.totals.bytes,
            buffers: self.totals.buffers,
            datagrams: self.totals.datagrams,
            timeouts: self.totals.timeouts,
            seq: self.totals.retired,
            gro: self.totals.gro_sockets,
            at: Some(Instant::now()),
            ..ShardReport::default()
        };
        for v in self.viewers.iter_mut().flatten() {
            r.viewers += 1;
            r.connected += usize::from(v.connected && !v.dead);
            r.receiving += usize::from(v.first_packet && !v.dead);
            r.failed += usize::from(v.dead);
            for (_, t) in v.streams.iter_mut() {
                if last {
                    t.finish();
                }
                r.seq.add(&t.counts());
            }
        }
        let mut shared = self.report.lock().unwrap_or_else(|e| e.into_inner());
        let latency = std::mem::take(&mut self.totals.latency_us);
        let first_packet = std::mem::take(&mut self.totals.first_packet_us);
        let first_keyframe = std::mem::take(&mut self.totals.first_keyframe_us);
        r.latency_us = std::mem::take(&mut shared.latency_us);
        r.latency_us.extend(latency);
        r.first_packet_us = std::mem::take(&mut shared.first_packet_us);
        r.first_packet_us.extend(first_packet);
        r.first_keyframe_us = std::mem::take(&mut shared.first_keyframe_us);
        r.first_keyframe_us.extend(first_keyframe);
        *shared = r;
    }
}

/// Counts an RTP datagram of a cheap viewer from its clear header (the hot path: once per
/// packet per viewer, so no allocation, no hashing, no lock).
#[inline]
fn count_clear_rtp(v: &mut ViewerState, d: &[u8], now: Instant, totals: &mut Totals) {
    totals.bytes += d.len() as u64;
    // classify() saw a version-2 first byte and at least 12 bytes.
    let track = v.pts.get(d[1] & 0x7f);
    if !matches!(track, Some(PtUse::Audio | PtUse::Video)) {
        totals.other_packets += 1;
        return;
    }
    totals.packets += 1;
    let seq = u16::from_be_bytes([d[2], d[3]]);
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    // The STAP-A opening a keyframe is the only short video payload (SRTP adds a 10 or 16
    // byte tag, still far below the shortest other payload). Only looked for until found.
    let keyframe = !v.first_keyframe
        && track == Some(PtUse::Video)
        && rtp_header(d).is_some_and(|h| !h.padding && d.len() - h.header_len < MIN_MEDIA_PAYLOAD);
    record(v, ssrc, seq, keyframe, now, totals);
}

#[inline]
fn record(
    v: &mut ViewerState,
    ssrc: u32,
    seq: u16,
    keyframe: bool,
    now: Instant,
    totals: &mut Totals,
) {
    if !v.first_packet {
        v.first_packet = true;
        totals
            .first_packet_us
            .push(now.saturating_duration_since(v.started).as_micros() as u64);
    }
    if keyframe && !v.first_keyframe {
        v.first_keyframe = true;
        totals
            .first_keyframe_us
            .push(now.saturating_duration_since(v.started).as_micros() as u64);
    }
    match v.streams.iter_mut().find(|(s, _)| *s == ssrc) {
        Some((_, t)) => t.packet(seq),
        None => {
            let mut t = SeqTracker::default();
            t.packet(seq);
            v.streams.push((ssrc, t));
        }
    }
}

/// Drains a viewer's str0m outputs: sends datagrams, handles events, schedules its timeout.
fn drain(
    index: usize,
    v: &mut ViewerState,
    now: Instant,
    timers: &mut BinaryHeap<Reverse<(Instant, usize)>>,
    totals: &mut Totals,
) {
    loop {
        match v.rtc.poll_output() {
            Ok(Output::Timeout(at)) => {
                if !v.rtc.is_alive() {
                    v.dead = true;
                    return;
                }
                // A connected cheap viewer's str0m sees no RTP, yet asks to be polled every
                // 33 ms (its NACK timer): 30 polls per viewer per second, the load generator's
                // largest cost that grows with viewers rather than packets. What it still does
                // (ICE consent, RTCP reports) is good with a coarser clock.
                let floor = if v.connected && !v.full {
                    now + CHEAP_TIMER_FLOOR
                } else {
                    now
                };
                let at = at.max(floor);
                if v.scheduled.is_none_or(|s| at < s) {
                    v.scheduled = Some(at);
                    timers.push(Reverse((at, index)));
                }
                return;
            }
            Ok(Output::Transmit(t)) => {
                let _ = v.socket.send_to(&t.contents, t.destination);
            }
            Ok(Output::Event(e)) => match e {
                Event::Connected => v.connected = true,
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    v.dead = true;
                }
                Event::RtpPacket(p) => {
                    let track = v.pts.get(*p.header.payload_type);
                    let keyframe = track == Some(PtUse::Video) && h264_keyframe_start(&p.payload);
                    if let Some(sent) = payload_stamp(&p.payload, track == Some(PtUse::Video)) {
                        let arrived = stamp(p.timestamp);
                        totals.latency_us.push(arrived.saturating_sub(sent) / 1000);
                    }
                    let seq = *p.seq_no as u16;
                    record(v, *p.header.ssrc, seq, keyframe, p.timestamp, totals);
                }
                _ => {}
            },
            Err(_) => {
                v.dead = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    const SDP: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                       m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n";

    fn rtp(pt: u8, seq: u16, ssrc: u32, len: usize) -> Vec<u8> {
        let mut d = vec![0xabu8; len];
        d[0] = 0x80;
        d[1] = pt;
        d[2..4].copy_from_slice(&seq.to_be_bytes());
        d[4..8].copy_from_slice(&[0; 4]);
        d[8..12].copy_from_slice(&ssrc.to_be_bytes());
        d
    }

    fn wait_for(shard: &Shard, what: impl Fn(&ShardReport) -> bool) -> ShardReport {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = shard.take();
            if what(&r) || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A server sending with GSO: every segment of a coalesced buffer is one packet to the
    /// accounting, with its own SSRC and sequence number; RTCP among them is not counted.
    #[test]
    fn counts_each_segment_of_a_gso_buffer() {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Err(e) = deadsfu_udp::sockopt::enable_gro(probe.as_raw_fd()) {
            eprintln!("skipped: the kernel refuses UDP_GRO ({e})");
            return;
        }
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(to) = rx.local_addr().unwrap() else {
            unreachable!()
        };
        let mut shard = Shard::start(0).unwrap();
        shard.add(NewViewer::unsignalled(rx, SDP));
        let r = wait_for(&shard, |r| r.viewers == 1);
        assert_eq!(r.gro, 1, "the viewer socket takes GRO buffers");

        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sender = deadsfu_udp::SendMmsg::new(1);
        let mut send = |segments: &[Vec<u8>], size: u16, to: SocketAddrV4| {
            let buf: Vec<u8> = segments.concat();
            let message = deadsfu_udp::Outgoing {
                to: to.into(),
                data: &buf,
                segment_size: Some(size),
            };
            sender.send(tx.as_raw_fd(), [message])
        };
        // Video: four 1000-byte packets and a shorter last one (a frame's last fragment).
        let mut video: Vec<Vec<u8>> = (100..104).map(|s| rtp(96, s, 0xdead, 1000)).collect();
        video.push(rtp(96, 104, 0xdead, 400));
        if let Err(e) = send(&video, 1000, to) {
            eprintln!("skipped: the kernel refuses UDP_SEGMENT ({e})");
            return;
        }
        // Audio: three 150-byte packets of another SSRC.
        let audio: Vec<Vec<u8>> = (7..10).map(|s| rtp(111, s, 0xbeef, 150)).collect();
        send(&audio, 150, to).unwrap();
        // RTCP (a sender report, for str0m) between two video packets.
        let mut rtcp = rtp(200, 0, 0xdead, 1000);
        rtcp[1] = 200;
        let mixed = [rtp(96, 105, 0xdead, 1000), rtcp, rtp(96, 106, 0xdead, 1000)];
        send(&mixed, 1000, to).unwrap();

        let r = wait_for(&shard, |r| r.packets >= 10);
        assert_eq!(r.packets, 10, "{r:?}");
        assert_eq!(r.other_packets, 0, "{r:?}");
        assert_eq!(r.bytes, 4 * 1000 + 400 + 3 * 150 + 2 * 1000, "{r:?}");
        shard.stop();
        let r = shard.take();
        assert_eq!(r.seq.received, 10, "{r:?}");
        assert_eq!(r.seq.lost, 0, "{r:?}");
        assert_eq!(r.seq.duplicates, 0, "{r:?}");
        assert_eq!(r.seq.reordered, 0, "{r:?}");
        assert_eq!(r.receiving, 1, "{r:?}");
    }
}
