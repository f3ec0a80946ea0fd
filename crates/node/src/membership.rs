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
    /// `--public-url`: this node's base URL as clients reach it (default from the hostname).
    pub public_url: Option<String>,
    /// `web` is an HTTPS listener (else plain HTTP: the default public URL says `http://`).
    pub web_is_https: bool,
    /// Connections reach this node through proxies that send a PROXY v2 header.
    pub proxy_protocol: bool,
}

/// Where proxies reach this node's HTTPS: its listen address, or the first advertised media
/// address when it listens on all interfaces.
fn web_address(web: SocketAddr, ice_hosts: &[IpAddr]) -> String {
    let ip = match (web.ip().is_unspecified(), ice_hosts.first()) {
        (true, Some(ip)) => *ip,
        _ => web.ip(),
    };
    SocketAddr::new(ip, web.port()).to_string()
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
    let Some(url) = deadsfu_cluster::JoinUrl::from_env().context("DEADSFU_CLUSTER_URL")? else {
        return Ok(None);
    };
    let bundle = deadsfu_cluster::bundle_fetch::fetch_bundle(&url)
        .await
        .context("fetching the cluster bundle")?;
    // A node's bundle names it: its id and hostname default to the bundle's (and the cluster
    // refuses others).
    let hostname = args
        .node
        .hostname
        .clone()
        .or_else(|| bundle.hostname().map(str::to_owned))
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into())
        });
    let config = NodeConfig {
        node_id: args
            .node
            .node_id
            .clone()
            .or_else(|| bundle.node_id().map(str::to_owned))
            .unwrap_or_else(|| hostname.clone()),
        hostname: hostname.clone(),
        https_port: http.port(),
        public_addrs: ice_hosts.iter().map(IpAddr::to_string).collect(),
        ftl_addr: ftl_address(&args.ftl_listen, ice_hosts),
        region: args.node.region.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        public_url: settings.public_url.clone().or_else(|| {
            (!settings.web_is_https).then(|| format!("http://{hostname}:{}", http.port()))
        }),
        proxy_protocol: settings.proxy_protocol,
        https_addr: Some(web_address(settings.web, ice_hosts)),
    };
    // Redis drops every client when its ACL is reloaded (`cluster issue`, `revoke`): a join
    // caught by that is retried, not fatal.
    let mut attempt = 0;
    let node = loop {
        match ClusterNode::join_bundle(&bundle, config.clone()).await {
            Ok(node) => break node,
            Err(
                e @ (deadsfu_cluster::ClusterError::Redis(_)
                | deadsfu_cluster::ClusterError::Connect(_)),
            ) if attempt < 5 => {
                attempt += 1;
                tracing::info!(error = %e, attempt, "joining the cluster failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => return Err(e).context("joining the cluster"),
        }
    };
    let node = Arc::new(node);
    let cert_store = node.cert_store();
    tracing::info!(node = node.node_id(), url = %node.config().base_url(), "joined the cluster");
    warn_if_hostname_is_elsewhere(&node.config().hostname, ice_hosts).await;

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

/// Redirects send clients to this node's hostname: warn when it does not lead here.
async fn warn_if_hostname_is_elsewhere(hostname: &str, ice_hosts: &[IpAddr]) {
    let mut own: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .collect();
    own.extend_from_slice(ice_hosts);
    let lookup = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::lookup_host((hostname, 443)),
    )
    .await;
    match lookup {
        Ok(Ok(addrs)) => {
            let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if !addrs.iter().any(|a| own.contains(a)) {
                tracing::warn!(hostname, resolved = ?addrs, "--hostname does not resolve to an address of this node; redirects to it will go elsewhere");
            }
        }
        _ => tracing::warn!(
            hostname,
            "--hostname does not resolve; redirects to this node will fail"
        ),
    }
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
    /// Where proxies reach this node's FTL listener, as recorded in its node record.
    pub fn ftl_addr(&self) -> Option<String> {
        self.node.config().ftl_addr.clone()
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        self.node.node_id()
    }

    /// The SFU's half of the front door (307 routing, tickets, readiness, cluster rooms).
    pub fn front_door(
        &self,
        engine: &MediaEngine,
        service_domain: Option<String>,
    ) -> Arc<crate::front_door::ClusterFrontDoor> {
        crate::front_door::ClusterFrontDoor::start(
            self.node.clone(),
            engine.clone(),
            service_domain,
        )
    }

    /// Takes the room for a publisher that cannot be redirected (FTL), taking it over from
    /// viewers waiting on another node. `Err(owner)` when another node's publisher has it.
    pub async fn claim_room_for_publisher(&self, room: &str) -> Result<(), String> {
        match self.node.claim_room(room).await {
            Ok(Claim::Won) => Ok(()),
            Ok(Claim::HeldBy(owner)) => Err(owner),
            // Redis away: keep serving; the heartbeat takes the lease when it is back.
            Err(e) => {
                tracing::debug!(room, error = %e, "room lease deferred");
                Ok(())
            }
        }
    }

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
        self.node.leave().await;
    }
}

/// Gives a room's lease back when the room closes here. Leases are taken when sessions are
/// routed (a publisher's, or waiting viewers'; see `front_door`) and by the FTL bridge.
async fn lease_rooms(node: Arc<ClusterNode>, mut changes: mpsc::UnboundedReceiver<RoomChange>) {
    while let Some(change) = changes.recv().await {
        match change {
            RoomChange::Opened(room) => tracing::debug!(room, "room opened"),
            RoomChange::Closed(room) => {
                if let Err(e) = node.release_room(&room).await {
                    tracing::debug!(room, error = %e, "room lease release deferred");
                }
            }
        }
    }
}
