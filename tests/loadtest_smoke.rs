//! A short run of the load generator against the real deadsfu binary: every viewer connects
//! and receives. Speed is the benchmark's business (bench/run), not asserted here.

mod common;

use std::time::Duration;

use deadsfu_loadtest::{LoadtestArgs, measure};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_viewers_connect_and_receive() {
    let sfu = common::Sfu::start(&[]);
    let args = LoadtestArgs {
        whip: Some(sfu.url("/whip/smoke")),
        whep: Some(sfu.url("/whep/smoke")),
        viewers: 5,
        ramp: 50.0,
        duration: Duration::from_secs(3),
        full_viewers: 2,
        sfu_pid: Some(sfu.pid()),
        quiet: true,
        ..LoadtestArgs::default()
    };
    let report = tokio::time::timeout(Duration::from_secs(60), measure(&args))
        .await
        .expect("the load test finished within 60 s")
        .expect("the load test ran");
    let json = report.to_json();
    assert_eq!(report.connected, 5, "{json}");
    assert_eq!(report.receiving, 5, "{json}");
    assert_eq!(report.failed_signups, 0, "{json}");
    assert!(report.packets > 0, "{json}");
    assert!(
        report.latency_samples > 0,
        "full viewers measured latency: {json}"
    );
    assert!(report.first_packet_p50_ms.is_some(), "{json}");
    assert!(
        report.ttff_p50_ms.is_some(),
        "every viewer saw a keyframe: {json}"
    );
    assert!(report.sfu_rss_kib.is_some_and(|kib| kib > 0), "{json}");
    for key in [
        "viewers",
        "connected",
        "loss_pct",
        "mbps",
        "latency_p50_ms",
        "latency_p99_ms",
        "ttff_p50_ms",
        "ttff_p99_ms",
        "sfu_cpu_pct",
        "sfu_rss_kib",
    ] {
        assert!(json.get(key).is_some(), "final JSON has {key}: {json}");
    }
}
