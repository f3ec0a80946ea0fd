//! `cluster status`: nodes and owners read from Redis, rendered as plain tables.

use redis::aio::ConnectionManager;

use crate::error::ClusterError;
use crate::keys::Keys;
use crate::node_record::{FtlOwner, NodeRecord, unix_ms_now};
use crate::redis_conn::RedisConn;

/// Upper bound on keys read per family, so a huge keyspace cannot stall the command.
const MAX_KEYS_PER_FAMILY: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeRecord>,
    /// (room, owning node id)
    pub rooms: Vec<(String, String)>,
    /// Rooms whose lease is held only for viewers waiting for a publisher.
    pub waiting_rooms: Vec<String>,
    /// (channel, owner)
    pub ftl_channels: Vec<(String, FtlOwner)>,
    /// (hostname, node id) from the `host:` leases.
    pub hosts: Vec<(String, String)>,
}

pub async fn read_status(conn: &RedisConn) -> Result<ClusterStatus, ClusterError> {
    let keys = conn.keys();
    let mut manager = conn.manager();
    let mut status = ClusterStatus {
        nodes: read_node_records(&mut manager, keys).await?,
        ..ClusterStatus::default()
    };
    let room_prefix = format!("{}room:", keys.prefix());
    for (key, value) in read_family(&mut manager, keys, "room:").await? {
        let owner = crate::registry::RoomOwner::from_lease_value(&value);
        let room = key[room_prefix.len()..].to_string();
        if owner.viewers_only {
            status.waiting_rooms.push(room.clone());
        }
        status.rooms.push((room, owner.node));
    }
    let ftl_prefix = format!("{}ftl:", keys.prefix());
    for (key, value) in read_family(&mut manager, keys, "ftl:").await? {
        if let Some(owner) = FtlOwner::from_json(&value) {
            status
                .ftl_channels
                .push((key[ftl_prefix.len()..].to_string(), owner));
        }
    }
    let host_prefix = format!("{}host:", keys.prefix());
    for (key, value) in read_family(&mut manager, keys, "host:").await? {
        status
            .hosts
            .push((key[host_prefix.len()..].to_string(), value));
    }
    status.rooms.sort();
    status.ftl_channels.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(status)
}

/// Every node record that parses, by node id; stale ones included.
pub(crate) async fn read_node_records(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> Result<Vec<NodeRecord>, ClusterError> {
    let mut nodes = Vec::new();
    for (key, value) in read_family(conn, keys, "node:").await? {
        if let Some(record) = NodeRecord::from_json(&value) {
            nodes.push(record);
        } else {
            tracing::debug!(%key, "unreadable node record skipped");
        }
    }
    nodes.sort_by(|a, b| a.config.node_id.cmp(&b.config.node_id));
    Ok(nodes)
}
/// Every `(key, value)` of one key family (at most [`MAX_KEYS_PER_FAMILY`]).
async fn read_family(
    conn: &mut ConnectionManager,
    keys: &Keys,
    family: &str,
) -> Result<Vec<(String, String)>, ClusterError> {
    Ok(scan_family(conn, keys, family, MAX_KEYS_PER_FAMILY).await?)
}

/// Every `(key, value)` of one key family, at most `limit` keys; keys that vanish between
/// SCAN and MGET are skipped. The one reader of key families (status, routing, certificates).
pub(crate) async fn scan_family(
    conn: &mut ConnectionManager,
    keys: &Keys,
    family: &str,
    limit: usize,
) -> Result<Vec<(String, String)>, redis::RedisError> {
    let pattern = keys.pattern(family);
    let mut cursor: u64 = 0;
    let mut names: Vec<String> = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        names.extend(batch);
        cursor = next;
        if cursor == 0 || names.len() >= limit {
            break;
        }
    }
    // SCAN may return a key more than once.
    names.sort();
    names.dedup();
    names.truncate(limit);
    let mut out = Vec::with_capacity(names.len());
    for chunk in names.chunks(200) {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query_async(conn).await?;
        for (name, value) in chunk.iter().zip(values) {
            if let Some(value) = value {
                out.push((name.clone(), value));
            }
        }
    }
    Ok(out)
}

/// Renders the status as text tables.
pub fn render(status: &ClusterStatus) -> String {
    let now = unix_ms_now();
    let mut out = String::new();
    let mut nodes = vec![
        [
            "NODE",
            "HOSTNAME",
            "REGION",
            "STATE",
            "ROOMS",
            "VIEWERS",
            "HEARTBEAT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for node in &status.nodes {
        let age_ms = now.saturating_sub(node.heartbeat_unix_ms);
        nodes.push(vec![
            node.config.node_id.clone(),
            node.config.hostname.clone(),
            node.config.region.clone(),
            node.state.to_string(),
            node.load.rooms.to_string(),
            node.load.viewers.to_string(),
            format!("{:.1}s ago", age_ms as f64 / 1000.0),
        ]);
    }
    out.push_str(&format!("Nodes ({}):\n", status.nodes.len()));
    out.push_str(&table(&nodes));
    let mut rooms = vec![vec!["ROOM".to_string(), "OWNER".to_string()]];
    rooms.extend(status.rooms.iter().map(|(r, o)| vec![r.clone(), o.clone()]));
    out.push_str(&format!("\nRooms ({}):\n", status.rooms.len()));
    out.push_str(&table(&rooms));
    let mut ftl = vec![vec![
        "CHANNEL".to_string(),
        "OWNER".to_string(),
        "FTL ADDRESS".to_string(),
    ]];
    ftl.extend(
        status
            .ftl_channels
            .iter()
            .map(|(c, o)| vec![c.clone(), o.node.clone(), o.addr.clone()]),
    );
    out.push_str(&format!(
        "\nFTL channels ({}):\n",
        status.ftl_channels.len()
    ));
    out.push_str(&table(&ftl));
    out
}

pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
