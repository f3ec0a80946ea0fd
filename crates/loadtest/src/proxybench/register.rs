//! The fake backends in Redis: a node record (as an SFU writes it, `NodeRecord`) and the
//! leases that route to it (`host:{hostname}` for SNI, `ftl:{channel}` for FTL), written with
//! the admin bundle and refreshed every second, so `deadsfu proxy` routes to them like to any
//! SFU. The leases live [`LEASE_TTL`] (3 s) and vanish on their own when the tool exits.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use deadsfu_cluster::lease::LEASE_TTL;
use deadsfu_cluster::node_record::unix_ms_now;
use deadsfu_cluster::{FtlOwner, JoinUrl, NodeConfig, NodeLoad, NodeRecord, NodeState, RedisConn};

/// A backend that is not an SFU, registered as one.
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub node_id: String,
    pub hostname: String,
    /// Where proxies reach its TLS listener (`host:{hostname}` is leased when set).
    pub https_addr: Option<SocketAddr>,
    /// It wants a PROXY v2 header on each connection, as an SFU with `--proxy-protocol-from`.
    pub proxy_protocol: bool,
    /// FTL: (channel, control address): `ftl:{channel}` is leased to it.
    pub ftl: Option<(u32, SocketAddr)>,
}

impl FakeNode {
    fn record(&self, instance: &str) -> NodeRecord {
        let ip = self
            .https_addr
            .or(self.ftl.map(|f| f.1))
            .map(|a| a.ip().to_string());
        NodeRecord {
            config: NodeConfig {
                node_id: self.node_id.clone(),
                hostname: self.hostname.clone(),
                https_port: self.https_addr.map_or(0, |a| a.port()),
                public_addrs: ip.into_iter().collect(),
                ftl_addr: self.ftl.map(|f| f.1.to_string()),
                region: "default".into(),
                version: "proxybench".into(),
                public_url: None,
                proxy_protocol: self.proxy_protocol,
                https_addr: self.https_addr.map(|a| a.to_string()),
            },
            state: NodeState::Serving,
            load: NodeLoad::default(),
            heartbeat_unix_ms: unix_ms_now(),
            instance: instance.into(),
        }
    }

    /// Writes the record and the leases once.
    pub async fn write(&self, conn: &RedisConn, instance: &str) -> anyhow::Result<()> {
        let keys = conn.keys();
        let ttl = LEASE_TTL.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys.node(&self.node_id))
            .arg(self.record(instance).to_json())
            .arg("PX")
            .arg(ttl)
            .ignore();
        if self.https_addr.is_some() {
            pipe.cmd("SET")
                .arg(keys.host(&self.hostname))
                .arg(&self.node_id)
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        if let Some((channel, addr)) = self.ftl {
            let owner = FtlOwner {
                node: self.node_id.clone(),
                addr: addr.to_string(),
            };
            pipe.cmd("SET")
                .arg(keys.ftl(&channel.to_string()))
                .arg(owner.to_json())
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn.manager())
            .await
            .context("writing the fake node to Redis")?;
        Ok(())
    }

    /// Writes now, then every second in the background while the runtime lives.
    pub async fn keep_registered(self, conn: RedisConn) -> anyhow::Result<()> {
        let instance = hex::encode(rand::random::<[u8; 8]>());
        self.write(&conn, &instance).await?;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = self.write(&conn, &instance).await {
                    eprintln!("proxybench: refreshing {}: {e:#}", self.node_id);
                }
            }
        });
        Ok(())
    }
}

/// Connects to Redis with the bundle of `DEADSFU_CLUSTER_URL` (an admin bundle: it may write
/// every key), retrying for up to 20 s while the bootstrap server and Redis come up.
pub async fn connect_admin() -> anyhow::Result<RedisConn> {
    let url = JoinUrl::from_env()?
        .context("DEADSFU_CLUSTER_URL (an admin bundle's URL) is needed to register in Redis")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let bundle = deadsfu_cluster::bundle_fetch::fetch_bundle(&url).await?;
            let conn = RedisConn::connect(&bundle).await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn.manager())
                .await?;
            anyhow::Ok(conn)
        };
        match attempt.await {
            Ok(conn) => return Ok(conn),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "Redis not reachable yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("connecting to Redis with the admin bundle")),
        }
    }
}

/// Stores an FTL channel's stream secret (`ftlkey:{channel}`), as `deadsfu cluster ftl-key`
/// does.
pub async fn set_ftl_key(conn: &RedisConn, channel: u32, secret: &str) -> anyhow::Result<()> {
    redis::cmd("SET")
        .arg(conn.keys().ftl_key(&channel.to_string()))
        .arg(secret)
        .query_async::<()>(&mut conn.manager())
        .await
        .context("writing the FTL key")?;
    Ok(())
}
