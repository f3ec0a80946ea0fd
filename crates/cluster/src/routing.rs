//! Reading routing state as proxies and SFUs do: who serves a hostname, which nodes are live.
//!
//! A `host:{hostname}` lease alone is not trusted: each sfu name's ACL user may write only its
//! own `node:` and `host:` keys, so a lease is believed only when the node record it names
//! exists, is fresh and claims that same hostname.

use crate::error::ClusterError;
use crate::node_record::{FRESH_FOR, NodeRecord, unix_ms_now};
use crate::redis_conn::RedisConn;
use crate::status::read_node_records;

/// The node serving `hostname`: the record of the node `host:{hostname}` names, if that record
/// exists, is fresh (heartbeat less than [`FRESH_FOR`] old), carries that node id and has `hostname` as its
/// hostname. `None` otherwise (no lease, missing, stale or contradicting record). Draining
/// nodes are returned too (they still serve their sessions); check `state` to route new ones.
pub async fn host_owner(
    conn: &RedisConn,
    hostname: &str,
) -> Result<Option<NodeRecord>, ClusterError> {
    let keys = conn.keys();
    let mut manager = conn.manager();
    let node_id: Option<String> = redis::cmd("GET")
        .arg(keys.host(hostname))
        .query_async(&mut manager)
        .await?;
    let Some(node_id) = node_id else {
        return Ok(None);
    };
    let record: Option<String> = redis::cmd("GET")
        .arg(keys.node(&node_id))
        .query_async(&mut manager)
        .await?;
    let Some(record) = record.as_deref().and_then(NodeRecord::from_json) else {
        tracing::debug!(%hostname, node = %node_id, "hostname lease names no readable node record");
        return Ok(None);
    };
    if !host_lease_believed(hostname, &node_id, &record, unix_ms_now()) {
        tracing::debug!(%hostname, node = %node_id, record_hostname = %record.config.hostname, "hostname lease names a stale or contradicting node record");
        return Ok(None);
    }
    Ok(Some(record))
}

/// The rule both readers apply (this module's, with Redis round trips, and the proxy's route
/// table, on its cached copy): a `host:{hostname}` lease naming `node_id` is believed when
/// `record` is that node's, claims that hostname, and is fresh at `now_unix_ms`.
pub fn host_lease_believed(
    hostname: &str,
    node_id: &str,
    record: &NodeRecord,
    now_unix_ms: u64,
) -> bool {
    record.config.node_id == node_id
        && record.config.hostname.eq_ignore_ascii_case(hostname)
        && record.is_fresh(now_unix_ms, fresh_ms())
}

/// Every node whose record parses and is fresh, by node id (SCAN and MGET over `node:*`).
pub async fn live_nodes(conn: &RedisConn) -> Result<Vec<NodeRecord>, ClusterError> {
    let mut manager = conn.manager();
    let now = unix_ms_now();
    let mut nodes = read_node_records(&mut manager, conn.keys()).await?;
    nodes.retain(|n| n.is_fresh(now, fresh_ms()));
    Ok(nodes)
}

fn fresh_ms() -> u64 {
    FRESH_FOR.as_millis() as u64
}
