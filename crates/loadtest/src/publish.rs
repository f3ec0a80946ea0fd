//! Publishing the synthetic stream: over WHIP (a str0m peer), over FTL, or as plain RTP to
//! fixed UDP ports (a Janus streaming mountpoint).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use deadsfu_client::signaling::Signaling;
use deadsfu_ftl::StreamKey;
use deadsfu_ftl::client::{
    AUDIO_PAYLOAD_TYPE, ClientConfig, ClientEvent, ClientInput, ClientOutput, ClientSession,
    OutgoingTrack, VIDEO_PAYLOAD_TYPE,
};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::stream::{Generator, Packet, StreamShape, Track};

/// Where the stream goes.
#[derive(Debug, Clone)]
pub enum Target {
    Whip {
        url: String,
        token: Option<String>,
    },
    Ftl {
        server: String,
        key: StreamKey,
    },
    /// Plain RTP to these ports (video, audio) on loopback, with these payload types.
    Rtp {
        video: SocketAddr,
        audio: SocketAddr,
        video_pt: u8,
        audio_pt: u8,
    },
}

/// What the publisher has done so far, readable while it runs.
#[derive(Debug)]
pub struct PublishStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// True once media flows (after ICE and DTLS for WHIP, the handshake for FTL).
    pub streaming: watch::Sender<bool>,
}

impl Default for PublishStats {
    fn default() -> Self {
        PublishStats {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            streaming: watch::Sender::new(false),
        }
    }
}

/// Publishes until `stop` turns true. Fails if the stream cannot be started.
pub async fn publish(
    target: Target,
    shape: StreamShape,
    stats: Arc<PublishStats>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    match target {
        Target::Whip { url, token } => publish_whip(&url, token, shape, stats, stop).await,
        Target::Ftl { server, key } => publish_ftl(&server, key, shape, stats, stop).await,
        Target::Rtp {
            video,
            audio,
            video_pt,
            audio_pt,
        } => publish_rtp(video, audio, video_pt, audio_pt, shape, stats, stop).await,
    }
}

/// Resolves when `stop` turns true (without holding the channel's read guard).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn count(stats: &PublishStats, len: usize) {
    stats.packets.fetch_add(1, Ordering::Relaxed);
    stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
}

/// A 12-byte RTP header in front of `payload`.
fn rtp_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

async fn publish_rtp(
    video: SocketAddr,
    audio: SocketAddr,
    video_pt: u8,
    audio_pt: u8,
    shape: StreamShape,
    stats: Arc<PublishStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut seqs = [rand::random::<u16>(), rand::random::<u16>()];
    let ssrcs = [rand::random::<u32>(), rand::random::<u32>()];
    let mut generator = Generator::new(shape, Instant::now());
    stats.streaming.send_replace(true);
    let mut due = Vec::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return Ok(()),
            _ = tokio::time::sleep_until(generator.next_due().into()) => {}
        }
        generator.due(Instant::now(), &mut due);
        for p in due.drain(..) {
            let (i, pt, to) = match p.track {
                Track::Video => (0, video_pt, video),
                Track::Audio => (1, audio_pt, audio),
            };
            let bytes = rtp_packet(pt, seqs[i], p.rtp_time, ssrcs[i], p.marker, &p.payload);
            seqs[i] = seqs[i].wrapping_add(1);
            if socket.send_to(&bytes, to).await.is_ok() {
                count(&stats, bytes.len());
            }
        }
    }
}

async fn publish_ftl(
    server: &str,
    key: StreamKey,
    shape: StreamShape,
    stats: Arc<PublishStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(server)
        .await
        .with_context(|| format!("connecting to FTL server {server}"))?;
    let server_ip = stream.peer_addr()?.ip();
    let (mut reader, mut writer) = stream.into_split();
    let mut config = ClientConfig::new(key.clone());
    config.audio = shape.audio;
    let mut session = ClientSession::new(config);
    session.start(Instant::now());
    let mut buf = vec![0u8; 4096];
    let mut udp_port = None;
    let mut generator: Option<Generator> = None;
    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let mut video_track = OutgoingTrack::new(VIDEO_PAYLOAD_TYPE, key.video_ssrc());
    let mut audio_track = OutgoingTrack::new(AUDIO_PAYLOAD_TYPE, key.audio_ssrc());
    let mut due = Vec::new();
    loop {
        while let Some(out) = session.poll_output() {
            match out {
                ClientOutput::Control(bytes) => writer.write_all(&bytes).await?,
                ClientOutput::Event(ClientEvent::Connected { udp_port: port }) => {
                    udp_port = Some(port);
                    generator = Some(Generator::new(shape.clone(), Instant::now()));
                    stats.streaming.send_replace(true);
                }
                ClientOutput::Event(ClientEvent::Ended(end)) => {
                    let stopping = *stop.borrow();
                    if stopping {
                        return Ok(());
                    }
                    bail!("FTL session ended: {end:?}");
                }
            }
        }
        let control_due = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let media_due = generator
            .as_ref()
            .map_or(control_due, |g| g.next_due().min(control_due));
        tokio::select! {
            () = stopped(&mut stop) => {
                session.handle_input(Instant::now(), ClientInput::Disconnect);
                while let Some(out) = session.poll_output() {
                    if let ClientOutput::Control(bytes) = out {
                        let _ = writer.write_all(&bytes).await;
                    }
                }
                return Ok(());
            }
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => session.handle_input(Instant::now(), ClientInput::ControlClosed),
                Ok(n) => session.handle_input(Instant::now(), ClientInput::Control(&buf[..n])),
            },
            _ = tokio::time::sleep_until(media_due.into()) => {
                let now = Instant::now();
                if control_due <= now {
                    session.handle_input(now, ClientInput::Timeout);
                }
                if let (Some(g), Some(port)) = (generator.as_mut(), udp_port) {
                    g.due(now, &mut due);
                    let to = SocketAddr::new(server_ip, port);
                    for p in due.drain(..) {
                        let track = match p.track {
                            Track::Video => &mut video_track,
                            Track::Audio => &mut audio_track,
                        };
                        let bytes = track.packet(now, p.rtp_time, p.marker, &p.payload);
                        if udp.send_to(&bytes, to).await.is_ok() {
                            count(&stats, bytes.len());
                        }
                    }
                }
            }
        }
    }
}

/// Where one track is written: its media section and payload type.
type TrackOut = Option<(Mid, Pt)>;

/// Payload types (video H264 with packetization-mode 1, audio Opus) the answer accepted.
fn sending_pts(rtc: &mut Rtc, mids: &[(MediaKind, Mid)]) -> (TrackOut, TrackOut) {
    let mut video = None;
    let mut audio = None;
    for &(kind, mid) in mids {
        let want = match kind {
            MediaKind::Audio => Codec::Opus,
            MediaKind::Video => Codec::H264,
        };
        let pt = deadsfu_client::send_payload_type(rtc, mid, want);
        match (kind, pt) {
            (MediaKind::Audio, Some(pt)) => audio = Some((mid, pt)),
            (MediaKind::Video, Some(pt)) => video = Some((mid, pt)),
            _ => {}
        }
    }
    (video, audio)
}

async fn publish_whip(
    url: &str,
    token: Option<String>,
    shape: StreamShape,
    stats: Arc<PublishStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let local_addr = socket.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local_addr, "udp")?);
    let mut api = rtc.sdp_api();
    let mut mids = Vec::new();
    if shape.audio {
        let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        mids.push((MediaKind::Audio, mid));
    }
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    mids.push((MediaKind::Video, mid));
    let (offer, pending) = api.apply().context("nothing to offer")?;
    let signaling = Signaling::new(token);
    let session = signaling
        .post_offer(url, offer.to_sdp_string())
        .await
        .context("WHIP POST")?;
    let answer = SdpAnswer::from_sdp_string(&session.answer)?;
    rtc.sdp_api().accept_answer(pending, answer)?;

    let mut buf = vec![0u8; 2048];
    let mut generator: Option<Generator> = None;
    let mut tracks = (None, None);
    let mut seqs = [rand::random::<u16>() as u64, rand::random::<u16>() as u64];
    let mut due: Vec<Packet> = Vec::new();
    let result = loop {
        // Drain str0m.
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Some(t),
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::Connected)) => {
                    tracks = sending_pts(&mut rtc, &mids);
                    generator = Some(Generator::new(shape.clone(), Instant::now()));
                    stats.streaming.send_replace(true);
                }
                Ok(Output::Event(_)) => {}
                Err(_) => break None,
            }
        };
        let Some(timeout) = timeout.filter(|_| rtc.is_alive()) else {
            break Err(anyhow::anyhow!("WHIP publisher connection ended"));
        };
        let wake = generator
            .as_ref()
            .map_or(timeout, |g| g.next_due().min(timeout));
        tokio::select! {
            () = stopped(&mut stop) => break Ok(()),
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: local_addr,
                    contents,
                });
                if rtc.handle_input(input).is_err() {
                    break Err(anyhow::anyhow!("WHIP publisher input rejected"));
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if let Some(g) = generator.as_mut() {
                    g.due(now, &mut due);
                    for p in due.drain(..) {
                        let (i, track) = match p.track {
                            Track::Video => (0, tracks.0),
                            Track::Audio => (1, tracks.1),
                        };
                        let seq = seqs[i];
                        seqs[i] += 1;
                        let Some((mid, pt)) = track else { continue };
                        let len = p.payload.len();
                        if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
                            let write = RtpWrite::new(pt, seq.into(), p.rtp_time, now, p.payload)
                                .marker(p.marker)
                                .nackable(true);
                            tx.write_rtp(write);
                            count(&stats, len);
                        }
                    }
                }
                if rtc.handle_input(Input::Timeout(now)).is_err() {
                    break Err(anyhow::anyhow!("WHIP publisher timeout rejected"));
                }
            }
        }
    };
    let _ = signaling.delete(&session.url).await;
    result
}
