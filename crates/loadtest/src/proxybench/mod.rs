//! `deadsfu-proxybench`: the front-line proxy benchmark's load tools and fake backends
//! (`bench/proxy/run` drives them; see `bench/README.md`).
//!
//! - [`conns`]: new TLS connections, each with one `GET /healthz`, closed-loop (as many as
//!   `--concurrency` workers finish) or open-loop (a fixed rate), with the time from `connect`
//!   to the end of the response.
//! - [`bulk`]: a TLS server that sends N bytes of zeros on `GET /bulk/N`, and the client that
//!   downloads them over one connection.
//! - [`ftl`]: an FTL ingest that counts datagrams and reads the send time from each payload,
//!   and a pusher that sends synthetic media as fast as it can or at a fixed rate.
//! - [`register`]: the fake backends' node records and leases in Redis, so `deadsfu proxy`
//!   routes to them.
//! - [`tls`]: rustls configurations from the benchmark's PEM files.

pub mod bulk;
pub mod conns;
pub mod ftl;
pub mod register;
pub mod tls;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use deadsfu_procstat::{self as procstat, Process};
pub use deadsfu_procstat::{CpuMeter, CpuReading, cpu_pct};

/// This process's CPU time (zero if `/proc` cannot be read).
pub fn own_cpu() -> CpuReading {
    procstat::cpu(Process::Own).unwrap_or(CpuReading {
        at: Instant::now(),
        cpu_secs: 0.0,
    })
}

/// A TCP connection to `to` from `from` (port chosen by the kernel), with `TCP_NODELAY`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The signature every PROXY protocol v2 header starts with.
const PROXY_V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads and discards a PROXY protocol v2 header (the fake backends trust their proxies as
/// the SFU does, and need only skip it).
pub async fn skip_proxy_v2(stream: &mut TcpStream) -> io::Result<()> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await?;
    if &fixed[..12] != PROXY_V2_SIGNATURE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no PROXY v2 header from a proxy",
        ));
    }
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await?;
    Ok(())
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Percentile of nanosecond samples in milliseconds, rounded to the microsecond.
pub fn percentile_ms(sorted_ns: &[u64], p: f64) -> Option<f64> {
    percentile(sorted_ns, p).map(|ns| (ns as f64 / 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile_ms(&[1_234_567], 50.0), Some(1.235));
    }
}
