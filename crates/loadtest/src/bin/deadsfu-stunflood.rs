//! `deadsfu-stunflood`: STUN Binding requests at a paced rate against a deadsfu's media port,
//! for the flood-capacity step of the benchmark. It opens a viewer session that never connects
//! (again every few seconds, as such sessions expire) and floods checks naming that session's
//! ufrag with garbage integrity, or naming ufrags never issued. Prints one JSON object.

use std::time::{Duration, Instant};

use clap::Parser;
use deadsfu_loadtest::stunflood::{Flood, FloodKind, Target};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "deadsfu-stunflood",
    about = "A paced STUN flood against a deadsfu media port (benchmark tool; loopback only)"
)]
struct Cli {
    /// The WHEP endpoint whose sessions' ufrags the flood names.
    #[arg(long)]
    whep: String,
    /// Checks per second.
    #[arg(long)]
    rate: f64,
    /// How long to flood.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Wait this long before starting (while the load generator's viewers join).
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
    /// Source addresses (127.0.2.1 and up).
    #[arg(long, default_value_t = 64)]
    sources: u8,
    #[arg(long, value_enum, default_value = "real-ufrag")]
    kind: FloodKind,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let open = || runtime.block_on(Target::open(&http, &cli.whep));
    let mut flood = Flood::new(cli.sources)?;
    flood.aim(&open()?, cli.kind);
    std::thread::sleep(Duration::from_secs_f64(cli.delay));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(cli.seconds);
    flood.run(cli.rate, until, Duration::from_secs(4), open, cli.kind);
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "kind": format!("{:?}", cli.kind),
            "rate": cli.rate,
            "sent": flood.sent,
            "failed_reaims": flood.failed_reaims,
            "seconds": seconds,
            "pps": flood.sent as f64 / seconds,
        })
    );
    Ok(())
}
