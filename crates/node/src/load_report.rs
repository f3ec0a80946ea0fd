//! Load figures of this node for its cluster record: rooms, sessions, egress and CPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_cluster::{ClusterNode, NodeLoad};
use deadsfu_rtc::MediaEngine;

/// Reports rooms, sessions, egress bitrate and CPU once a second.
pub(crate) async fn report_load(node: Arc<ClusterNode>, engine: MediaEngine) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), engine.metrics().bytes_out, cpu_ticks());
    loop {
        tick.tick().await;
        let now = Instant::now();
        let bytes = engine.metrics().bytes_out;
        let cpu = cpu_ticks();
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let (publishers, viewers) = engine.session_counts();
        node.report_load(NodeLoad {
            rooms: engine.rooms().len() as u32,
            viewers: viewers as u32,
            publishers: publishers as u32,
            egress_bps: ((bytes.saturating_sub(last.1)) as f64 * 8.0 / secs) as u64,
            // /proc counts in USER_HZ, 100 per second on Linux.
            cpu_percent: (cpu.saturating_sub(last.2) as f64 / secs) as f32,
        });
        last = (now, bytes, cpu);
    }
}

/// User plus system CPU time of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}
