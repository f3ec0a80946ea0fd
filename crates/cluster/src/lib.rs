//! deadsfu's cluster layer (DESIGN.md §2, §6): credential bundles and the bootstrap server,
//! Redis over mutual TLS, the node registry and ownership leases, the shared certificate store
//! ([`RedisCertStore`]), and the operator's `deadsfu cluster ...` commands.
//!
//! An SFU joins with [`ClusterNode::join_from_env`], which is `None` when no
//! `DEADSFU_CLUSTER_URL` is set (standalone mode).

mod acl;
pub mod bootstrap_dir;
pub mod bootstrap_server;
pub mod bundle;
pub mod bundle_fetch;
pub mod cert_admin;
pub mod cert_crypto;
pub mod cert_store;
pub mod cli;
mod cluster_dir;
mod error;
pub mod events;
pub mod init;
pub mod issue;
pub mod join_url;
pub mod keys;
pub mod lease;
pub mod node_choice;
pub mod node_record;
mod pinned_tls;
mod pki;
pub mod redis_conn;
pub mod registry;
pub mod role;
pub mod routing;
pub mod secret;
pub mod status;

pub use bundle::{Bundle, BundleError, BundleSettings};
pub use cert_crypto::ClusterKey;
pub use cert_store::RedisCertStore;
pub use cli::{CertCommand, ClusterCommand, NodeArgs, run};
pub use cluster_dir::{ClusterDir, ClusterSecrets, ClusterSettings};
pub use error::ClusterError;
pub use events::{ClusterEvent, LeaseKind, subscribe_events};
pub use join_url::JoinUrl;
pub use keys::Keys;
pub use node_record::{FRESH_FOR, FtlOwner, NodeConfig, NodeLoad, NodeRecord, NodeState};
pub use redis_conn::RedisConn;
pub use registry::{Claim, ClusterNode, LeaseEvent, RoomOwner};
pub use role::Role;
pub use routing::{host_lease_believed, host_owner, live_nodes};
