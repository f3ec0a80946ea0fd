//! Keeps the [`RouteTable`] current from Redis: read whole at start, again on every event of
//! the events channel (debounced), and every [`RESYNC`] to heal missed events. No Redis round
//! trip happens per connection. With Redis away the last table keeps routing; the outage is
//! logged once and the table catches up when Redis returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use deadsfu_cluster::{Bundle, RedisConn};

use crate::route_table::RouteTable;

/// Full re-read interval: a node whose record expires is out of routing within its 3 s TTL
/// plus this.
pub const RESYNC: Duration = Duration::from_millis(500);

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// After an outage, entries of the last table that Redis no longer has (a restarted Redis
/// without persistence is empty until the nodes re-register) keep routing this long: a
/// node's heartbeat writes its record within a second, and its leases within a TTL.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(4);

#[derive(Debug)]
pub struct RouteCache {
    table: ArcSwap<RouteTable>,
    redis_away: AtomicBool,
    /// Until when entries missing from fresh reads are carried over (after an outage).
    grace_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RouteCache {
    /// An empty cache (tests fill it with [`RouteCache::replace`]).
    pub fn empty() -> Arc<Self> {
        Arc::new(Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            redis_away: AtomicBool::new(false),
            grace_until: std::sync::Mutex::new(None),
        })
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    pub fn replace(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    pub fn redis_away(&self) -> bool {
        self.redis_away.load(Ordering::Relaxed)
    }

    async fn refresh(&self, conn: &RedisConn) {
        match deadsfu_cluster::status::read_status(conn).await {
            Ok(status) => {
                let now = unix_ms();
                let mut table = RouteTable {
                    nodes: status.nodes,
                    hosts: status.hosts.into_iter().collect(),
                    ftl: status.ftl_channels.into_iter().collect::<HashMap<_, _>>(),
                    read_at_unix_ms: now,
                };
                if self.redis_away.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis reachable again; routing table resynced");
                    *self.grace_until.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(std::time::Instant::now() + RECOVERY_GRACE);
                }
                let in_grace = self
                    .grace_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|until| std::time::Instant::now() < until);
                if in_grace {
                    carry_over(&mut table, &self.table(), now);
                }
                self.replace(table);
            }
            Err(e) => {
                if !self.redis_away.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "Redis unreachable; routing from the cached table");
                }
            }
        }
    }

    /// Connects with the proxy's bundle, reads the table once, and keeps it current.
    pub async fn start(bundle: &Bundle) -> anyhow::Result<Arc<Self>> {
        let conn = RedisConn::connect(bundle).await?;
        let cache = Self::empty();
        cache.refresh(&conn).await;
        let events = match deadsfu_cluster::subscribe_events(bundle).await {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow cluster events; resyncing every {RESYNC:?} only");
                None
            }
        };
        let me = cache.clone();
        tokio::spawn(async move {
            let mut events = events;
            let mut tick = tokio::time::interval(RESYNC);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let event = async {
                    match events.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    e = event => {
                        if e.is_none() {
                            events = None;
                        }
                        // Events come in bursts (a node's leases): take them all, read once.
                        if let Some(rx) = events.as_mut() {
                            while rx.try_recv().is_ok() {}
                        }
                    }
                }
                me.refresh(&conn).await;
            }
        });
        Ok(cache)
    }
}

/// Adds to `fresh` what `old` had and `fresh` lacks, as if just read: nodes that were routable
/// before the outage stay routable while they re-register.
fn carry_over(fresh: &mut RouteTable, old: &RouteTable, now_unix_ms: u64) {
    for node in &old.nodes {
        if !fresh
            .nodes
            .iter()
            .any(|n| n.config.node_id == node.config.node_id)
        {
            let mut kept = node.clone();
            kept.heartbeat_unix_ms = now_unix_ms;
            fresh.nodes.push(kept);
        }
    }
    for (host, node) in &old.hosts {
        fresh
            .hosts
            .entry(host.clone())
            .or_insert_with(|| node.clone());
    }
    for (channel, owner) in &old.ftl {
        fresh
            .ftl
            .entry(channel.clone())
            .or_insert_with(|| owner.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadsfu_cluster::{NodeConfig, NodeLoad, NodeRecord, NodeState};

    fn node(id: &str, hb: u64) -> NodeRecord {
        NodeRecord {
            config: NodeConfig {
                node_id: id.into(),
                hostname: format!("{id}.test"),
                https_port: 443,
                public_addrs: vec![],
                ftl_addr: None,
                region: "r".into(),
                version: "t".into(),
                public_url: None,
                proxy_protocol: false,
                https_addr: Some("127.0.0.2:443".into()),
            },
            state: NodeState::Serving,
            load: NodeLoad::default(),
            heartbeat_unix_ms: hb,
            instance: "i".into(),
        }
    }

    #[test]
    fn an_empty_read_after_an_outage_keeps_the_known_nodes() {
        let old = RouteTable {
            nodes: vec![node("a", 1_000), node("b", 1_000)],
            hosts: [("a.test".to_string(), "a".to_string())]
                .into_iter()
                .collect(),
            ftl: HashMap::new(),
            read_at_unix_ms: 1_000,
        };
        let mut fresh = RouteTable {
            nodes: vec![node("b", 60_000)],
            read_at_unix_ms: 60_000,
            ..RouteTable::default()
        };
        carry_over(&mut fresh, &old, 60_000);
        assert_eq!(fresh.nodes.len(), 2);
        let a = fresh
            .nodes
            .iter()
            .find(|n| n.config.node_id == "a")
            .unwrap();
        assert_eq!(a.heartbeat_unix_ms, 60_000);
        let b = fresh
            .nodes
            .iter()
            .find(|n| n.config.node_id == "b")
            .unwrap();
        assert_eq!(b.heartbeat_unix_ms, 60_000);
        assert_eq!(fresh.hosts.get("a.test").map(String::as_str), Some("a"));
    }
}
