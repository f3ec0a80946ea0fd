//! The workers' UDP sockets, and the heap trimmer that runs beside them.

use std::net::SocketAddr;

use crate::shared::Shared;

/// Socket buffer size asked for: a turn's output to thousands of viewers is megabytes, which a
/// NIC's queue holds against the send buffer until it has gone out.
const SOCKET_BUFFER: usize = 16 << 20;

/// A non-blocking UDP socket with roomy buffers (bursts of keyframes to many viewers).
pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Beyond net.core.wmem_max/rmem_max when privileged, else as much as they allow.
    use std::os::fd::AsRawFd;
    let _ = deadsfu_udp::sockopt::set_send_buffer(socket.as_raw_fd(), SOCKET_BUFFER);
    let _ = deadsfu_udp::sockopt::set_receive_buffer(socket.as_raw_fd(), SOCKET_BUFFER);
    // Publishers' bursts arrive coalesced where the kernel can (one buffer, many datagrams).
    let _ = deadsfu_udp::sockopt::enable_gro(socket.as_raw_fd());
    // The kernel reports twice what it grants (it counts its bookkeeping).
    let granted = socket.send_buffer_size().unwrap_or(0) / 2;
    if granted < SOCKET_BUFFER / 2 {
        tracing::warn!(
            %addr,
            send_buffer_kib = granted / 1024,
            "small UDP send buffer: bursts to many viewers may be dropped; raise net.core.wmem_max \
             (e.g. sysctl -w net.core.wmem_max=16777216) or run with CAP_NET_ADMIN"
        );
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// How often freed memory is handed back to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands freed heap pages back to the system every [`TRIM_EVERY`] while the engine lives.
/// Sessions free most of their DTLS state a few seconds after connecting (see `dtls_tap.rs`), in
/// between other sessions' allocations, and glibc keeps such holes resident unless asked. A
/// trim can take milliseconds on a large heap, so it runs here rather than on a media worker,
/// whose fan-out allocates nothing and so goes on meanwhile.
pub(crate) fn spawn_heap_trimmer(shared: std::sync::Weak<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TRIM_EVERY);
                if shared.upgrade().is_none() {
                    return;
                }
                #[cfg(all(target_os = "linux", target_env = "gnu"))]
                // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no heap trimming thread");
    }
}
