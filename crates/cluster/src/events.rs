//! Events on the pub/sub channel `{prefix}events`, for routing caches (the proxy).

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::bundle::Bundle;
use crate::error::ClusterError;
use crate::redis_conn::RedisConn;

/// Which kind of lease an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    Host,
    Room,
    Ftl,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    NodeUp {
        node: String,
    },
    NodeDraining {
        node: String,
    },
    NodeDown {
        node: String,
    },
    LeaseTaken {
        kind: LeaseKind,
        name: String,
        node: String,
    },
    LeaseReleased {
        kind: LeaseKind,
        name: String,
        node: String,
    },
    /// A certificate for `domain` was stored (new, renewed or imported): nodes serving from
    /// the shared store reload it.
    CertUpdated {
        domain: String,
    },
}

impl ClusterEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise")
    }

    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// Publishes `event` on the events channel.
pub(crate) async fn publish(
    conn: &RedisConn,
    event: &ClusterEvent,
) -> Result<(), redis::RedisError> {
    let mut manager = conn.manager();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(conn.keys().events_channel())
        .arg(event.to_json())
        .query_async(&mut manager)
        .await?;
    Ok(())
}

/// Largest event payload accepted from the channel.
const MAX_EVENT_BYTES: usize = 4096;

/// Subscribes to the events channel on its own connection (RESP3 pushes, resubscribed after
/// reconnects). Events that do not parse are skipped. Ends when the receiver is dropped.
pub async fn subscribe_events(
    bundle: &Bundle,
) -> Result<mpsc::Receiver<ClusterEvent>, ClusterError> {
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    let conn = RedisConn::connect_with_pushes(bundle, push_tx).await?;
    let mut manager = conn.manager();
    manager.subscribe(conn.keys().events_channel()).await?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        // Holding the connection keeps the subscription alive.
        let _conn = conn;
        while let Some(push) = push_rx.recv().await {
            if push.kind != redis::PushKind::Message {
                continue;
            }
            // A message push is [channel, payload].
            let Some(redis::Value::BulkString(payload)) = push.data.get(1) else {
                continue;
            };
            if payload.len() > MAX_EVENT_BYTES {
                continue;
            }
            let Some(event) = std::str::from_utf8(payload)
                .ok()
                .and_then(ClusterEvent::from_json)
            else {
                continue;
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = ClusterEvent::LeaseTaken {
            kind: LeaseKind::Room,
            name: "r1".into(),
            node: "n1".into(),
        };
        assert_eq!(
            e.to_json(),
            r#"{"event":"lease_taken","kind":"room","name":"r1","node":"n1"}"#
        );
        assert_eq!(ClusterEvent::from_json(&e.to_json()), Some(e));
        let e = ClusterEvent::CertUpdated {
            domain: "a.example.com".into(),
        };
        assert_eq!(
            e.to_json(),
            r#"{"event":"cert_updated","domain":"a.example.com"}"#
        );
        assert_eq!(ClusterEvent::from_json(&e.to_json()), Some(e));
    }
}
