//! The worker's socket as a [`DatagramSink`]: a batch goes out with `sendmmsg(2)`, runs to one
//! peer as one `UDP_SEGMENT` message where the kernel offers it.

use std::net::{SocketAddr, UdpSocket};

use crate::send_batch::{DatagramSink, MAX_BATCH, Message, SendReport};

/// Longest a flush waits for send-buffer room.
const SEND_ROOM_WAIT_MS: libc::c_int = 1;

pub(crate) struct UdpSink {
    socket: UdpSocket,
    /// Whether the kernel takes `UDP_SEGMENT` on this socket.
    gso: bool,
}

impl UdpSink {
    /// `socket` must be non-blocking: a full socket buffer drops (and counts) datagrams rather
    /// than stalling the worker.
    pub fn new(socket: UdpSocket) -> Self {
        let gso = gso_supported(&socket);
        UdpSink { socket, gso }
    }
}

impl DatagramSink for UdpSink {
    fn send(&mut self, buf: &[u8], messages: &[Message]) -> SendReport {
        let (datagrams, bytes, dropped) = self.send_queued(buf, messages);
        SendReport {
            datagrams,
            bytes,
            dropped,
        }
    }

    fn gso(&self) -> bool {
        self.gso
    }
}

impl UdpSink {
    /// Sends the queue; returns datagrams sent, their bytes, and datagrams dropped.
    #[cfg(target_os = "linux")]
    fn send_queued(&mut self, buf: &[u8], messages: &[Message]) -> (u64, u64, u64) {
        use std::os::fd::AsRawFd;

        let fd = self.socket.as_raw_fd();
        let mut sent = 0u64;
        let mut bytes = 0u64;
        let mut dropped = 0u64;
        let mut next = 0;
        let mut waited = false;
        while next < messages.len() {
            let n = (messages.len() - next).min(MAX_BATCH);
            let batch = &messages[next..next + n];
            // SAFETY: all-zero is a valid value for these plain C structs; every pointer set
            // below points into `self.buf`, `names` and `controls`, which outlive the call.
            let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
            let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
            let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { std::mem::zeroed() };
            let mut controls = [[0u64; 4]; MAX_BATCH];
            for (i, m) in batch.iter().enumerate() {
                let name_len = write_sockaddr(m.to, &mut names[i]);
                iovecs[i] = libc::iovec {
                    iov_base: buf[m.start..].as_ptr() as *mut libc::c_void,
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
                // The socket buffer is full. Wait for room once per flush (briefly: the worker
                // has other viewers to serve); if there is still none, only the message at the
                // head (one viewer's run) is dropped and the rest are tried.
                std::io::ErrorKind::WouldBlock => {
                    if !waited {
                        waited = true;
                        let mut pfd = libc::pollfd {
                            fd,
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd for the duration of the call.
                        if unsafe { libc::poll(&mut pfd, 1, SEND_ROOM_WAIT_MS) } > 0 {
                            continue;
                        }
                    }
                    dropped += messages[next].segments as u64;
                    next += 1;
                }
                _ => {
                    let m = messages[next];
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
                        let (s, b) = self.send_singly(buf, m);
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
    fn send_singly(&self, buf: &[u8], m: Message) -> (u64, u64) {
        let mut sent = 0;
        let mut bytes = 0;
        let data = &buf[m.start..m.start + m.len];
        for seg in data.chunks(m.segment) {
            if self.socket.send_to(seg, m.to).is_ok() {
                sent += 1;
                bytes += seg.len() as u64;
            }
        }
        (sent, bytes)
    }

    #[cfg(not(target_os = "linux"))]
    fn send_queued(&mut self, buf: &[u8], messages: &[Message]) -> (u64, u64, u64) {
        let mut sent = 0;
        let mut bytes = 0u64;
        let mut dropped = 0;
        for m in messages {
            let data = &buf[m.start..m.start + m.len];
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
    use crate::metrics::Counters;
    use crate::send_batch::SendBatch;

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
        let mut batch = SendBatch::new(Box::new(UdpSink::new(tx)));
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
        let mut batch = SendBatch::new(Box::new(UdpSink::new(tx)));
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
