//! `sendmmsg(2)` with per-message GSO.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::ControlSpace;
use crate::sockaddr::{empty_sockaddr, write_sockaddr};

/// One message to send: a datagram, or with `segment_size` a GSO buffer that the kernel cuts
/// into datagrams of that size (the last may be shorter).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub to: SocketAddr,
    pub data: &'a [u8],
    pub segment_size: Option<u16>,
}

/// The arrays one `sendmmsg` call needs, for up to `capacity` messages, reused across calls.
pub struct SendMmsg {
    headers: Box<[libc::mmsghdr]>,
    iovecs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    controls: Box<[ControlSpace]>,
}

// SAFETY: the raw pointers inside `headers` only ever point into the heap storage of
// `iovecs`, `names` and `controls` of the same value (which moves with it), or at caller data
// for the duration of one `send` call.
unsafe impl Send for SendMmsg {}

impl SendMmsg {
    /// Room for `capacity` messages per call (at least 1; the kernel takes at most 1024).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, libc::UIO_MAXIOV as usize);
        let mut batch = SendMmsg {
            headers: Box::default(),
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                capacity
            ]
            .into_boxed_slice(),
            names: vec![empty_sockaddr(); capacity].into_boxed_slice(),
            controls: vec![ControlSpace::default(); capacity].into_boxed_slice(),
        };
        // The pointers go into the boxed slices, whose heap storage never moves.
        batch.headers = (0..capacity)
            .map(|i| {
                // SAFETY: msghdr is plain old data; the fields that matter are set here and
                // in `send`.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&mut batch.names[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_iov = &mut batch.iovecs[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = batch.controls[i].as_mut_ptr().cast();
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        batch
    }

    /// Messages per call.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Sends the first [`capacity`](Self::capacity) messages of `messages` with one
    /// `sendmmsg` call (retried if interrupted). Returns how many messages the kernel took,
    /// from the front: the rest were not sent. An error is that of the first message (on a
    /// non-blocking socket with a full buffer, `WouldBlock`); nothing was sent then.
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        messages: impl IntoIterator<Item = Outgoing<'a>>,
    ) -> io::Result<usize> {
        let mut count = 0;
        for (i, message) in messages.into_iter().take(self.capacity()).enumerate() {
            let hdr = &mut self.headers[i].msg_hdr;
            hdr.msg_namelen = write_sockaddr(message.to, &mut self.names[i]);
            self.iovecs[i] = libc::iovec {
                // The kernel only reads through this pointer.
                iov_base: message.data.as_ptr().cast_mut().cast(),
                iov_len: message.data.len(),
            };
            match message.segment_size {
                Some(size) => {
                    // SAFETY: `msg_control` points at this message's 32-byte, 8-aligned
                    // control space, room for one cmsghdr with a u16 (CMSG_SPACE(2) = 24).
                    unsafe {
                        hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                        let cmsg = libc::CMSG_FIRSTHDR(hdr);
                        (*cmsg).cmsg_level = libc::SOL_UDP;
                        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                        libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(size);
                    }
                }
                None => hdr.msg_controllen = 0,
            }
            count = i + 1;
        }
        if count == 0 {
            return Ok(0);
        }
        loop {
            // SAFETY: `headers[..count]` point at live addresses, control space and iovecs,
            // and the iovecs at the callers' data, which outlives this call.
            let r =
                unsafe { libc::sendmmsg(fd, self.headers.as_mut_ptr(), count as libc::c_uint, 0) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockopt::gso_supported;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn receiver() -> UdpSocket {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rx
    }

    #[test]
    fn sends_a_batch_to_several_peers_in_order() {
        let (a, b) = (receiver(), receiver());
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = [a.local_addr().unwrap(), b.local_addr().unwrap()];
        let mut batch = SendMmsg::new(8);
        let payloads: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 10 + i as usize]).collect();
        let messages = payloads.iter().enumerate().map(|(i, p)| Outgoing {
            to: to[i % 2],
            data: p,
            segment_size: None,
        });
        // Only `capacity` go out per call.
        assert_eq!(batch.send(tx.as_raw_fd(), messages.clone()).unwrap(), 8);
        assert_eq!(batch.send(tx.as_raw_fd(), messages.skip(8)).unwrap(), 4);
        let mut buf = [0u8; 64];
        for (i, p) in payloads.iter().enumerate() {
            let rx = if i % 2 == 0 { &a } else { &b };
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &p[..], "datagram {i}");
            assert_eq!(from, tx.local_addr().unwrap());
        }
        assert_eq!(batch.send(tx.as_raw_fd(), []).unwrap(), 0);
    }

    #[test]
    fn a_gso_message_arrives_as_its_segments() {
        let rx = receiver();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !gso_supported(tx.as_raw_fd()) {
            eprintln!("skipped: the kernel has no UDP_SEGMENT");
            return;
        }
        let data: Vec<u8> = (0..2300).map(|i| (i / 1000) as u8).collect();
        let single = [9u8; 50];
        let mut batch = SendMmsg::new(4);
        let messages = [
            Outgoing {
                to: rx.local_addr().unwrap(),
                data: &data,
                segment_size: Some(1000),
            },
            // A plain datagram after a GSO one: its header must carry no stale cmsg.
            Outgoing {
                to: rx.local_addr().unwrap(),
                data: &single,
                segment_size: None,
            },
        ];
        assert_eq!(batch.send(tx.as_raw_fd(), messages).unwrap(), 2);
        let mut buf = [0u8; 4096];
        for (k, len) in [1000, 1000, 300].into_iter().enumerate() {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, len);
            assert!(buf[..n].iter().all(|&b| b == k as u8));
        }
        assert_eq!(rx.recv(&mut buf).unwrap(), 50);
        // Reused with the GSO message second.
        let reversed = [messages[1], messages[0]];
        assert_eq!(batch.send(tx.as_raw_fd(), reversed).unwrap(), 2);
        let lens: Vec<usize> = (0..4).map(|_| rx.recv(&mut buf).unwrap()).collect();
        assert_eq!(lens, [50, 1000, 1000, 300]);
    }
}
