//! Batched UDP system calls on raw file descriptors, Linux only (elsewhere the crate is empty):
//! mechanism without policy, for the media workers and the load generators.
//!
//! - [`SendMmsg`]: `sendmmsg(2)` of a batch of messages, each a datagram or, with a segment
//!   size, a GSO buffer of equal-size datagrams (`UDP_SEGMENT` control message).
//! - [`RecvMmsg`]: `recvmmsg(2)` into reused buffers, with each buffer's sender and, for a
//!   coalesced buffer (`UDP_GRO`), its segment size.
//! - [`sockaddr`]: `SocketAddr` to and from C socket addresses.
//! - [`sockopt`]: buffer sizes, `UDP_GRO`, `UDP_SEGMENT`, and whether the kernel knows GSO.
//!
//! Both batch types own their `mmsghdr`, `iovec`, address and control arrays and reuse them
//! on every call: a call allocates nothing.

#[cfg(target_os = "linux")]
mod recv;
#[cfg(target_os = "linux")]
mod send;
#[cfg(target_os = "linux")]
pub mod sockaddr;
#[cfg(target_os = "linux")]
pub mod sockopt;

#[cfg(target_os = "linux")]
pub use recv::{Received, RecvMmsg, Segments};
#[cfg(target_os = "linux")]
pub use send::{Outgoing, SendMmsg};

/// Room for one control message carrying a `u16` or an `int` (`CMSG_SPACE(4)` is 24 bytes on
/// 64-bit Linux), in `u64`s so that it is aligned for `cmsghdr`.
#[cfg(target_os = "linux")]
type ControlSpace = [u64; 4];
