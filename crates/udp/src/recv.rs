//! `recvmmsg(2)` into reused buffers, with senders and GRO segment sizes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::ControlSpace;
use crate::sockaddr::{empty_sockaddr, read_sockaddr};

/// Buffers, addresses and control space for one `recvmmsg` call, reused across calls.
pub struct RecvMmsg {
    bufs: Box<[u8]>,
    slot_len: usize,
    /// Distance between the starts of two buffers in `bufs`.
    stride: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    controls: Box<[ControlSpace]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
    /// Buffers filled by the last call.
    filled: usize,
    /// Headers whose lengths the kernel may have shrunk since they were last reset.
    dirty: usize,
}

// SAFETY: the raw pointers inside `iovecs` and `headers` only ever point into the heap
// storage of `bufs`, `addrs`, `controls` and `iovecs` of the same value, which moves with it.
unsafe impl Send for RecvMmsg {}

impl RecvMmsg {
    /// `batch` buffers of `slot_len` bytes each (64 KiB holds any coalesced GRO buffer).
    pub fn new(batch: usize, slot_len: usize) -> Self {
        let batch = batch.clamp(1, libc::UIO_MAXIOV as usize);
        let slot_len = slot_len.max(1);
        // Not a multiple of a large power of two, so that the buffers' first bytes (where
        // headers are read) fall into different cache sets.
        let stride = slot_len.next_multiple_of(64) + 5 * 64;
        let mut b = RecvMmsg {
            bufs: vec![0; batch * stride].into_boxed_slice(),
            slot_len,
            stride,
            addrs: vec![empty_sockaddr(); batch].into_boxed_slice(),
            controls: vec![ControlSpace::default(); batch].into_boxed_slice(),
            iovecs: Box::default(),
            headers: Box::default(),
            filled: 0,
            dirty: batch,
        };
        // The pointers go into the boxed slices, whose heap storage never moves.
        b.iovecs = (0..batch)
            .map(|i| libc::iovec {
                iov_base: b.bufs[i * stride..].as_mut_ptr().cast(),
                iov_len: slot_len,
            })
            .collect();
        b.headers = (0..batch)
            .map(|i| {
                // SAFETY: msghdr is plain old data; the fields that matter are set here and
                // in `recv`.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_iov = &mut b.iovecs[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = b.controls[i].as_mut_ptr().cast();
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        b
    }

    /// Buffers per call.
    pub fn batch(&self) -> usize {
        self.headers.len()
    }

    /// Reads what is waiting on `fd` without blocking; returns how many buffers were filled,
    /// 0 when nothing was waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_with(fd, libc::MSG_DONTWAIT)
    }

    /// Waits for a datagram on a blocking socket (as long as its `SO_RCVTIMEO` allows), then
    /// reads what else is waiting; returns how many buffers were filled, 0 on timeout.
    pub fn recv_waiting(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_with(fd, libc::MSG_WAITFORONE)
    }

    fn recv_with(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        // The kernel shrinks these to what it wrote; give every used slot its full room again.
        for h in self.headers[..self.dirty].iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_controllen = std::mem::size_of::<ControlSpace>() as _;
        }
        // SAFETY: every header points at live buffers of `self`, sized as stated.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            self.filled = 0;
            // A failed call may have touched any header.
            self.dirty = self.headers.len();
            return match err.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        self.filled = n as usize;
        // The kernel writes the headers it fills, and may have started on the next one.
        self.dirty = (self.filled + 1).min(self.headers.len());
        Ok(self.filled)
    }

    /// Buffer `i` of the last call.
    pub fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.filled {
            return None;
        }
        let h = &self.headers[i];
        let len = (h.msg_len as usize).min(self.slot_len);
        let gro = if h.msg_hdr.msg_controllen == 0 {
            None
        } else {
            gro_segment_size(&h.msg_hdr)
        };
        Some(Received {
            data: &self.bufs[i * self.stride..i * self.stride + len],
            from: read_sockaddr(&self.addrs[i]),
            segment_size: gro,
        })
    }
}

/// One received buffer: a datagram, or (with `UDP_GRO` on) several coalesced ones.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub data: &'a [u8],
    /// The sender.
    pub from: Option<SocketAddr>,
    /// For a coalesced buffer, the size of its datagrams (the last may be shorter).
    pub segment_size: Option<usize>,
}

impl<'a> Received<'a> {
    /// The datagrams in this buffer.
    pub fn segments(&self) -> Segments<'a> {
        Segments {
            rest: self.data,
            size: self
                .segment_size
                .filter(|&s| s > 0)
                .unwrap_or(self.data.len().max(1)),
        }
    }
}

/// The datagrams of one received buffer: segments of the GRO size, the last maybe shorter.
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
    size: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (datagram, rest) = self.rest.split_at(self.size.min(self.rest.len()));
        self.rest = rest;
        Some(datagram)
    }
}

/// The segment size from a `UDP_GRO` control message, if there is one.
fn gro_segment_size(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: the header was filled by recvmmsg; CMSG_* stay within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                // The kernel sends an int; a u16 is accepted too.
                return match len {
                    4.. => usize::try_from(data.cast::<i32>().read_unaligned()).ok(),
                    2 => Some(usize::from(data.cast::<u16>().read_unaligned())),
                    _ => None,
                };
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockopt::enable_gro;
    use crate::{Outgoing, SendMmsg};
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_a_batch_with_senders() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvMmsg::new(32, 1 << 16);
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 0);
        for i in 0..3u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        // Loopback delivers within the send call, so all three are queued now.
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 3);
        for i in 0..3 {
            let got = batch.get(i).unwrap();
            assert_eq!(got.segments().collect::<Vec<_>>(), [&[i as u8; 10][..]]);
            assert_eq!(got.from, Some(tx.local_addr().unwrap()));
            assert_eq!(got.segment_size, None);
        }
        assert!(batch.get(3).is_none());
        // Reused: a second round reads the same way.
        tx.send_to(&[7; 2000], rx.local_addr().unwrap()).unwrap();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.get(0).unwrap().data, &[7; 2000][..]);
    }

    #[test]
    fn more_waiting_than_a_batch_takes_two_calls() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            tx.send_to(&[i], rx.local_addr().unwrap()).unwrap();
        }
        let mut batch = RecvMmsg::new(4, 100);
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 4);
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.get(0).unwrap().data, &[4]);
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 0);
    }

    #[test]
    fn waits_for_the_first_datagram_until_the_timeout() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let mut batch = RecvMmsg::new(4, 100);
        assert_eq!(batch.recv_waiting(rx.as_raw_fd()).unwrap(), 0);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[1, 2], rx.local_addr().unwrap()).unwrap();
        assert_eq!(batch.recv_waiting(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.get(0).unwrap().data, &[1, 2]);
    }

    #[test]
    fn a_gso_buffer_arrives_whole_with_its_segment_size() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Err(e) = enable_gro(rx.as_raw_fd()) {
            eprintln!("skipped: the kernel refuses UDP_GRO ({e})");
            return;
        }
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Three 1000-byte segments and a 300-byte one.
        let data: Vec<u8> = (0..3300).map(|i| (i / 1000) as u8).collect();
        let message = Outgoing {
            to: rx.local_addr().unwrap(),
            data: &data,
            segment_size: Some(1000),
        };
        if let Err(e) = SendMmsg::new(1).send(tx.as_raw_fd(), [message]) {
            eprintln!("skipped: the kernel refuses UDP_SEGMENT ({e})");
            return;
        }
        let mut batch = RecvMmsg::new(8, 1 << 16);
        let n = batch.recv(rx.as_raw_fd()).unwrap();
        let mut segments = Vec::new();
        for i in 0..n {
            segments.extend(batch.get(i).unwrap().segments().map(<[u8]>::to_vec));
        }
        let lens: Vec<usize> = segments.iter().map(Vec::len).collect();
        assert_eq!(lens, [1000, 1000, 1000, 300]);
        for (k, s) in segments.iter().enumerate() {
            assert!(s.iter().all(|&b| b == k as u8), "segment {k}");
        }
    }
}
