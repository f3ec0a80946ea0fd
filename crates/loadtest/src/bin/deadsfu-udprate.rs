//! `deadsfu-udprate`: how many 1200-byte UDP datagrams per second one core sends on loopback,
//! with each send method, to a plain reader and to a reader set up like the load generator's
//! viewers (`UDP_GRO`), and fanned out to many viewer sockets. Prints one JSON object.
//!
//! With `--rate`, it simulates an SFU instead: GSO buffers to `--fanout` viewers at that many
//! datagrams per second, and reports what the load generator's receiving costs.

use std::time::Duration;

use clap::Parser;
use deadsfu_loadtest::udprate::{Fanout, Receiver, SendMethod, fanout, measure_with};
use serde_json::{Map, Value};

#[derive(Parser)]
#[command(
    name = "deadsfu-udprate",
    about = "Raw UDP send rate of one core on loopback; or, with --rate, a simulated SFU fan-out to the load generator's viewers"
)]
struct Cli {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// CPU the sender is pinned to.
    #[arg(long)]
    send_cpu: Option<usize>,
    /// CPU the reader (the viewer thread) is pinned to.
    #[arg(long)]
    recv_cpu: Option<usize>,
    /// Methods to measure to one reader (default: all).
    #[arg(long, value_enum)]
    method: Vec<SendMethod>,
    /// Readers to measure them with (default: both).
    #[arg(long, value_enum)]
    receiver: Vec<Receiver>,
    /// Viewer sockets of the fan-out measurements (0: none).
    #[arg(long, default_value_t = 1000)]
    fanout: usize,
    /// Datagrams per GSO buffer in the fan-out (one buffer per viewer per call).
    #[arg(long, default_value_t = 4)]
    segments: usize,
    /// Bytes per datagram in the fan-out.
    #[arg(long, default_value_t = 1200)]
    segment_len: usize,
    /// Simulate an SFU at this many datagrams per second (only the GSO fan-out runs).
    #[arg(long)]
    rate: Option<f64>,
    /// With --rate: viewer sockets without UDP_GRO (the kernel cuts the GSO buffers).
    #[arg(long)]
    no_gro: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let seconds = Duration::from_secs_f64(cli.seconds);
    let fan = |segments: usize, rate: Option<f64>| Fanout {
        receivers: cli.fanout,
        segments,
        segment_len: cli.segment_len,
        rate,
        duration: seconds,
        send_cpu: cli.send_cpu,
        recv_cpu: cli.recv_cpu,
        gro: !(cli.no_gro && rate.is_some()),
        ..Fanout::default()
    };
    let mut out = Map::new();

    if let Some(rate) = cli.rate {
        let r = fanout(&fan(cli.segments.max(1), Some(rate)))?;
        eprintln!(
            "{} viewers, {} datagrams per GSO buffer: sent {:.0}/s, counted {:.0}/s, loss {:.3}%; \
             viewer thread {:.1}% CPU = {:.0} ns per datagram; sender {:.1}% CPU",
            cli.fanout,
            cli.segments,
            r.sent_pps,
            r.received_pps,
            r.loss_pct,
            r.receiver_cpu_pct,
            r.receiver_ns_per_datagram,
            r.sender_cpu_pct,
        );
        out.insert("viewers".into(), cli.fanout.into());
        out.insert("segments".into(), cli.segments.into());
        out.insert("gro_viewers".into(), r.gro_receivers.into());
        out.insert("sent_pps".into(), r.sent_pps.round().into());
        out.insert("received_pps".into(), r.received_pps.round().into());
        out.insert("loss_pct".into(), round3(r.loss_pct));
        out.insert("generator_cpu_pct".into(), round3(r.receiver_cpu_pct));
        out.insert(
            "generator_cpu_ns_per_datagram".into(),
            round3(r.receiver_ns_per_datagram),
        );
        out.insert("sender_cpu_pct".into(), round3(r.sender_cpu_pct));
        println!("{}", Value::Object(out));
        return Ok(());
    }

    let methods = if cli.method.is_empty() {
        SendMethod::ALL.to_vec()
    } else {
        cli.method
    };
    let receivers = if cli.receiver.is_empty() {
        Receiver::ALL.to_vec()
    } else {
        cli.receiver
    };
    // The raw limit: the best sender figure with GRO readers, the set-up the SFU is measured
    // with (its viewers are the load generator's, which take GSO buffers whole).
    let mut best = (0f64, String::new());
    let mut best_plain = 0f64;
    for receiver in receivers {
        for &m in &methods {
            let prefix = match receiver {
                Receiver::Plain => String::new(),
                Receiver::Gro => "gro_".into(),
            };
            let name = format!("{prefix}{}", m.name());
            let rate = match measure_with(m, receiver, seconds, cli.send_cpu, cli.recv_cpu) {
                Ok(r) => r,
                Err(e) if receiver == Receiver::Gro => {
                    eprintln!("{name:>17}: skipped ({e})");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            eprintln!(
                "{name:>17}: sent {:>10.0} datagrams/s, received {:>10.0}/s",
                rate.sent_pps, rate.received_pps
            );
            match receiver {
                Receiver::Plain => best_plain = best_plain.max(rate.sent_pps),
                Receiver::Gro if rate.sent_pps > best.0 => best = (rate.sent_pps, name.clone()),
                Receiver::Gro => {}
            }
            out.insert(format!("{name}_pps"), rate.sent_pps.round().into());
            out.insert(
                format!("{name}_received_pps"),
                rate.received_pps.round().into(),
            );
        }
    }
    if cli.fanout > 0 {
        let gso = cli.segments.max(2);
        for (name, segments, seal) in [
            ("fanout_sendmmsg", 1, false),
            ("fanout_gso", gso, false),
            ("fanout_gso_sealed", gso, true),
        ] {
            let r = fanout(&Fanout {
                seal,
                ..fan(segments, None)
            })?;
            eprintln!(
                "{name:>17}: sent {:>10.0} datagrams/s, received {:>10.0}/s ({} viewers, {} per buffer, viewer thread {:.0}% CPU)",
                r.sent_pps, r.received_pps, cli.fanout, segments, r.receiver_cpu_pct
            );
            if !seal && r.gro_receivers > 0 && r.sent_pps > best.0 {
                best = (r.sent_pps, name.into());
            }
            out.insert(format!("{name}_pps"), r.sent_pps.round().into());
            out.insert(
                format!("{name}_received_pps"),
                r.received_pps.round().into(),
            );
            out.insert(
                format!("{name}_receiver_cpu_pct"),
                round3(r.receiver_cpu_pct),
            );
        }
        out.insert("fanout_viewers".into(), cli.fanout.into());
        out.insert("fanout_segments".into(), cli.segments.max(2).into());
    }
    // Without a GRO reader (old kernel), the plain figure stands in.
    if best.0 == 0.0 {
        best = (best_plain, "plain".into());
    }
    out.insert("best_pps".into(), best_plain.round().into());
    out.insert("raw_limit_pps".into(), best.0.round().into());
    out.insert("raw_limit_method".into(), best.1.into());
    println!("{}", Value::Object(out));
    Ok(())
}

fn round3(v: f64) -> Value {
    ((v * 1000.0).round() / 1000.0).into()
}
