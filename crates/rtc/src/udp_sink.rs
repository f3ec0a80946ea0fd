//! The worker's socket as a [`DatagramSink`]: a batch goes out with `sendmmsg(2)`
//! (`deadsfu-udp`), runs to one peer as one `UDP_SEGMENT` message where the kernel offers it.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use deadsfu_udp::{Outgoing, SendMmsg};

use crate::send_batch::{DatagramSink, MAX_BATCH, Message, SendReport};

/// Longest a flush waits for send-buffer room.
const SEND_ROOM_WAIT_MS: libc::c_int = 1;

pub(crate) struct UdpSink {
    socket: UdpSocket,
    sendmmsg: SendMmsg,
    /// Whether the kernel takes `UDP_SEGMENT` on this socket.
    gso: bool,
}

impl UdpSink {
    /// `socket` must be non-blocking: a full socket buffer drops (and counts) datagrams rather
    /// than stalling the worker.
    pub fn new(socket: UdpSocket) -> Self {
        let gso = deadsfu_udp::sockopt::gso_supported(socket.as_raw_fd())
            && std::env::var_os("DEADSFU_NO_GSO").is_none();
        UdpSink {
            socket,
            sendmmsg: SendMmsg::new(MAX_BATCH),
            gso,
        }
    }

    /// Sends a GSO message's segments one `sendto` each.
    fn send_singly(&self, buf: &[u8], m: &Message) -> (u64, u64) {
        let mut sent = 0;
        let mut bytes = 0;
        for seg in buf[m.start..m.start + m.len].chunks(m.segment) {
            if self.socket.send_to(seg, m.to).is_ok() {
                sent += 1;
                bytes += seg.len() as u64;
            }
        }
        (sent, bytes)
    }

    /// Waits up to [`SEND_ROOM_WAIT_MS`] for room in the send buffer.
    fn wait_for_room(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, SEND_ROOM_WAIT_MS) > 0 }
    }
}

impl DatagramSink for UdpSink {
    fn send(&mut self, buf: &[u8], messages: &[Message]) -> SendReport {
        let fd = self.socket.as_raw_fd();
        let mut report = SendReport::default();
        let mut next = 0;
        let mut waited = false;
        while next < messages.len() {
            let batch = messages[next..].iter().map(|m| Outgoing {
                to: m.to,
                data: &buf[m.start..m.start + m.len],
                segment_size: (m.segments > 1).then_some(m.segment as u16),
            });
            match self.sendmmsg.send(fd, batch) {
                Ok(n) if n > 0 => {
                    for m in &messages[next..next + n] {
                        report.datagrams += m.segments as u64;
                        report.bytes += m.len as u64;
                    }
                    next += n;
                }
                Ok(_) => break,
                // The socket buffer is full. Wait for room once per flush (briefly: the worker
                // has other viewers to serve); if there is still none, only the message at the
                // head (one viewer's run) is dropped and the rest are tried.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !waited {
                        waited = true;
                        if self.wait_for_room() {
                            continue;
                        }
                    }
                    report.dropped += messages[next].segments as u64;
                    next += 1;
                }
                Err(e) => {
                    let m = &messages[next];
                    if m.segments > 1
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                        )
                    {
                        // No segmentation offload here after all: send this one datagram by
                        // datagram, and no more GSO from this socket.
                        tracing::info!(error = %e, "UDP GSO refused; sending datagrams singly");
                        self.gso = false;
                        let (sent, bytes) = self.send_singly(buf, m);
                        report.datagrams += sent;
                        report.bytes += bytes;
                        report.dropped += m.segments as u64 - sent;
                    } else {
                        // This message cannot be sent (say, an unreachable destination): skip
                        // it, keep the others.
                        tracing::debug!(to = %m.to, error = %e, "send failed");
                        report.dropped += m.segments as u64;
                    }
                    next += 1;
                }
            }
        }
        report
    }

    fn gso(&self) -> bool {
        self.gso
    }
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
