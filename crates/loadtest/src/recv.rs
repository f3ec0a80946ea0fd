//! How the load generator's viewers receive: batched `recvmmsg(2)` ([`deadsfu_udp::RecvMmsg`],
//! up to [`BATCH`] buffers per system call), which is most of what makes thousands of viewers
//! cheap to run.
//!
//! Viewer sockets also set `UDP_GRO` ([`setup_socket`]): a server that sends a viewer several
//! equal-size datagrams as one GSO buffer (`UDP_SEGMENT`) then reaches the viewer as that one
//! buffer with its segment size, instead of being cut into datagrams on the way (on loopback,
//! inside the server's send call). Readers cut it again
//! ([`deadsfu_udp::Received::segments`]): every segment is one datagram to them.

use std::os::fd::RawFd;

use deadsfu_udp::RecvMmsg;
use deadsfu_udp::sockopt::{enable_gro, set_receive_buffer};

/// Buffers read per system call.
pub const BATCH: usize = 32;
/// Longest buffer: a coalesced (GRO) buffer holds up to 64 KiB of datagrams.
const SLOT: usize = 1 << 16;

/// Receive buffers for one viewer thread (2 MiB), reused for every read.
pub fn viewer_batch() -> RecvMmsg {
    RecvMmsg::new(BATCH, SLOT)
}

/// Receive buffer of a viewer socket. A new viewer gets the room's GOP at once (hundreds of
/// packets): this gives its socket room for that, as browsers do, so the burst is not lost in
/// the load generator's own kernel queue.
pub const VIEWER_RECEIVE_BUFFER: usize = 4 << 20;

/// The receiving set-up of every viewer socket (and of `deadsfu-udprate`'s GRO readers): a
/// 4 MiB receive buffer and `UDP_GRO`. Returns whether GRO is on.
pub fn setup_socket(fd: RawFd) -> bool {
    // A smaller buffer than asked only risks loss under bursts, which the report shows.
    let _ = set_receive_buffer(fd, VIEWER_RECEIVE_BUFFER);
    enable_gro(fd).is_ok()
}
