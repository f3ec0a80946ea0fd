//! The proxy's routing state as plain data (node records, hostname leases, FTL channel owners)
//! and the decisions made from it. Kept current by `route_cache`; no I/O here.

use std::collections::HashMap;
use std::net::SocketAddr;

use deadsfu_cluster::node_choice::choose_node;
use deadsfu_cluster::{FRESH_FOR, FtlOwner, NodeRecord};
use rand::Rng;

use crate::client_hello::HelloInfo;

pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where a new HTTPS connection goes (borrowed from the table: nothing copied per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend<'a> {
    pub node: &'a str,
    pub addr: SocketAddr,
    /// The node wants a PROXY v2 header first.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub nodes: Vec<NodeRecord>,
    /// hostname → node id (`host:` leases).
    pub hosts: HashMap<String, String>,
    /// channel → owner (`ftl:` leases).
    pub ftl: HashMap<String, FtlOwner>,
    /// Wall-clock time of the read (Unix ms). Node records are judged fresh against `now`
    /// while Redis answers, and against this time while it does not, so an outage does not
    /// empty the table.
    pub read_at_unix_ms: u64,
}

/// Where a node's HTTPS listener is reached (`https_addr` in its record, else its first
/// public address with its HTTPS port).
pub fn https_addr(r: &NodeRecord) -> Option<SocketAddr> {
    if let Some(a) = r.config.https_addr.as_deref().and_then(|a| a.parse().ok()) {
        return Some(a);
    }
    let ip = r.config.public_addrs.first()?.parse().ok()?;
    Some(SocketAddr::new(ip, r.config.https_port))
}

impl RouteTable {
    /// The clock freshness is judged by: `now`, or the time of the last successful read when
    /// Redis has been away (`stale_since` set), so cached nodes keep routing.
    fn clock(&self, now_unix_ms: u64, redis_away: bool) -> u64 {
        if redis_away {
            self.read_at_unix_ms
        } else {
            now_unix_ms
        }
    }

    fn fresh_node(&self, id: &str, clock: u64) -> Option<&NodeRecord> {
        self.nodes
            .iter()
            .find(|n| n.config.node_id == id)
            .filter(|n| n.is_fresh(clock, FRESH_FOR.as_millis() as u64))
    }

    fn backend(r: &NodeRecord) -> Option<Backend<'_>> {
        Some(Backend {
            node: &r.config.node_id,
            addr: https_addr(r)?,
            proxy_protocol: r.config.proxy_protocol,
        })
    }

    /// The node for a ClientHello: a node's own hostname (its `host:` lease naming a live
    /// record with that hostname) goes there; the service name (any ALPN, `acme-tls/1`
    /// included: every node answers challenges from Redis) goes to a chosen node; anything
    /// else has no route.
    pub fn route_hello(
        &self,
        hello: &HelloInfo,
        service_domain: &str,
        region: &str,
        now_unix_ms: u64,
        redis_away: bool,
        rng: &mut impl Rng,
    ) -> Option<Backend<'_>> {
        let sni = hello.sni.as_deref()?;
        let clock = self.clock(now_unix_ms, redis_away);
        if let Some(id) = self.hosts.get(sni) {
            let node = self.nodes.iter().find(|n| n.config.node_id == *id)?;
            return deadsfu_cluster::host_lease_believed(sni, id, node, clock)
                .then(|| Self::backend(node))
                .flatten();
        }
        if sni == service_domain {
            return self.choose(region, clock, rng);
        }
        None
    }

    fn choose(&self, region: &str, clock: u64, rng: &mut impl Rng) -> Option<Backend<'_>> {
        choose_node(&self.nodes, region, "", clock, rng).and_then(Self::backend)
    }

    /// The FTL control address for `channel`: the node ingesting it, else a chosen node.
    pub fn ftl_target(
        &self,
        channel: &str,
        region: &str,
        now_unix_ms: u64,
        redis_away: bool,
        rng: &mut impl Rng,
    ) -> Option<SocketAddr> {
        let clock = self.clock(now_unix_ms, redis_away);
        if let Some(owner) = self.ftl.get(channel)
            && self.fresh_node(&owner.node, clock).is_some()
        {
            return owner.addr.parse().ok();
        }
        let usable: Vec<NodeRecord> = self
            .nodes
            .iter()
            .filter(|n| n.config.ftl_addr.is_some())
            .cloned()
            .collect();
        choose_node(&usable, region, "", clock, rng)
            .and_then(|n| n.config.ftl_addr.as_deref()?.parse().ok())
    }

    /// Any fresh node (for readiness).
    pub fn has_live_node(&self, now_unix_ms: u64, redis_away: bool) -> bool {
        let clock = self.clock(now_unix_ms, redis_away);
        self.nodes
            .iter()
            .any(|n| n.is_fresh(clock, FRESH_FOR.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadsfu_cluster::{NodeConfig, NodeLoad, NodeState};

    fn node(id: &str, ip: &str, hb: u64, state: NodeState) -> NodeRecord {
        NodeRecord {
            config: NodeConfig {
                node_id: id.into(),
                hostname: format!("{id}.test"),
                https_port: 8443,
                public_addrs: vec!["127.0.0.1".into()],
                ftl_addr: Some(format!("{ip}:8084")),
                region: "eu".into(),
                version: "t".into(),
                public_url: None,
                proxy_protocol: id == "a",
                https_addr: Some(format!("{ip}:8443")),
            },
            state,
            load: NodeLoad::default(),
            heartbeat_unix_ms: hb,
            instance: "i".into(),
        }
    }

    fn hello(sni: Option<&str>, alpn: &[&[u8]]) -> HelloInfo {
        HelloInfo::new(sni, alpn)
    }

    fn table() -> RouteTable {
        RouteTable {
            nodes: vec![
                node("a", "127.0.0.2", 10_000, NodeState::Serving),
                node("b", "127.0.0.3", 10_000, NodeState::Draining),
                node("c", "127.0.0.4", 5_000, NodeState::Serving),
            ],
            hosts: [
                ("a.test", "a"),
                ("b.test", "b"),
                ("c.test", "c"),
                ("x.test", "a"),
            ]
            .into_iter()
            .map(|(h, n)| (h.to_string(), n.to_string()))
            .collect(),
            ftl: HashMap::new(),
            read_at_unix_ms: 10_000,
        }
    }

    #[test]
    fn own_hostnames_go_to_their_node_even_draining() {
        let t = table();
        let mut rng = rand::rng();
        let a = t
            .route_hello(
                &hello(Some("a.test"), &[]),
                "svc.test",
                "eu",
                10_500,
                false,
                &mut rng,
            )
            .unwrap();
        assert_eq!(a.addr, "127.0.0.2:8443".parse().unwrap());
        assert!(a.proxy_protocol);
        // Draining: its existing sessions' PATCH/DELETE still reach it.
        let b = t.route_hello(
            &hello(Some("b.test"), &[]),
            "svc.test",
            "eu",
            10_500,
            false,
            &mut rng,
        );
        assert_eq!(b.unwrap().node, "b");
        // Stale record (5 s old): out of routing.
        assert!(
            t.route_hello(
                &hello(Some("c.test"), &[]),
                "svc.test",
                "eu",
                10_500,
                false,
                &mut rng
            )
            .is_none()
        );
        // A host lease naming a node whose record has another hostname.
        assert!(
            t.route_hello(
                &hello(Some("x.test"), &[]),
                "svc.test",
                "eu",
                10_500,
                false,
                &mut rng
            )
            .is_none()
        );
    }

    #[test]
    fn service_name_goes_to_a_serving_fresh_node_acme_included() {
        let t = table();
        let mut rng = rand::rng();
        for alpn in [&[b"h2".as_slice()][..], &[ACME_TLS_ALPN][..]] {
            for _ in 0..20 {
                let r = t
                    .route_hello(
                        &hello(Some("svc.test"), alpn),
                        "svc.test",
                        "eu",
                        10_500,
                        false,
                        &mut rng,
                    )
                    .unwrap();
                assert_eq!(r.node, "a");
            }
        }
    }

    #[test]
    fn unknown_or_missing_sni_has_no_route() {
        let t = table();
        let mut rng = rand::rng();
        assert!(
            t.route_hello(
                &hello(Some("evil.test"), &[]),
                "svc.test",
                "eu",
                10_500,
                false,
                &mut rng
            )
            .is_none()
        );
        assert!(
            t.route_hello(&hello(None, &[]), "svc.test", "eu", 10_500, false, &mut rng)
                .is_none()
        );
    }

    #[test]
    fn redis_away_keeps_routing_from_the_last_read() {
        let t = table();
        let mut rng = rand::rng();
        // Much later, Redis unreachable: judged at the read time, a is still fresh.
        assert!(
            t.route_hello(
                &hello(Some("a.test"), &[]),
                "svc.test",
                "eu",
                60_000,
                true,
                &mut rng
            )
            .is_some()
        );
        assert!(
            t.route_hello(
                &hello(Some("a.test"), &[]),
                "svc.test",
                "eu",
                60_000,
                false,
                &mut rng
            )
            .is_none()
        );
    }

    #[test]
    fn ftl_goes_to_the_channel_owner_else_a_chosen_node() {
        let mut t = table();
        let mut rng = rand::rng();
        assert_eq!(
            t.ftl_target("42", "eu", 10_500, false, &mut rng),
            Some("127.0.0.2:8084".parse().unwrap())
        );
        t.ftl.insert(
            "42".into(),
            FtlOwner {
                node: "b".into(),
                addr: "127.0.0.3:8084".into(),
            },
        );
        assert_eq!(
            t.ftl_target("42", "eu", 10_500, false, &mut rng),
            Some("127.0.0.3:8084".parse().unwrap())
        );
    }
}
