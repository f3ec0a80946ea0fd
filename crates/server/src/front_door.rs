//! The cluster's say in where a session is created. In cluster mode the node crate implements
//! [`FrontDoor`]; the handlers ask it before creating a session and follow its decision:
//! serve here, redirect (307) to the node that serves the room, or refuse. Standalone nodes
//! have none and serve everything.

use async_trait::async_trait;
use serde::Serialize;

use crate::problem::Problem;

/// What a new session would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionRole {
    Publish,
    View,
}

/// A session-creating request, as routing sees it.
#[derive(Debug, Clone)]
pub struct RouteRequest<'a> {
    pub role: SessionRole,
    pub room: &'a str,
    /// The Host header's host part (no port), lower case.
    pub host: Option<&'a str>,
    /// Path and query of the request, to be repeated on the target.
    pub path_and_query: &'a str,
    /// The request carries this cluster's redirect marker (a ticket): it was redirected once
    /// already and must not be redirected again.
    pub redirected: bool,
}

/// Where the session goes.
#[derive(Debug)]
pub enum RouteDecision {
    /// Create it on this node. `lease` is held for a publisher until its session ends (the
    /// node crate releases it when the room empties).
    Serve,
    /// `307 Temporary Redirect` to this absolute URL (it carries a ticket).
    Redirect(String),
    /// Refuse with this problem (409 room owned elsewhere, 503 no usable node...).
    Refuse(Problem),
}

/// A room as the cluster-wide room list shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterRoom {
    pub name: String,
    /// Node id of the owner.
    pub owner: String,
    /// Base URL of the owner (where its sessions are created).
    pub owner_url: String,
    /// A publisher is live there (false: viewers wait there for one).
    pub live: bool,
}

/// Ticket checks, for requests that arrive through a redirect without `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is malformed or its signature is wrong")]
    Invalid,
    #[error("the ticket has expired")]
    Expired,
    #[error("the ticket is for another room or role")]
    WrongScope,
}

#[async_trait]
pub trait FrontDoor: Send + Sync + 'static {
    async fn route(&self, request: RouteRequest<'_>) -> RouteDecision;
    /// Checks `ticket` for a session of `role` in `room`.
    fn check_ticket(&self, ticket: &str, room: &str, role: SessionRole) -> Result<(), TicketError>;
    /// This node's own base URL (`https://host[:port]`): where redirects to it point.
    fn public_url(&self) -> &str;
    /// Whether `host` is the cluster's service name (sessions are never created under it).
    fn is_service_name(&self, host: &str) -> bool;
    /// Whether this node takes new sessions (for `/readyz`).
    fn ready(&self) -> bool;
    /// Every live room of the cluster with its owner, or `None` when unknown (Redis away).
    async fn cluster_rooms(&self) -> Option<Vec<ClusterRoom>>;
}
