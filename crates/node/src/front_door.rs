//! The SFU's half of the cluster's front door: carries out [`crate::routing::plan`] for
//! session-creating requests (room leases, 307 with a ticket, 503 when no node can take the
//! session), checks tickets, reports readiness, and lists the cluster's rooms.
//!
//! Node records and room owners are read from Redis once a second into a snapshot, so choosing
//! a node costs no round trip; a room's owner is read per request (one GET), so a lease taken a
//! moment ago on another node is seen.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use axum::http::StatusCode;
use deadsfu_cluster::{Claim, ClusterNode, NodeRecord, RoomOwner};
use deadsfu_rtc::MediaEngine;
use deadsfu_server::{
    ClusterRoom, FrontDoor, Problem, RouteDecision, RouteRequest, SessionRole, TicketError,
};

use crate::routing::{Facts, Plan, RoomClaim, plan};
use crate::ticket::TicketKey;
use deadsfu_cluster::node_choice::choose_node;

/// How often node records and room owners are re-read.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// Least time between two out-of-turn snapshot reads.
const FORCED_REFRESH_GAP: Duration = Duration::from_millis(250);
/// A lease taken for a redirected client that never arrives is given back after this.
const UNUSED_CLAIM: Duration = Duration::from_secs(30);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cluster as last read.
#[derive(Debug, Default)]
struct Snapshot {
    nodes: Vec<NodeRecord>,
    /// (room, owner node id)
    rooms: Vec<(String, String)>,
    waiting_rooms: Vec<String>,
}

impl Snapshot {
    fn from_status(status: deadsfu_cluster::status::ClusterStatus) -> Self {
        Snapshot {
            nodes: status.nodes,
            rooms: status.rooms,
            waiting_rooms: status.waiting_rooms,
        }
    }

    fn node(&self, id: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.config.node_id == id)
    }
}

pub struct ClusterFrontDoor {
    node: Arc<ClusterNode>,
    engine: MediaEngine,
    service_domain: Option<String>,
    public_url: String,
    tickets: Option<TicketKey>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Rooms with a pending check of an unused claim: one check per room, however many
    /// requests for it are redirected meanwhile.
    unused_checks: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    last_forced_refresh: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ClusterFrontDoor {
    /// Starts the snapshot reader; `service_domain` is the cluster's one public name.
    pub fn start(
        node: Arc<ClusterNode>,
        engine: MediaEngine,
        service_domain: Option<String>,
    ) -> Arc<Self> {
        let tickets = node
            .ticket_secret()
            .map(|s| TicketKey::new(s.expose().as_bytes()));
        if tickets.is_none() {
            tracing::warn!(
                "this sfu bundle carries no ticket secret: redirected requests cannot carry a token's rights; reissue the bundle"
            );
        }
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let reader = snapshot.clone();
        let redis = node.redis().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match deadsfu_cluster::status::read_status(&redis).await {
                    Ok(status) => reader.store(Arc::new(Snapshot::from_status(status))),
                    // Keep the last snapshot; the registry logs Redis outages once.
                    Err(e) => tracing::debug!(error = %e, "cluster snapshot not refreshed"),
                }
            }
        });
        Arc::new(Self {
            public_url: node.config().base_url(),
            service_domain: service_domain.map(|d| d.to_ascii_lowercase()),
            node,
            engine,
            tickets,
            snapshot,
            unused_checks: Arc::default(),
            last_forced_refresh: std::sync::Mutex::new(None),
        })
    }

    fn this(&self) -> &str {
        self.node.node_id()
    }

    fn url_of(&self, node_id: &str) -> Option<String> {
        if node_id == self.this() {
            return Some(self.public_url.clone());
        }
        self.snapshot
            .load()
            .node(node_id)
            .map(|r| r.config.base_url())
    }

    fn redirect(&self, base: &str, req: &RouteRequest<'_>) -> RouteDecision {
        let ticket = match &self.tickets {
            Some(k) => k.issue(req.room, req.role, unix_ms() / 1000),
            // Still marks the request as redirected; it grants nothing.
            None => "unsigned".to_string(),
        };
        let sep = if req.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        RouteDecision::Redirect(format!("{base}{}{sep}ticket={ticket}", req.path_and_query))
    }

    /// The owner of `room`, if its node is this one or has a fresh record.
    async fn live_owner(&self, room: &str) -> Option<RoomOwner> {
        let owner = match self.node.room_owner(room).await {
            Ok(o) => o?,
            Err(e) => {
                tracing::debug!(room, error = %e, "room owner unknown");
                return None;
            }
        };
        if owner.node == self.this() {
            return Some(owner);
        }
        if self.snapshot.load().node(&owner.node).is_none() {
            // A node this snapshot has not seen (it joined since the last read): read again
            // now rather than take its room from it.
            self.refresh_snapshot_now().await;
        }
        let snapshot = self.snapshot.load();
        let live = snapshot
            .node(&owner.node)
            .is_some_and(|r| r.is_fresh(unix_ms(), deadsfu_cluster::FRESH_FOR.as_millis() as u64));
        live.then_some(owner)
    }

    /// Reads the cluster's status out of turn, at most once per [`FORCED_REFRESH_GAP`] (a
    /// lease naming a node that is gone must not cost a read per request).
    async fn refresh_snapshot_now(&self) {
        {
            let mut last = self
                .last_forced_refresh
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < FORCED_REFRESH_GAP) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        if let Ok(status) = deadsfu_cluster::status::read_status(self.node.redis()).await {
            self.snapshot.store(Arc::new(Snapshot::from_status(status)));
        }
    }

    /// Takes the room's lease. `Ok(())` when this node holds it (or Redis is away: a node keeps
    /// serving through an outage and the heartbeat takes the lease later), `Err(owner)` when
    /// another node does.
    async fn claim(&self, room: &str, claim: RoomClaim) -> Result<(), String> {
        let result = match claim {
            RoomClaim::Publisher => self.node.claim_room(room).await,
            RoomClaim::Viewers => self.node.claim_room_for_viewers(room).await,
        };
        match result {
            Ok(Claim::Won) => Ok(()),
            Ok(Claim::HeldBy(owner)) => Err(owner),
            Err(e) => {
                tracing::debug!(room, error = %e, "room lease deferred");
                Ok(())
            }
        }
    }

    /// Gives back a lease taken for a client that was redirected here but never came.
    fn release_if_unused(&self, room: &str) {
        let pending = self.unused_checks.clone();
        if !pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(room.to_string())
        {
            return;
        }
        let node = self.node.clone();
        let engine = self.engine.clone();
        let room = room.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(UNUSED_CLAIM).await;
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&room);
            if !engine.rooms().iter().any(|r| r.name == room) {
                let _ = node.release_room(&room).await;
            }
        });
    }

    /// The room's lease names a node that is gone; the lease expires within its TTL.
    fn owner_gone(room: &str) -> RouteDecision {
        RouteDecision::Refuse(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Room owner unavailable",
            format!("the node that had room {room} is gone; retry in a few seconds"),
        ))
    }

    fn conflict(room: &str, owner: &str) -> RouteDecision {
        RouteDecision::Refuse(Problem::new(
            StatusCode::CONFLICT,
            "Room already has a publisher",
            format!("room {room} is published on node {owner}"),
        ))
    }
}

#[async_trait]
impl FrontDoor for ClusterFrontDoor {
    async fn route(&self, req: RouteRequest<'_>) -> RouteDecision {
        let via_service_name = match (&self.service_domain, req.host) {
            (Some(d), Some(h)) => d == h,
            _ => false,
        };
        let owner = if req.redirected {
            None
        } else {
            self.live_owner(req.room).await
        };
        let facts = Facts {
            role: req.role,
            via_service_name,
            redirected: req.redirected,
            owner: owner.as_ref(),
            this_node: self.this(),
            // Not Redis reachability: a node keeps taking sessions through an outage (it
            // claims rooms when Redis is back); `/readyz` reports the outage.
            this_can_take: !self.node.is_draining(),
        };
        let decided = plan(&facts);
        tracing::debug!(room = req.room, role = ?req.role, ?decided, via_service_name, "routing");
        match decided {
            Plan::Serve(claim) => {
                let Some(claim) = claim else {
                    return RouteDecision::Serve;
                };
                match self.claim(req.room, claim).await {
                    Ok(()) => RouteDecision::Serve,
                    // Redirected already: a publisher is refused, a viewer waits here.
                    Err(owner) if req.redirected => match req.role {
                        SessionRole::Publish => Self::conflict(req.room, &owner),
                        SessionRole::View => RouteDecision::Serve,
                    },
                    Err(owner) => match self.url_of(&owner) {
                        Some(url) => self.redirect(&url, &req),
                        None => match req.role {
                            SessionRole::Publish => Self::owner_gone(req.room),
                            SessionRole::View => RouteDecision::Serve,
                        },
                    },
                }
            }
            Plan::RedirectHere(claim) => {
                if let Some(claim) = claim {
                    match self.claim(req.room, claim).await {
                        Ok(()) => self.release_if_unused(req.room),
                        Err(owner) => match (self.url_of(&owner), req.role) {
                            (Some(url), _) => return self.redirect(&url, &req),
                            // The owner's lease outlives its record for up to a TTL: a
                            // publisher sent here would be refused, so ask it to retry.
                            (None, SessionRole::Publish) => return Self::owner_gone(req.room),
                            (None, SessionRole::View) => {}
                        },
                    }
                }
                self.redirect(&self.public_url.clone(), &req)
            }
            Plan::RedirectOwner => {
                let owner = owner.map(|o| o.node).unwrap_or_default();
                match self.url_of(&owner) {
                    Some(url) => self.redirect(&url, &req),
                    None => RouteDecision::Refuse(no_node()),
                }
            }
            Plan::RedirectChosen => {
                let snapshot = self.snapshot.load();
                let chosen = choose_node(
                    &snapshot.nodes,
                    &self.node.config().region,
                    self.this(),
                    unix_ms(),
                    &mut rand::rng(),
                );
                match chosen {
                    Some(n) => self.redirect(&n.config.base_url(), &req),
                    None => RouteDecision::Refuse(no_node()),
                }
            }
        }
    }

    fn check_ticket(&self, ticket: &str, room: &str, role: SessionRole) -> Result<(), TicketError> {
        match &self.tickets {
            Some(k) => k.check(ticket, room, role, unix_ms() / 1000),
            None => Err(TicketError::Invalid),
        }
    }

    fn public_url(&self) -> &str {
        &self.public_url
    }

    fn is_service_name(&self, host: &str) -> bool {
        self.service_domain.as_deref() == Some(host)
    }

    fn ready(&self) -> bool {
        !self.node.is_draining() && self.node.redis_reachable()
    }

    async fn cluster_rooms(&self) -> Option<Vec<ClusterRoom>> {
        let snapshot = self.snapshot.load();
        if snapshot.nodes.is_empty() {
            return None;
        }
        Some(
            snapshot
                .rooms
                .iter()
                .filter_map(|(room, owner)| {
                    Some(ClusterRoom {
                        name: room.clone(),
                        owner: owner.clone(),
                        owner_url: self.url_of(owner)?,
                        live: !snapshot.waiting_rooms.contains(room),
                    })
                })
                .collect(),
        )
    }
}

fn no_node() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "No node available",
        "no node of the cluster can take this session now; try again shortly",
    )
}
