//! The `deadsfu` binary: command line, configuration, start-up and shutdown of the parts.

mod cluster_mode;
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
    Serve(serve::ServeArgs),
    /// Operate a cluster: make its CA and Redis config, issue credential bundles, serve them,
    /// show its state, manage FTL stream keys.
    #[command(subcommand)]
    Cluster(deadsfu_cluster::ClusterCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("control")
        .worker_threads(2)
        .build()?;
    match cli.command {
        Some(Command::Cluster(cmd)) => {
            serve::init_logging(serve::LogFormat::Human)?;
            runtime.block_on(deadsfu_cluster::run(cmd))
        }
        Some(Command::Serve(args)) => run_serve(&runtime, args),
        None => run_serve(&runtime, cli.serve),
    }
}

fn run_serve(runtime: &tokio::runtime::Runtime, args: serve::ServeArgs) -> anyhow::Result<()> {
    serve::init_logging(args.log_format)?;
    runtime.block_on(serve::run(args))
}
