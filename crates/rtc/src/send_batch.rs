//! Outgoing datagrams gathered during one turn of a worker and handed to the kernel with as
//! few system calls as possible: `sendmmsg(2)` on Linux, up to [`MAX_BATCH`] at a time. A
//! packet fanned out to 300 viewers is 300 datagrams; sending them one `sendto` each was the
//! largest single cost of the worker.

use std::net::{SocketAddr, UdpSocket};

use str0m::net::DatagramSend;

use crate::metrics::Counters;

/// Datagrams per system call.
pub(crate) const MAX_BATCH: usize = 64;

/// Datagrams waiting to be sent, in order.
pub(crate) struct SendBatch {
    socket: UdpSocket,
    queued: Vec<(SocketAddr, DatagramSend)>,
    #[cfg(target_os = "linux")]
    addrs: Vec<socket2::SockAddr>,
}

impl SendBatch {
    /// `socket` must be non-blocking: a full socket buffer drops (and counts) datagrams rather
    /// than stalling the worker.
    pub fn new(socket: UdpSocket) -> Self {
        SendBatch {
            socket,
            queued: Vec::with_capacity(MAX_BATCH),
            #[cfg(target_os = "linux")]
            addrs: Vec::with_capacity(MAX_BATCH),
        }
    }

    pub fn push(&mut self, to: SocketAddr, data: DatagramSend, counters: &Counters) {
        self.queued.push((to, data));
        if self.queued.len() >= MAX_BATCH {
            self.flush(counters);
        }
    }

    /// Sends everything queued.
    pub fn flush(&mut self, counters: &Counters) {
        if self.queued.is_empty() {
            return;
        }
        let (sent, bytes) = self.send_queued();
        let dropped = self.queued.len() - sent;
        Counters::add(&counters.packets_out, sent as u64);
        Counters::add(&counters.bytes_out, bytes);
        if dropped > 0 {
            Counters::add(&counters.send_drops, dropped as u64);
        }
        self.queued.clear();
    }

    /// Sends the queue; returns how many datagrams (and bytes) went out.
    #[cfg(target_os = "linux")]
    fn send_queued(&mut self) -> (usize, u64) {
        use std::os::fd::AsRawFd;

        self.addrs.clear();
        self.addrs.extend(
            self.queued
                .iter()
                .map(|(to, _)| socket2::SockAddr::from(*to)),
        );
        let fd = self.socket.as_raw_fd();
        let mut sent = 0;
        let mut bytes = 0u64;
        while sent < self.queued.len() {
            let n = (self.queued.len() - sent).min(MAX_BATCH);
            // SAFETY: all-zero is a valid mmsghdr/iovec; every field the kernel reads is set
            // below to point into `self.queued` and `self.addrs`, which outlive the call and
            // are not touched until it returns.
            let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
            let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
            for i in 0..n {
                let (_, data) = &self.queued[sent + i];
                let addr = &self.addrs[sent + i];
                iovecs[i] = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                let hdr = &mut headers[i].msg_hdr;
                hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                hdr.msg_namelen = addr.len();
                hdr.msg_iov = &mut iovecs[i];
                hdr.msg_iovlen = 1;
            }
            // SAFETY: `headers[..n]` are initialised as above.
            let r = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), n as libc::c_uint, 0) };
            if r > 0 {
                let r = r as usize;
                bytes += self.queued[sent..sent + r]
                    .iter()
                    .map(|(_, d)| d.len() as u64)
                    .sum::<u64>();
                sent += r;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => continue,
                // The socket buffer is full: what is left of this turn's output is dropped.
                std::io::ErrorKind::WouldBlock => break,
                _ => {
                    // The first datagram cannot be sent (say, an unreachable destination): skip
                    // it, keep the others.
                    tracing::debug!(to = %self.queued[sent].0, error = %err, "send failed");
                    self.queued.remove(sent);
                    self.addrs.remove(sent);
                }
            }
        }
        (sent, bytes)
    }

    #[cfg(not(target_os = "linux"))]
    fn send_queued(&mut self) -> (usize, u64) {
        let mut sent = 0;
        let mut bytes = 0u64;
        for (to, data) in &self.queued {
            if let Ok(n) = self.socket.send_to(data, to) {
                sent += 1;
                bytes += n as u64;
            }
        }
        (sent, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            batch.push(to, i.to_be_bytes().to_vec().into(), &counters);
        }
        batch.flush(&counters);
        let mut buf = [0u8; 16];
        for i in 0..(MAX_BATCH + 10) as u16 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes());
        }
        let snap = {
            let mut s = crate::metrics::MetricsSnapshot::default();
            s.add(&counters);
            s
        };
        assert_eq!(snap.packets_out, (MAX_BATCH + 10) as u64);
        assert_eq!(snap.bytes_out, 2 * (MAX_BATCH + 10) as u64);
    }
}
