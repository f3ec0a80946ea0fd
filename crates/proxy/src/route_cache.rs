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

#[derive(Debug)]
pub struct RouteCache {
    table: ArcSwap<RouteTable>,
    redis_away: AtomicBool,
}

impl RouteCache {
    /// An empty cache (tests fill it with [`RouteCache::replace`]).
    pub fn empty() -> Arc<Self> {
        Arc::new(Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            redis_away: AtomicBool::new(false),
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
                let table = RouteTable {
                    nodes: status.nodes,
                    hosts: status.hosts.into_iter().collect(),
                    ftl: status.ftl_channels.into_iter().collect::<HashMap<_, _>>(),
                    read_at_unix_ms: unix_ms(),
                };
                self.replace(table);
                if self.redis_away.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis reachable again; routing table resynced");
                }
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
