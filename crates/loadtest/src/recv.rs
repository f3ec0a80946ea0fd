//! Batched receiving: `recvmmsg(2)` reads up to [`BATCH`] buffers from a socket in one system
//! call, which is most of what makes thousands of viewers cheap to run.
//!
//! Viewer sockets also set `UDP_GRO` ([`setup_socket`]): a server that sends a viewer several
//! equal-size datagrams as one GSO buffer (`UDP_SEGMENT`) then reaches the viewer as that one
//! buffer, with a `UDP_GRO` control message giving the segment size, instead of being cut
//! into datagrams on the way (on loopback, inside the server's send call). [`RecvBatch::get`]
//! cuts it again: every segment is one datagram to the caller.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Buffers read per system call.
pub const BATCH: usize = 32;
/// Longest buffer: a coalesced (GRO) buffer holds up to 64 KiB of datagrams.
const SLOT: usize = 1 << 16;
/// Distance between slots: not a power of two, so the starts of the slots (where the headers
/// are read) fall into different cache sets.
const STRIDE: usize = SLOT + 5 * 64;
/// Room for control messages (`UDP_GRO` needs 20 bytes).
const CONTROL: usize = 64;

/// Buffers for one `recvmmsg` call, reused across calls: one set per thread (2 MiB).
pub struct RecvBatch {
    bufs: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    /// `u64`s keep the control buffers aligned for `cmsghdr`.
    control: Box<[[u64; CONTROL / 8]]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
    filled: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        let mut b = RecvBatch {
            bufs: vec![0; BATCH * STRIDE].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH].into_boxed_slice(),
            control: vec![[0; CONTROL / 8]; BATCH].into_boxed_slice(),
            iovecs: Vec::with_capacity(BATCH).into_boxed_slice(),
            headers: Vec::with_capacity(BATCH).into_boxed_slice(),
            filled: BATCH, // so the first call sets every header's lengths
        };
        // The pointers go into the boxed slices, whose heap storage never moves.
        b.iovecs = (0..BATCH)
            .map(|i| libc::iovec {
                iov_base: b.bufs[i * STRIDE..].as_mut_ptr().cast(),
                iov_len: SLOT,
            })
            .collect();
        b.headers = (0..BATCH)
            .map(|i| {
                // SAFETY: msghdr is plain old data; the fields that matter are set here.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_iov = &mut b.iovecs[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = b.control[i].as_mut_ptr().cast();
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        b
    }
}

// SAFETY: the raw pointers inside `iovecs` and `headers` only ever point into the heap
// storage of `bufs`, `addrs`, `control` and `iovecs` of the same value, which moves with it.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Reads what is waiting on `fd` (non-blocking); returns how many buffers, 0 when none.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // The kernel shrinks these to what it wrote; give every slot its full room again.
        for h in self.headers[..(self.filled + 1).min(BATCH)].iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_controllen = CONTROL as _;
        }
        // SAFETY: every header points at live buffers of `self`, sized as stated.
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
            self.filled = BATCH; // reset every header next time
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        self.filled = n as usize;
        Ok(self.filled)
    }

    /// Buffer `i` of the last call, cut into its datagrams (one unless it was coalesced).
    pub fn get(&self, i: usize) -> Option<Segments<'_>> {
        if i >= self.filled {
            return None;
        }
        let h = &self.headers[i];
        let len = (h.msg_len as usize).min(SLOT);
        let data = &self.bufs[i * STRIDE..i * STRIDE + len];
        let size = if h.msg_hdr.msg_controllen == 0 {
            0
        } else {
            gro_size(&h.msg_hdr)
        };
        Some(Segments {
            rest: data,
            size: if size == 0 { len.max(1) } else { size },
        })
    }

    /// The sender of buffer `i` of the last call.
    pub fn from(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.filled {
            return None;
        }
        sockaddr(&self.addrs[i])
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
        let (d, rest) = self.rest.split_at(self.size.min(self.rest.len()));
        self.rest = rest;
        Some(d)
    }
}

/// The segment size of a coalesced buffer from its `UDP_GRO` control message; 0 without one.
fn gro_size(hdr: &libc::msghdr) -> usize {
    // SAFETY: the header was filled by recvmmsg; CMSG_* stay within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                return match len {
                    4.. => data.cast::<i32>().read_unaligned().max(0) as usize,
                    2 => usize::from(data.cast::<u16>().read_unaligned()),
                    _ => 0,
                };
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    0
}

fn set_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: an int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to hand GSO buffers over whole (`UDP_GRO`); fails on kernels before 5.0.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    set_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Marks a socket as taking GSO buffers of `size`-byte segments on send (`UDP_SEGMENT`).
pub fn enable_gso(fd: RawFd, size: usize) -> io::Result<()> {
    set_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, size as libc::c_int)
}

/// Sets `SO_RCVBUF` (or, with the privilege, `SO_RCVBUFFORCE` beyond `rmem_max`).
pub fn set_receive_buffer(fd: RawFd, bytes: usize) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        if set_int(fd, libc::SOL_SOCKET, opt, bytes as libc::c_int).is_ok() {
            return;
        }
    }
}

/// Receive buffer of a viewer socket. A new viewer gets the room's GOP at once (hundreds of
/// packets): this gives its socket room for that, as browsers do, so the burst is not lost in
/// the load generator's own kernel queue.
pub const VIEWER_RECEIVE_BUFFER: usize = 4 << 20;

/// The receiving set-up of every viewer socket (and of `deadsfu-udprate`'s GRO readers): a
/// 4 MiB receive buffer and `UDP_GRO`. Returns whether GRO is on.
pub fn setup_socket(fd: RawFd) -> bool {
    set_receive_buffer(fd, VIEWER_RECEIVE_BUFFER);
    enable_gro(fd).is_ok()
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

/// Sends `buf` to `to` as one GSO buffer of `segment`-byte datagrams (`sendmsg` with a
/// `UDP_SEGMENT` control message), as a server using GSO does.
#[cfg(test)]
pub fn send_gso(fd: RawFd, buf: &[u8], segment: u16, to: SocketAddrV4) -> io::Result<usize> {
    let mut addr = sockaddr_in(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain old data; every pointer is to a live local of the stated size.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        write_segment_cmsg(&mut hdr, &mut control, segment);
        let n = libc::sendmsg(fd, &hdr, 0);
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Points `hdr` at `control` holding one `UDP_SEGMENT` control message.
///
/// # Safety
/// `control` must outlive every use of `hdr`.
pub unsafe fn write_segment_cmsg(hdr: &mut libc::msghdr, control: &mut [u64; 4], segment: u16) {
    hdr.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE(2) = 24 bytes fit in the 32-byte `control`.
    unsafe {
        hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(hdr);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        libc::CMSG_DATA(c).cast::<u16>().write_unaligned(segment);
    }
}

/// `to` as a C socket address.
pub fn sockaddr_in(to: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn v4(s: &std::net::UdpSocket) -> SocketAddrV4 {
        match s.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        }
    }

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
            let segs: Vec<&[u8]> = batch.get(i).unwrap().collect();
            assert_eq!(segs, vec![&[i as u8; 10][..]]);
            assert_eq!(batch.from(i), Some(tx.local_addr().unwrap()));
        }
        assert!(batch.get(3).is_none());
        // Reused: a second round reads the same way.
        tx.send_to(&[7; 2000], rx.local_addr().unwrap()).unwrap();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(
            batch.get(0).unwrap().collect::<Vec<_>>(),
            vec![&[7; 2000][..]]
        );
    }

    #[test]
    fn a_gso_buffer_arrives_as_its_segments() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        if let Err(e) = enable_gro(rx.as_raw_fd()) {
            eprintln!("skipped: the kernel refuses UDP_GRO ({e})");
            return;
        }
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Three 1000-byte segments and a 300-byte one.
        let buf: Vec<u8> = (0..3300).map(|i| (i / 1000) as u8).collect();
        if let Err(e) = send_gso(tx.as_raw_fd(), &buf, 1000, v4(&rx)) {
            eprintln!("skipped: the kernel refuses UDP_SEGMENT ({e})");
            return;
        }
        let mut batch = RecvBatch::default();
        let mut segs = Vec::new();
        let n = batch.recv(rx.as_raw_fd()).unwrap();
        for i in 0..n {
            segs.extend(batch.get(i).unwrap().map(<[u8]>::to_vec));
        }
        let lens: Vec<usize> = segs.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![1000, 1000, 1000, 300]);
        for (k, s) in segs.iter().enumerate() {
            assert!(s.iter().all(|&b| b == k as u8), "segment {k}");
        }
    }
}
