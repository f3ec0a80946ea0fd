//! What a node publishes about itself (`node:{id}`) and what the FTL lease holds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A node record whose last heartbeat is older than this is not routed to (DESIGN.md §6:
/// "record < 3 s"); equal to the record's TTL.
pub const FRESH_FOR: Duration = crate::lease::LEASE_TTL;

/// A node's identity and addresses, fixed for its lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Unique in the cluster; by convention the hostname.
    pub node_id: String,
    /// The node's own public hostname (its TLS certificate's name; target of 307 redirects).
    pub hostname: String,
    pub https_port: u16,
    /// Public IP addresses (media candidates).
    pub public_addrs: Vec<String>,
    /// Where this node ingests FTL (`host:port`), if it does.
    pub ftl_addr: Option<String>,
    pub region: String,
    pub version: String,
    /// The node's own base URL (`https://host[:port]`), where redirects send clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Connections to this node must start with a PROXY protocol v2 header.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// `ip:port` where proxies reach this node's HTTPS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_addr: Option<String>,
}

impl NodeConfig {
    /// `public_url`, or `https://{hostname}:{https_port}` (without `:443`).
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if self.https_port == 443 => format!("https://{}", self.hostname),
            None => format!("https://{}:{}", self.hostname, self.https_port),
        }
    }
}

/// Load figures, reported by the SFU as often as it likes (they are read once a heartbeat).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub rooms: u32,
    pub viewers: u32,
    pub publishers: u32,
    pub egress_bps: u64,
    /// Whole-process CPU use, 0–100 per core.
    pub cpu_percent: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Serving,
    /// Shutting down: keeps its sessions, takes no new ones.
    Draining,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
        })
    }
}

/// The JSON value of `node:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(flatten)]
    pub config: NodeConfig,
    pub state: NodeState,
    pub load: NodeLoad,
    /// Wall-clock time of the write, for "last heartbeat" ages.
    pub heartbeat_unix_ms: u64,
    /// Random per process: tells this process's record from a previous or rival one with
    /// the same node id.
    pub instance: String,
}

impl NodeRecord {
    /// Heartbeat younger than `max_age_ms`.
    pub fn is_fresh(&self, now_unix_ms: u64, max_age_ms: u64) -> bool {
        now_unix_ms.saturating_sub(self.heartbeat_unix_ms) < max_age_ms
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("node records serialise")
    }

    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// The JSON value of `ftl:{channel}`: who ingests the channel, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FtlOwner {
    pub node: String,
    pub addr: String,
}

impl FtlOwner {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("FTL owners serialise")
    }

    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
