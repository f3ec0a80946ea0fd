//! `deadsfu-proxybench`: the load tools and fake backends of the front-line proxy benchmark
//! (`bench/proxy/run`). Each measuring subcommand prints one JSON object on stdout.
//!
//! - `backend`: the TLS bulk server (`GET /bulk/N`: N bytes of zeros), registered in Redis as a
//!   node with a `host:` lease so `deadsfu proxy` routes its SNI to it.
//! - `conns`: new TLS connections with one `GET` each, closed loop (most per second) or open
//!   loop (`--rate`, for latency at a given load).
//! - `bulk`: one connection downloading `--mb` megabytes.
//! - `ftl`: an FTL ingest and a pusher in one process, directly or through a proxy.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deadsfu_loadtest::proxybench::{CpuMeter, bulk, conns, ftl, register, tls};

#[derive(Parser)]
#[command(
    name = "deadsfu-proxybench",
    about = "Load tools and fake backends of the front-line proxy benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The TLS bulk server, registered in Redis (DEADSFU_CLUSTER_URL: an admin bundle).
    Backend(BackendArgs),
    /// New TLS connections per second, or their latency at a fixed rate.
    Conns(ConnsArgs),
    /// Bulk transfer over one TLS connection.
    Bulk(BulkArgs),
    /// FTL relay: packets per second and latency, through a proxy or straight to the ingest.
    Ftl(FtlArgs),
}

#[derive(clap::Args)]
struct BackendArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Peers whose connections start with a PROXY v2 header (comma-separated).
    #[arg(long, value_delimiter = ',')]
    proxy_from: Vec<IpAddr>,
    /// Register in Redis under this hostname (SNI) and node id.
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long, default_value = "proxybench-bulk")]
    node_id: String,
}

/// Processes whose CPU is measured (the proxy's, the backend's).
#[derive(clap::Args)]
struct Pids {
    /// The proxy under test (comma-separated, every process of it).
    #[arg(long, value_delimiter = ',')]
    proxy_pid: Vec<u32>,
    /// The backend.
    #[arg(long, value_delimiter = ',')]
    backend_pid: Vec<u32>,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Where to connect: the backend, or a proxy in front of it.
    #[arg(long)]
    target: SocketAddr,
    /// The TLS server name (SNI) and Host.
    #[arg(long)]
    sni: String,
    /// The CA certificate (PEM) the client trusts.
    #[arg(long)]
    ca: PathBuf,
    /// Source address of the client's connections.
    #[arg(long, default_value = "127.0.0.20")]
    bind: IpAddr,
}

#[derive(clap::Args)]
struct ConnsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    pids: Pids,
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Workers (closed loop), or most connections in flight (open loop).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Open loop: new connections per second.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds one connection may take.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(clap::Args)]
struct BulkArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    pids: Pids,
    /// Megabytes (10^6 bytes) to download.
    #[arg(long, default_value_t = 1000)]
    mb: u64,
}

#[derive(clap::Args)]
struct FtlArgs {
    /// The ingest's address (ports chosen by the kernel).
    #[arg(long, default_value = "127.0.0.4")]
    ingest_ip: IpAddr,
    /// The pusher's source address.
    #[arg(long, default_value = "127.0.0.20")]
    bind: IpAddr,
    /// The proxy's FTL control address (the ingest registers in Redis, DEADSFU_CLUSTER_URL:
    /// an admin bundle); without it the pusher goes straight to the ingest.
    #[arg(long)]
    via: Option<SocketAddr>,
    #[arg(long, default_value_t = 4242)]
    channel: u32,
    /// Bytes per datagram, RTP header included.
    #[arg(long, default_value_t = 1200)]
    datagram: usize,
    /// Datagrams per second (default: as fast as the pusher sends).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The proxy under test (comma-separated).
    #[arg(long, value_delimiter = ',')]
    proxy_pid: Vec<u32>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async move {
        match cli.command {
            Command::Backend(a) => backend(a).await.map(|()| None),
            Command::Conns(a) => {
                let cfg = conns::ConnsConfig {
                    target: a.client.target,
                    sni: a.client.sni.clone(),
                    path: a.path,
                    bind: a.client.bind,
                    tls: tls::client_config(&a.client.ca)?,
                    concurrency: a.concurrency,
                    rate: a.rate,
                    warmup: Duration::from_secs_f64(a.warmup),
                    duration: Duration::from_secs_f64(a.seconds),
                    proxy: CpuMeter::new(a.pids.proxy_pid),
                    backend: CpuMeter::new(a.pids.backend_pid),
                    timeout: Duration::from_secs_f64(a.timeout),
                };
                conns::run(cfg).await.map(Some)
            }
            Command::Bulk(a) => bulk::download(
                a.client.target,
                &a.client.sni,
                a.client.bind,
                tls::client_config(&a.client.ca)?,
                a.mb * 1_000_000,
                CpuMeter::new(a.pids.proxy_pid),
                CpuMeter::new(a.pids.backend_pid),
            )
            .await
            .map(Some),
            Command::Ftl(a) => ftl::run(ftl::FtlBenchConfig {
                ingest_ip: a.ingest_ip,
                bind: a.bind,
                via: a.via,
                channel: a.channel,
                datagram: a.datagram,
                rate: a.rate,
                warmup: Duration::from_secs_f64(a.warmup),
                duration: Duration::from_secs_f64(a.seconds),
                proxy: CpuMeter::new(a.proxy_pid),
            })
            .await
            .map(Some),
        }
    })?;
    if let Some(report) = report {
        println!("{report}");
    }
    Ok(())
}

async fn backend(a: BackendArgs) -> anyhow::Result<()> {
    let config = tls::server_config(&a.cert, &a.key)?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    if let Some(hostname) = a.hostname {
        let conn = register::connect_admin().await?;
        register::FakeNode {
            node_id: a.node_id,
            hostname,
            https_addr: Some(addr),
            proxy_protocol: !a.proxy_from.is_empty(),
            ftl: None,
        }
        .keep_registered(conn)
        .await?;
    }
    println!("ready {addr}");
    bulk::serve(listener, config, Arc::new(a.proxy_from)).await
}
