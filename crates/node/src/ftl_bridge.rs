//! FTL ingest wired into the SFU: which channels exist (keys from flags, a file, or the cluster),
//! which room a channel publishes into, and the bridge from FTL packets to the room's fan-out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use deadsfu_ftl::net::{
    BoxFuture, ChannelDirectory, ClaimError, DirectoryError, FtlPublisher, FtlServer,
    FtlServerConfig, FtlServerHandle,
};
use deadsfu_ftl::{ChannelSecret, FtlMedia, MediaKind, StreamKey};
use deadsfu_media::Codec;
use deadsfu_media::sender_clock::SenderClock;
use deadsfu_rtc::{Ingest, IngestPacket, MediaEngine, SessionError};

use crate::membership::Membership;

#[derive(Debug, Clone, Args)]
pub struct FtlArgs {
    /// FTL control listen address (OBS and ftl-sdk always use port 8084); empty disables FTL.
    #[arg(long, env = "DEADSFU_FTL_LISTEN", default_value = "0.0.0.0:8084")]
    pub ftl_listen: String,
    /// The one UDP port all FTL sessions send media to (0: ephemeral).
    #[arg(long, env = "DEADSFU_FTL_UDP_PORT", default_value_t = 8084)]
    pub ftl_udp_port: u16,
    /// A stream key as typed into OBS, CHANNEL-SECRET (repeatable). Prefer the environment
    /// (DEADSFU_FTL_KEY, comma-separated, or DEADSFU_FTL_KEYS) or a keys file: flags show in `ps`.
    #[arg(
        long = "ftl-key",
        env = "DEADSFU_FTL_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub ftl_key: Vec<StreamKey>,
    /// File with one stream key per line (`#` starts a comment).
    #[arg(long, env = "DEADSFU_FTL_KEYS_FILE")]
    pub ftl_keys_file: Option<PathBuf>,
    /// Publish channel CHANNEL into room ROOM instead of the room named after the channel id
    /// (repeatable): CHANNEL=ROOM.
    #[arg(long = "ftl-room", env = "DEADSFU_FTL_ROOM", value_delimiter = ',', value_parser = parse_room_map)]
    pub ftl_room: Vec<(u32, String)>,
    /// Most open FTL control connections. When all are taken, the oldest one that has not
    /// proved its stream key is closed for a newcomer.
    #[arg(long, env = "DEADSFU_FTL_MAX_CONNECTIONS", default_value_t = 1024)]
    pub ftl_max_connections: usize,
    /// Most open FTL control connections per client IP (IPv6: per /64).
    #[arg(long, env = "DEADSFU_FTL_MAX_CONNECTIONS_PER_IP", default_value_t = 8)]
    pub ftl_max_connections_per_ip: usize,
    /// New FTL control connections per second per client IP (burst: 5 times this, at least 1).
    #[arg(
        long,
        env = "DEADSFU_FTL_CONNECTS_PER_SECOND_PER_IP",
        default_value_t = 2.0
    )]
    pub ftl_connects_per_second_per_ip: f64,
    /// Seconds a client has to finish the FTL handshake (from connecting to streaming);
    /// clients that send nothing are closed after this.
    #[arg(long, env = "DEADSFU_FTL_HANDSHAKE_TIMEOUT", default_value_t = 5)]
    pub ftl_handshake_timeout: u64,
}

fn parse_room_map(text: &str) -> Result<(u32, String), String> {
    let (channel, room) = text
        .split_once('=')
        .ok_or_else(|| "expected CHANNEL=ROOM".to_string())?;
    let channel = channel
        .trim()
        .parse::<u32>()
        .map_err(|_| "CHANNEL must be a number".to_string())?;
    let room = room.trim();
    if room.is_empty() {
        return Err("ROOM must not be empty".into());
    }
    Ok((channel, room.to_owned()))
}

impl FtlArgs {
    /// Stream keys from the flag, `DEADSFU_FTL_KEYS` and the keys file.
    fn keys(&self) -> anyhow::Result<HashMap<u32, ChannelSecret>> {
        let mut keys: Vec<StreamKey> = self.ftl_key.clone();
        let mut parse_list = |text: &str, origin: &str| -> anyhow::Result<()> {
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("");
                for word in line.split([',', ' ', '\t']).filter(|w| !w.is_empty()) {
                    // The error names the place, never the key itself.
                    let key = word
                        .parse::<StreamKey>()
                        .map_err(|e| anyhow::anyhow!("{origin} line {}: {e}", n + 1))?;
                    keys.push(key);
                }
            }
            Ok(())
        };
        if let Ok(list) = std::env::var("DEADSFU_FTL_KEYS") {
            parse_list(&list, "DEADSFU_FTL_KEYS")?;
        }
        if let Some(path) = &self.ftl_keys_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading FTL keys file {}", path.display()))?;
            parse_list(&text, &path.display().to_string())?;
        }
        Ok(keys.into_iter().map(|k| (k.channel_id, k.secret)).collect())
    }
}

/// Starts the FTL server when enabled. Returns its control address and a future that runs it
/// until `shutdown` resolves (every live stream then gets FTL's 410).
pub async fn start(
    args: &FtlArgs,
    engine: &MediaEngine,
    cluster: Option<Membership>,
) -> anyhow::Result<Option<(SocketAddr, FtlServer, Vec<u32>)>> {
    if args.ftl_listen.trim().is_empty() {
        return Ok(None);
    }
    let control: SocketAddr = args
        .ftl_listen
        .parse()
        .with_context(|| format!("--ftl-listen {:?} is not an address", args.ftl_listen))?;
    let keys = args.keys()?;
    let mut channels: Vec<u32> = keys.keys().copied().collect();
    channels.sort_unstable();
    let directory = Arc::new(FtlChannels {
        keys,
        rooms: args.ftl_room.iter().cloned().collect(),
        engine: engine.clone(),
        cluster: cluster.clone(),
        // What proxies connect to: the address in this node's record (a listen address of
        // 0.0.0.0 becomes the node's public address there).
        ftl_addr: cluster
            .as_ref()
            .and_then(|c| c.ftl_addr())
            .unwrap_or_else(|| control.to_string()),
    });
    let udp = SocketAddr::new(control.ip(), args.ftl_udp_port);
    let mut config = FtlServerConfig::new(control, udp);
    config.max_sessions = args.ftl_max_connections.max(1);
    config.max_connections_per_ip = args.ftl_max_connections_per_ip.max(1);
    config.connects_per_second_per_ip = args.ftl_connects_per_second_per_ip.max(0.0);
    config.connect_burst_per_ip = (args.ftl_connects_per_second_per_ip * 5.0).max(1.0);
    config.session.handshake_timeout =
        std::time::Duration::from_secs(args.ftl_handshake_timeout.max(1));
    tracing::info!(
        max_connections = config.max_sessions,
        max_connections_per_ip = config.max_connections_per_ip,
        connects_per_second_per_ip = config.connects_per_second_per_ip,
        handshake_timeout_s = config.session.handshake_timeout.as_secs(),
        "FTL limits"
    );
    let server = FtlServer::bind(config, directory.clone())
        .await
        .with_context(|| format!("binding FTL on {control} (TCP) and {udp} (UDP)"))?;
    let bound = server.control_addr()?;
    if cluster.is_some() {
        tokio::spawn(end_streams_of_removed_keys(
            server.handle(),
            directory.clone(),
        ));
    }
    Ok(Some((bound, server, channels)))
}

/// The FTL listener's counters on the SFU's `/metrics`.
pub struct FtlMetrics(pub FtlServerHandle);

impl deadsfu_server::MetricsSource for FtlMetrics {
    fn write_prometheus(&self, out: &mut String) {
        self.0.write_prometheus(out);
    }
}

/// How often live channels' keys are checked against the cluster's key store.
const KEY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// In cluster mode keys can be removed while a stream is live (`deadsfu cluster ftl-key rm`):
/// such a stream is ended with FTL's 410.
async fn end_streams_of_removed_keys(server: FtlServerHandle, directory: Arc<FtlChannels>) {
    let mut tick = tokio::time::interval(KEY_CHECK_EVERY);
    loop {
        tick.tick().await;
        for channel in server.live_channels() {
            // A lookup error (Redis away) is not a removal: the stream goes on.
            if let Ok(None) = directory.secret(channel).await {
                tracing::info!(channel, "stream key removed: ending the FTL stream");
                server.end_channel(channel);
            }
        }
    }
}

struct FtlChannels {
    keys: HashMap<u32, ChannelSecret>,
    rooms: HashMap<u32, String>,
    engine: MediaEngine,
    cluster: Option<Membership>,
    ftl_addr: String,
}

impl ChannelDirectory for FtlChannels {
    fn secret(
        &self,
        channel_id: u32,
    ) -> BoxFuture<'_, Result<Option<ChannelSecret>, DirectoryError>> {
        Box::pin(async move {
            if let Some(secret) = self.keys.get(&channel_id) {
                return Ok(Some(secret.clone()));
            }
            match &self.cluster {
                Some(c) => c
                    .ftl_key(channel_id)
                    .await
                    .map(|k| k.map(ChannelSecret::new))
                    .map_err(|e| DirectoryError(e.to_string())),
                None => Ok(None),
            }
        })
    }

    fn claim(&self, channel_id: u32) -> BoxFuture<'_, Result<Box<dyn FtlPublisher>, ClaimError>> {
        Box::pin(async move {
            let room = self
                .rooms
                .get(&channel_id)
                .cloned()
                .unwrap_or_else(|| channel_id.to_string());
            if let Some(c) = &self.cluster
                && let Err(owner) = c.claim_room_for_publisher(&room).await
            {
                tracing::warn!(
                    channel = channel_id,
                    room,
                    owner,
                    "the room is published on another node"
                );
                return Err(ClaimError::InUse);
            }
            let ingest = match self.engine.open_ingest(&room) {
                Ok(i) => i,
                Err(SessionError::RoomBusy(_)) => return Err(ClaimError::InUse),
                Err(e) => return Err(ClaimError::Failed(e.to_string())),
            };
            let lease = match &self.cluster {
                Some(c) => Some(c.claim_ftl(channel_id, &self.ftl_addr).await?),
                None => None,
            };
            tracing::info!(channel = channel_id, room, "FTL stream live");
            Ok(Box::new(FtlRoomPublisher {
                ingest,
                channel_id,
                clock: SenderClock::default(),
                _lease: lease,
            }) as Box<dyn FtlPublisher>)
        })
    }
}

/// Feeds one FTL session's packets into its room.
struct FtlRoomPublisher {
    ingest: Ingest,
    channel_id: u32,
    /// The client's media clock from its sender reports, for audio/video sync.
    clock: SenderClock,
    /// Held while the stream is live; releases the cluster's `ftl:{channel}` lease on drop.
    _lease: Option<crate::membership::FtlLease>,
}

impl FtlPublisher for FtlRoomPublisher {
    fn media(&mut self, media: FtlMedia) {
        let (codec, kind) = match media.kind {
            // FTL is H264 constrained baseline, packetization-mode 1.
            MediaKind::Video => (
                Codec::H264 { profile: 0x42e0 },
                deadsfu_media::MediaKind::Video,
            ),
            MediaKind::Audio => (Codec::Opus, deadsfu_media::MediaKind::Audio),
        };
        let capture = self
            .clock
            .capture_time(kind, media.timestamp, codec.clock_rate());
        self.ingest.push(IngestPacket {
            codec,
            sequence: media.sequence,
            timestamp: media.timestamp,
            marker: media.marker,
            payload: media.payload,
            arrival: media.received_at,
            capture,
        });
    }

    fn sender_report(&mut self, kind: MediaKind, report: deadsfu_ftl::udp::SenderReport) {
        let kind = match kind {
            MediaKind::Video => deadsfu_media::MediaKind::Video,
            MediaKind::Audio => deadsfu_media::MediaKind::Audio,
        };
        self.clock.on_sender_report(
            kind,
            report.ntp_time,
            report.rtp_timestamp,
            std::time::Instant::now(),
        );
    }

    fn ended(&mut self, reason: deadsfu_ftl::server::EndReason) {
        tracing::info!(
            channel = self.channel_id,
            room = self.ingest.room_name(),
            ?reason,
            "FTL stream ended"
        );
    }
}
