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
    Serve(serve::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    serve::init_logging(args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("control")
        .worker_threads(2)
        .build()?;
    runtime.block_on(serve::run(args))
}
