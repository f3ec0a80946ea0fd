//! Bulk transfer over one TLS connection. An SFU has no large response, so the benchmark has
//! its own server: `GET /bulk/N` answers N bytes of zeros (encrypted, as any TLS payload),
//! `GET /healthz` a short `ok`. Connections from the trusted proxies start with a PROXY v2
//! header, which it skips, as an SFU with `--proxy-protocol-from` reads it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{CpuMeter, connect_from, cpu_pct, own_cpu, skip_proxy_v2};

/// Bytes written per call.
const CHUNK: usize = 256 * 1024;
/// Largest request head accepted.
const MAX_HEAD: usize = 8192;

/// Serves until the runtime ends.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    proxies: Arc<Vec<IpAddr>>,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = listener.accept().await?;
        let (acceptor, proxies) = (acceptor.clone(), proxies.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, peer, acceptor, &proxies).await {
                tracing::debug!(%peer, error = %e, "bulk connection ended");
            }
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    proxies: &[IpAddr],
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    if proxies.contains(&peer.ip()) {
        skip_proxy_v2(&mut stream).await?;
    }
    let mut tls = acceptor.accept(stream).await?;
    let head = read_head(&mut tls).await?;
    let line = head.lines().next().unwrap_or_default();
    let path = line.split(' ').nth(1).unwrap_or_default();
    let len: u64 = if path == "/healthz" {
        2
    } else if let Some(n) = path.strip_prefix("/bulk/") {
        n.parse().context("GET /bulk/N: N is not a number")?
    } else {
        tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        tls.shutdown().await?;
        return Ok(());
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(header.as_bytes()).await?;
    if path == "/healthz" {
        tls.write_all(b"ok").await?;
    } else {
        let zeros = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            tls.write_all(&zeros[..n]).await?;
            left -= n as u64;
        }
    }
    tls.shutdown().await?;
    Ok(())
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`); returns it as text. Bytes after it are
/// not expected (a `GET`).
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("closed before the end of the request");
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            bail!("request head too large");
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// One download of `bytes` from `target` (SNI `sni`); MB/s from the request to the last byte
/// (the handshake is not counted), with the proxy's and backend's CPU over the same time.
#[allow(clippy::too_many_arguments)]
pub async fn download(
    target: SocketAddr,
    sni: &str,
    bind: IpAddr,
    tls: Arc<rustls::ClientConfig>,
    bytes: u64,
    proxy: CpuMeter,
    backend: CpuMeter,
) -> anyhow::Result<Value> {
    let name = ServerName::try_from(sni.to_string())?;
    let tcp = connect_from(bind, target).await.context("connect")?;
    let mut stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let cpu0 = (proxy.read(), backend.read(), own_cpu());
    let started = Instant::now();
    stream
        .write_all(format!("GET /bulk/{bytes} HTTP/1.1\r\nHost: {sni}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::new();
    let mut body: u64 = 0;
    let mut in_body = false;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        };
        if in_body {
            body += n as u64;
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 200") {
                    bail!("response {:?}", String::from_utf8_lossy(&head[..end]));
                }
                body = (head.len() - end - 4) as u64;
                in_body = true;
            } else if head.len() > MAX_HEAD {
                bail!("response head too large");
            }
        }
        if body >= bytes {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = (proxy.read(), backend.read(), own_cpu());
    if body < bytes {
        bail!("got {body} of {bytes} bytes");
    }
    let mb_per_s = body as f64 / 1e6 / elapsed;
    let proxy_cpu = cpu_pct(cpu0.0, cpu1.0);
    Ok(json!({
        "target": target.to_string(),
        "sni": sni,
        "bytes": body,
        "seconds": elapsed,
        "mb_per_s": mb_per_s,
        "proxy_cpu_pct": (!proxy.is_empty()).then_some(proxy_cpu),
        "mb_per_s_per_proxy_core": (!proxy.is_empty() && proxy_cpu > 0.5).then(|| mb_per_s * 100.0 / proxy_cpu),
        "backend_cpu_pct": (!backend.is_empty()).then(|| cpu_pct(cpu0.1, cpu1.1)),
        "generator_cpu_pct": cpu_pct(cpu0.2, cpu1.2),
    }))
}
