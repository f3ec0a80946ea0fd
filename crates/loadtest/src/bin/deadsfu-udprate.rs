//! `deadsfu-udprate`: how many 1200-byte UDP datagrams per second one core sends on loopback,
//! with each send method. Prints one JSON object.

use std::time::Duration;

use clap::Parser;
use deadsfu_loadtest::udprate::{SendMethod, measure};

#[derive(Parser)]
#[command(
    name = "deadsfu-udprate",
    about = "Raw UDP send rate of one core on loopback"
)]
struct Cli {
    /// Seconds per method.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// CPU the sender is pinned to.
    #[arg(long)]
    send_cpu: Option<usize>,
    /// CPU the reader is pinned to.
    #[arg(long)]
    recv_cpu: Option<usize>,
    /// Methods to measure (default: all).
    #[arg(long, value_enum)]
    method: Vec<SendMethod>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let methods = if cli.method.is_empty() {
        SendMethod::ALL.to_vec()
    } else {
        cli.method
    };
    let mut out = serde_json::Map::new();
    let mut best = 0f64;
    for m in methods {
        let rate = measure(
            m,
            Duration::from_secs_f64(cli.seconds),
            cli.send_cpu,
            cli.recv_cpu,
        )?;
        eprintln!(
            "{:>13}: sent {:>10.0} datagrams/s, received {:>10.0}/s",
            m.name(),
            rate.sent_pps,
            rate.received_pps
        );
        best = best.max(rate.sent_pps);
        out.insert(format!("{}_pps", m.name()), rate.sent_pps.round().into());
        out.insert(
            format!("{}_received_pps", m.name()),
            rate.received_pps.round().into(),
        );
    }
    out.insert("best_pps".into(), best.round().into());
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
