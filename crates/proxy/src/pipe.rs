//! Copying a proxied connection both ways. The first bytes of each direction (a TLS handshake,
//! a request or two) are copied through a buffer shared by the thread's connections: for
//! short connections that is two system calls per chunk, no pipes and no buffer of their own
//! (bytes the destination cannot take at once wait in one). A direction that carries more than
//! [`SPLICE_AFTER`] switches to `splice(2)`, socket → pipe → socket inside the kernel, never
//! through user space, when its destination is another host (see [`Splice`]). A side that
//! finishes sending (half-close) has its direction shut down on the other side while the other
//! direction goes on; the whole connection ends after `idle` without a byte either way.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Bytes moved by one splice call at most (the pipe's default capacity).
const CHUNK: usize = 64 * 1024;
/// A direction that has carried this much is bulk: it moves on to splice.
pub const SPLICE_AFTER: u64 = 64 * 1024;
/// The copy buffer of the first bytes.
const COPY_BUF: usize = 16 * 1024;

thread_local! {
    /// The copy buffer of the thread's connections: borrowed only between a read and the
    /// writes that follow it, never across an await.
    static COPY_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; COPY_BUF].into_boxed_slice());
}

/// What one read of the copy phase did.
enum Copied {
    /// Nothing to read after all (the readiness was stale).
    Nothing,
    /// The source finished sending.
    End,
    /// Bytes read (and written, or kept for writing).
    Bytes(usize),
}

/// Reads once from `src` into the thread's buffer and writes what `dst` takes at once; the
/// rest goes to `unsent`.
fn copy_once(src: &TcpStream, dst: &TcpStream, unsent: &mut Vec<u8>) -> io::Result<Copied> {
    COPY_SCRATCH.with_borrow_mut(|buf| {
        let mut got = 0;
        let read = src.try_io(Interest::READABLE, || {
            got = recv(src.as_raw_fd(), buf)?;
            if got > 0 && got < buf.len() {
                // A short read emptied the receive queue: tokio is told so (as if the next
                // read had failed), and the next wait is for new bytes, without the failing
                // read. Bytes or a FIN arriving meanwhile raise readiness again (and a FIN's
                // stays), so none is missed; nginx assumes the same.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        let n = match read {
            Ok(0) => return Ok(Copied::End),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Copied::Nothing),
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            match dst.try_write(&buf[written..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => written += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        unsent.extend_from_slice(&buf[written..n]);
        Ok(Copied::Bytes(n))
    })
}

/// Bytes copied each way, for `/metrics`.
#[derive(Debug, Default)]
pub struct PipeCounters {
    pub to_backend: AtomicU64,
    pub to_client: AtomicU64,
    /// Of those, bytes moved by `splice` (both ways).
    pub spliced: AtomicU64,
}

/// When a bulk direction moves on to `splice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Splice {
    /// When the direction's destination is another host. Toward a process on this host
    /// (loopback, or this host's own address) the receiver is handed the spliced page
    /// fragments themselves and pays more for them than the copy would cost: measured on
    /// loopback, bulk through the proxy fell from about 1,000 to 800 MB/s with the endpoints'
    /// core the limit (`bench/proxy/NOTES.md`).
    #[default]
    Auto,
    /// Always, after the first bytes.
    Always,
    /// Never: every byte through the copy buffer.
    Never,
}

impl Splice {
    fn applies_to(self, dst: &TcpStream) -> bool {
        match self {
            Splice::Always => true,
            Splice::Never => false,
            Splice::Auto => !peer_on_this_host(dst),
        }
    }
}

/// Whether the socket's peer is on this host: a loopback address, or the socket's own address
/// (the kernel routes a connection to one of this host's addresses through loopback, from that
/// address). Unknown addresses count as another host.
fn peer_on_this_host(socket: &TcpStream) -> bool {
    let (Ok(peer), Ok(local)) = (socket.peer_addr(), socket.local_addr()) else {
        return false;
    };
    let (peer, local) = (peer.ip().to_canonical(), local.ip().to_canonical());
    peer.is_loopback() || peer == local
}

struct KernelPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl KernelPipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        Ok(unsafe {
            KernelPipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

fn recv(from: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(from, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors, no offsets; the kernel checks them.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One direction: from `src` to `dst` until `src` ends, then shut down `dst`'s writing side.
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    splice_policy: Splice,
    counters: &PipeCounters,
    counter: &AtomicU64,
    activity: &AtomicU64,
    other_ended: &AtomicBool,
) -> io::Result<()> {
    // Copy phase: through the thread's buffer until the direction looks like bulk (and for
    // good when it is not to be spliced).
    let mut copied: u64 = 0;
    let mut copy_for_good = false;
    // Bytes read that the destination did not take yet (allocated only if it ever lags).
    let mut unsent: Vec<u8> = Vec::new();
    loop {
        if copied >= SPLICE_AFTER && !copy_for_good {
            if splice_policy.applies_to(dst) {
                break;
            }
            copy_for_good = true;
        }
        src.readable().await?;
        let n = match copy_once(src, dst, &mut unsent)? {
            Copied::Nothing => continue,
            Copied::End => return finish(dst, other_ended),
            Copied::Bytes(n) => n,
        };
        activity.fetch_add(1, Ordering::Relaxed);
        if !unsent.is_empty() {
            write_all(dst, &unsent).await?;
            unsent.clear();
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        copied += n as u64;
    }
    drop(unsent);
    // Splice phase.
    let pipe = KernelPipe::new()?;
    let (pr, pw) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    loop {
        // Socket → pipe.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), pw, CHUNK)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return finish(dst, other_ended);
        }
        activity.fetch_add(1, Ordering::Relaxed);
        // Pipe → socket, until the pipe is empty.
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(pr, dst.as_raw_fd(), left)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        counters.spliced.fetch_add(n as u64, Ordering::Relaxed);
        activity.fetch_add(1, Ordering::Relaxed);
    }
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The source finished sending: pass the half-close on. When the other direction has ended
/// already, both sockets are closed next and the close sends the FIN: no `shutdown` call.
/// (`dst` has been read to its end, so the close is orderly, not a reset.)
fn finish(dst: &TcpStream, other_ended: &AtomicBool) -> io::Result<()> {
    if !other_ended.swap(true, Ordering::Relaxed) {
        // SAFETY: shutdown on a valid socket descriptor.
        unsafe { libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR) };
    }
    Ok(())
}

/// Copies both ways until both sides have finished, an error, or `idle` without traffic.
/// `timer` is the connection's timer, reused by the idle watchdog (one timer per connection).
pub async fn pipe_both_ways(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    mut timer: Pin<&mut Sleep>,
    counters: Arc<PipeCounters>,
    splice: Splice,
) -> io::Result<()> {
    let activity = AtomicU64::new(0);
    let one_ended = AtomicBool::new(false);
    let up = one_way(
        &client,
        &backend,
        splice,
        &counters,
        &counters.to_backend,
        &activity,
        &one_ended,
    );
    let down = one_way(
        &backend,
        &client,
        splice,
        &counters,
        &counters.to_client,
        &activity,
        &one_ended,
    );
    // An error either way ends both (a reset side will not carry the other's bytes).
    let both = async { tokio::try_join!(up, down).map(|_| ()) };
    let watchdog = async {
        let mut seen = activity.load(Ordering::Relaxed);
        loop {
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
            timer.as_mut().await;
            let now = activity.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    };
    tokio::select! {
        r = both => r,
        _ = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client_end <-> [client | proxy | backend] <-> backend_end, the proxy piping with
    /// `policy` (5 s idle timeout) on a task of its own.
    async fn proxied(
        policy: Splice,
    ) -> (
        TcpStream,
        TcpStream,
        Arc<PipeCounters>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let (client_end, client) = pair().await;
        let (backend, backend_end) = pair().await;
        let counters = Arc::new(PipeCounters::default());
        let proxy = tokio::spawn({
            let counters = counters.clone();
            async move {
                let timer = tokio::time::sleep(Duration::from_secs(5));
                tokio::pin!(timer);
                let idle = Duration::from_secs(5);
                pipe_both_ways(client, backend, idle, timer, counters, policy).await
            }
        });
        (client_end, backend_end, counters, proxy)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_passes_through() {
        let (mut client_end, mut backend_end, counters, proxy) = proxied(Splice::Auto).await;
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let send = big.clone();
        let writer = tokio::spawn(async move {
            client_end.write_all(&send).await.unwrap();
            client_end.shutdown().await.unwrap();
            client_end
        });
        let mut got = Vec::new();
        backend_end.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        // The other direction still works after the client's half-close.
        backend_end.write_all(b"reply").await.unwrap();
        backend_end.shutdown().await.unwrap();
        let mut client_end = writer.await.unwrap();
        let mut reply = Vec::new();
        client_end.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        proxy.await.unwrap().unwrap();
        assert_eq!(
            counters.to_backend.load(Ordering::Relaxed),
            big.len() as u64
        );
        assert_eq!(counters.to_client.load(Ordering::Relaxed), 5);
    }

    /// Short exchanges whose last bytes and FIN arrive together: every short read that
    /// empties the queue must still see the FIN that follows (no wait for the idle timeout).
    #[tokio::test]
    async fn short_exchanges_end_at_once() {
        short_exchanges().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_exchanges_end_at_once_on_two_workers() {
        short_exchanges().await;
    }

    async fn short_exchanges() {
        for round in 0..200usize {
            let (mut client_end, client) = pair().await;
            let (backend, mut backend_end) = pair().await;
            let proxy = tokio::spawn(async move {
                let timer = tokio::time::sleep(Duration::from_secs(60));
                tokio::pin!(timer);
                let counters = Arc::new(PipeCounters::default());
                pipe_both_ways(
                    client,
                    backend,
                    Duration::from_secs(60),
                    timer,
                    counters,
                    Splice::Auto,
                )
                .await
            });
            let hello = vec![round as u8; 1 + round * 37 % 3000];
            client_end.write_all(&hello).await.unwrap();
            let mut got = vec![0; hello.len()];
            backend_end.read_exact(&mut got).await.unwrap();
            backend_end.write_all(b"answer").await.unwrap();
            backend_end.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client_end.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"answer");
            client_end.shutdown().await.unwrap();
            let mut rest = Vec::new();
            backend_end.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            tokio::time::timeout(Duration::from_secs(5), proxy)
                .await
                .expect("the pipe ends with both FINs")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn idle_connections_end() {
        let (_client_end, client) = pair().await;
        let (backend, _backend_end) = pair().await;
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let r = pipe_both_ways(
            client,
            backend,
            Duration::from_millis(200),
            timer,
            Arc::new(PipeCounters::default()),
            Splice::Auto,
        )
        .await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    /// Moves 3 MB each way through a pipe with `policy`; returns the bytes it spliced.
    async fn bulk_both_ways(policy: Splice) -> u64 {
        let (mut client_end, mut backend_end, counters, proxy) = proxied(policy).await;
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client_read, mut client_write) = client_end.split();
        let (mut backend_read, mut backend_write) = backend_end.split();
        let up = async {
            client_write.write_all(&big).await.unwrap();
            client_write.shutdown().await.unwrap();
        };
        let down = async {
            backend_write.write_all(&big).await.unwrap();
            backend_write.shutdown().await.unwrap();
        };
        let (mut at_backend, mut at_client) = (Vec::new(), Vec::new());
        let read_up = backend_read.read_to_end(&mut at_backend);
        let read_down = client_read.read_to_end(&mut at_client);
        let (_, _, r1, r2) = tokio::join!(up, down, read_up, read_down);
        r1.unwrap();
        r2.unwrap();
        assert!(
            at_backend == big && at_client == big,
            "bytes changed on the way"
        );
        proxy.await.unwrap().unwrap();
        counters.spliced.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn bulk_to_this_host_is_copied_unless_splicing_is_forced() {
        // Both ends are on loopback: `auto` copies, `always` splices all but the first bytes.
        assert_eq!(bulk_both_ways(Splice::Auto).await, 0);
        assert_eq!(bulk_both_ways(Splice::Never).await, 0);
        let spliced = bulk_both_ways(Splice::Always).await;
        assert!(
            spliced >= 2 * (3_000_000 - 2 * SPLICE_AFTER),
            "spliced {spliced} bytes"
        );
    }

    #[tokio::test]
    async fn a_peer_on_loopback_or_at_our_own_address_is_on_this_host() {
        let (a, b) = pair().await;
        assert!(peer_on_this_host(&a) && peer_on_this_host(&b));
    }
}
