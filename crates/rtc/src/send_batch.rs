//! Outgoing datagrams gathered during one turn of a worker and handed to the kernel with as
//! few system calls as possible.
//!
//! Datagrams are written (or encrypted) straight into one preallocated buffer. Consecutive
//! datagrams to the same peer that have the same size (the last may be shorter) become one
//! message with UDP generic segmentation offload (`UDP_SEGMENT`), so the packets of a frame
//! travel through the kernel as one; the messages go out with `sendmmsg(2)`. A packet fanned out
//! to 300 viewers used to be 300 `sendto` calls, the largest single cost of the worker.

use std::net::{SocketAddr, UdpSocket};

use crate::metrics::Counters;

/// Messages per `sendmmsg` call.
pub(crate) const MAX_BATCH: usize = 64;
/// Bytes of datagrams held before they are sent.
const BUFFER_BYTES: usize = 512 * 1024;
/// Largest datagram a caller may write.
pub(crate) const MAX_DATAGRAM: usize = 2048;
/// Segments per GSO message (the kernel takes 64 at most on older versions).
const MAX_SEGMENTS: u16 = 32;
/// Bytes per GSO message (below the 65,507-byte UDP limit, with room to spare).
const MAX_GSO_BYTES: usize = 60_000;

/// One message: a datagram, or a run of equal-size datagrams to one peer.
#[derive(Debug, Clone, Copy)]
struct Message {
    to: SocketAddr,
    start: usize,
    len: usize,
    /// Size of every segment but the last.
    segment: usize,
    segments: u16,
    /// A shorter last segment closes the message.
    open: bool,
}

/// Datagrams waiting to be sent, in order.
pub(crate) struct SendBatch {
    socket: UdpSocket,
    buf: Box<[u8]>,
    used: usize,
    messages: Vec<Message>,
    /// Whether the kernel takes `UDP_SEGMENT` on this socket.
    gso: bool,
}

impl SendBatch {
    /// `socket` must be non-blocking: a full socket buffer drops (and counts) datagrams rather
    /// than stalling the worker.
    pub fn new(socket: UdpSocket) -> Self {
        let gso = gso_supported(&socket);
        SendBatch {
            socket,
            buf: vec![0u8; BUFFER_BYTES].into_boxed_slice(),
            used: 0,
            messages: Vec::with_capacity(MAX_BATCH),
            gso,
        }
    }

    /// Queues a copy of `data`.
    pub fn push(&mut self, to: SocketAddr, data: &[u8], counters: &Counters) {
        if data.len() > MAX_DATAGRAM {
            tracing::debug!(len = data.len(), "oversized datagram not sent");
            return;
        }
        self.write(to, data.len(), counters, |out| {
            out[..data.len()].copy_from_slice(data);
            data.len()
        });
    }

    /// Queues the datagram `fill` writes into the buffer it is given (at least `max_len`
    /// bytes); `fill` returns the datagram's length.
    pub fn write(
        &mut self,
        to: SocketAddr,
        max_len: usize,
        counters: &Counters,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) {
        debug_assert!(max_len <= MAX_DATAGRAM + 64);
        if self.used + max_len > self.buf.len() || self.messages.len() >= MAX_BATCH {
            self.flush(counters);
        }
        let start = self.used;
        let len = fill(&mut self.buf[start..start + max_len]);
        debug_assert!(len <= max_len);
        if len == 0 {
            return;
        }
        self.used += len;
        if self.gso
            && let Some(last) = self.messages.last_mut()
            && last.open
            && last.to == to
            && last.start + last.len == start
            && last.segments < MAX_SEGMENTS
            && last.len + len <= MAX_GSO_BYTES
            && len <= last.segment
        {
            last.len += len;
            last.segments += 1;
            last.open = len == last.segment;
            return;
        }
        self.messages.push(Message {
            to,
            start,
            len,
            segment: len,
            segments: 1,
            open: true,
        });
    }

    /// Destinations and sizes of the datagrams queued, in order (for tests).
    #[cfg(test)]
    pub fn queued(&self) -> Vec<(SocketAddr, usize)> {
        self.messages
            .iter()
            .flat_map(|m| {
                let last = m.len - m.segment * (m.segments as usize - 1);
                (0..m.segments as usize).map(move |i| {
                    let len = if i + 1 == m.segments as usize {
                        last
                    } else {
                        m.segment
                    };
                    (m.to, len)
                })
            })
            .collect()
    }

    /// Sends everything queued.
    pub fn flush(&mut self, counters: &Counters) {
        if self.messages.is_empty() {
            self.used = 0;
            return;
        }
        let (sent, bytes, dropped) = self.send_queued();
        Counters::add(&counters.packets_out, sent);
        Counters::add(&counters.bytes_out, bytes);
        if dropped > 0 {
            Counters::add(&counters.send_drops, dropped);
        }
        self.messages.clear();
        self.used = 0;
    }

    /// Sends the queue; returns datagrams sent, their bytes, and datagrams dropped.
    #[cfg(target_os = "linux")]
    fn send_queued(&mut self) -> (u64, u64, u64) {
        use std::os::fd::AsRawFd;

        let fd = self.socket.as_raw_fd();
        let mut sent = 0u64;
        let mut bytes = 0u64;
        let mut dropped = 0u64;
        let mut next = 0;
        while next < self.messages.len() {
            let n = (self.messages.len() - next).min(MAX_BATCH);
            let batch = &self.messages[next..next + n];
            // SAFETY: all-zero is a valid value for these plain C structs; every pointer set
            // below points into `self.buf`, `names` and `controls`, which outlive the call.
            let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
            let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
            let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { std::mem::zeroed() };
            let mut controls = [[0u64; 4]; MAX_BATCH];
            for (i, m) in batch.iter().enumerate() {
                let name_len = write_sockaddr(m.to, &mut names[i]);
                iovecs[i] = libc::iovec {
                    iov_base: self.buf[m.start..].as_ptr() as *mut libc::c_void,
                    iov_len: m.len,
                };
                let hdr = &mut headers[i].msg_hdr;
                hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
                hdr.msg_namelen = name_len;
                hdr.msg_iov = &mut iovecs[i];
                hdr.msg_iovlen = 1;
                if m.segments > 1 {
                    // SAFETY: `controls[i]` is 32 bytes, 8-aligned: room for one cmsghdr
                    // carrying a u16 (CMSG_SPACE(2) is 24 on 64-bit Linux).
                    unsafe {
                        hdr.msg_control = controls[i].as_mut_ptr() as *mut libc::c_void;
                        hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                        let cmsg = libc::CMSG_FIRSTHDR(hdr);
                        (*cmsg).cmsg_level = libc::SOL_UDP;
                        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                        std::ptr::write_unaligned(
                            libc::CMSG_DATA(cmsg) as *mut u16,
                            m.segment as u16,
                        );
                    }
                }
            }
            // SAFETY: `headers[..n]` are initialised as above.
            let r = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), n as libc::c_uint, 0) };
            if r > 0 {
                for m in &batch[..r as usize] {
                    sent += m.segments as u64;
                    bytes += m.len as u64;
                }
                next += r as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => continue,
                // The socket buffer is full: what is left of this turn's output is dropped.
                std::io::ErrorKind::WouldBlock => {
                    dropped += self.messages[next..]
                        .iter()
                        .map(|m| m.segments as u64)
                        .sum::<u64>();
                    break;
                }
                _ => {
                    let m = self.messages[next];
                    if m.segments > 1
                        && matches!(
                            err.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                        )
                    {
                        // No segmentation offload here after all: send this one datagram by
                        // datagram, and no more GSO from this socket.
                        tracing::info!(error = %err, "UDP GSO refused; sending datagrams singly");
                        self.gso = false;
                        let (s, b) = self.send_singly(m);
                        sent += s;
                        bytes += b;
                        dropped += m.segments as u64 - s;
                    } else {
                        // This message cannot be sent (say, an unreachable destination): skip
                        // it, keep the others.
                        tracing::debug!(to = %m.to, error = %err, "send failed");
                        dropped += m.segments as u64;
                    }
                    next += 1;
                }
            }
        }
        (sent, bytes, dropped)
    }

    /// Sends a GSO message's segments one `sendto` each.
    #[cfg(target_os = "linux")]
    fn send_singly(&self, m: Message) -> (u64, u64) {
        let mut sent = 0;
        let mut bytes = 0;
        let data = &self.buf[m.start..m.start + m.len];
        for seg in data.chunks(m.segment) {
            if self.socket.send_to(seg, m.to).is_ok() {
                sent += 1;
                bytes += seg.len() as u64;
            }
        }
        (sent, bytes)
    }

    #[cfg(not(target_os = "linux"))]
    fn send_queued(&mut self) -> (u64, u64, u64) {
        let mut sent = 0;
        let mut bytes = 0u64;
        let mut dropped = 0;
        for m in &self.messages {
            let data = &self.buf[m.start..m.start + m.len];
            for seg in data.chunks(m.segment) {
                match self.socket.send_to(seg, m.to) {
                    Ok(n) => {
                        sent += 1;
                        bytes += n as u64;
                    }
                    Err(_) => dropped += 1,
                }
            }
        }
        (sent, bytes, dropped)
    }
}

/// Writes `addr` as a C socket address; returns its length.
#[cfg(target_os = "linux")]
fn write_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Whether the kernel knows `UDP_SEGMENT` (Linux 4.18 and later).
#[cfg(target_os = "linux")]
fn gso_supported(socket: &UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &mut value as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    r == 0 && std::env::var_os("DEADSFU_NO_GSO").is_none()
}

#[cfg(not(target_os = "linux"))]
fn gso_supported(_: &UdpSocket) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(counters: &Counters) -> crate::metrics::MetricsSnapshot {
        let mut s = crate::metrics::MetricsSnapshot::default();
        s.add(counters);
        s
    }

    #[test]
    fn sends_batches_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        let counters = Counters::default();
        let mut batch = SendBatch::new(tx);
        // More than one system call's worth, the last one partial.
        for i in 0..(MAX_BATCH + 10) as u16 {
            batch.push(to, &i.to_be_bytes(), &counters);
        }
        batch.flush(&counters);
        let mut buf = [0u8; 16];
        for i in 0..(MAX_BATCH + 10) as u16 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes());
        }
        let snap = snapshot(&counters);
        assert_eq!(snap.packets_out, (MAX_BATCH + 10) as u64);
        assert_eq!(snap.bytes_out, 2 * (MAX_BATCH + 10) as u64);
    }

    /// Equal-size datagrams to one peer travel as one GSO message; the receiver (without
    /// UDP_GRO) still sees each datagram, in order and intact, and so do two interleaved peers.
    #[test]
    fn segments_runs_to_one_peer_and_keeps_datagrams_whole() {
        let rx_a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx_b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for rx in [&rx_a, &rx_b] {
            rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let counters = Counters::default();
        let mut batch = SendBatch::new(tx);
        let gso = batch.gso;
        let datagram = |peer: u8, i: u8, len: usize| -> Vec<u8> {
            let mut d = vec![i; len];
            d[0] = peer;
            d
        };
        // Peer a: four of 1000 bytes and a short last one; then peer b: three of 500; then
        // a again (a new message, since b came between).
        let plan: Vec<(u8, usize)> = vec![(0, 1000); 4]
            .into_iter()
            .chain([(0, 300)])
            .chain(vec![(1, 500); 3])
            .chain([(0, 1000), (0, 1200)])
            .collect();
        let addr = [rx_a.local_addr().unwrap(), rx_b.local_addr().unwrap()];
        for (i, (peer, len)) in plan.iter().enumerate() {
            let d = datagram(*peer, i as u8, *len);
            batch.push(addr[*peer as usize], &d, &counters);
        }
        if gso {
            // a×5 (closed by the short one), b×3, a×1, a×1 (larger, so a new message).
            let segments: Vec<u16> = batch.messages.iter().map(|m| m.segments).collect();
            assert_eq!(segments, vec![5, 3, 1, 1]);
        }
        batch.flush(&counters);
        let mut buf = [0u8; 2048];
        for (i, (peer, len)) in plan.iter().enumerate() {
            let rx = if *peer == 0 { &rx_a } else { &rx_b };
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(
                &buf[..n],
                &datagram(*peer, i as u8, *len)[..],
                "datagram {i}"
            );
        }
        let snap = snapshot(&counters);
        assert_eq!(snap.packets_out, plan.len() as u64);
        assert_eq!(
            snap.bytes_out,
            plan.iter().map(|(_, l)| *l as u64).sum::<u64>()
        );
    }
}
