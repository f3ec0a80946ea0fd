//! The FTL relay benchmark: one process holds both ends, so the send time written into each
//! payload and the receive time are read from one clock.
//!
//! - The **ingest** (the receiving side) answers the FTL handshake with the `ftl` crate's
//!   server core (`ServerSession`, the code an SFU's FTL ingest runs) and counts the media
//!   datagrams on its UDP port itself (`recvmmsg`), reading each one's send time. It stands in
//!   for an SFU's ingest because the SFU's media engine behind it would take the core the
//!   load generator needs, and has no per-packet counter.
//! - The **pusher** runs an FTL client session (`ClientSession`, as `deadsfu ftl-push` does)
//!   to the proxy (or straight to the ingest) and, once streaming, sends RTP datagrams
//!   (H264 payload type, the channel's video SSRC, `payload` bytes each) from its own thread
//!   with `sendmmsg`: as fast as it can, or at a fixed rate in bursts of a few packets.
//! - With a proxy, the ingest is registered in Redis as the channel's SFU (`ftl:{channel}`
//!   lease, a node record with its FTL address) and the channel's key is stored
//!   (`ftlkey:{channel}`), so `deadsfu proxy` checks the key and relays to it.
//!
//! Each payload carries, after the one-byte NAL header, the send time (nanoseconds since the
//! process started, big-endian) and a packet number.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use deadsfu_ftl::StreamKey;
use deadsfu_ftl::client::{
    ClientConfig, ClientEvent, ClientInput, ClientOutput, ClientSession, VIDEO_PAYLOAD_TYPE,
};
use deadsfu_ftl::server::{
    ClaimOutcome, SecretLookup, ServerConfig, ServerEvent, ServerInput, ServerOutput,
    ServerSession, random_nonce,
};
use deadsfu_udp::sockopt::set_receive_buffer;
use deadsfu_udp::{Outgoing, RecvMmsg, SendMmsg};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::register::{FakeNode, connect_admin, set_ftl_key};
use super::{CpuMeter, connect_from, cpu_pct, own_cpu, percentile_ms};

/// Offsets in the datagram (after the 12-byte RTP header and a 1-byte NAL header).
const SENT_AT: usize = 13;
const NUMBER: usize = 21;
const MIN_DATAGRAM: usize = 29;
/// Datagrams per `sendmmsg` / `recvmmsg`.
const BATCH: usize = 32;
/// Latency samples kept at most.
const MAX_SAMPLES: usize = 4_000_000;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Debug, Clone)]
pub struct FtlBenchConfig {
    /// The ingest's address (TCP control and UDP media, ports chosen by the kernel).
    pub ingest_ip: IpAddr,
    /// The pusher's source address (control and media).
    pub bind: IpAddr,
    /// The proxy's FTL control address; `None`: straight to the ingest.
    pub via: Option<SocketAddr>,
    pub channel: u32,
    /// Bytes per datagram (RTP header included).
    pub datagram: usize,
    /// Datagrams per second; `None`: as fast as the pusher can send.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// The proxy's processes.
    pub proxy: CpuMeter,
}

/// What the ingest's UDP thread counted.
#[derive(Default)]
struct Received {
    packets: AtomicU64,
    /// Samples are taken while set.
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// What the pusher's thread sent.
#[derive(Default)]
struct Sent {
    packets: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

pub async fn run(cfg: FtlBenchConfig) -> anyhow::Result<Value> {
    now_ns();
    if cfg.datagram < MIN_DATAGRAM || cfg.datagram > 1400 {
        bail!("--datagram must be {MIN_DATAGRAM}..=1400 bytes");
    }
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let key = StreamKey::parse(&format!("{}-{secret}", cfg.channel))?;

    // The ingest.
    let control = TcpListener::bind(SocketAddr::new(cfg.ingest_ip, 0)).await?;
    let control_addr = control.local_addr()?;
    let udp = UdpSocket::bind(SocketAddr::new(cfg.ingest_ip, 0))?;
    // Best effort: a smaller buffer shows up as loss in the report.
    let _ = set_receive_buffer(udp.as_raw_fd(), 8 << 20);
    udp.set_read_timeout(Some(Duration::from_millis(50)))?;
    let udp_port = udp.local_addr()?.port();
    let ssrc = key.video_ssrc();
    {
        let secret = secret.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = control.accept().await {
                tokio::spawn(ingest_session(stream, secret.clone(), udp_port));
            }
        });
    }
    let received = Arc::new(Received::default());
    let receiver = {
        let received = received.clone();
        std::thread::Builder::new()
            .name("ftl-ingest".into())
            .spawn(move || receive(udp, ssrc, &received))?
    };

    // Registration for the proxy.
    let target = match cfg.via {
        Some(proxy) => {
            let conn = connect_admin().await?;
            set_ftl_key(&conn, cfg.channel, &secret).await?;
            FakeNode {
                node_id: "proxybench-ftl".into(),
                hostname: "ftl-ingest.test".into(),
                https_addr: None,
                proxy_protocol: false,
                ftl: Some((cfg.channel, control_addr)),
            }
            .keep_registered(conn)
            .await?;
            proxy
        }
        None => control_addr,
    };

    // The pusher's control session; retried while the proxy's route cache catches up.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut attempt = 0;
    let (media_to, control_task) = loop {
        attempt += 1;
        let (up_tx, up_rx) = oneshot::channel();
        let task = tokio::spawn(push_control(
            cfg.bind,
            target,
            key.clone(),
            up_tx,
            stop_rx.clone(),
        ));
        match tokio::time::timeout(Duration::from_secs(6), up_rx).await {
            Ok(Ok(to)) => break (to, task),
            _ => {
                let why = match tokio::time::timeout(Duration::from_secs(1), task).await {
                    Ok(Ok(Err(e))) => format!("{e:#}"),
                    _ => "no answer".into(),
                };
                if attempt >= 8 {
                    bail!("FTL handshake through {target} failed: {why}");
                }
                tracing::debug!(attempt, %why, "FTL handshake failed; retrying");
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }
    };

    // The media.
    let sent = Arc::new(Sent::default());
    let sender = {
        let (sent, bind, rate, len) = (sent.clone(), cfg.bind, cfg.rate, cfg.datagram);
        std::thread::Builder::new()
            .name("ftl-push".into())
            .spawn(move || push_media(bind, media_to, ssrc, len, rate, &sent))?
    };
    tokio::time::sleep(cfg.warmup).await;
    let a = (
        sent.packets.load(Relaxed),
        received.packets.load(Relaxed),
        cfg.proxy.read(),
        own_cpu(),
        Instant::now(),
    );
    received.measuring.store(true, Relaxed);
    tokio::time::sleep(cfg.duration).await;
    received.measuring.store(false, Relaxed);
    let b = (
        sent.packets.load(Relaxed),
        received.packets.load(Relaxed),
        cfg.proxy.read(),
        own_cpu(),
        Instant::now(),
    );
    sent.stop.store(true, Relaxed);
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("pusher panicked"))??;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), control_task).await;
    received.stop.store(true, Relaxed);
    let mut samples = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("ingest panicked"))??;
    samples.sort_unstable();

    let secs = b.4.duration_since(a.4).as_secs_f64();
    let sent_pps = (b.0 - a.0) as f64 / secs;
    let received_pps = (b.1 - a.1) as f64 / secs;
    let proxy_cpu = cpu_pct(a.2, b.2);
    let relayed = cfg.via.is_some();
    Ok(json!({
        "via": cfg.via.map(|a| a.to_string()),
        "ingest": control_addr.to_string(),
        "offered_pps": cfg.rate,
        "datagram_bytes": cfg.datagram,
        "seconds": secs,
        "sent_pps": sent_pps,
        "received_pps": received_pps,
        "received_mbit_s": received_pps * cfg.datagram as f64 * 8.0 / 1e6,
        "loss_pct": if b.0 > a.0 { (1.0 - (b.1 - a.1) as f64 / (b.0 - a.0) as f64).max(0.0) * 100.0 } else { 0.0 },
        "send_errors": sent.errors.load(Relaxed),
        "latency_p50_ms": percentile_ms(&samples, 50.0),
        "latency_p90_ms": percentile_ms(&samples, 90.0),
        "latency_p99_ms": percentile_ms(&samples, 99.0),
        "latency_max_ms": samples.last().map(|ns| *ns as f64 / 1e6),
        "proxy_cpu_pct": relayed.then_some(proxy_cpu),
        "pps_per_proxy_core": (relayed && proxy_cpu > 0.5).then(|| received_pps * 100.0 / proxy_cpu),
        "generator_cpu_pct": cpu_pct(a.3, b.3),
    }))
}

/// One control connection to the ingest: the `ftl` crate's server core with the channel's
/// secret; the claim always succeeds. Media is counted by [`receive`], not fed to the core
/// (so it neither times out on media nor NACKs).
async fn ingest_session(stream: TcpStream, secret: String, udp_port: u16) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut config = ServerConfig::new(udp_port);
    config.media_timeout = Duration::from_secs(24 * 3600);
    config.nack = None;
    let mut session = ServerSession::new(Instant::now(), config, random_nonce());
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(out) = session.poll_output() {
            match out {
                ServerOutput::Control(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        session.handle_input(Instant::now(), ServerInput::ControlClosed);
                    }
                }
                ServerOutput::Datagram(_) => {}
                ServerOutput::Event(ServerEvent::SecretNeeded { .. }) => {
                    let found = SecretLookup::Found(deadsfu_ftl::ChannelSecret::new(
                        secret.clone().into_bytes(),
                    ));
                    session.handle_input(Instant::now(), ServerInput::Secret(found));
                }
                ServerOutput::Event(ServerEvent::ClaimNeeded { .. }) => {
                    session.handle_input(Instant::now(), ServerInput::Claim(ClaimOutcome::Claimed));
                }
                ServerOutput::Event(ServerEvent::Ended(reason)) => {
                    tracing::debug!(?reason, "ingest session ended");
                    let _ = writer.shutdown().await;
                    return;
                }
                ServerOutput::Event(_) => {}
            }
        }
        let timeout = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => session.handle_input(Instant::now(), ServerInput::ControlClosed),
                Ok(n) => session.handle_input(Instant::now(), ServerInput::Control(&buf[..n])),
            },
            () = tokio::time::sleep_until(timeout.into()) => {
                session.handle_input(Instant::now(), ServerInput::Timeout);
            }
        }
    }
}

/// The pusher's control session: reports the media address once streaming, pings while it
/// streams, sends `DISCONNECT` when `stop` turns true.
async fn push_control(
    bind: IpAddr,
    target: SocketAddr,
    key: StreamKey,
    up: oneshot::Sender<SocketAddr>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stream = connect_from(bind, target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let server_ip = stream.peer_addr()?.ip();
    let (mut reader, mut writer) = stream.into_split();
    let mut config = ClientConfig::new(key);
    config.audio = false;
    let mut session = ClientSession::new(config);
    session.start(Instant::now());
    let mut up = Some(up);
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(out) = session.poll_output() {
            match out {
                ClientOutput::Control(bytes) => writer.write_all(&bytes).await?,
                ClientOutput::Event(ClientEvent::Connected { udp_port }) => {
                    if let Some(up) = up.take() {
                        let _ = up.send(SocketAddr::new(server_ip, udp_port));
                    }
                }
                ClientOutput::Event(ClientEvent::Ended(end)) => {
                    if *stop.borrow() {
                        return Ok(());
                    }
                    bail!("FTL session ended: {end:?}");
                }
            }
        }
        let timeout = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => session.handle_input(Instant::now(), ClientInput::ControlClosed),
                Ok(n) => session.handle_input(Instant::now(), ClientInput::Control(&buf[..n])),
            },
            () = tokio::time::sleep_until(timeout.into()) => {
                session.handle_input(Instant::now(), ClientInput::Timeout);
            }
            () = stopped(&mut stop) => {
                session.handle_input(Instant::now(), ClientInput::Disconnect);
                while let Some(out) = session.poll_output() {
                    if let ClientOutput::Control(bytes) = out {
                        let _ = writer.write_all(&bytes).await;
                    }
                }
                return Ok(());
            }
        }
    }
}

/// Resolves when `stop` turns true (without holding the channel's read guard).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The ingest's UDP side: counts datagrams of the channel's SSRC and, while measuring, keeps
/// their latency (nanoseconds).
fn receive(socket: UdpSocket, ssrc: u32, received: &Received) -> io::Result<Vec<u64>> {
    let mut samples = Vec::new();
    let mut batch = RecvMmsg::new(BATCH, 2048);
    let fd = socket.as_raw_fd();
    while !received.stop.load(Relaxed) {
        // The socket's read timeout bounds the wait, so `stop` is seen.
        let n = batch.recv_waiting(fd)?;
        let now = now_ns();
        let measuring = received.measuring.load(Relaxed);
        let mut counted = 0;
        for d in (0..n).filter_map(|i| batch.get(i)).map(|r| r.data) {
            if d.len() < MIN_DATAGRAM || u32::from_be_bytes([d[8], d[9], d[10], d[11]]) != ssrc {
                continue;
            }
            counted += 1;
            if measuring && samples.len() < MAX_SAMPLES {
                let sent = u64::from_be_bytes(d[SENT_AT..SENT_AT + 8].try_into().expect("8"));
                samples.push(now.saturating_sub(sent));
            }
        }
        received.packets.fetch_add(counted, Relaxed);
    }
    Ok(samples)
}

/// The pusher's media: RTP datagrams to `to` until stopped, as fast as `sendmmsg` goes or at
/// `rate` per second (in bursts of at most [`BATCH`], sleeping between them).
fn push_media(
    bind: IpAddr,
    to: SocketAddr,
    ssrc: u32,
    len: usize,
    rate: Option<f64>,
    sent: &Sent,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::new(bind, 0))?;
    socket.connect(to)?;
    // Sleeps as short as asked: the default 50 µs timer slack would batch a paced stream.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut packets = vec![vec![0u8; len]; BATCH];
    let mut batch = SendMmsg::new(BATCH);
    let mut number: u64 = 0;
    let mut seq: u16 = rand::random();
    let start = Instant::now();
    // Pause between bursts when paced: a few packets' worth, 20 µs to 1 ms.
    let pause = rate.map(|r| Duration::from_secs_f64((4.0 / r).clamp(20e-6, 1e-3)));
    while !sent.stop.load(Relaxed) {
        let want = match rate {
            None => BATCH,
            Some(r) => {
                let due = (start.elapsed().as_secs_f64() * r) as u64;
                let n = due.saturating_sub(number).min(BATCH as u64) as usize;
                if n == 0 {
                    std::thread::sleep(pause.expect("paced"));
                    continue;
                }
                n
            }
        };
        let at = now_ns();
        for p in packets.iter_mut().take(want) {
            p[0] = 0x80;
            p[1] = VIDEO_PAYLOAD_TYPE;
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&((number as u32).wrapping_mul(90)).to_be_bytes());
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            p[12] = 0x41; // a non-IDR slice
            p[SENT_AT..SENT_AT + 8].copy_from_slice(&at.to_be_bytes());
            p[NUMBER..NUMBER + 8].copy_from_slice(&number.to_be_bytes());
            seq = seq.wrapping_add(1);
            number += 1;
        }
        let messages = packets[..want].iter().map(|data| Outgoing {
            to,
            data,
            segment_size: None,
        });
        let done = batch.send(socket.as_raw_fd(), messages);
        match done {
            Ok(n) => {
                sent.packets.fetch_add(n as u64, Relaxed);
                if n < want {
                    sent.errors.fetch_add((want - n) as u64, Relaxed);
                }
            }
            Err(_) => {
                sent.errors.fetch_add(want as u64, Relaxed);
            }
        }
    }
    Ok(())
}
