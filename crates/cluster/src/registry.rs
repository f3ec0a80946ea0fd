//! A node's membership: its record in `node:{id}`, its leases (`host:`, `room:`, `ftl:`),
//! the heartbeat that keeps them alive, draining and leaving.
//!
//! While Redis is unreachable the node keeps serving; the heartbeat logs once, keeps
//! retrying (redis-rs reconnects with backoff) and, when Redis answers again, re-takes every
//! lease that is still free. A lease another node took meanwhile is not stolen back: it is
//! dropped from this node's set, counted, logged and reported as [`LeaseEvent::Lost`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::bundle::Bundle;
use crate::bundle_fetch::fetch_bundle;
use crate::cert_crypto::ClusterKey;
use crate::cert_store::RedisCertStore;
use crate::error::ClusterError;
use crate::events::{ClusterEvent, LeaseKind};
use crate::join_url::JoinUrl;
use crate::keys::Keys;
use crate::lease::{LEASE_TTL, LeaseOutcome, LeaseScripts, WEAK_SUFFIX};
use crate::node_record::{FtlOwner, NodeConfig, NodeLoad, NodeRecord, NodeState, unix_ms_now};
use crate::redis_conn::RedisConn;
use crate::role::Role;
use crate::secret::Secret;

/// How often the node record and leases are refreshed (a third of their TTL).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Writes the node record unless another process's record holds the id.
/// KEYS[1]: node key; ARGV[1]: `"instance":"<ours>"`; ARGV[2]: record; ARGV[3]: TTL ms.
const NODE_WRITE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == false or string.find(cur, ARGV[1], 1, true) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;

/// Deletes the node record if it is ours. KEYS[1]: node key; ARGV[1]: instance marker.
const NODE_DELETE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.find(cur, ARGV[1], 1, true) then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Who holds a room lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomOwner {
    pub node: String,
    /// Held for viewers waiting in an empty room (a publisher elsewhere may take it over).
    pub viewers_only: bool,
}

impl RoomOwner {
    pub fn from_lease_value(value: &str) -> Self {
        match value.strip_suffix(WEAK_SUFFIX) {
            Some(node) => Self {
                node: node.to_string(),
                viewers_only: true,
            },
            None => Self {
                node: value.to_string(),
                viewers_only: false,
            },
        }
    }
}

/// Outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node holds the lease (just taken, or already held).
    Won,
    /// Another node holds it; its node id.
    HeldBy(String),
}

/// Changes to this node's leases that the SFU did not ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Another node holds a lease this node had (taken while Redis was unreachable here).
    Lost {
        kind: LeaseKind,
        name: String,
        owner: String,
    },
}

#[derive(Debug, Clone)]
struct HeldLease {
    kind: LeaseKind,
    name: String,
    value: String,
}

struct Inner {
    conn: RedisConn,
    keys: Keys,
    config: NodeConfig,
    instance: String,
    scripts: LeaseScripts,
    node_write: Script,
    node_delete: Script,
    state: Mutex<NodeState>,
    load: watch::Receiver<NodeLoad>,
    load_tx: watch::Sender<NodeLoad>,
    /// Lease key -> lease, for every lease this node holds or wants back.
    leases: Mutex<BTreeMap<String, HeldLease>>,
    conflicts: AtomicU64,
    redis_reachable: AtomicBool,
    lease_events: broadcast::Sender<LeaseEvent>,
}

/// This process's membership in the cluster. Dropping it stops the heartbeat without
/// cleaning up (the record and leases then expire within [`LEASE_TTL`]); call
/// [`ClusterNode::leave`] for an orderly exit.
pub struct ClusterNode {
    inner: Arc<Inner>,
    heartbeat: JoinHandle<()>,
    /// From the bundle (sfu bundles issued since the certificate store exists).
    cluster_key: Option<ClusterKey>,
    ticket_secret: Option<Secret>,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl ClusterNode {
    /// Cluster mode from the environment: `None` when `DEADSFU_CLUSTER_URL(_FILE)` is not
    /// set (standalone); otherwise fetches the bundle, connects and joins.
    pub async fn join_from_env(config: NodeConfig) -> Result<Option<Self>, ClusterError> {
        let Some(url) = JoinUrl::from_env()? else {
            return Ok(None);
        };
        Ok(Some(Self::join_url(&url, config).await?))
    }

    pub async fn join_url(url: &JoinUrl, config: NodeConfig) -> Result<Self, ClusterError> {
        let bundle = fetch_bundle(url).await?;
        Self::join_bundle(&bundle, config).await
    }

    /// Joins with a bundle. A bundle bound to one node ([`Bundle::node_id`],
    /// [`Bundle::hostname`]) needs `config` to name that node id and hostname (the hostname
    /// compared without regard to case, and recorded as the bundle has it); anything else is
    /// [`ClusterError::IdentityMismatch`], found before Redis is contacted. Callers default
    /// their node id and hostname from the bundle.
    pub async fn join_bundle(
        bundle: &Bundle,
        mut config: NodeConfig,
    ) -> Result<Self, ClusterError> {
        if bundle.settings.role == Role::Proxy {
            return Err(ClusterError::WrongRole(Role::Proxy));
        }
        check_identity(bundle, &mut config)?;
        let conn = RedisConn::connect(bundle).await?;
        let mut node = Self::join(conn, config).await?;
        node.cluster_key = bundle.cluster_key();
        node.ticket_secret = bundle.ticket_secret();
        Ok(node)
    }

    /// Registers the node and takes its `host:` lease, then starts the heartbeat.
    pub async fn join(conn: RedisConn, config: NodeConfig) -> Result<Self, ClusterError> {
        for (what, value) in [("node id", &config.node_id), ("hostname", &config.hostname)] {
            if !valid_key_part(value) {
                return Err(ClusterError::BadName {
                    what,
                    value: value.clone(),
                });
            }
        }
        let mut instance = [0u8; 16];
        rand::rng().fill_bytes(&mut instance);
        let (load_tx, load) = watch::channel(NodeLoad::default());
        let inner = Arc::new(Inner {
            keys: conn.keys().clone(),
            conn,
            config,
            instance: hex::encode(instance),
            scripts: LeaseScripts::default(),
            node_write: Script::new(NODE_WRITE),
            node_delete: Script::new(NODE_DELETE),
            state: Mutex::new(NodeState::Serving),
            load,
            load_tx,
            leases: Mutex::new(BTreeMap::new()),
            conflicts: AtomicU64::new(0),
            redis_reachable: AtomicBool::new(true),
            lease_events: broadcast::channel(64).0,
        });

        // A previous run of this node may still hold the id for up to one TTL.
        let deadline = tokio::time::Instant::now() + LEASE_TTL + Duration::from_secs(1);
        while !inner.write_record().await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::NodeIdInUse(inner.config.node_id.clone()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let hostname = inner.config.hostname.clone();
        match inner
            .claim(LeaseKind::Host, &hostname, inner.config.node_id.clone())
            .await
        {
            Ok(Claim::Won) => {}
            Ok(Claim::HeldBy(owner)) => {
                inner.delete_record().await;
                return Err(ClusterError::HostnameTaken { hostname, owner });
            }
            Err(err) => {
                inner.delete_record().await;
                return Err(err);
            }
        }
        inner
            .publish(ClusterEvent::NodeUp {
                node: inner.config.node_id.clone(),
            })
            .await;
        tracing::info!(node = %inner.config.node_id, hostname = %inner.config.hostname, region = %inner.config.region, redis = %inner.conn.addr(), "joined the cluster");
        let heartbeat = tokio::spawn(heartbeat(inner.clone()));
        Ok(Self {
            inner,
            heartbeat,
            cluster_key: None,
            ticket_secret: None,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The hostname this node leases (`host:{hostname}`).
    pub fn hostname(&self) -> &str {
        &self.inner.config.hostname
    }

    /// The live node serving `hostname`, checked against its node record; see
    /// [`crate::routing::host_owner`].
    pub async fn host_owner(&self, hostname: &str) -> Result<Option<NodeRecord>, ClusterError> {
        crate::routing::host_owner(&self.inner.conn, hostname).await
    }

    /// Every node with a fresh record; see [`crate::routing::live_nodes`].
    pub async fn live_nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        crate::routing::live_nodes(&self.inner.conn).await
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// What this node registered (hostname, region, public URL...).
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The Redis connection of this membership (shared; for reading routing state).
    pub fn redis(&self) -> &RedisConn {
        &self.inner.conn
    }

    /// True once [`ClusterNode::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        *self.inner.state.lock().expect("state lock") == NodeState::Draining
    }

    /// The shared certificate store on this node's connection, with the bundle's cluster key
    /// (none when joined with [`ClusterNode::join`] or an old bundle: then private keys can
    /// be neither read nor stored).
    pub fn cert_store(&self) -> RedisCertStore {
        RedisCertStore::new(self.inner.conn.clone(), self.cluster_key.clone())
    }

    /// The secret signing redirect tickets, shared by every sfu bundle.
    pub fn ticket_secret(&self) -> Option<&Secret> {
        self.ticket_secret.as_ref()
    }

    /// Latest load figures; cheap (a watch channel), call as often as convenient.
    pub fn report_load(&self, load: NodeLoad) {
        self.inner.load_tx.send_replace(load);
    }

    /// Leases lost to other nodes since joining.
    pub fn lease_conflicts(&self) -> u64 {
        self.inner.conflicts.load(Ordering::Relaxed)
    }

    /// False between a failed heartbeat and the next successful one.
    pub fn redis_reachable(&self) -> bool {
        self.inner.redis_reachable.load(Ordering::Relaxed)
    }

    pub fn lease_events(&self) -> broadcast::Receiver<LeaseEvent> {
        self.inner.lease_events.subscribe()
    }

    /// Takes `room:{name}` for this node (when a room first gets a publisher or viewer here).
    ///
    /// On a Redis error (or [`ClusterError::Unavailable`] during an outage, returned at once)
    /// the room stays wanted: the heartbeat takes it once Redis answers, unless another node
    /// has it by then ([`LeaseEvent::Lost`]). Call [`ClusterNode::release_room`] to give up.
    pub async fn claim_room(&self, room: &str) -> Result<Claim, ClusterError> {
        check_name("room", room)?;
        self.inner
            .claim(LeaseKind::Room, room, self.inner.config.node_id.clone())
            .await
    }

    /// Takes `room:{name}` weakly, for viewers waiting in a room nobody publishes to yet: later
    /// viewers are sent here, but a publisher on another node may take the room over. Does
    /// nothing when this node already holds the room (weakly or not).
    pub async fn claim_room_for_viewers(&self, room: &str) -> Result<Claim, ClusterError> {
        check_name("room", room)?;
        let key = self.inner.keys.room(room);
        if self
            .inner
            .leases
            .lock()
            .expect("lease lock")
            .contains_key(&key)
        {
            return Ok(Claim::Won);
        }
        let value = format!("{}{WEAK_SUFFIX}", self.inner.config.node_id);
        self.inner.claim(LeaseKind::Room, room, value).await
    }

    /// The node owning `room:{name}`, and whether it holds it only for waiting viewers.
    pub async fn room_owner(&self, room: &str) -> Result<Option<RoomOwner>, ClusterError> {
        check_name("room", room)?;
        let mut conn = self.inner.conn.manager();
        let value: Option<String> = redis::cmd("GET")
            .arg(self.inner.keys.room(room))
            .query_async(&mut conn)
            .await?;
        Ok(value.map(|v| RoomOwner::from_lease_value(&v)))
    }

    /// Releases `room:{name}` (when the room empties here).
    pub async fn release_room(&self, room: &str) -> Result<(), ClusterError> {
        check_name("room", room)?;
        self.inner.release(LeaseKind::Room, room).await
    }

    /// Takes `ftl:{channel}` while the channel is live here, with this node's FTL address.
    pub async fn claim_ftl(&self, channel: &str, ftl_addr: &str) -> Result<Claim, ClusterError> {
        check_name("channel", channel)?;
        let value = FtlOwner {
            node: self.inner.config.node_id.clone(),
            addr: ftl_addr.to_string(),
        }
        .to_json();
        self.inner.claim(LeaseKind::Ftl, channel, value).await
    }

    pub async fn release_ftl(&self, channel: &str) -> Result<(), ClusterError> {
        check_name("channel", channel)?;
        self.inner.release(LeaseKind::Ftl, channel).await
    }

    /// The FTL stream secret stored for `channel` by `deadsfu cluster ftl-key set`.
    pub async fn ftl_key(&self, channel: &str) -> Result<Option<String>, ClusterError> {
        check_name("channel", channel)?;
        let mut conn = self.inner.conn.manager();
        Ok(redis::cmd("GET")
            .arg(self.inner.keys.ftl_key(channel))
            .query_async(&mut conn)
            .await?)
    }

    /// Marks the node draining in Redis at once, so routing stops choosing it.
    pub async fn set_draining(&self) -> Result<(), ClusterError> {
        *self.inner.state.lock().expect("state lock") = NodeState::Draining;
        self.inner.write_record().await?;
        self.inner
            .publish(ClusterEvent::NodeDraining {
                node: self.inner.config.node_id.clone(),
            })
            .await;
        tracing::info!(node = %self.inner.config.node_id, "node draining");
        Ok(())
    }

    /// Orderly exit: stops the heartbeat, releases every lease and deletes the node record.
    /// Bounded in time; what it cannot delete expires by itself. Other holders of the node
    /// (routing, load reports) may still exist: claims they make after this are not refreshed.
    pub async fn leave(&self) {
        self.heartbeat.abort();
        let inner = self.inner.clone();
        let work = async {
            let held: Vec<(String, HeldLease)> =
                std::mem::take(&mut *inner.leases.lock().expect("lease lock"))
                    .into_iter()
                    .collect();
            let mut conn = inner.conn.manager();
            for (key, lease) in held {
                if let Ok(true) = inner.scripts.release(&mut conn, &key, &lease.value).await {
                    inner
                        .publish(ClusterEvent::LeaseReleased {
                            kind: lease.kind,
                            name: lease.name,
                            node: inner.config.node_id.clone(),
                        })
                        .await;
                }
            }
            inner.delete_record().await;
            inner
                .publish(ClusterEvent::NodeDown {
                    node: inner.config.node_id.clone(),
                })
                .await;
        };
        if tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .is_err()
        {
            tracing::warn!(node = %inner.config.node_id, "leaving the cluster timed out; leases will expire");
        } else {
            tracing::info!(node = %inner.config.node_id, "left the cluster");
        }
    }
}

impl Inner {
    fn record(&self) -> NodeRecord {
        NodeRecord {
            config: self.config.clone(),
            state: *self.state.lock().expect("state lock"),
            load: *self.load.borrow(),
            heartbeat_unix_ms: unix_ms_now(),
            instance: self.instance.clone(),
        }
    }

    fn instance_marker(&self) -> String {
        format!("\"instance\":\"{}\"", self.instance)
    }

    /// True if written; false if another process's record holds the id.
    async fn write_record(&self) -> Result<bool, ClusterError> {
        let mut conn = self.conn.manager();
        let written: i64 = self
            .node_write
            .key(self.keys.node(&self.config.node_id))
            .arg(self.instance_marker())
            .arg(self.record().to_json())
            .arg(LEASE_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(written == 1)
    }

    async fn delete_record(&self) {
        let mut conn = self.conn.manager();
        let result: Result<i64, _> = self
            .node_delete
            .key(self.keys.node(&self.config.node_id))
            .arg(self.instance_marker())
            .invoke_async(&mut conn)
            .await;
        if let Err(err) = result {
            tracing::debug!(error = %crate::redis_conn::describe(&err), "deleting node record failed; it will expire");
        }
    }

    fn lease_key(&self, kind: LeaseKind, name: &str) -> String {
        match kind {
            LeaseKind::Host => self.keys.host(name),
            LeaseKind::Room => self.keys.room(name),
            LeaseKind::Ftl => self.keys.ftl(name),
        }
    }

    async fn claim(
        &self,
        kind: LeaseKind,
        name: &str,
        value: String,
    ) -> Result<Claim, ClusterError> {
        let key = self.lease_key(kind, name);
        // Wanted from now on, so the heartbeat retries it if Redis is unreachable.
        self.leases.lock().expect("lease lock").insert(
            key.clone(),
            HeldLease {
                kind,
                name: name.to_string(),
                value: value.clone(),
            },
        );
        // During an outage answer at once instead of waiting out timeouts: the SFU keeps
        // serving, and the heartbeat takes the lease when Redis is back.
        if !self.redis_reachable.load(Ordering::Relaxed) {
            return Err(ClusterError::Unavailable);
        }
        let mut conn = self.conn.manager();
        let outcome = self
            .scripts
            .claim(&mut conn, &key, &value, LEASE_TTL)
            .await?;
        match outcome {
            LeaseOutcome::Taken => {
                self.publish(ClusterEvent::LeaseTaken {
                    kind,
                    name: name.to_string(),
                    node: self.config.node_id.clone(),
                })
                .await;
                Ok(Claim::Won)
            }
            LeaseOutcome::Refreshed => Ok(Claim::Won),
            LeaseOutcome::HeldBy(holder) => {
                let mut leases = self.leases.lock().expect("lease lock");
                // Only forget it if nobody re-claimed it with another value meanwhile.
                if leases.get(&key).is_some_and(|l| l.value == value) {
                    leases.remove(&key);
                }
                Ok(Claim::HeldBy(owner_node(kind, &holder)))
            }
        }
    }

    async fn release(&self, kind: LeaseKind, name: &str) -> Result<(), ClusterError> {
        let key = self.lease_key(kind, name);
        let Some(lease) = self.leases.lock().expect("lease lock").remove(&key) else {
            return Ok(());
        };
        let mut conn = self.conn.manager();
        if self.scripts.release(&mut conn, &key, &lease.value).await? {
            self.publish(ClusterEvent::LeaseReleased {
                kind,
                name: name.to_string(),
                node: self.config.node_id.clone(),
            })
            .await;
        }
        Ok(())
    }

    /// Best effort: events only speed up caches, which also expire on their own.
    async fn publish(&self, event: ClusterEvent) {
        if let Err(err) = crate::events::publish(&self.conn, &event).await {
            tracing::debug!(error = %crate::redis_conn::describe(&err), "publishing a cluster event failed");
        }
    }

    /// One heartbeat: node record, then every lease in one script call.
    async fn beat(&self, conn: &mut ConnectionManager) -> Result<(), ClusterError> {
        if !self.write_record().await? {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %self.config.node_id, "another process registered this node id; not overwriting it");
        }
        let wanted: Vec<(String, HeldLease)> = self
            .leases
            .lock()
            .expect("lease lock")
            .iter()
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        let pairs: Vec<(String, String)> = wanted
            .iter()
            .map(|(k, l)| (k.clone(), l.value.clone()))
            .collect();
        let outcomes = self.scripts.claim_many(conn, &pairs, LEASE_TTL).await?;
        for ((key, lease), outcome) in wanted.into_iter().zip(outcomes) {
            match outcome {
                LeaseOutcome::Refreshed => {}
                LeaseOutcome::Taken => {
                    tracing::info!(kind = ?lease.kind, name = %lease.name, "lease re-taken");
                    self.publish(ClusterEvent::LeaseTaken {
                        kind: lease.kind,
                        name: lease.name.clone(),
                        node: self.config.node_id.clone(),
                    })
                    .await;
                }
                LeaseOutcome::HeldBy(holder) => {
                    let removed = {
                        let mut leases = self.leases.lock().expect("lease lock");
                        // A release or a new claim may have raced with this beat.
                        if leases.get(&key).is_some_and(|l| l.value == lease.value) {
                            leases.remove(&key)
                        } else {
                            None
                        }
                    };
                    if removed.is_some() && lease.value.ends_with(WEAK_SUFFIX) {
                        // Expected: a publisher elsewhere took a room held for waiting viewers.
                        let owner = owner_node(lease.kind, &holder);
                        tracing::info!(room = %lease.name, %owner, "room taken over by a publisher on another node");
                    } else if removed.is_some() {
                        let owner = owner_node(lease.kind, &holder);
                        self.conflicts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(kind = ?lease.kind, name = %lease.name, %owner, "lease taken by another node while Redis was unreachable; not taking it back");
                        let _ = self.lease_events.send(LeaseEvent::Lost {
                            kind: lease.kind,
                            name: lease.name,
                            owner,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

async fn heartbeat(inner: Arc<Inner>) {
    let mut conn = inner.conn.manager();
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Bounded, so a hung connection cannot stall refreshes past the TTL unnoticed.
        let result = match tokio::time::timeout(LEASE_TTL, inner.beat(&mut conn)).await {
            Ok(result) => result,
            Err(_) => Err(ClusterError::Redis("heartbeat timed out".into())),
        };
        match result {
            Ok(()) => {
                if !inner.redis_reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(node = %inner.config.node_id, "Redis reachable again; node record and leases restored");
                    inner
                        .publish(ClusterEvent::NodeUp {
                            node: inner.config.node_id.clone(),
                        })
                        .await;
                }
            }
            Err(err) => {
                // Logged once per outage, not once per beat.
                if inner.redis_reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(node = %inner.config.node_id, error = %err, "Redis unreachable; keeps serving, retrying with backoff");
                }
            }
        }
    }
}

/// The node id inside a lease value (FTL leases hold JSON with the node and address).
fn owner_node(kind: LeaseKind, value: &str) -> String {
    match kind {
        LeaseKind::Ftl => FtlOwner::from_json(value)
            .map(|o| o.node)
            .unwrap_or_else(|| value.to_string()),
        LeaseKind::Room => RoomOwner::from_lease_value(value).node,
        LeaseKind::Host => value.to_string(),
    }
}

/// Holds `config` to the node a bundle is bound to, if it is.
fn check_identity(bundle: &Bundle, config: &mut NodeConfig) -> Result<(), ClusterError> {
    if let Some(node_id) = bundle.node_id()
        && config.node_id != node_id
    {
        return Err(ClusterError::IdentityMismatch {
            what: "node id",
            configured: config.node_id.clone(),
            bundle: node_id.to_string(),
        });
    }
    if let Some(hostname) = bundle.hostname() {
        if !config.hostname.eq_ignore_ascii_case(hostname) {
            return Err(ClusterError::IdentityMismatch {
                what: "hostname",
                configured: config.hostname.clone(),
                bundle: hostname.to_string(),
            });
        }
        if config.hostname != hostname {
            tracing::info!(configured = %config.hostname, %hostname, "using the bundle's spelling of the hostname");
            config.hostname = hostname.to_string();
        }
    }
    Ok(())
}

/// Names that become part of a key: printable, no spaces, bounded.
pub fn valid_key_part(name: &str) -> bool {
    (1..=200).contains(&name.len()) && name.chars().all(|c| c.is_ascii_graphic())
}

fn check_name(what: &'static str, value: &str) -> Result<(), ClusterError> {
    if valid_key_part(value) {
        Ok(())
    } else {
        Err(ClusterError::BadName {
            what,
            value: value.to_string(),
        })
    }
}
