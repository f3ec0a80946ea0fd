//! The push client against the server shell over 127.0.0.1, with small generated media files.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadsfu_ftl::net::{
    BoxFuture, ChannelDirectory, ClaimError, DirectoryError, FtlPublisher, FtlServer,
    FtlServerConfig, PushConfig, PushError, push,
};
use deadsfu_ftl::server::{EndReason, StreamInfo};
use deadsfu_ftl::{ChannelSecret, FtlMedia, MediaKind, StreamKey};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug)]
enum Seen {
    Started(StreamInfo),
    Media(FtlMedia),
    Ended(EndReason),
}

struct TestDirectory {
    secrets: HashMap<u32, &'static str>,
    live: Arc<Mutex<HashSet<u32>>>,
    events: mpsc::UnboundedSender<(u32, Seen)>,
}

struct TestPublisher {
    channel_id: u32,
    live: Arc<Mutex<HashSet<u32>>>,
    events: mpsc::UnboundedSender<(u32, Seen)>,
}

impl ChannelDirectory for TestDirectory {
    fn secret(
        &self,
        channel_id: u32,
    ) -> BoxFuture<'_, Result<Option<ChannelSecret>, DirectoryError>> {
        let secret = self
            .secrets
            .get(&channel_id)
            .map(|s| ChannelSecret::new(s.as_bytes()));
        Box::pin(async move { Ok(secret) })
    }

    fn claim(&self, channel_id: u32) -> BoxFuture<'_, Result<Box<dyn FtlPublisher>, ClaimError>> {
        Box::pin(async move {
            if !self.live.lock().unwrap().insert(channel_id) {
                return Err(ClaimError::InUse);
            }
            Ok(Box::new(TestPublisher {
                channel_id,
                live: self.live.clone(),
                events: self.events.clone(),
            }) as Box<dyn FtlPublisher>)
        })
    }
}

impl FtlPublisher for TestPublisher {
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

impl Drop for TestPublisher {
    fn drop(&mut self) {
        self.live.lock().unwrap().remove(&self.channel_id);
    }
}

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
            "deadsfu-ftl-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("video.h264"), h264_file(30)).unwrap();
        std::fs::write(dir.join("audio.ogg"), ogg_file(50)).unwrap();
        Self { dir }
    }

    fn config(&self, server: std::net::SocketAddr, key: &str) -> PushConfig {
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

struct TestServer {
    control: std::net::SocketAddr,
    live: Arc<Mutex<HashSet<u32>>>,
    events: mpsc::UnboundedReceiver<(u32, Seen)>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start() -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let live = Arc::new(Mutex::new(HashSet::new()));
        let directory = TestDirectory {
            secrets: HashMap::from([(1, "one"), (2, "two")]),
            live: live.clone(),
            events: events_tx,
        };
        let loopback = "127.0.0.1:0".parse().unwrap();
        let server = FtlServer::bind(
            FtlServerConfig::new(loopback, loopback),
            Arc::new(directory),
        )
        .await
        .unwrap();
        assert_large_receive_buffer(&server);
        let control = server.control_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            control,
            live,
            events,
            stop: Some(stop),
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
                let (channel, seen) = self.events.recv().await.expect("server alive");
                if channel == channel_id
                    && let Some(found) = accept(seen)
                {
                    return found;
                }
            }
        })
        .await
        .expect("event within the time limit")
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn spawn_push(
    config: PushConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<deadsfu_ftl::net::PushReport, PushError>> {
    tokio::spawn(push(config, stop))
}

async fn expect_rejected(config: PushConfig) -> u16 {
    match tokio::time::timeout(WAIT, push(config, std::future::pending()))
        .await
        .unwrap()
    {
        Err(PushError::Rejected { code }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn media_flows_and_bad_publishers_are_turned_away() {
    let files = MediaFiles::new();
    let mut server = TestServer::start().await;

    let (stop_a, stopped_a) = oneshot::channel::<()>();
    let push_a = spawn_push(files.config(server.control, "1-one"), async {
        let _ = stopped_a.await;
    });
    let info = server
        .wait_for(1, |seen| match seen {
            Seen::Started(info) => Some(info),
            _ => None,
        })
        .await;
    assert_eq!(info.channel_id, 1);
    assert_eq!(info.video.as_ref().unwrap().ssrc, 2);
    assert_eq!(info.audio.as_ref().unwrap().ssrc, 1);
    assert_eq!(info.vendor_name.as_deref(), Some("deadsfu"));

    let first_video = server
        .wait_for(1, |seen| match seen {
            Seen::Media(media) if media.kind == MediaKind::Video => Some(media),
            _ => None,
        })
        .await;
    assert!(first_video.keyframe_start, "stream starts at the SPS");
    assert_eq!(first_video.payload[0], 0x67);
    let audio = server
        .wait_for(1, |seen| match seen {
            Seen::Media(media) if media.kind == MediaKind::Audio => Some(media),
            _ => None,
        })
        .await;
    assert_eq!(audio.payload[..3], [0xf8, 0xff, 0xfe]);

    // Wrong secret, unknown channel and a second publisher are refused...
    assert_eq!(
        expect_rejected(files.config(server.control, "2-wrong")).await,
        405
    );
    assert_eq!(
        expect_rejected(files.config(server.control, "1-wrong")).await,
        405
    );
    assert_eq!(
        expect_rejected(files.config(server.control, "3-three")).await,
        401
    );
    assert_eq!(
        expect_rejected(files.config(server.control, "1-one")).await,
        406
    );

    // ...without disturbing the live session: its media keeps coming.
    let mut more = 0;
    server
        .wait_for(1, |seen| match seen {
            Seen::Media(_) => {
                more += 1;
                (more == 50).then_some(())
            }
            Seen::Ended(reason) => panic!("live session ended: {reason:?}"),
            Seen::Started(_) => panic!("second session started"),
        })
        .await;
    assert_eq!(*server.live.lock().unwrap(), HashSet::from([1]));

    let _ = stop_a.send(());
    let report = tokio::time::timeout(WAIT, push_a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.video_frames > 0 && report.audio_packets > 0);
    assert!(report.ping_echoes > 0, "pings are echoed: {report:?}");
    let reason = server
        .wait_for(1, |seen| match seen {
            Seen::Ended(reason) => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, EndReason::Disconnected);
    assert!(server.live.lock().unwrap().is_empty(), "claim released");
    server.stop().await;
}

#[tokio::test]
async fn dropped_packets_are_repaired_by_nacks_and_shutdown_sends_410() {
    let files = MediaFiles::new();
    let mut server = TestServer::start().await;
    let mut config = files.config(server.control, "2-two");
    config.drop_percent = 20.0;
    config.fps = 120.0;
    let push_b = spawn_push(config, std::future::pending());

    let mut video_sequences = BTreeSet::new();
    let mut retransmitted = 0;
    server
        .wait_for(2, |seen| {
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
    assert!(retransmitted > 0);
    let first = *video_sequences.first().unwrap();
    let missing: Vec<u16> = (first..=300)
        .filter(|s| !video_sequences.contains(s))
        .collect();
    assert!(missing.is_empty(), "unrepaired video gaps: {missing:?}");

    // Server shutdown ends the live stream with 410.
    server.stop().await;
    match tokio::time::timeout(WAIT, push_b).await.unwrap().unwrap() {
        Err(PushError::Session(deadsfu_ftl::client::ClientEnd::EndedByServer(410))) => {}
        other => panic!("expected 410, got {other:?}"),
    }
}

/// Every publisher's media arrives on the ingest's one UDP socket: it asks for 8 MiB, which it
/// gets as root (beyond `net.core.rmem_max`) or up to that limit otherwise.
fn assert_large_receive_buffer(server: &FtlServer) {
    use deadsfu_ftl::net::server::UDP_RECEIVE_BUFFER;
    let granted = server
        .udp_receive_buffer()
        .expect("Linux reports the buffer");
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let expected = if root {
        UDP_RECEIVE_BUFFER
    } else {
        UDP_RECEIVE_BUFFER.min(rmem_max)
    };
    assert!(
        granted >= expected,
        "granted {granted} bytes, expected {expected}"
    );
}
