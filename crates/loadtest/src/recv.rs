//! Batched receiving: `recvmmsg(2)` reads up to [`BATCH`] datagrams from a socket in one
//! system call, which is most of what makes thousands of viewers cheap to run.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams read per system call.
pub const BATCH: usize = 32;
/// Largest datagram kept whole (longer ones are truncated, and WebRTC sends none).
const BUF_LEN: usize = 2048;

/// Buffers for one `recvmmsg` call, reused across calls.
pub struct RecvBatch {
    bufs: Vec<[u8; BUF_LEN]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    filled: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![[0; BUF_LEN]; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovecs: Vec::with_capacity(BATCH),
            headers: Vec::with_capacity(BATCH),
            filled: 0,
        }
    }
}

// SAFETY: the raw pointers inside `iovecs` and `headers` only ever point into `bufs` and
// `addrs` of the same value and are rebuilt before every call.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Reads what is waiting on `fd` (non-blocking); returns how many datagrams, 0 when none.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.iovecs.clear();
        self.headers.clear();
        for buf in self.bufs.iter_mut() {
            self.iovecs.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            });
        }
        for (iov, addr) in self.iovecs.iter_mut().zip(self.addrs.iter_mut()) {
            // SAFETY: msghdr is plain old data; the fields that matter are set below.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            self.headers.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        // SAFETY: every header points at a live buffer and address of `self`, sized as stated.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.filled = 0;
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        self.filled = n as usize;
        Ok(self.filled)
    }

    /// Datagram `i` of the last call and its sender.
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>)> {
        if i >= self.filled {
            return None;
        }
        let len = (self.headers[i].msg_len as usize).min(BUF_LEN);
        Some((&self.bufs[i][..len], sockaddr(&self.addrs[i])))
    }
}

fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_a_batch_with_senders() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::default();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 0);
        for i in 0..3u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        // Loopback delivers within the send call, so all three are queued now.
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 3);
        for i in 0..3 {
            let (d, from) = batch.get(i).unwrap();
            assert_eq!(d, &[i as u8; 10]);
            assert_eq!(from, Some(tx.local_addr().unwrap()));
        }
        assert!(batch.get(3).is_none());
    }
}
