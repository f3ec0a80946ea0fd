//! Copying a proxied connection both ways. The first bytes of each direction (a TLS handshake,
//! a request or two) are copied through one small buffer: for short connections that is two
//! system calls per chunk and no pipes. A direction that carries more than [`SPLICE_AFTER`]
//! switches to `splice(2)`, socket → pipe → socket inside the kernel, never through user
//! space. A side that finishes sending (half-close) has its direction shut down on the other
//! side while the other direction goes on; the whole connection ends after `idle` without a
//! byte either way.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved by one splice call at most (the pipe's default capacity).
const CHUNK: usize = 64 * 1024;
/// A direction that has carried this much is bulk: it moves on to splice.
pub const SPLICE_AFTER: u64 = 64 * 1024;
/// The copy buffer of the first bytes.
const COPY_BUF: usize = 16 * 1024;

/// Bytes copied each way, for `/metrics`.
#[derive(Debug, Default)]
pub struct PipeCounters {
    pub to_backend: AtomicU64,
    pub to_client: AtomicU64,
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
    counter: &AtomicU64,
    activity: &AtomicU64,
) -> io::Result<()> {
    // Copy phase: through a buffer until the direction looks like bulk.
    let mut copied: u64 = 0;
    // Read into spare capacity: no zero-filling of the buffer per connection.
    let mut buf: Vec<u8> = Vec::with_capacity(COPY_BUF);
    while copied < SPLICE_AFTER {
        src.readable().await?;
        buf.clear();
        let n = match src.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return finish(dst);
        }
        activity.fetch_add(1, Ordering::Relaxed);
        write_all(dst, &buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        copied += n as u64;
    }
    drop(buf);
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
            return finish(dst);
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

/// The source finished sending: pass the half-close on.
fn finish(dst: &TcpStream) -> io::Result<()> {
    // SAFETY: shutdown on a valid socket descriptor.
    unsafe { libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR) };
    Ok(())
}

/// Copies both ways until both sides have finished, an error, or `idle` without traffic.
pub async fn pipe_both_ways(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    counters: Arc<PipeCounters>,
) -> io::Result<()> {
    let activity = AtomicU64::new(0);
    let up = one_way(&client, &backend, &counters.to_backend, &activity);
    let down = one_way(&backend, &client, &counters.to_client, &activity);
    // An error either way ends both (a reset side will not carry the other's bytes).
    let both = async { tokio::try_join!(up, down).map(|_| ()) };
    let watchdog = async {
        let mut seen = activity.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(idle).await;
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

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_passes_through() {
        // client_end <-> [client | proxy | backend] <-> backend_end
        let (mut client_end, client) = pair().await;
        let (backend, mut backend_end) = pair().await;
        let counters = Arc::new(PipeCounters::default());
        let proxy = tokio::spawn(pipe_both_ways(
            client,
            backend,
            Duration::from_secs(5),
            counters.clone(),
        ));
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

    #[tokio::test]
    async fn idle_connections_end() {
        let (_client_end, client) = pair().await;
        let (backend, _backend_end) = pair().await;
        let r = pipe_both_ways(
            client,
            backend,
            Duration::from_millis(200),
            Arc::new(PipeCounters::default()),
        )
        .await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
