//! Errors of a node's cluster membership (joining, registry, leases).

use crate::bundle_fetch::FetchError;
use crate::join_url::JoinUrlError;
use crate::redis_conn::RedisConnError;
use crate::role::Role;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    JoinUrl(#[from] JoinUrlError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Connect(#[from] RedisConnError),
    /// Redis did not answer the last heartbeat; the request was not sent.
    #[error("Redis is unreachable; will retry in the background")]
    Unavailable,
    #[error("Redis command failed: {0}")]
    Redis(String),
    #[error("a {0} bundle cannot do this (it needs an sfu or admin bundle)")]
    WrongRole(Role),
    #[error("node id {0:?} is registered by another running process")]
    NodeIdInUse(String),
    #[error("hostname {hostname:?} is already served by node {owner:?}")]
    HostnameTaken { hostname: String, owner: String },
    #[error("bad {what} {value:?}")]
    BadName { what: &'static str, value: String },
    /// The bundle is bound to one node and the configuration names another.
    #[error(
        "the cluster bundle was issued for {what} {bundle:?} but {configured:?} is configured; \
         leave the {what} unset to use the bundle's, or issue a bundle for {configured:?}"
    )]
    IdentityMismatch {
        what: &'static str,
        configured: String,
        bundle: String,
    },
}

impl From<redis::RedisError> for ClusterError {
    fn from(err: redis::RedisError) -> Self {
        ClusterError::Redis(crate::redis_conn::describe(&err))
    }
}
