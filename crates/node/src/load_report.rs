//! Load figures of this node for its cluster record: rooms, sessions, egress and CPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_cluster::{ClusterNode, NodeLoad};
use deadsfu_procstat::{self as procstat, CpuReading, Process};
use deadsfu_rtc::MediaEngine;

/// Reports rooms, sessions, egress bitrate and CPU once a second.
pub(crate) async fn report_load(node: Arc<ClusterNode>, engine: MediaEngine) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), engine.metrics().bytes_out, own_cpu());
    loop {
        tick.tick().await;
        let now = Instant::now();
        let bytes = engine.metrics().bytes_out;
        let cpu = own_cpu();
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let (publishers, viewers) = engine.session_counts();
        node.report_load(NodeLoad {
            rooms: engine.rooms().len() as u32,
            viewers: viewers as u32,
            publishers: publishers as u32,
            egress_bps: ((bytes.saturating_sub(last.1)) as f64 * 8.0 / secs) as u64,
            cpu_percent: match (last.2, cpu) {
                (Some(from), Some(to)) => procstat::cpu_pct(from, to) as f32,
                _ => 0.0,
            },
        });
        last = (now, bytes, cpu);
    }
}

fn own_cpu() -> Option<CpuReading> {
    procstat::cpu(Process::Own)
}
