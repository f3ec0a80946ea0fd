//! The machine's physical limit for the benchmark: how many 1200-byte UDP datagrams per second
//! one core sends on loopback, with plain `sendto`, with `sendmmsg` (one call, many
//! datagrams, many destinations possible) and with GSO (`UDP_SEGMENT`: one call, one buffer
//! cut into datagrams, one destination), while a thread on another core reads them.
//!
//! The reader is either plain (`recvmmsg`, as before) or set up exactly like the load
//! generator's viewers ([`Receiver::Gro`]: `UDP_GRO` on, so a GSO buffer reaches it whole and
//! is not cut into datagrams inside the sender's system call). [`fanout`] sends to many
//! receiver sockets, each a viewer of the load generator's own receiving machinery, the way
//! an SFU fans out: `sendmmsg` of small GSO buffers (a few segments each) to distinct
//! destinations. At a fixed rate it simulates an SFU, to measure what the load generator's
//! receiving costs per datagram.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadsfu_udp::sockopt::{set_gso_segment, set_receive_buffer, set_send_buffer};
use deadsfu_udp::{Outgoing, SendMmsg};

/// Datagram size of the measurement (a typical video RTP packet with SRTP).
pub const DATAGRAM: usize = 1200;
/// Datagrams per `sendmmsg` call.
const MMSG_BATCH: usize = 64;
/// Segments per GSO buffer (the kernel allows 64 and 64 KiB in all).
const GSO_SEGMENTS: usize = 54;

/// How the sender hands datagrams to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendMethod {
    Sendto,
    Sendmmsg,
    Gso,
    /// `sendmmsg` of several GSO buffers.
    SendmmsgGso,
}

impl SendMethod {
    pub const ALL: [SendMethod; 4] = [
        SendMethod::Sendto,
        SendMethod::Sendmmsg,
        SendMethod::Gso,
        SendMethod::SendmmsgGso,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SendMethod::Sendto => "sendto",
            SendMethod::Sendmmsg => "sendmmsg",
            SendMethod::Gso => "gso",
            SendMethod::SendmmsgGso => "sendmmsg_gso",
        }
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How the reader's socket is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Receiver {
    /// `recvmmsg` on a plain socket with an 8 MiB buffer: GSO buffers are cut into datagrams
    /// on the way (on loopback, in the sender's system call).
    Plain,
    /// Set up like a load-generator viewer ([`crate::recv::setup_socket`]): `UDP_GRO` on,
    /// a GSO buffer arrives whole and the reader cuts it.
    Gro,
}

impl Receiver {
    pub const ALL: [Receiver; 2] = [Receiver::Plain, Receiver::Gro];
}

/// What one measurement found.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub method: SendMethod,
    /// Datagrams the sender handed to the kernel per second.
    pub sent_pps: f64,
    /// Datagrams the reader got per second.
    pub received_pps: f64,
}

/// Sends for `duration` with `method` from `send_cpu` while a plain reader on `recv_cpu`
/// drains.
pub fn measure(
    method: SendMethod,
    duration: Duration,
    send_cpu: Option<usize>,
    recv_cpu: Option<usize>,
) -> io::Result<Rate> {
    measure_with(method, Receiver::Plain, duration, send_cpu, recv_cpu)
}

/// Sends for `duration` with `method` from `send_cpu` while a `receiver` on `recv_cpu`
/// drains (counting every datagram of a coalesced buffer).
pub fn measure_with(
    method: SendMethod,
    receiver: Receiver,
    duration: Duration,
    send_cpu: Option<usize>,
    recv_cpu: Option<usize>,
) -> io::Result<Rate> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    match receiver {
        Receiver::Plain => set_receive_buffer(rx.as_raw_fd(), 8 << 20)?,
        Receiver::Gro => {
            if !crate::recv::setup_socket(rx.as_raw_fd()) {
                return Err(io::Error::other("the kernel refuses UDP_GRO"));
            }
        }
    }
    let to = rx.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let stop = stop.clone();
        let received = received.clone();
        std::thread::spawn(move || {
            if let Some(cpu) = recv_cpu {
                let _ = pin_to_cpu(cpu);
            }
            let mut batch = crate::recv::viewer_batch();
            let fd = rx.as_raw_fd();
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                match batch.recv(fd) {
                    Ok(0) => {
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut poll, 1, 50) };
                    }
                    Ok(n) => {
                        let datagrams: usize = (0..n)
                            .map(|i| batch.get(i).map_or(0, |r| r.segments().count()))
                            .sum();
                        received.fetch_add(datagrams as u64, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
        })
    };
    let sender = std::thread::spawn(move || -> io::Result<(u64, Duration)> {
        if let Some(cpu) = send_cpu {
            pin_to_cpu(cpu)?;
        }
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        set_send_buffer(tx.as_raw_fd(), 8 << 20)?;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut send = Sender::new(&tx, to, method)?;
        while start.elapsed() < duration {
            for _ in 0..16 {
                sent += send.once()?;
            }
        }
        Ok((sent, start.elapsed()))
    });
    let result = sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))?;
    std::thread::sleep(Duration::from_millis(200)); // let the reader drain what is queued
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let (sent, elapsed) = result?;
    let secs = elapsed.as_secs_f64();
    Ok(Rate {
        method,
        sent_pps: sent as f64 / secs,
        received_pps: received.load(Ordering::Relaxed) as f64 / secs,
    })
}

struct Sender<'a> {
    socket: &'a UdpSocket,
    to: SocketAddr,
    method: SendMethod,
    buf: Vec<u8>,
    batch: SendMmsg,
}

impl<'a> Sender<'a> {
    fn new(socket: &'a UdpSocket, to: SocketAddr, method: SendMethod) -> io::Result<Self> {
        if !to.is_ipv4() {
            return Err(io::Error::other("IPv4 only"));
        }
        if method == SendMethod::Gso {
            // Plain `send_to` calls: the segment size is the socket's.
            set_gso_segment(socket.as_raw_fd(), DATAGRAM as u16)?;
        }
        let len = match method {
            SendMethod::Sendto | SendMethod::Sendmmsg => DATAGRAM,
            SendMethod::Gso | SendMethod::SendmmsgGso => DATAGRAM * GSO_SEGMENTS,
        };
        Ok(Sender {
            socket,
            to,
            method,
            buf: vec![0x80; len],
            batch: SendMmsg::new(MMSG_BATCH),
        })
    }

    /// One system call; returns the datagrams it sent.
    fn once(&mut self) -> io::Result<u64> {
        match self.method {
            SendMethod::Sendto => match self.socket.send_to(&self.buf, self.to) {
                Ok(_) => Ok(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            },
            SendMethod::Gso => match self.socket.send_to(&self.buf, self.to) {
                Ok(_) => Ok(GSO_SEGMENTS as u64),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            },
            SendMethod::Sendmmsg => self.mmsg(None, MMSG_BATCH, 1),
            SendMethod::SendmmsgGso => self.mmsg(Some(DATAGRAM as u16), 8, GSO_SEGMENTS as u64),
        }
    }

    fn mmsg(&mut self, segment_size: Option<u16>, batch: usize, per_msg: u64) -> io::Result<u64> {
        let message = Outgoing {
            to: self.to,
            data: &self.buf,
            segment_size,
        };
        match self
            .batch
            .send(self.socket.as_raw_fd(), std::iter::repeat_n(message, batch))
        {
            Ok(n) => Ok(n as u64 * per_msg),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// A fan-out: one sender, many receivers, each a viewer of the load generator's receiving
/// machinery (one viewer thread, epoll, `recvmmsg`, `UDP_GRO`, header counting).
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Receiver sockets (viewers).
    pub receivers: usize,
    /// Datagrams per GSO buffer, all `segment_len` bytes but the last (two thirds of that, as
    /// a frame's last fragment is shorter); 1 sends single datagrams (`sendmmsg`, no GSO).
    pub segments: usize,
    pub segment_len: usize,
    /// Datagrams per second; `None`: as fast as the sender can.
    pub rate: Option<f64>,
    /// Sending before the measuring window opens.
    pub warmup: Duration,
    pub duration: Duration,
    pub send_cpu: Option<usize>,
    pub recv_cpu: Option<usize>,
    /// Viewer sockets take coalesced buffers (`UDP_GRO`), as the load generator's do.
    pub gro: bool,
    /// Seal every datagram with AES-128-GCM as SRTP does (the least work any SFU's egress
    /// must do per datagram): the physical limit an SFU's fan-out is compared with.
    pub seal: bool,
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout {
            receivers: 1000,
            segments: 4,
            segment_len: DATAGRAM,
            rate: None,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(3),
            send_cpu: None,
            recv_cpu: None,
            gro: true,
            seal: false,
        }
    }
}

/// What a fan-out measured, over its window.
#[derive(Debug, Clone, Copy, Default)]
pub struct FanoutRate {
    /// Datagrams sent per second.
    pub sent_pps: f64,
    /// Datagrams the viewers counted per second.
    pub received_pps: f64,
    /// Sequence-number loss the viewers saw, percent.
    pub loss_pct: f64,
    /// CPU of the viewer thread, percent of one core.
    pub receiver_cpu_pct: f64,
    /// CPU of the sender thread, percent of one core.
    pub sender_cpu_pct: f64,
    /// Viewer-thread CPU per received datagram, in nanoseconds.
    pub receiver_ns_per_datagram: f64,
    /// Receivers whose socket took `UDP_GRO`.
    pub gro_receivers: usize,
}

/// Payload types of the simulated stream: H264 on 96.
const FANOUT_SDP: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n";
const SENDER_THREAD: &str = "udprate-send";
const VIEWER_THREAD: &str = "viewers-0";

/// Sends SRTP-shaped datagrams (an RTP header with a per-receiver SSRC and consecutive
/// sequence numbers, random bytes after it) to `f.receivers` viewer sockets round-robin, each
/// turn a GSO buffer of `f.segments` datagrams per receiver, 64 receivers per `sendmmsg`.
pub fn fanout(f: &Fanout) -> io::Result<FanoutRate> {
    // The viewer thread inherits the CPU of the thread that starts it.
    let (recv_cpu, gro) = (f.recv_cpu, f.gro);
    let mut shard = std::thread::spawn(move || {
        if let Some(cpu) = recv_cpu {
            pin_to_cpu(cpu)?;
        }
        crate::viewer::Shard::start_with(0, gro).map_err(io::Error::other)
    })
    .join()
    .map_err(|_| io::Error::other("viewer thread start panicked"))??;
    let mut to = Vec::with_capacity(f.receivers);
    for _ in 0..f.receivers {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        let SocketAddr::V4(a) = s.local_addr()? else {
            return Err(io::Error::other("IPv4 only"));
        };
        to.push(a);
        shard.add(crate::viewer::NewViewer::unsignalled(s, FANOUT_SDP));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let gro_receivers = loop {
        let r = shard.take();
        if r.viewers >= f.receivers {
            break r.gro;
        }
        if Instant::now() > deadline {
            return Err(io::Error::other("viewers did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent, f) = (stop.clone(), sent.clone(), f.clone());
        std::thread::Builder::new()
            .name(SENDER_THREAD.into())
            .spawn(move || fanout_send(&f, &to, &stop, &sent))?
    };
    std::thread::sleep(f.warmup);
    let read = |shard: &crate::viewer::Shard| {
        // The shard publishes its totals every 200 ms: wait for a fresh report.
        std::thread::sleep(Duration::from_millis(210));
        (
            Instant::now(),
            shard.take(),
            sent.load(Ordering::Relaxed),
            deadsfu_procstat::threads_cpu_secs(VIEWER_THREAD).unwrap_or(0.0),
            deadsfu_procstat::threads_cpu_secs(SENDER_THREAD).unwrap_or(0.0),
        )
    };
    let a = read(&shard);
    std::thread::sleep(f.duration.saturating_sub(Duration::from_millis(210)));
    let b = read(&shard);
    stop.store(true, Ordering::Relaxed);
    let send_result = sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))?;
    shard.stop();
    send_result?;
    let secs = b.0.duration_since(a.0).as_secs_f64().max(1e-3);
    // The viewers' counts are as of their reports, a little before they were read.
    let report_secs = match (a.1.at, b.1.at) {
        (Some(x), Some(y)) => y.duration_since(x).as_secs_f64().max(1e-3),
        _ => secs,
    };
    let received = b.1.packets.saturating_sub(a.1.packets);
    let received_pps = received as f64 / report_secs;
    let lost = b.1.seq.lost.saturating_sub(a.1.seq.lost);
    let got = b.1.seq.received.saturating_sub(a.1.seq.received);
    let recv_cpu = b.3 - a.3;
    Ok(FanoutRate {
        sent_pps: b.2.saturating_sub(a.2) as f64 / secs,
        received_pps,
        loss_pct: if lost + got == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / (lost + got) as f64
        },
        receiver_cpu_pct: recv_cpu * 100.0 / secs,
        sender_cpu_pct: (b.4 - a.4) * 100.0 / secs,
        receiver_ns_per_datagram: if received == 0 {
            0.0
        } else {
            recv_cpu * 1e9 / (received_pps * secs)
        },
        gro_receivers,
    })
}

/// Messages per `sendmmsg` of a fan-out (each to another receiver).
const FANOUT_BATCH: usize = 64;

fn fanout_send(
    f: &Fanout,
    to: &[SocketAddrV4],
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> io::Result<()> {
    if let Some(cpu) = f.send_cpu {
        pin_to_cpu(cpu)?;
    }
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    set_send_buffer(tx.as_raw_fd(), 8 << 20)?;
    let segments = f.segments.clamp(1, 64);
    let seg_len = f.segment_len.clamp(16, DATAGRAM.max(f.segment_len));
    let last_len = if segments == 1 {
        seg_len
    } else {
        seg_len * 2 / 3
    };
    let msg_len = seg_len * (segments - 1) + last_len;
    if msg_len > 65_000 {
        return Err(io::Error::other("a GSO buffer holds at most 64 KiB"));
    }
    let mut seqs = vec![0u16; to.len()];
    // Random bytes after the headers, as SRTP's ciphertext would be.
    let mut bufs = vec![0u8; FANOUT_BATCH * msg_len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in bufs.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let segment_size = (segments > 1).then_some(seg_len as u16);
    let sealing = f.seal.then(|| {
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[0x42; 16])
            .expect("a 16-byte key");
        ring::aead::LessSafeKey::new(key)
    });
    let mut sender = SendMmsg::new(FANOUT_BATCH);
    let start = Instant::now();
    let mut total = 0u64;
    let mut next = 0usize; // the receiver of the first message of the next call
    while !stop.load(Ordering::Relaxed) {
        if let Some(rate) = f.rate {
            let due = start + Duration::from_secs_f64(total as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let batch = FANOUT_BATCH.min(to.len());
        for k in 0..batch {
            let r = (next + k) % to.len();
            let buf = &mut bufs[k * msg_len..(k + 1) * msg_len];
            let ssrc = 0x1000_0000u32 + r as u32;
            for (j, seg) in buf.chunks_mut(seg_len).enumerate() {
                let seq = seqs[r].wrapping_add(j as u16);
                seg[0] = 0x80;
                seg[1] = 96;
                seg[2..4].copy_from_slice(&seq.to_be_bytes());
                seg[4..8].copy_from_slice(&(total as u32).to_be_bytes());
                seg[8..12].copy_from_slice(&ssrc.to_be_bytes());
                if let Some(key) = &sealing {
                    seal_srtp_like(key, seg, ssrc, seq);
                }
            }
        }
        let messages = bufs
            .chunks(msg_len)
            .take(batch)
            .enumerate()
            .map(|(k, data)| Outgoing {
                to: SocketAddr::V4(to[(next + k) % to.len()]),
                data,
                segment_size,
            });
        let n = match sender.send(tx.as_raw_fd(), messages) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        for k in 0..n {
            let r = (next + k) % to.len();
            seqs[r] = seqs[r].wrapping_add(segments as u16);
        }
        next = (next + n) % to.len();
        total += n as u64 * segments as u64;
        sent.store(total, Ordering::Relaxed);
    }
    Ok(())
}

/// Seals an RTP datagram in place as SRTP with AES-128-GCM does (RFC 7714): the header is the
/// associated data, the payload is encrypted, the last 16 bytes take the tag.
fn seal_srtp_like(key: &ring::aead::LessSafeKey, datagram: &mut [u8], ssrc: u32, seq: u16) {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    let nonce = ring::aead::Nonce::assume_unique_for_key(iv);
    let (header, rest) = datagram.split_at_mut(12);
    let body = rest.len().saturating_sub(16);
    let (payload, tag_space) = rest.split_at_mut(body);
    if let Ok(tag) =
        key.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(&header[..]), payload)
    {
        tag_space.copy_from_slice(tag.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_sends_and_is_received() {
        for method in SendMethod::ALL {
            let rate = measure(method, Duration::from_millis(100), None, None).unwrap();
            assert!(rate.sent_pps > 0.0, "{method:?}");
            assert!(rate.received_pps > 0.0, "{method:?}");
        }
    }

    #[test]
    fn a_gro_reader_counts_every_segment() {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        if deadsfu_udp::sockopt::enable_gro(probe.as_raw_fd()).is_err() {
            eprintln!("skipped: the kernel refuses UDP_GRO");
            return;
        }
        for method in SendMethod::ALL {
            let rate = measure_with(
                method,
                Receiver::Gro,
                Duration::from_millis(100),
                None,
                None,
            )
            .unwrap();
            // Every method reaches a GRO reader. (How much arrives is a benchmark's
            // business, not a test's: on a busy machine the reader falls behind. That each
            // segment of a coalesced buffer is counted is tested exactly in `viewer.rs`.)
            assert!(rate.sent_pps > 0.0, "{method:?}");
            assert!(rate.received_pps > 0.0, "{method:?} {rate:?}");
        }
    }

    #[test]
    fn a_paced_fanout_reaches_every_viewer_without_loss() {
        let f = Fanout {
            receivers: 20,
            segments: 4,
            rate: Some(20_000.0),
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(600),
            ..Fanout::default()
        };
        let r = fanout(&f).unwrap();
        assert!(r.sent_pps > 10_000.0, "{r:?}");
        assert!(
            (r.received_pps - r.sent_pps).abs() < r.sent_pps * 0.2,
            "{r:?}"
        );
        assert_eq!(r.loss_pct, 0.0, "{r:?}");
        assert!(r.receiver_ns_per_datagram > 0.0, "{r:?}");
    }
}
