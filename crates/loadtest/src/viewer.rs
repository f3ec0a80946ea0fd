//! Viewers, many per thread. A shard is one thread with one epoll set (mio) over its viewers'
//! UDP sockets and one timer heap for their str0m timeouts.
//!
//! A cheap viewer hands str0m only STUN, DTLS and RTCP, so ICE consent, DTLS and reports keep
//! working; its RTP is counted from the clear header (SSRC, sequence number, length) and never
//! decrypted. A full viewer hands str0m everything and reads the send time out of decrypted
//! payloads, for the latency figures.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use crate::accounting::{SeqCounts, SeqTracker};
use crate::recv::RecvBatch;
use crate::stream::{MIN_MEDIA_PAYLOAD, h264_keyframe_start, payload_stamp, stamp};
use crate::wire::{DatagramKind, PayloadTypes, PtUse, classify, rtp_header};

const WAKE: Token = Token(usize::MAX);
/// How often a shard publishes its totals.
const REPORT_INTERVAL: Duration = Duration::from_millis(200);
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

/// A shard's totals since it started, plus the samples taken since the last [`ShardReport::take`].
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub viewers: usize,
    pub connected: usize,
    pub receiving: usize,
    pub failed: usize,
    /// Audio and video RTP packets.
    pub packets: u64,
    /// Other RTP packets (retransmissions, padding).
    pub other_packets: u64,
    /// Bytes of all RTP datagrams.
    pub bytes: u64,
    pub seq: SeqCounts,
    /// Forwarding latencies (µs) from full viewers.
    pub latency_us: Vec<u64>,
    /// Request to first RTP packet (µs), per viewer.
    pub first_packet_us: Vec<u64>,
    /// Request to first keyframe start (µs), per viewer.
    pub first_keyframe_us: Vec<u64>,
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
    pub fn start(index: usize) -> anyhow::Result<Shard> {
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
            batch: RecvBatch::default(),
            report: report.clone(),
            stop: stop.clone(),
            totals: Totals::default(),
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
    rtc: Rtc,
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
    latency_us: Vec<u64>,
    first_packet_us: Vec<u64>,
    first_keyframe_us: Vec<u64>,
    /// Counts of streams of viewers that are gone.
    retired: SeqCounts,
}

struct Runner {
    poll: Poll,
    rx: Receiver<NewViewer>,
    viewers: Vec<Option<ViewerState>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    batch: RecvBatch,
    report: Arc<Mutex<ShardReport>>,
    stop: Arc<AtomicBool>,
    totals: Totals,
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
            grow_receive_buffer(&v.socket);
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
            self.viewers.push(Some(ViewerState {
                rtc: v.rtc,
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
        let Some(Some(v)) = self.viewers.get_mut(index) else {
            return;
        };
        let fd = v.socket.as_raw_fd();
        loop {
            let n = match self.batch.recv(fd) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "viewer recv");
                    return;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                let Some((d, from)) = self.batch.get(i) else {
                    break;
                };
                let Some(Some(v)) = self.viewers.get_mut(index) else {
                    return;
                };
                let kind = classify(d);
                if kind == DatagramKind::Rtp {
                    self.totals.bytes += d.len() as u64;
                    let media = rtp_header(d).and_then(|h| v.pts.get(h.payload_type));
                    if matches!(media, Some(PtUse::Audio | PtUse::Video)) {
                        self.totals.packets += 1;
                    } else {
                        self.totals.other_packets += 1;
                    }
                    if !v.full {
                        count_clear_rtp(v, d, now, &mut self.totals);
                        continue;
                    }
                }
                let (Some(from), Ok(contents)) = (from, DatagramRecv::try_from(d)) else {
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
                drain(index, v, now, &mut self.timers, &mut self.totals);
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
            self.feed(index, Input::Timeout(now), now);
        }
    }

    fn publish(&mut self, last: bool) {
        let mut r = ShardReport {
            viewers: 0,
            packets: self.totals.packets,
            other_packets: self.totals.other_packets,
            bytes: self.totals.bytes,
            seq: self.totals.retired,
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

/// A new viewer gets the room's GOP at once (hundreds of packets): give its socket room for
/// that, as browsers do, so the burst is not lost in the load generator's own kernel queue.
fn grow_receive_buffer(socket: &std::net::UdpSocket) {
    let bytes: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and an int option value.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// Counts an RTP datagram of a cheap viewer from its clear header.
fn count_clear_rtp(v: &mut ViewerState, d: &[u8], now: Instant, totals: &mut Totals) {
    let Some(h) = rtp_header(d) else {
        return;
    };
    let track = v.pts.get(h.payload_type);
    if !matches!(track, Some(PtUse::Audio | PtUse::Video)) {
        return;
    }
    // The STAP-A opening a keyframe is the only short video payload (SRTP adds a 10 or 16
    // byte tag, still far below the shortest other payload).
    let keyframe =
        track == Some(PtUse::Video) && !h.padding && d.len() - h.header_len < MIN_MEDIA_PAYLOAD;
    record(v, h.ssrc, h.sequence, keyframe, now, totals);
}

fn record(
    v: &mut ViewerState,
    ssrc: u32,
    seq: u16,
    keyframe: bool,
    now: Instant,
    totals: &mut Totals,
) {
    let since = now.saturating_duration_since(v.started).as_micros() as u64;
    if !v.first_packet {
        v.first_packet = true;
        totals.first_packet_us.push(since);
    }
    if keyframe && !v.first_keyframe {
        v.first_keyframe = true;
        totals.first_keyframe_us.push(since);
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
                let at = at.max(now);
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
