//! The FTL proxy with real parts on 127.0.0.1: the `ftl` crate's ingest server as the SFU
//! (what `deadsfu serve` runs) and its push client as OBS, the proxy in between, routing from a
//! map.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadsfu_ftl::client::ClientEnd;
use deadsfu_ftl::net::{
    BoxFuture, ChannelDirectory, ClaimError, DirectoryError, FtlPublisher, FtlServer,
    FtlServerConfig, PushConfig, PushError, PushReport, push,
};
use deadsfu_ftl::server::{EndReason, StreamInfo};
use deadsfu_ftl::{ChannelSecret, FtlMedia, MediaKind, StreamKey};
use deadsfu_proxy::ftl::{FtlProxy, FtlProxyConfig, FtlStats, Rejection};
use deadsfu_proxy::ftl_routes::{FtlRouteError, FtlRoutes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The SFU: the ftl crate's ingest server with a directory that knows two channels.

#[derive(Debug)]
enum Seen {
    Started(StreamInfo),
    Media(FtlMedia),
    Ended(EndReason),
}

struct SfuDirectory {
    secrets: HashMap<u32, &'static str>,
    live: Arc<Mutex<HashSet<u32>>>,
    lookups: Arc<AtomicU32>,
    events: mpsc::UnboundedSender<(u32, Seen)>,
}

struct SfuPublisher {
    channel_id: u32,
    live: Arc<Mutex<HashSet<u32>>>,
    events: mpsc::UnboundedSender<(u32, Seen)>,
}

impl ChannelDirectory for SfuDirectory {
    fn secret(
        &self,
        channel_id: u32,
    ) -> BoxFuture<'_, Result<Option<ChannelSecret>, DirectoryError>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let secret = self
            .secrets
            .get(&channel_id)
            .map(|s| ChannelSecret::new(*s));
        Box::pin(async move { Ok(secret) })
    }

    fn claim(&self, channel_id: u32) -> BoxFuture<'_, Result<Box<dyn FtlPublisher>, ClaimError>> {
        Box::pin(async move {
            if !self.live.lock().unwrap().insert(channel_id) {
                return Err(ClaimError::InUse);
            }
            Ok(Box::new(SfuPublisher {
                channel_id,
                live: self.live.clone(),
                events: self.events.clone(),
            }) as Box<dyn FtlPublisher>)
        })
    }
}

impl FtlPublisher for SfuPublisher {
    fn started(&mut self, info: &StreamInfo) {
        let _ = self
            .events
            .send((self.channel_id, Seen::Started(info.clone())));
    }

    fn media(&mut self, media: FtlMedia) {
        let _ = self.events.send((self.channel_id, Seen::Media(media)));
    }

    fn ended(&mut self, reason: EndReason) {
        let _ = self.events.send((self.channel_id, Seen::Ended(reason)));
    }
}

impl Drop for SfuPublisher {
    fn drop(&mut self) {
        self.live.lock().unwrap().remove(&self.channel_id);
    }
}

struct Sfu {
    control: SocketAddr,
    lookups: Arc<AtomicU32>,
    events: mpsc::UnboundedReceiver<(u32, Seen)>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Sfu {
    async fn start() -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let lookups = Arc::new(AtomicU32::new(0));
        let directory = SfuDirectory {
            secrets: HashMap::from([(1, "one"), (2, "two")]),
            live: Arc::default(),
            lookups: lookups.clone(),
            events: events_tx,
        };
        let loopback = "127.0.0.1:0".parse().unwrap();
        let server = FtlServer::bind(
            FtlServerConfig::new(loopback, loopback),
            Arc::new(directory),
        )
        .await
        .unwrap();
        let control = server.control_addr().unwrap();
        let task = tokio::spawn(server.run(std::future::pending()));
        Self {
            control,
            lookups,
            events,
            task,
        }
    }

    /// The next event for `channel_id` that `accept` takes, skipping others; fails after WAIT.
    async fn wait_for<T>(
        &mut self,
        channel_id: u32,
        mut accept: impl FnMut(Seen) -> Option<T>,
    ) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let (channel, seen) = self.events.recv().await.expect("SFU alive");
                if channel == channel_id
                    && let Some(found) = accept(seen)
                {
                    return found;
                }
            }
        })
        .await
        .expect("SFU event within the time limit")
    }

    /// Waits for `count` media packets of the channel; fails if its session ends first.
    async fn media(&mut self, channel_id: u32, count: usize) -> Vec<FtlMedia> {
        let mut packets = Vec::new();
        self.wait_for(channel_id, |seen| match seen {
            Seen::Media(media) => {
                packets.push(media);
                (packets.len() == count).then_some(())
            }
            Seen::Ended(reason) => panic!("session ended: {reason:?}"),
            Seen::Started(_) => None,
        })
        .await;
        packets
    }
}

// ---------------------------------------------------------------------------------------------
// Routing: a map, counting how often the proxy asked.

#[derive(Default)]
struct MapRoutes {
    secrets: HashMap<u32, String>,
    sfus: HashMap<u32, SocketAddr>,
    secret_lookups: AtomicU32,
    sfu_lookups: AtomicU32,
}

#[async_trait]
impl FtlRoutes for MapRoutes {
    async fn channel_secret(&self, channel: u32) -> Result<Option<String>, FtlRouteError> {
        self.secret_lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.secrets.get(&channel).cloned())
    }

    fn sfu_for_channel(&self, channel: u32) -> Option<SocketAddr> {
        self.sfu_lookups.fetch_add(1, Ordering::SeqCst);
        self.sfus.get(&channel).copied()
    }
}

fn routes_to(sfu: SocketAddr) -> Arc<MapRoutes> {
    Arc::new(MapRoutes {
        secrets: HashMap::from([(1, "one".into()), (2, "two".into())]),
        sfus: HashMap::from([(1, sfu), (2, sfu)]),
        ..MapRoutes::default()
    })
}

struct Proxy {
    control: SocketAddr,
    stats: FtlStats,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    async fn start(routes: Arc<MapRoutes>, adjust: impl FnOnce(&mut FtlProxyConfig)) -> Self {
        let mut config = FtlProxyConfig::new("127.0.0.1:0".parse().unwrap(), 0);
        adjust(&mut config);
        let proxy = FtlProxy::bind(config, routes).await.unwrap();
        assert_eq!(proxy.udp_addr().ip(), proxy.control_addr().ip());
        let control = proxy.control_addr();
        let stats = proxy.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async {
            let _ = stopped.await;
        }));
        Self {
            control,
            stats,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// Waits until `check` holds for the counters.
    async fn settle(
        &self,
        what: &str,
        check: impl Fn(&deadsfu_proxy::ftl::FtlStatsSnapshot) -> bool,
    ) {
        let waited = tokio::time::timeout(WAIT, async {
            while !check(&self.stats.snapshot()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{what}: {:?}", self.stats.snapshot());
    }
}

// ---------------------------------------------------------------------------------------------
// OBS: the push client with small generated media files.

/// A tiny H264 Annex-B stream: SPS, PPS, an IDR slice big enough for FU-A, then P slices.
fn h264_file(frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut nal = |bytes: &[u8]| {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(bytes);
    };
    nal(&[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01]);
    nal(&[0x68, 0xce, 0x3c, 0x80]);
    let mut idr = vec![0x65, 0x88];
    idr.extend(std::iter::repeat_n(0x11, 3000));
    nal(&idr);
    for _ in 1..frames {
        let mut p = vec![0x41, 0x9a];
        p.extend(std::iter::repeat_n(0x22, 300));
        nal(&p);
    }
    out
}

/// A tiny Ogg Opus file of 20 ms packets (zero CRCs; the reader does not check them).
fn ogg_file(packets: usize) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, 0]);
    let mut all = vec![head, b"OpusTags\0\0\0\0\0\0\0\0".to_vec()];
    all.extend((0..packets).map(|i| vec![0xf8, 0xff, 0xfe, i as u8]));
    let mut out = Vec::new();
    for (sequence, packet) in all.iter().enumerate() {
        out.extend_from_slice(b"OggS");
        out.push(0);
        out.push(if sequence == 0 { 2 } else { 0 });
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(sequence as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(1);
        out.push(packet.len() as u8);
        out.extend_from_slice(packet);
    }
    out
}

struct MediaFiles {
    dir: PathBuf,
}

impl MediaFiles {
    fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "deadsfu-ftl-proxy-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("video.h264"), h264_file(30)).unwrap();
        std::fs::write(dir.join("audio.ogg"), ogg_file(50)).unwrap();
        Self { dir }
    }

    fn config(&self, server: SocketAddr, key: &str) -> PushConfig {
        PushConfig {
            server: server.to_string(),
            key: StreamKey::parse(key).unwrap(),
            video: Some(self.dir.join("video.h264")),
            audio: Some(self.dir.join("audio.ogg")),
            looping: true,
            drop_percent: 0.0,
            fps: 60.0,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Drop for MediaFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type PushTask = tokio::task::JoinHandle<Result<PushReport, PushError>>;

/// A push that runs until told to stop.
fn start_push(config: PushConfig) -> (oneshot::Sender<()>, PushTask) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(push(config, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn stop_push(stop: oneshot::Sender<()>, task: PushTask) -> PushReport {
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .expect("push stops")
        .unwrap()
        .expect("push ends cleanly")
}

/// A push that must be refused; returns the code and how long the refusal took.
async fn expect_rejected(config: PushConfig) -> (u16, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(WAIT, push(config, std::future::pending()))
        .await
        .expect("refused within the time limit")
    {
        Err(PushError::Rejected { code }) => (code, started.elapsed()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_push_through_the_proxy_reaches_the_sfu() {
    let files = MediaFiles::new();
    let mut sfu = Sfu::start().await;
    let proxy = Proxy::start(routes_to(sfu.control), |_| {}).await;

    let started = Instant::now();
    let (stop, task) = start_push(files.config(proxy.control, "1-one"));
    let info = sfu
        .wait_for(1, |seen| match seen {
            Seen::Started(info) => Some(info),
            _ => None,
        })
        .await;
    let handshake = started.elapsed();
    // The client's own attributes reached the SFU.
    assert_eq!(info.vendor_name.as_deref(), Some("deadsfu"));
    assert_eq!(info.video.as_ref().unwrap().ssrc, 2);
    assert_eq!(info.audio.as_ref().unwrap().ssrc, 1);

    let media = sfu.media(1, 400).await;
    assert!(media[0].keyframe_start && media[0].payload[0] == 0x67);
    let video = media.iter().filter(|m| m.kind == MediaKind::Video).count();
    let audio = media.iter().filter(|m| m.kind == MediaKind::Audio).count();
    assert!(video > 0 && audio > 0, "video {video}, audio {audio}");

    // Let a few pings make the round trip client -> proxy -> SFU -> proxy -> client.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = stop_push(stop, task).await;
    assert_eq!(report.end, Some(ClientEnd::Disconnected));
    assert!(report.ping_echoes > 0, "{report:?}");
    // DISCONNECT passed through.
    let reason = sfu
        .wait_for(1, |seen| match seen {
            Seen::Ended(reason) => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, EndReason::Disconnected);

    proxy
        .settle("session closed", |s| {
            s.open_connections == 0 && s.streaming_sessions == 0
        })
        .await;
    let stats = proxy.stats.snapshot();
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.rejected_total(), 0);
    assert!(stats.to_sfu_packets as usize >= media.len());
    assert!(stats.to_client_packets > 0, "SFU ping echoes relayed back");
    eprintln!(
        "push via proxy: handshake {handshake:?}; SFU got {} media packets ({video} video, {audio} audio) of {} video + {} audio sent; \
         proxy relayed {} datagrams ({} bytes) to the SFU and {} ({} bytes) back, echoed {} pings itself; client saw {} ping echoes, last RTT {:?}",
        media.len(),
        report.video_packets,
        report.audio_packets,
        stats.to_sfu_packets,
        stats.to_sfu_bytes,
        stats.to_client_packets,
        stats.to_client_bytes,
        stats.pings_echoed,
        report.ping_echoes,
        report.last_rtt,
    );
    proxy.stop().await;
}

#[tokio::test]
async fn nacks_from_the_sfu_repair_dropped_packets_through_the_relay() {
    let files = MediaFiles::new();
    let mut sfu = Sfu::start().await;
    let proxy = Proxy::start(routes_to(sfu.control), |_| {}).await;
    let mut config = files.config(proxy.control, "2-two");
    config.drop_percent = 20.0;
    config.fps = 120.0;
    let (stop, task) = start_push(config);

    let mut video_sequences = BTreeSet::new();
    let mut retransmitted = 0;
    sfu.wait_for(2, |seen| {
        if let Seen::Media(media) = seen
            && media.kind == MediaKind::Video
        {
            retransmitted += u32::from(media.retransmitted);
            assert!(
                video_sequences.insert(media.sequence),
                "duplicate delivered"
            );
            // Well past the checked range, so NACKs for it have had time to be answered.
            if media.sequence >= 400 {
                return Some(());
            }
        }
        None
    })
    .await;
    let first = *video_sequences.first().unwrap();
    let missing: Vec<u16> = (first..=300)
        .filter(|s| !video_sequences.contains(s))
        .collect();
    let report = stop_push(stop, task).await;
    let stats = proxy.stats.snapshot();
    eprintln!(
        "NACK repair via proxy: client dropped {} first transmissions, got {} NACKs, resent {}; \
         SFU recovered {retransmitted} video packets, {} unrepaired gaps in video {first}..=300; \
         proxy relayed {} datagrams back to the client",
        report.dropped,
        report.nacks,
        report.retransmitted,
        missing.len(),
        stats.to_client_packets,
    );
    assert!(report.dropped > 0 && report.nacks > 0, "{report:?}");
    assert!(retransmitted > 0);
    assert!(missing.is_empty(), "unrepaired video gaps: {missing:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_at_the_proxy() {
    let files = MediaFiles::new();
    let sfu = Sfu::start().await;
    let routes = routes_to(sfu.control);
    let proxy = Proxy::start(routes.clone(), |_| {}).await;

    let (code, took) = expect_rejected(files.config(proxy.control, "1-wrong")).await;
    assert_eq!(code, 405);
    let (unknown, _) = expect_rejected(files.config(proxy.control, "3-three")).await;
    assert_eq!(unknown, 401);

    // Neither touched routing to an SFU nor the SFU.
    assert_eq!(routes.secret_lookups.load(Ordering::SeqCst), 2);
    assert_eq!(routes.sfu_lookups.load(Ordering::SeqCst), 0);
    assert_eq!(sfu.lookups.load(Ordering::SeqCst), 0);
    proxy
        .settle("refusals counted", |s| {
            s.rejected(Rejection::WrongKey) == 1 && s.rejected(Rejection::UnknownChannel) == 1
        })
        .await;
    eprintln!("wrong key refused with {code} in {took:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_second_stream_on_a_live_channel_gets_the_sfus_406() {
    let files = MediaFiles::new();
    let mut sfu = Sfu::start().await;
    let routes = routes_to(sfu.control);
    let proxy = Proxy::start(routes, |_| {}).await;

    let (stop, task) = start_push(files.config(proxy.control, "1-one"));
    sfu.media(1, 20).await;
    let (code, took) = expect_rejected(files.config(proxy.control, "1-one")).await;
    assert_eq!(code, 406);
    // The live stream goes on.
    sfu.media(1, 50).await;
    let report = stop_push(stop, task).await;
    assert_eq!(report.end, Some(ClientEnd::Disconnected));
    proxy
        .settle("refusal counted", |s| {
            s.rejected(Rejection::ChannelInUse) == 1
        })
        .await;
    assert_eq!(
        sfu.lookups.load(Ordering::SeqCst),
        2,
        "both reached the SFU"
    );
    eprintln!("second stream refused with {code} in {took:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_sfu_that_goes_away_ends_the_clients_session() {
    let files = MediaFiles::new();
    let mut sfu = Sfu::start().await;
    let proxy = Proxy::start(routes_to(sfu.control), |_| {}).await;

    let (_stop, task) = start_push(files.config(proxy.control, "1-one"));
    sfu.media(1, 50).await;
    // The SFU process dies: its sessions' connections close without a goodbye.
    sfu.task.abort();
    let died = Instant::now();
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("the push ends")
        .unwrap();
    let took = died.elapsed();
    match result {
        Err(PushError::Session(ClientEnd::EndedByServer(410))) => {}
        other => panic!("expected the stream to end with 410, got {other:?}"),
    }
    assert!(took < Duration::from_secs(2), "took {took:?}");
    proxy
        .settle("session closed", |s| {
            s.open_connections == 0 && s.streaming_sessions == 0
        })
        .await;
    eprintln!("SFU gone: client's stream ended with 410 after {took:?}");
    proxy.stop().await;
}

/// Opens a control connection from `source` (any 127.0.0.0/8 address) and sends `send`.
async fn connect_from(source: &str, to: SocketAddr, send: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream.write_all(send).await.unwrap();
    stream
}

/// Reads until the proxy closes; returns what it said and how long it took.
async fn until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut said))
        .await
        .expect("closed within the time limit");
    (
        String::from_utf8_lossy(&said).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn stalled_connections_are_limited_per_ip_and_time_out() {
    let files = MediaFiles::new();
    let mut sfu = Sfu::start().await;
    let proxy = Proxy::start(routes_to(sfu.control), |config| {
        config.limits.max_per_ip = 4;
        config.limits.handshake_timeout = Duration::from_secs(2);
    })
    .await;

    // Four connections from one IP: idle, or stuck after asking for the nonce.
    let mut stalled = Vec::new();
    for i in 0..4 {
        let send: &[u8] = if i % 2 == 0 { b"" } else { b"HMAC\r\n\r\n" };
        stalled.push(connect_from("127.0.0.2", proxy.control, send).await);
    }
    proxy.settle("four open", |s| s.open_connections == 4).await;
    // More from that IP are closed at once, without a word.
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let mut extra = connect_from("127.0.0.2", proxy.control, b"HMAC\r\n\r\n").await;
        let (said, took) = until_closed(&mut extra).await;
        assert_eq!(said, "");
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_millis(500), "took {slowest:?}");
    assert_eq!(
        proxy.stats.snapshot().rejected(Rejection::PerIpConnections),
        3
    );

    // A streamer from another IP gets through meanwhile.
    let (stop, task) = start_push(files.config(proxy.control, "1-one"));
    sfu.media(1, 50).await;

    // The stalled ones are closed at the handshake deadline with 400.
    for (i, connection) in stalled.iter_mut().enumerate() {
        let (said, _) = until_closed(connection).await;
        let expected_start = if i % 2 == 0 { "" } else { "200 " };
        assert!(
            said.starts_with(expected_start) && said.ends_with("400\n"),
            "{said:?}"
        );
    }
    proxy
        .settle("timeouts counted", |s| {
            s.rejected(Rejection::HandshakeTimeout) == 4
        })
        .await;
    // The streamer is unaffected.
    sfu.media(1, 20).await;
    let report = stop_push(stop, task).await;
    assert_eq!(report.end, Some(ClientEnd::Disconnected));
    eprintln!(
        "per-IP limit: 3 extra connections refused, slowest in {slowest:?}; stalled ones closed with 400 at the deadline; streamer from another IP unaffected ({:?})",
        proxy.stats.snapshot().rejected
    );
    proxy.stop().await;
}

#[tokio::test]
async fn connect_rate_is_limited_and_idle_connections_make_room() {
    let files = MediaFiles::new();
    let mut sfu = Sfu::start().await;
    let proxy = Proxy::start(routes_to(sfu.control), |config| {
        config.limits.max_connections = 3;
        config.limits.connect_burst_per_ip = 2.0;
        config.limits.connects_per_second_per_ip = 0.1;
    })
    .await;

    // Two connections from one IP use its burst; the third is refused.
    let mut idle = vec![
        connect_from("127.0.0.3", proxy.control, b"").await,
        connect_from("127.0.0.3", proxy.control, b"").await,
    ];
    let mut third = connect_from("127.0.0.3", proxy.control, b"").await;
    assert_eq!(until_closed(&mut third).await.0, "");
    assert_eq!(proxy.stats.snapshot().rejected(Rejection::ConnectRate), 1);

    // Fill the last slot from another IP; a streamer then takes the oldest idle one's place.
    idle.push(connect_from("127.0.0.4", proxy.control, b"").await);
    proxy
        .settle("all slots taken", |s| s.open_connections == 3)
        .await;
    let (stop, task) = start_push(files.config(proxy.control, "1-one"));
    sfu.media(1, 20).await;
    let (said, _) = until_closed(&mut idle[0]).await;
    assert_eq!(said, "410\n");
    assert_eq!(proxy.stats.snapshot().rejected(Rejection::Evicted), 1);
    let report = stop_push(stop, task).await;
    assert_eq!(report.end, Some(ClientEnd::Disconnected));
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_ends_live_sessions_with_410() {
    let files = MediaFiles::new();
    let mut sfu = Sfu::start().await;
    let proxy = Proxy::start(routes_to(sfu.control), |_| {}).await;
    let (_stop, task) = start_push(files.config(proxy.control, "2-two"));
    sfu.media(2, 20).await;
    proxy.stop().await;
    match tokio::time::timeout(WAIT, task).await.unwrap().unwrap() {
        Err(PushError::Session(ClientEnd::EndedByServer(410))) => {}
        other => panic!("expected 410, got {other:?}"),
    }
    // The SFU was told.
    let reason = sfu
        .wait_for(2, |seen| match seen {
            Seen::Ended(reason) => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, EndReason::Disconnected);
}
