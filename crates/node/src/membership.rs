//! Cluster mode of a node: join the cluster named by `DEADSFU_CLUSTER_URL`, lease the rooms
//! this node serves, report load, follow certificate events, drain on shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use deadsfu_cluster::{Claim, ClusterNode, NodeConfig};
use deadsfu_media::RoomChange;
use deadsfu_rtc::MediaEngine;
use tokio::sync::mpsc;

/// What a node needs to join: its identity flags and where it listens.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    pub node: deadsfu_cluster::NodeArgs,
    /// `--ftl-listen` (empty: FTL off).
    pub ftl_listen: String,
    /// The port clients reach this node's web side on (HTTPS when on).
    pub web: SocketAddr,
    pub ice_hosts: Vec<IpAddr>,
}

/// Where other nodes (the FTL proxy) reach this node's FTL listener: its own address, or the
/// first advertised media address when it listens on all interfaces.
fn ftl_address(ftl_listen: &str, ice_hosts: &[IpAddr]) -> Option<String> {
    let listen: SocketAddr = ftl_listen.trim().parse().ok()?;
    let ip = if listen.ip().is_unspecified() {
        *ice_hosts.first()?
    } else {
        listen.ip()
    };
    Some(SocketAddr::new(ip, listen.port()).to_string())
}

/// This node's membership; cheap to clone.
#[derive(Clone)]
pub struct Membership {
    node: Arc<ClusterNode>,
    bundle: Arc<deadsfu_cluster::Bundle>,
    cert_store: Arc<deadsfu_cluster::cert_store::RedisCertStore>,
}

/// Joins the cluster when the environment names one; `None` runs standalone.
pub async fn join(
    settings: &MembershipSettings,
    engine: &MediaEngine,
) -> anyhow::Result<Option<Membership>> {
    let args = settings;
    let ice_hosts = &settings.ice_hosts;
    let http = settings.web;
    let hostname = match &args.node.hostname {
        Some(h) => h.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let config = NodeConfig {
        node_id: args
            .node
            .node_id
            .clone()
            .unwrap_or_else(|| hostname.clone()),
        hostname,
        https_port: http.port(),
        public_addrs: ice_hosts.iter().map(IpAddr::to_string).collect(),
        ftl_addr: ftl_address(&args.ftl_listen, ice_hosts),
        region: args.node.region.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let Some(url) = deadsfu_cluster::JoinUrl::from_env().context("DEADSFU_CLUSTER_URL")? else {
        return Ok(None);
    };
    let bundle = deadsfu_cluster::bundle_fetch::fetch_bundle(&url)
        .await
        .context("fetching the cluster bundle")?;
    let node = ClusterNode::join_bundle(&bundle, config)
        .await
        .context("joining the cluster")?;
    let node = Arc::new(node);
    let cert_store = node.cert_store();
    tracing::info!(node = node.node_id(), "joined the cluster");

    let (tx, rx) = mpsc::unbounded_channel();
    engine.set_room_observer(Box::new(move |change| {
        let _ = tx.send(change);
    }));
    tokio::spawn(lease_rooms(node.clone(), rx));
    tokio::spawn(crate::load_report::report_load(
        node.clone(),
        engine.clone(),
    ));
    Ok(Some(Membership {
        node,
        bundle: Arc::new(bundle),
        cert_store: Arc::new(cert_store),
    }))
}

/// This node's `ftl:{channel}` lease while a stream is live here; released when dropped.
pub struct FtlLease {
    node: Arc<ClusterNode>,
    channel: String,
}

impl Drop for FtlLease {
    fn drop(&mut self) {
        let node = self.node.clone();
        let channel = std::mem::take(&mut self.channel);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = node.release_ftl(&channel).await {
                    tracing::debug!(channel, error = %e, "FTL lease release deferred");
                }
            });
        }
    }
}

impl Membership {
    /// The cluster's certificate store (Redis, private keys sealed with the cluster key).
    pub fn cert_store(&self) -> Arc<dyn deadsfu_tls::CertStore> {
        self.cert_store.clone()
    }

    /// Serves certificates other nodes store as soon as they announce them.
    pub fn follow_certificates(&self, https: Arc<deadsfu_tls::NodeHttps>) {
        let bundle = self.bundle.clone();
        tokio::spawn(async move {
            let mut events = match deadsfu_cluster::subscribe_events(&bundle).await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow certificate events; the store is re-read every 30 s");
                    return;
                }
            };
            while let Some(event) = events.recv().await {
                if let deadsfu_cluster::ClusterEvent::CertUpdated { domain } = event {
                    https.certificate_updated(&domain).await;
                }
            }
        });
    }

    /// A channel's stream secret from the cluster's key store.
    pub async fn ftl_key(
        &self,
        channel: u32,
    ) -> Result<Option<String>, deadsfu_cluster::ClusterError> {
        self.node.ftl_key(&channel.to_string()).await
    }

    /// Takes the channel's lease for this node. Another node streaming the channel is a 406 for
    /// the client; Redis being away is not a reason to refuse (the lease is taken on its return).
    pub async fn claim_ftl(
        &self,
        channel: u32,
        ftl_addr: &str,
    ) -> Result<FtlLease, deadsfu_ftl::net::ClaimError> {
        let name = channel.to_string();
        match self.node.claim_ftl(&name, ftl_addr).await {
            Ok(Claim::Won) => {}
            Ok(Claim::HeldBy(owner)) => {
                tracing::warn!(channel, owner, "FTL channel is live on another node");
                return Err(deadsfu_ftl::net::ClaimError::InUse);
            }
            Err(e) => tracing::warn!(channel, error = %e, "FTL lease deferred"),
        }
        Ok(FtlLease {
            node: self.node.clone(),
            channel: name,
        })
    }

    /// Marks the node draining, so routing stops choosing it.
    pub async fn drain(&self) {
        if let Err(e) = self.node.set_draining().await {
            tracing::warn!(error = %e, "could not mark the node draining");
        }
    }

    /// Releases every lease and removes the node record.
    pub async fn leave(self) {
        match Arc::try_unwrap(self.node) {
            Ok(node) => node.leave().await,
            // Background tasks still hold it: dropping stops the heartbeat; leases expire.
            Err(node) => drop(node),
        }
    }
}

/// Takes a room's lease when it opens here and gives it back when it closes.
async fn lease_rooms(node: Arc<ClusterNode>, mut changes: mpsc::UnboundedReceiver<RoomChange>) {
    while let Some(change) = changes.recv().await {
        match change {
            RoomChange::Opened(room) => match node.claim_room(&room).await {
                Ok(Claim::Won) => tracing::debug!(room, "room lease taken"),
                Ok(Claim::HeldBy(owner)) => {
                    tracing::warn!(room, owner, "room is owned by another node")
                }
                // Redis is away: the heartbeat takes the lease when it returns.
                Err(e) => tracing::debug!(room, error = %e, "room lease deferred"),
            },
            RoomChange::Closed(room) => {
                if let Err(e) = node.release_room(&room).await {
                    tracing::debug!(room, error = %e, "room lease release deferred");
                }
            }
        }
    }
}
