//! Socket options of UDP sockets used for media: buffer sizes, GSO and GRO.

use std::io;
use std::os::fd::RawFd;

/// Sets an `int` socket option.
pub fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads an `int` socket option.
pub fn int_option(fd: RawFd, level: libc::c_int, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the receive buffer: `SO_RCVBUFFORCE` where the process may exceed `rmem_max`, else
/// `SO_RCVBUF` (which the kernel caps at `rmem_max`).
pub fn set_receive_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)
}

/// Sets the send buffer: `SO_SNDBUFFORCE` where the process may exceed `wmem_max`, else
/// `SO_SNDBUF`.
pub fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)
}

fn set_buffer(fd: RawFd, forced: libc::c_int, capped: libc::c_int, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_option(fd, libc::SOL_SOCKET, forced, bytes)
        .or_else(|_| set_int_option(fd, libc::SOL_SOCKET, capped, bytes))
}

/// Asks the kernel to hand coalesced datagrams over as one buffer (`UDP_GRO`, Linux 5.0+);
/// [`crate::RecvMmsg`] reports their segment size.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Makes every send on the socket a GSO buffer of `size`-byte segments (`UDP_SEGMENT` as a
/// socket option, rather than per message).
pub fn set_gso_segment(fd: RawFd, size: u16) -> io::Result<()> {
    set_int_option(
        fd,
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        libc::c_int::from(size),
    )
}

/// Whether the kernel knows `UDP_SEGMENT` (Linux 4.18+). A kernel that knows it may still
/// refuse a GSO send on some devices (`EIO`); senders fall back then.
pub fn gso_supported(fd: RawFd) -> bool {
    int_option(fd, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn sets_buffers() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = socket.as_raw_fd();
        set_receive_buffer(fd, 256 * 1024).unwrap();
        set_send_buffer(fd, 256 * 1024).unwrap();
        // The kernel doubles the value for its bookkeeping (and may cap it).
        assert!(int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap() > 4096);
        assert!(int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap() > 4096);
    }

    #[test]
    fn probes_gso() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Any kernel this runs on in CI is newer than 4.18; the probe must agree with setting.
        let supported = gso_supported(socket.as_raw_fd());
        assert_eq!(supported, set_gso_segment(socket.as_raw_fd(), 1000).is_ok());
    }
}
