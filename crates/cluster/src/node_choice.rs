//! Choosing a node for a new room, the same way on SFUs (307 routing) and proxies (SNI and FTL
//! routing): serving, fresh, this region first, the less loaded of two random candidates
//! ("power of two choices": close to the least loaded without every chooser herding onto it).

use rand::Rng;

use crate::node_record::{FRESH_FOR, NodeRecord, NodeState};

/// A load figure to compare nodes by: CPU, viewers and egress, each scaled to about 1 at a
/// busy node's level.
fn load_score(r: &NodeRecord) -> f64 {
    r.load.cpu_percent as f64 / 100.0
        + r.load.viewers as f64 / 2000.0
        + r.load.egress_bps as f64 / 2e9
}

/// The node for a new room: serving, fresh, not `exclude`; this region first; the less loaded
/// of two random candidates.
pub fn choose_node<'a>(
    nodes: &'a [NodeRecord],
    region: &str,
    exclude: &str,
    now_unix_ms: u64,
    rng: &mut impl Rng,
) -> Option<&'a NodeRecord> {
    let usable = |r: &&NodeRecord| {
        r.state == NodeState::Serving
            && r.is_fresh(now_unix_ms, FRESH_FOR.as_millis() as u64)
            && r.config.node_id != exclude
    };
    let local: Vec<&NodeRecord> = nodes
        .iter()
        .filter(usable)
        .filter(|r| r.config.region == region)
        .collect();
    let pool: Vec<&NodeRecord> = if local.is_empty() {
        nodes.iter().filter(usable).collect()
    } else {
        local
    };
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (pool[a], pool[b]);
            Some(if load_score(b) < load_score(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_record::{NodeConfig, NodeLoad};

    fn record(id: &str, region: &str, state: NodeState, age_ms: u64, cpu: f32) -> NodeRecord {
        NodeRecord {
            config: NodeConfig {
                node_id: id.into(),
                hostname: format!("{id}.test"),
                https_port: 443,
                public_addrs: vec![],
                ftl_addr: None,
                region: region.into(),
                version: "t".into(),
                public_url: None,
                proxy_protocol: false,
                https_addr: None,
            },
            state,
            load: NodeLoad {
                cpu_percent: cpu,
                ..NodeLoad::default()
            },
            heartbeat_unix_ms: 10_000 - age_ms,
            instance: "i".into(),
        }
    }

    #[test]
    fn choice_skips_draining_stale_and_self_and_prefers_the_region() {
        let mut rng = rand::rng();
        let nodes = vec![
            record("self", "eu", NodeState::Serving, 0, 0.0),
            record("drain", "eu", NodeState::Draining, 0, 0.0),
            record("stale", "eu", NodeState::Serving, 3500, 0.0),
            record("far", "us", NodeState::Serving, 0, 0.0),
        ];
        for _ in 0..50 {
            let c = choose_node(&nodes, "eu", "self", 10_000, &mut rng).unwrap();
            assert_eq!(c.config.node_id, "far");
        }
        let mut with_local = nodes.clone();
        with_local.push(record("near", "eu", NodeState::Serving, 100, 90.0));
        for _ in 0..50 {
            let c = choose_node(&with_local, "eu", "self", 10_000, &mut rng).unwrap();
            assert_eq!(c.config.node_id, "near");
        }
        assert!(choose_node(&nodes[..3], "eu", "self", 10_000, &mut rng).is_none());
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let mut rng = rand::rng();
        let nodes = vec![
            record("busy", "eu", NodeState::Serving, 0, 95.0),
            record("idle", "eu", NodeState::Serving, 0, 5.0),
        ];
        for _ in 0..50 {
            let c = choose_node(&nodes, "eu", "x", 10_000, &mut rng).unwrap();
            assert_eq!(c.config.node_id, "idle");
        }
    }
}
