//! deadsfu's load generator (`deadsfu loadtest`) and benchmark tools.
//!
//! One process publishes a synthetic H264 + Opus stream (WHIP, FTL, or plain RTP to a Janus
//! mountpoint) and opens many viewers (WHEP, or Janus's streaming plugin), each with real ICE
//! and DTLS. Viewers are cheap: most count RTP from the clear header without decrypting
//! ([`viewer`]); a few decrypt fully to measure forwarding latency from the send time the
//! publisher writes into each payload ([`stream`]).
//!
//! - [`accounting`]: loss, late and reordered packets, percentiles (sans-IO).
//! - [`wire`]: datagram demultiplexing and clear RTP headers.
//! - [`publish`], [`signal`]: the publishing and signalling sides.
//! - [`udprate`]: the machine's raw UDP send rate, the yardstick of the benchmark.
//! - [`stunflood`]: a paced STUN flood, for the flood-capacity step and the flood tests.
//! - [`proxybench`]: the front-line proxy benchmark's load tools and fake backends.

pub mod accounting;
pub mod proxybench;
pub mod publish;
mod recv;
pub mod signal;
pub mod stream;
pub mod stunflood;
pub mod udprate;
pub mod viewer;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use deadsfu_client::signaling::Signaling;
use deadsfu_ftl::StreamKey;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::accounting::{Samples, SeqCounts};
use crate::publish::{PublishStats, Target};
use crate::signal::{Janus, Teardown};
use crate::stream::StreamShape;
use crate::viewer::{Shard, ShardReport};
use deadsfu_procstat::{self as procstat, ProcSample, Process};

/// Options of `deadsfu loadtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// WHIP endpoint to publish the synthetic stream to (e.g. http://127.0.0.1:8080/whip/bench).
    #[arg(long)]
    pub whip: Option<String>,
    /// WHEP endpoint the viewers watch (e.g. http://127.0.0.1:8080/whep/bench).
    #[arg(long)]
    pub whep: Option<String>,
    /// Janus HTTP API (e.g. http://127.0.0.1:8088/janus): viewers watch a streaming
    /// mountpoint, and the stream goes to its RTP ports as plain RTP.
    #[arg(long)]
    pub janus: Option<String>,
    /// Janus streaming mountpoint id.
    #[arg(long, default_value_t = 1)]
    pub janus_mountpoint: u64,
    /// The Janus mountpoint's video RTP port (H264, payload type 96).
    #[arg(long, default_value = "127.0.0.1:5004")]
    pub janus_video: std::net::SocketAddr,
    /// The Janus mountpoint's audio RTP port (Opus, payload type 111).
    #[arg(long, default_value = "127.0.0.1:5002")]
    pub janus_audio: std::net::SocketAddr,
    /// Number of viewers.
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,
    /// Viewers started per second.
    #[arg(long, default_value_t = 100.0)]
    pub ramp: f64,
    /// Video bitrate (Opus at about 48 kbit/s comes on top): 1M, 500k, 2000000.
    #[arg(long, default_value = "1M", value_parser = parse_bitrate)]
    pub bitrate: u64,
    /// How long to measure after the last viewer started: 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between the last viewer's sign-up and the opening of the measuring window, for
    /// set-up work (DTLS, the GOP burst to new viewers, queues built up during the ramp) to
    /// settle: 3s, 5s.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Wait longer than `--settle`, up to this, until a second's forwarding latency (p99 of
    /// the decrypting viewers) is at most `--settle-latency`: sign-ups cost the server too, so
    /// a server near its capacity may end the ramp with a queue that takes a while to drain.
    /// Default: `--settle`.
    #[arg(long, value_parser = parse_duration)]
    pub settle_max: Option<Duration>,
    /// See `--settle-max`: 250ms, 100ms.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub settle_latency: Duration,
    /// Time between keyframes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub keyframe_interval: Duration,
    /// The SFU's process id: its CPU and memory are read from /proc.
    #[arg(long)]
    pub sfu_pid: Option<u32>,
    /// Publish over FTL to this HOST:PORT instead of WHIP.
    #[arg(long)]
    pub ftl: Option<String>,
    /// FTL stream key CHANNEL-SECRET (with --ftl).
    #[arg(long, env = "DEADSFU_FTL_KEY", hide_env_values = true)]
    pub ftl_key: Option<String>,
    /// Bearer token for WHIP and WHEP.
    #[arg(long, env = "DEADSFU_BEARER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Viewers that decrypt everything, to measure latency (the rest count headers only).
    #[arg(long, default_value_t = 4)]
    pub full_viewers: usize,
    /// Threads running viewers.
    #[arg(long, default_value_t = 1)]
    pub viewer_threads: usize,
    /// Do not ask the kernel for coalesced buffers (`UDP_GRO`) on viewer sockets: a server's
    /// GSO buffers are then cut into datagrams on the way (on loopback, at the server's cost).
    #[arg(long)]
    pub no_gro: bool,
    /// Viewer sign-ups in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Print only the final JSON line.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for LoadtestArgs {
    fn default() -> Self {
        LoadtestArgs {
            whip: None,
            whep: None,
            janus: None,
            janus_mountpoint: 1,
            janus_video: ([127, 0, 0, 1], 5004).into(),
            janus_audio: ([127, 0, 0, 1], 5002).into(),
            viewers: 10,
            ramp: 100.0,
            bitrate: 1_000_000,
            duration: Duration::from_secs(30),
            settle: SETTLE,
            settle_max: None,
            settle_latency: Duration::from_millis(250),
            keyframe_interval: Duration::from_secs(2),
            sfu_pid: None,
            ftl: None,
            ftl_key: None,
            token: None,
            full_viewers: 4,
            viewer_threads: 1,
            no_gro: false,
            concurrency: 32,
            quiet: false,
        }
    }
}

/// `1M`, `500k`, `2.5M` or a plain number of bits per second.
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        Some((i, 'g' | 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v > 0.0 => Ok((v * mult) as u64),
        _ => Err(format!("not a bitrate: {s} (try 1M or 500k)")),
    }
}

/// `30s`, `500ms`, `2m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.parse::<f64>() {
        Ok(v) if v >= 0.0 => Ok(Duration::from_secs_f64(v * unit)),
        _ => Err(format!("not a duration: {s} (try 30s or 500ms)")),
    }
}

/// The final figures of a run (its JSON form is the last line `deadsfu loadtest` prints).
#[derive(Debug, Clone, Default)]
pub struct FinalReport {
    pub viewers: usize,
    pub connected: usize,
    pub receiving: usize,
    /// Viewers whose socket took coalesced (GRO) buffers.
    pub gro_viewers: usize,
    pub failed_signups: usize,
    /// Loss over the measuring window (after the ramp), percent.
    pub loss_pct: f64,
    /// Loss over the whole run, percent.
    pub loss_total_pct: f64,
    pub seq: SeqCounts,
    pub packets: u64,
    /// RTP packets that are neither audio nor video (retransmissions, padding).
    pub other_packets: u64,
    pub pps: f64,
    pub mbps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub latency_samples: usize,
    pub first_packet_p50_ms: Option<f64>,
    pub first_packet_p99_ms: Option<f64>,
    pub ttff_p50_ms: Option<f64>,
    pub ttff_p99_ms: Option<f64>,
    pub sfu_cpu_pct: Option<f64>,
    pub sfu_rss_kib: Option<u64>,
    pub generator_cpu_pct: Option<f64>,
    pub published_packets: u64,
    /// Packets delivered over packets published times viewers connected, in the measuring
    /// window, percent. Below 100 the server falls behind (queues or drops).
    pub delivery_pct: Option<f64>,
    /// Datagrams per buffer read by the viewers in the measuring window: above 1 when the
    /// server sends GSO buffers (and the viewers take them whole, `UDP_GRO`).
    pub datagrams_per_read: Option<f64>,
    /// str0m timeouts the viewers ran per second in the measuring window (the load
    /// generator's cost that grows with viewers, not packets).
    pub timeouts_per_s: f64,
    /// Seconds from the last sign-up to the opening of the measuring window.
    pub settled_after_s: Option<f64>,
}

impl FinalReport {
    pub fn to_json(&self) -> serde_json::Value {
        let r = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
        json!({
            "viewers": self.viewers,
            "connected": self.connected,
            "receiving": self.receiving,
            "gro_viewers": self.gro_viewers,
            "failed_signups": self.failed_signups,
            "loss_pct": (self.loss_pct * 10000.0).round() / 10000.0,
            "loss_total_pct": (self.loss_total_pct * 10000.0).round() / 10000.0,
            "lost": self.seq.lost,
            "late": self.seq.late,
            "reordered": self.seq.reordered,
            "duplicates": self.seq.duplicates,
            "packets": self.packets,
            "other_packets": self.other_packets,
            "pps": self.pps.round(),
            "mbps": r(Some(self.mbps)),
            "latency_p50_ms": r(self.latency_p50_ms),
            "latency_p99_ms": r(self.latency_p99_ms),
            "latency_max_ms": r(self.latency_max_ms),
            "latency_samples": self.latency_samples,
            "first_packet_p50_ms": r(self.first_packet_p50_ms),
            "first_packet_p99_ms": r(self.first_packet_p99_ms),
            "ttff_p50_ms": r(self.ttff_p50_ms),
            "ttff_p99_ms": r(self.ttff_p99_ms),
            "sfu_cpu_pct": r(self.sfu_cpu_pct),
            "sfu_rss_kib": self.sfu_rss_kib,
            "generator_cpu_pct": r(self.generator_cpu_pct),
            "published_packets": self.published_packets,
            "delivery_pct": r(self.delivery_pct),
            "datagrams_per_read": r(self.datagrams_per_read),
            "timeouts_per_s": self.timeouts_per_s.round(),
            "settled_after_s": r(self.settled_after_s),
        })
    }
}

/// Runs `deadsfu loadtest`: a report line every second on stdout, then the final figures as
/// one JSON object on the last line.
pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    println!("{}", report.to_json());
    Ok(())
}

/// Default time between the last viewer's sign-up and the opening of the measuring window.
const SETTLE: Duration = Duration::from_secs(3);

/// Where the measuring window started: when, the totals then, the SFU's and this process's
/// CPU readings, and the packets published so far.
type Window = (Instant, Totals, Option<ProcSample>, Option<ProcSample>, u64);

/// Totals summed over the shards.
#[derive(Debug, Clone, Default)]
struct Totals {
    viewers: usize,
    gro: usize,
    connected: usize,
    receiving: usize,
    packets: u64,
    other_packets: u64,
    bytes: u64,
    buffers: u64,
    datagrams: u64,
    timeouts: u64,
    seq: SeqCounts,
}

impl Totals {
    fn add(&mut self, r: &ShardReport) {
        self.viewers += r.viewers;
        self.gro += r.gro;
        self.connected += r.connected;
        self.receiving += r.receiving;
        self.packets += r.packets;
        self.other_packets += r.other_packets;
        self.bytes += r.bytes;
        self.buffers += r.buffers;
        self.datagrams += r.datagrams;
        self.timeouts += r.timeouts;
        self.seq.add(&r.seq);
    }
}

fn loss_between(a: &SeqCounts, b: &SeqCounts) -> f64 {
    let lost = b.lost.saturating_sub(a.lost);
    let got = b.received.saturating_sub(a.received);
    if lost + got == 0 {
        0.0
    } else {
        lost as f64 * 100.0 / (lost + got) as f64
    }
}

/// Every viewer holds a socket: lift the soft limit on open files to the hard one.
fn raise_fd_limit() {
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// Runs a load test and returns its final figures; prints a line per second unless `quiet`.
pub async fn measure(args: &LoadtestArgs) -> anyhow::Result<FinalReport> {
    stream::epoch();
    raise_fd_limit();
    let shape = StreamShape {
        video_bps: args.bitrate,
        keyframe_interval: args.keyframe_interval,
        ..StreamShape::default()
    };
    let janus = args
        .janus
        .as_deref()
        .map(|b| Janus::new(b, args.janus_mountpoint));
    let target = match (&args.ftl, &args.whip, &janus) {
        (Some(server), _, _) => {
            let key = args
                .ftl_key
                .as_deref()
                .context("--ftl needs --ftl-key CHANNEL-SECRET")?;
            Some(Target::Ftl {
                server: server.clone(),
                key: StreamKey::parse(key).map_err(|e| anyhow::anyhow!("--ftl-key: {e}"))?,
            })
        }
        (None, Some(url), _) => Some(Target::Whip {
            url: url.clone(),
            token: args.token.clone(),
        }),
        (None, None, Some(_)) => Some(Target::Rtp {
            video: args.janus_video,
            audio: args.janus_audio,
            video_pt: 96,
            audio_pt: 111,
        }),
        (None, None, None) => None,
    };
    if args.whep.is_none() && janus.is_none() {
        bail!("give --whep URL or --janus URL for the viewers");
    }

    // The publisher.
    let (stop_tx, stop_rx) = watch::channel(false);
    let pub_stats = Arc::new(PublishStats::default());
    let publisher = target.map(|t| {
        tokio::spawn(publish::publish(
            t,
            shape.clone(),
            pub_stats.clone(),
            stop_rx.clone(),
        ))
    });
    if let Some(p) = &publisher {
        let mut streaming = pub_stats.streaming.subscribe();
        let started =
            tokio::time::timeout(Duration::from_secs(15), streaming.wait_for(|s| *s)).await;
        if !matches!(started, Ok(Ok(_))) || p.is_finished() {
            let _ = stop_tx.send(true);
            if let Some(p) = publisher {
                p.await??;
            }
            bail!("the publisher did not start streaming within 15 s");
        }
    }

    // The viewers.
    let mut shards = (0..args.viewer_threads.max(1))
        .map(|i| Shard::start_with(i, !args.no_gro))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shards_ref: Arc<Vec<Shard>> = Arc::new(std::mem::take(&mut shards));
    let signaling = Signaling::new(args.token.clone());
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (teardown_tx, mut teardown_rx) = tokio::sync::mpsc::unbounded_channel::<Teardown>();
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ramp_start = Instant::now();
    let ramp = {
        let shards = shards_ref.clone();
        let whep = args.whep.clone();
        let janus = janus.clone();
        let failed = failed.clone();
        let n = args.viewers;
        let per_sec = args.ramp.max(0.001);
        let full = args.full_viewers.min(n);
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let at = ramp_start + Duration::from_secs_f64(i as f64 / per_sec);
                tokio::time::sleep_until(at.into()).await;
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                // Spread the full viewers over the ramp.
                let is_full =
                    full > 0 && i % (n / full).max(1) == 0 && i / (n / full).max(1) < full;
                let shards = shards.clone();
                let whep = whep.clone();
                let janus = janus.clone();
                let signaling = signaling.clone();
                let teardown_tx = teardown_tx.clone();
                let failed = failed.clone();
                tasks.spawn(async move {
                    let result = match (&janus, &whep) {
                        (Some(j), _) => j.viewer(is_full).await,
                        (None, Some(url)) => signal::whep(&signaling, url, is_full).await,
                        (None, None) => unreachable!("checked above"),
                    };
                    drop(permit);
                    match result {
                        Ok((viewer, teardown)) => {
                            shards[i % shards.len()].add(viewer);
                            let _ = teardown_tx.send(teardown);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "viewer could not start");
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    // Report every second until the ramp is done and the measuring time has passed.
    let sfu_sample = || args.sfu_pid.map(Process::Pid).and_then(procstat::sample);
    let mut prev_totals = Totals::default();
    let mut prev_sfu = sfu_sample();
    let mut prev_at = Instant::now();
    let mut window: Option<Window> = None;
    let mut latency = Samples::default();
    let mut first_packet = Samples::default();
    let mut first_keyframe = Samples::default();
    let mut ramp_done_at: Option<Instant> = None;
    let mut settled_after: Option<Duration> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut ramp = Some(ramp);
    loop {
        tick.tick().await;
        if let Some(r) = &ramp
            && r.is_finished()
        {
            ramp = None;
            ramp_done_at = Some(Instant::now());
        }
        let now = Instant::now();
        let mut totals = Totals::default();
        let mut second_latency = Samples::default();
        for s in shards_ref.iter() {
            let r = s.take();
            totals.add(&r);
            for &v in &r.latency_us {
                second_latency.push(v);
            }
            for &v in &r.first_packet_us {
                first_packet.push(v);
            }
            for &v in &r.first_keyframe_us {
                first_keyframe.push(v);
            }
        }
        if window.is_some() {
            latency.extend(&second_latency);
        }
        let second_p99_ms = second_latency.percentile_ms(99.0);
        let sfu = sfu_sample();
        let secs = now
            .saturating_duration_since(prev_at)
            .as_secs_f64()
            .max(1e-3);
        if !args.quiet {
            let pps = (totals.packets - prev_totals.packets) as f64 / secs;
            let mbps = (totals.bytes - prev_totals.bytes) as f64 * 8.0 / secs / 1e6;
            let sfu_text = match (&prev_sfu, &sfu) {
                (Some(a), Some(b)) => format!(
                    " | sfu cpu {:.0}% rss {} KiB",
                    procstat::cpu_pct(a.cpu, b.cpu),
                    b.rss_kib
                ),
                _ => String::new(),
            };
            println!(
                "t={:>4.0}s viewers {}/{} connected {} receiving {} | {:.0} pkt/s {:.1} Mbit/s | loss {:.3}% late {} | latency p50 {} p99 {} max {} ms | first packet p50 {} ms, keyframe p50 {} ms{}",
                now.duration_since(ramp_start).as_secs_f64(),
                totals.viewers,
                args.viewers,
                totals.connected,
                totals.receiving,
                pps,
                mbps,
                loss_between(&prev_totals.seq, &totals.seq),
                totals.seq.late - prev_totals.seq.late,
                ms(second_latency.percentile_ms(50.0)),
                ms(second_p99_ms),
                ms(second_latency.max().map(|v| v as f64 / 1000.0)),
                ms(first_packet.percentile_ms(50.0)),
                ms(first_keyframe.percentile_ms(50.0)),
                sfu_text,
            );
        }
        // The measuring window opens a while after the last viewer started, so set-up work
        // (HTTP, DTLS, the GOP burst to new viewers) is not counted as steady-state load; and,
        // up to --settle-max, only once the queue the ramp left behind has drained.
        let settled = |since: Duration| {
            since >= args.settle
                && (since >= args.settle_max.unwrap_or(args.settle)
                    || second_p99_ms.is_none_or(|p| p <= args.settle_latency.as_secs_f64() * 1e3))
        };
        if window.is_none()
            && let Some(done) = ramp_done_at
            && settled(now.duration_since(done))
        {
            settled_after = Some(now.duration_since(done));
            window = Some((
                now,
                totals.clone(),
                sfu,
                procstat::sample(Process::Own),
                pub_stats.packets.load(Ordering::Relaxed),
            ));
        }
        let finished = window
            .as_ref()
            .is_some_and(|(start, ..)| now.duration_since(*start) >= args.duration);
        prev_totals = totals;
        prev_sfu = sfu;
        prev_at = now;
        if finished {
            break;
        }
        if let Some(p) = &publisher
            && p.is_finished()
        {
            break;
        }
    }

    // Settle every stream, then read the last figures.
    let end_sfu = sfu_sample();
    let end_self = procstat::sample(Process::Own);
    let mut shards =
        Arc::try_unwrap(shards_ref).map_err(|_| anyhow::anyhow!("viewer shards still shared"))?;
    let mut totals = Totals::default();
    for s in shards.iter_mut() {
        s.stop();
        let r = s.take();
        totals.add(&r);
        for &v in &r.first_packet_us {
            first_packet.push(v);
        }
        for &v in &r.first_keyframe_us {
            first_keyframe.push(v);
        }
    }
    let end = Instant::now();
    let _ = stop_tx.send(true);
    let publish_result = match publisher {
        Some(p) => Some(p.await),
        None => None,
    };

    let mut report = FinalReport {
        viewers: args.viewers,
        connected: totals.connected,
        receiving: totals.receiving,
        gro_viewers: totals.gro,
        failed_signups: failed.load(Ordering::Relaxed),
        loss_total_pct: totals.seq.loss_pct(),
        seq: totals.seq,
        packets: totals.packets,
        other_packets: totals.other_packets,
        latency_samples: latency.len(),
        latency_p50_ms: latency.percentile_ms(50.0),
        latency_p99_ms: latency.percentile_ms(99.0),
        latency_max_ms: latency.max().map(|v| v as f64 / 1000.0),
        first_packet_p50_ms: first_packet.percentile_ms(50.0),
        first_packet_p99_ms: first_packet.percentile_ms(99.0),
        ttff_p50_ms: first_keyframe.percentile_ms(50.0),
        ttff_p99_ms: first_keyframe.percentile_ms(99.0),
        sfu_rss_kib: end_sfu.map(|s| s.rss_kib),
        published_packets: pub_stats.packets.load(Ordering::Relaxed),
        settled_after_s: settled_after.map(|d| d.as_secs_f64()),
        ..FinalReport::default()
    };
    if let Some((start, start_totals, start_sfu, start_self, start_published)) = &window {
        let published = report.published_packets.saturating_sub(*start_published);
        if published > 0 && report.connected > 0 {
            let delivered = totals.packets - start_totals.packets;
            report.delivery_pct =
                Some(delivered as f64 * 100.0 / (published as f64 * report.connected as f64));
        }
        let secs = end
            .saturating_duration_since(*start)
            .as_secs_f64()
            .max(1e-3);
        let buffers = totals.buffers - start_totals.buffers;
        if buffers > 0 {
            report.datagrams_per_read =
                Some((totals.datagrams - start_totals.datagrams) as f64 / buffers as f64);
        }
        report.loss_pct = loss_between(&start_totals.seq, &totals.seq);
        report.pps = (totals.packets - start_totals.packets) as f64 / secs;
        report.timeouts_per_s = (totals.timeouts - start_totals.timeouts) as f64 / secs;
        report.mbps = (totals.bytes - start_totals.bytes) as f64 * 8.0 / secs / 1e6;
        if let (Some(a), Some(b)) = (start_sfu, &end_sfu) {
            report.sfu_cpu_pct = Some(procstat::cpu_pct(a.cpu, b.cpu));
        }
        if let (Some(a), Some(b)) = (start_self, &end_self) {
            report.generator_cpu_pct = Some(procstat::cpu_pct(a.cpu, b.cpu));
        }
    } else {
        report.loss_pct = report.loss_total_pct;
    }
    drop(shards);

    // Close the sessions so the server is clean for the next run.
    let mut closing = tokio::task::JoinSet::new();
    let limit = Arc::new(Semaphore::new(32));
    let signaling = Signaling::new(args.token.clone());
    while let Ok(t) = teardown_rx.try_recv() {
        let limit = limit.clone();
        let signaling = signaling.clone();
        let janus = janus.clone();
        closing.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let _ = match (t, janus) {
                (Teardown::Whep(url), _) => {
                    signaling.delete(&url).await.map(|_| ()).map_err(Into::into)
                }
                (Teardown::Janus(url), Some(j)) => j.destroy(&url).await,
                (Teardown::Janus(_), None) => Ok(()),
            };
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while closing.join_next().await.is_some() {}
    })
    .await;
    if let Some(Ok(Err(e))) = publish_result {
        tracing::warn!(error = %e, "publisher ended with an error");
    }
    Ok(report)
}
