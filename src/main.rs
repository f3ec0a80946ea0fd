//! The `deadsfu` binary: command line, configuration, start-up and shutdown of the parts.

mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "deadsfu",
    version,
    about = "WebRTC SFU for live streaming: WHIP in, WHEP out"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `serve`, which is what `deadsfu` with no subcommand runs.
    #[command(flatten)]
    serve: serve::ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run an SFU node (the default).
    Serve(Box<serve::ServeArgs>),
    /// Run a front-line proxy: SNI passthrough to the SFUs, ACME HTTP-01 and 308 on port 80,
    /// FTL relay (needs a proxy bundle's DEADSFU_CLUSTER_URL).
    Proxy(Box<deadsfu_proxy::ProxyArgs>),
    /// Operate a cluster: make its CA and Redis config, issue credential bundles, serve them,
    /// show its state, manage FTL stream keys.
    #[command(subcommand)]
    Cluster(deadsfu_cluster::ClusterCommand),
    /// Stream an H264 Annex-B file and an Ogg Opus file to an FTL server, as OBS would.
    FtlPush(deadsfu_ftl::net::PushArgs),
    /// Publish a synthetic stream and open many viewers; report loss, latency and start-up times.
    Loadtest(Box<deadsfu_loadtest::LoadtestArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The proxy's connections are all control-plane work: one worker per core it may run on
    // (a process pinned to one core gets one, without cross-thread wake-ups). An SFU's
    // control plane needs two; its media runs on its own threads.
    let control_threads = match &cli.command {
        Some(Command::Proxy(_)) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        _ => 2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("control")
        .worker_threads(control_threads)
        .build()?;
    match cli.command {
        Some(Command::Cluster(cmd)) => {
            serve::init_logging(serve::LogFormat::Human)?;
            runtime.block_on(deadsfu_cluster::run(cmd))
        }
        Some(Command::Proxy(args)) => {
            serve::init_logging(serve::LogFormat::Human)?;
            runtime.block_on(deadsfu_proxy::run(*args, serve::shutdown_signal()))
        }
        Some(Command::FtlPush(args)) => {
            serve::init_logging(serve::LogFormat::Human)?;
            runtime.block_on(ftl_push(args))
        }
        Some(Command::Loadtest(args)) => {
            serve::init_logging(serve::LogFormat::Human)?;
            runtime.block_on(deadsfu_loadtest::run(*args))
        }
        Some(Command::Serve(args)) => run_serve(&runtime, *args),
        None => run_serve(&runtime, cli.serve),
    }
}

async fn ftl_push(args: deadsfu_ftl::net::PushArgs) -> anyhow::Result<()> {
    let config = deadsfu_ftl::net::PushConfig::from(args);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = deadsfu_ftl::net::push(config, stop).await?;
    println!(
        "sent {} video frames ({} packets), {} audio packets; {} dropped on purpose",
        report.video_frames, report.video_packets, report.audio_packets, report.dropped
    );
    Ok(())
}

fn run_serve(runtime: &tokio::runtime::Runtime, args: serve::ServeArgs) -> anyhow::Result<()> {
    serve::init_logging(args.log_format)?;
    runtime.block_on(serve::run(args))
}
