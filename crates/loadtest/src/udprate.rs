//! The machine's physical limit for the benchmark: how many 1200-byte UDP datagrams per second
//! one core sends on loopback, with plain `sendto`, with `sendmmsg` (one call, many
//! datagrams, many destinations possible) and with GSO (`UDP_SEGMENT`: one call, one buffer
//! cut into datagrams by the kernel, one destination), while a thread on another core reads
//! them with `recvmmsg`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// What one measurement found.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub method: SendMethod,
    /// Datagrams the sender handed to the kernel per second.
    pub sent_pps: f64,
    /// Datagrams the reader got per second.
    pub received_pps: f64,
}

/// Sends for `duration` with `method` from `send_cpu` while a reader on `recv_cpu` drains.
pub fn measure(
    method: SendMethod,
    duration: Duration,
    send_cpu: Option<usize>,
    recv_cpu: Option<usize>,
) -> io::Result<Rate> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    set_buffer(&rx, libc::SO_RCVBUF, 8 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(100)))?;
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
            let mut batch = crate::recv::RecvBatch::default();
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
                        received.fetch_add(n as u64, Ordering::Relaxed);
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
        set_buffer(&tx, libc::SO_SNDBUF, 8 << 20);
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

fn set_buffer(s: &UdpSocket, opt: libc::c_int, bytes: libc::c_int) {
    // SAFETY: a valid socket and an int option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

struct Sender<'a> {
    socket: &'a UdpSocket,
    to: SocketAddr,
    method: SendMethod,
    buf: Vec<u8>,
    addr: libc::sockaddr_in,
}

impl<'a> Sender<'a> {
    fn new(socket: &'a UdpSocket, to: SocketAddr, method: SendMethod) -> io::Result<Self> {
        let SocketAddr::V4(v4) = to else {
            return Err(io::Error::other("IPv4 only"));
        };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if matches!(method, SendMethod::Gso | SendMethod::SendmmsgGso) {
            let seg: libc::c_int = DATAGRAM as libc::c_int;
            // SAFETY: a valid socket and an int option value.
            let r = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_SEGMENT,
                    (&seg as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
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
            addr,
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
            SendMethod::Sendmmsg => self.mmsg(DATAGRAM, MMSG_BATCH, 1),
            SendMethod::SendmmsgGso => self.mmsg(DATAGRAM * GSO_SEGMENTS, 8, GSO_SEGMENTS as u64),
        }
    }

    fn mmsg(&mut self, len: usize, batch: usize, per_msg: u64) -> io::Result<u64> {
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let mut headers: Vec<libc::mmsghdr> = (0..batch)
            .map(|_| {
                // SAFETY: msghdr is plain old data; the fields that matter are set here.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = (&mut self.addr as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut iov;
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: every header points at the live buffer and address above.
        let n = unsafe {
            libc::sendmmsg(
                self.socket.as_raw_fd(),
                headers.as_mut_ptr(),
                batch as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as u64 * per_msg)
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
}
