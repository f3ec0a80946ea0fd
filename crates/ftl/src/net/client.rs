//! The FTL push client behind `deadsfu ftl-push`: streams an H264 Annex-B file and an Ogg Opus
//! file in real time the way ftl-sdk does, answers NACKs from its retransmission store, sends
//! ping packets and sender reports, and says `DISCONNECT` when told to stop.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, info, warn};

use crate::client::{
    AUDIO_PAYLOAD_TYPE, ClientConfig, ClientEnd, ClientEvent, ClientInput, ClientOutput,
    ClientSession, MAX_RTP_PAYLOAD, OutgoingTrack, ServerDatagram, VIDEO_PAYLOAD_TYPE,
    handle_server_datagram,
};
use crate::source::h264::{access_units, packetize_frame, split_nal_units};
use crate::source::ogg::{OggError, OpusPacket, read_opus_packets};
use crate::stream_key::StreamKey;
use crate::udp::{self, MAX_DATAGRAM};

/// The FTL control port; ftl-sdk cannot use another.
pub const DEFAULT_PORT: u16 = 8084;

/// Command-line arguments of `deadsfu ftl-push`, for embedding in the binary's CLI.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// FTL server as HOST or HOST:PORT (port 8084 by default).
    #[arg(long, env = "DEADSFU_FTL_SERVER")]
    pub server: String,
    /// Stream key as typed into OBS: CHANNEL-SECRET. Prefer the environment variable: flags
    /// show up in `ps`.
    #[arg(long, env = "DEADSFU_FTL_KEY", hide_env_values = true)]
    pub key: StreamKey,
    /// H264 Annex-B elementary stream (baseline, no B-frames).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Ogg Opus file.
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Start the files over when they end, until stopped.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Drop this share (0-100) of first transmissions of media packets, to exercise NACKs.
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    pub drop_percent: f64,
    /// Frame rate of the video file (Annex-B carries no timing).
    #[arg(long, default_value_t = 30.0, value_parser = parse_fps)]
    pub fps: f64,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=100.0).contains(&value) => Ok(value),
        _ => Err("expected a number from 0 to 100".into()),
    }
}

fn parse_fps(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 240.0 => Ok(value),
        _ => Err("expected a frame rate above 0 and at most 240".into()),
    }
}

/// Settings of one push.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub server: String,
    pub key: StreamKey,
    pub video: Option<PathBuf>,
    pub audio: Option<PathBuf>,
    pub looping: bool,
    pub drop_percent: f64,
    pub fps: f64,
    /// Limit on resolving and connecting to the server.
    pub connect_timeout: Duration,
}

impl From<PushArgs> for PushConfig {
    fn from(args: PushArgs) -> Self {
        Self {
            server: args.server,
            key: args.key,
            video: args.video,
            audio: args.audio,
            looping: args.looping,
            drop_percent: args.drop_percent,
            fps: args.fps,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What a finished push did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushReport {
    /// How the control session ended (`Disconnected` after a clean stop).
    pub end: Option<ClientEnd>,
    pub udp_port: u16,
    pub video_frames: u64,
    pub video_packets: u64,
    pub audio_packets: u64,
    /// First transmissions dropped on purpose (`drop_percent`).
    pub dropped: u64,
    pub retransmitted: u64,
    pub nacks: u64,
    pub ping_echoes: u64,
    pub last_rtt: Option<Duration>,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("no --video or --audio file given")]
    NoMedia,
    #[error("reading {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("{path} has no H264 frames starting at an SPS")]
    NoVideoFrames { path: PathBuf },
    #[error("{path}: {source}")]
    Audio { path: PathBuf, source: OggError },
    #[error("could not resolve FTL server {0}")]
    Resolve(String),
    #[error("connecting to FTL server {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("FTL server refused the stream with {code}{}", explain(*code))]
    Rejected { code: u16 },
    #[error("FTL session failed: {0:?}")]
    Session(ClientEnd),
    #[error("network error: {0}")]
    Io(#[from] io::Error),
}

fn explain(code: u16) -> &'static str {
    match code {
        401 => " (unknown channel)",
        405 => " (wrong stream key)",
        406 => " (channel already live)",
        400 => " (bad request)",
        500 => " (server error)",
        _ => "",
    }
}

/// Largest media file read into memory.
const MAX_FILE: u64 = 1 << 30;
/// Interval of ping packets (ftl-sdk: 25 ms).
const PING_PACKET_INTERVAL: Duration = Duration::from_millis(25);
/// Interval of sender reports (ftl-sdk: about 1 s).
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
const VIDEO_CLOCK: u32 = 90_000;
const AUDIO_CLOCK: u32 = 48_000;

async fn read_file(path: &Path) -> Result<Bytes, PushError> {
    let error = |source| PushError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(error)?;
    let mut data = Vec::new();
    file.take(MAX_FILE)
        .read_to_end(&mut data)
        .await
        .map_err(error)?;
    Ok(Bytes::from(data))
}

/// Video frames paced at a fixed rate, looping if asked.
struct VideoSource {
    frames: Vec<Vec<Bytes>>,
    fps: f64,
    /// Frames sent so far, across loops: the clock of the stream.
    sent: u64,
}

impl VideoSource {
    fn due(&self, start: tokio::time::Instant, looping: bool) -> Option<tokio::time::Instant> {
        if !looping && self.sent >= self.frames.len() as u64 {
            return None;
        }
        Some(start + Duration::from_secs_f64(self.sent as f64 / self.fps))
    }

    fn next(&mut self) -> (&[Bytes], u32) {
        let index = (self.sent % self.frames.len() as u64) as usize;
        let timestamp = (self.sent as f64 * f64::from(VIDEO_CLOCK) / self.fps).round() as u64;
        self.sent += 1;
        (&self.frames[index], timestamp as u32)
    }
}

/// Opus packets paced by their durations, looping if asked.
struct AudioSource {
    packets: Vec<OpusPacket>,
    sent: u64,
    /// Samples sent so far, across loops: the clock of the stream.
    samples: u64,
}

impl AudioSource {
    fn due(&self, start: tokio::time::Instant, looping: bool) -> Option<tokio::time::Instant> {
        if !looping && self.sent >= self.packets.len() as u64 {
            return None;
        }
        Some(start + Duration::from_secs_f64(self.samples as f64 / f64::from(AUDIO_CLOCK)))
    }

    fn next(&mut self) -> (&OpusPacket, u32) {
        let index = (self.sent % self.packets.len() as u64) as usize;
        let timestamp = self.samples as u32;
        self.sent += 1;
        self.samples += u64::from(self.packets[index].samples);
        (&self.packets[index], timestamp)
    }
}

async fn load_sources(
    config: &PushConfig,
) -> Result<(Option<VideoSource>, Option<AudioSource>), PushError> {
    if config.video.is_none() && config.audio.is_none() {
        return Err(PushError::NoMedia);
    }
    let video = match &config.video {
        None => None,
        Some(path) => {
            let frames = access_units(split_nal_units(&read_file(path).await?));
            if frames.is_empty() {
                return Err(PushError::NoVideoFrames { path: path.clone() });
            }
            Some(VideoSource {
                frames,
                fps: config.fps,
                sent: 0,
            })
        }
    };
    let audio = match &config.audio {
        None => None,
        Some(path) => {
            let packets =
                read_opus_packets(&read_file(path).await?).map_err(|source| PushError::Audio {
                    path: path.clone(),
                    source,
                })?;
            // An Ogg file with headers only has nothing to pace; treat it as no audio.
            (!packets.is_empty()).then_some(AudioSource {
                packets,
                sent: 0,
                samples: 0,
            })
        }
    };
    Ok((video, audio))
}

/// Splits `HOST[:PORT]` (IPv6 literals with or without brackets) into host and port.
fn split_server(server: &str) -> (String, u16) {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    if let Ok(ip) = server.trim_matches(['[', ']']).parse::<IpAddr>() {
        return (ip.to_string(), DEFAULT_PORT);
    }
    match server.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            (host.to_owned(), port.parse().unwrap_or(DEFAULT_PORT))
        }
        _ => (server.to_owned(), DEFAULT_PORT),
    }
}

fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// NTP time (seconds since 1900 in the high 32 bits, fraction in the low) of the wall clock.
fn ntp_now() -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let now = wall_clock();
    let fraction = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    ((now.as_secs() + NTP_UNIX_OFFSET) << 32) | fraction
}

struct Control {
    session: ClientSession,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Control {
    /// Writes pending control bytes; returns the session's events.
    async fn flush(&mut self) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        while let Some(output) = self.session.poll_output() {
            match output {
                ClientOutput::Control(bytes) => {
                    let written =
                        tokio::time::timeout(Duration::from_secs(5), self.writer.write_all(&bytes))
                            .await;
                    if !matches!(written, Ok(Ok(()))) {
                        self.session
                            .handle_input(Instant::now(), ClientInput::ControlClosed);
                    }
                }
                ClientOutput::Event(event) => events.push(event),
            }
        }
        events
    }

    fn timeout(&self) -> tokio::time::Instant {
        self.session
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))
    }
}

/// Streams the configured files to an FTL server until they end (without `looping`), the
/// server ends the stream, or `shutdown` completes; then sends `DISCONNECT`.
pub async fn push(
    config: PushConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<PushReport, PushError> {
    let (mut video, mut audio) = load_sources(&config).await?;
    let (host, port) = split_server(&config.server);
    let target = format!("{host}:{port}");
    let connect = async {
        let mut last_error = None;
        for addr in tokio::net::lookup_host(&target).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
    };
    let stream = match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) if source.kind() == io::ErrorKind::NotFound => {
            return Err(PushError::Resolve(target));
        }
        Ok(Err(source)) => {
            return Err(PushError::Connect {
                addr: target,
                source,
            });
        }
        Err(_) => {
            return Err(PushError::Connect {
                addr: target,
                source: io::ErrorKind::TimedOut.into(),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    let server_ip = stream.peer_addr()?.ip();
    let (mut reader, writer) = stream.into_split();

    let mut client_config = ClientConfig::new(config.key.clone());
    client_config.video = video.is_some();
    client_config.audio = audio.is_some();
    let mut control = Control {
        session: ClientSession::new(client_config),
        writer,
    };
    control.session.start(Instant::now());
    let mut report = PushReport::default();
    let mut read_buffer = vec![0u8; 4096];
    tokio::pin!(shutdown);

    // Handshake.
    let udp_port = loop {
        for event in control.flush().await {
            match event {
                ClientEvent::Connected { udp_port } => {
                    report.udp_port = udp_port;
                }
                ClientEvent::Ended(ClientEnd::Rejected(code)) => {
                    return Err(PushError::Rejected { code });
                }
                ClientEvent::Ended(end) => return Err(PushError::Session(end)),
            }
        }
        if control.session.is_streaming() {
            break report.udp_port;
        }
        let timeout = control.timeout();
        tokio::select! {
            read = reader.read(&mut read_buffer) => match read {
                Ok(0) | Err(_) => control.session.handle_input(Instant::now(), ClientInput::ControlClosed),
                Ok(len) => control.session.handle_input(Instant::now(), ClientInput::Control(&read_buffer[..len])),
            },
            () = tokio::time::sleep_until(timeout) => control.session.handle_input(Instant::now(), ClientInput::Timeout),
            () = &mut shutdown => {
                control.session.handle_input(Instant::now(), ClientInput::Disconnect);
                control.flush().await;
                report.end = Some(ClientEnd::Disconnected);
                return Ok(report);
            }
        }
    };

    let local: SocketAddr = match server_ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = UdpSocket::bind(local).await?;
    let media_addr = SocketAddr::new(server_ip, udp_port);
    info!(channel_id = config.key.channel_id, %media_addr, "FTL streaming");

    let mut video_track = OutgoingTrack::new(VIDEO_PAYLOAD_TYPE, config.key.video_ssrc());
    let mut audio_track = OutgoingTrack::new(AUDIO_PAYLOAD_TYPE, config.key.audio_ssrc());
    let drop_share = config.drop_percent / 100.0;
    let start = tokio::time::Instant::now();
    let mut ping_timer = tokio::time::interval(PING_PACKET_INTERVAL);
    let mut report_timer = tokio::time::interval(SENDER_REPORT_INTERVAL);
    let mut datagram = vec![0u8; MAX_DATAGRAM];

    let end = loop {
        let mut ended = None;
        for event in control.flush().await {
            if let ClientEvent::Ended(end) = event {
                ended = Some(end);
            }
        }
        if let Some(end) = ended {
            break end;
        }
        let video_due = video.as_ref().and_then(|v| v.due(start, config.looping));
        let audio_due = audio.as_ref().and_then(|a| a.due(start, config.looping));
        let media_due = match (video_due, audio_due) {
            (None, None) => {
                // Both files are done.
                control
                    .session
                    .handle_input(Instant::now(), ClientInput::Disconnect);
                continue;
            }
            (Some(v), Some(a)) => v.min(a),
            (Some(due), None) | (None, Some(due)) => due,
        };
        let control_timeout = control.timeout();
        tokio::select! {
            () = tokio::time::sleep_until(media_due) => {
                let now = tokio::time::Instant::now();
                let mut packets: Vec<Bytes> = Vec::new();
                if let Some(source) = video.as_mut()
                    && source.due(start, config.looping).is_some_and(|due| due <= now)
                {
                    let (frame, timestamp) = source.next();
                    for (payload, marker) in packetize_frame(frame, MAX_RTP_PAYLOAD) {
                        packets.push(video_track.packet(now.into_std(), timestamp, marker, &payload));
                        report.video_packets += 1;
                    }
                    report.video_frames += 1;
                }
                if let Some(source) = audio.as_mut()
                    && source.due(start, config.looping).is_some_and(|due| due <= now)
                {
                    let (packet, timestamp) = source.next();
                    packets.push(audio_track.packet(now.into_std(), timestamp, false, &packet.data));
                    report.audio_packets += 1;
                }
                for packet in packets {
                    if drop_share > 0.0 && rand::random::<f64>() < drop_share {
                        report.dropped += 1;
                        continue;
                    }
                    send_datagram(&udp, &packet, media_addr);
                }
            }
            _ = ping_timer.tick() => {
                let clock = wall_clock();
                let ping = udp::ping_packet(clock.as_secs() as i64, i64::from(clock.subsec_micros()));
                send_datagram(&udp, &ping, media_addr);
            }
            _ = report_timer.tick() => {
                let ntp = ntp_now();
                let now = Instant::now();
                let reports = [
                    video_track.sender_report(now, ntp, VIDEO_CLOCK),
                    audio_track.sender_report(now, ntp, AUDIO_CLOCK),
                ];
                for report in reports.into_iter().flatten() {
                    send_datagram(&udp, &report.packet(), media_addr);
                }
            }
            received = udp.recv_from(&mut datagram) => {
                let Ok((len, from)) = received else { continue };
                // Like ftl-sdk, accept datagrams only from the server's IP.
                if from.ip() != server_ip {
                    continue;
                }
                match handle_server_datagram(&[&video_track, &audio_track], &datagram[..len]) {
                    ServerDatagram::Retransmit(packets) => {
                        report.nacks += 1;
                        report.retransmitted += packets.len() as u64;
                        for packet in packets {
                            send_datagram(&udp, &packet, media_addr);
                        }
                    }
                    ServerDatagram::PingEcho { seconds, microseconds } => {
                        report.ping_echoes += 1;
                        let sent = Duration::from_secs(seconds.max(0) as u64) + Duration::from_micros(microseconds.max(0) as u64);
                        report.last_rtt = wall_clock().checked_sub(sent);
                    }
                    ServerDatagram::Ignored => {}
                }
            }
            read = reader.read(&mut read_buffer) => match read {
                Ok(0) | Err(_) => control.session.handle_input(Instant::now(), ClientInput::ControlClosed),
                Ok(len) => control.session.handle_input(Instant::now(), ClientInput::Control(&read_buffer[..len])),
            },
            () = tokio::time::sleep_until(control_timeout) => control.session.handle_input(Instant::now(), ClientInput::Timeout),
            () = &mut shutdown => {
                debug!("FTL push stopping");
                control.session.handle_input(Instant::now(), ClientInput::Disconnect);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), control.writer.shutdown()).await;
    report.end = Some(end);
    info!(?report, "FTL push finished");
    match end {
        ClientEnd::Disconnected => Ok(report),
        ClientEnd::Rejected(code) => Err(PushError::Rejected { code }),
        other => {
            warn!(?other, "FTL push ended by the session");
            Err(PushError::Session(other))
        }
    }
}

/// Sends without waiting: UDP media is paced by the caller and a full socket buffer means the
/// packet would be late anyway.
fn send_datagram(udp: &UdpSocket, packet: &[u8], to: SocketAddr) {
    if let Err(error) = udp.try_send_to(packet, to)
        && error.kind() != io::ErrorKind::WouldBlock
    {
        debug!(%error, "FTL UDP send failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_server_addresses() {
        assert_eq!(split_server("example.com"), ("example.com".into(), 8084));
        assert_eq!(
            split_server("example.com:9000"),
            ("example.com".into(), 9000)
        );
        assert_eq!(split_server("127.0.0.1:1"), ("127.0.0.1".into(), 1));
        assert_eq!(split_server("::1"), ("::1".into(), 8084));
        assert_eq!(split_server("[::1]"), ("::1".into(), 8084));
        assert_eq!(split_server("[::1]:7"), ("::1".into(), 7));
    }

    #[test]
    fn cli_arguments_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            push: PushArgs,
        }
        let cli = Cli::try_parse_from([
            "ftl-push",
            "--server",
            "host",
            "--key",
            "7-s",
            "--video",
            "v.h264",
            "--loop",
            "--drop-percent",
            "5",
        ])
        .unwrap();
        assert_eq!(cli.push.key.channel_id, 7);
        assert!(cli.push.looping);
        assert_eq!(cli.push.drop_percent, 5.0);
        assert!(
            Cli::try_parse_from([
                "ftl-push",
                "--server",
                "h",
                "--key",
                "7-s",
                "--drop-percent",
                "101"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["ftl-push", "--server", "h", "--key", "nokey"]).is_err());
    }
}
