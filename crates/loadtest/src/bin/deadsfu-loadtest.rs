//! `deadsfu-loadtest`: the same as `deadsfu loadtest`, runnable on its own.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "deadsfu-loadtest",
    about = "Publish a synthetic stream and open many viewers; report loss, latency, start-up time"
)]
struct Cli {
    #[command(flatten)]
    args: deadsfu_loadtest::LoadtestArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(deadsfu_loadtest::run(cli.args))
}

fn tracing_subscriber_init() {
    // Warnings only, on stderr: stdout carries the report.
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .finish(),
    );
}
