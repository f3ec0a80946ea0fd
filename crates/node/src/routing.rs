//! Where a new session goes, decided from plain facts (no I/O, so every rule has a unit test).
//!
//! The rules (DESIGN.md §6): a room's owner is the node of its publisher (or, until a publisher
//! comes, the node its first viewers wait on). A request through the service name goes to the
//! owner; with no owner, to this node if it can take the room, else to a node chosen by region,
//! freshness, state and load (`deadsfu_cluster::node_choice`). A request to a node's
//! own name is served there unless another node owns the room. A request that was redirected
//! once (it carries a ticket) is never redirected again.

use deadsfu_cluster::RoomOwner;
use deadsfu_server::SessionRole;

/// Which lease a served session takes on its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomClaim {
    /// A publisher's: taking over a lease held only for waiting viewers.
    Publisher,
    /// Waiting viewers': only if the room is free.
    Viewers,
}

impl RoomClaim {
    pub fn for_role(role: SessionRole) -> Self {
        match role {
            SessionRole::Publish => RoomClaim::Publisher,
            SessionRole::View => RoomClaim::Viewers,
        }
    }
}

/// What routing knows about one request.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub role: SessionRole,
    /// The Host is the service name (not this node's own name).
    pub via_service_name: bool,
    /// The request carries this cluster's redirect marker.
    pub redirected: bool,
    /// The room's owner, if its node is live.
    pub owner: Option<&'a RoomOwner>,
    pub this_node: &'a str,
    /// This node is serving (not draining) and under its limits.
    pub this_can_take: bool,
}

/// The plan for a request; the front door carries it out (claims, then answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Claim the room (if asked) and create the session here.
    Serve(Option<RoomClaim>),
    /// Claim the room (if asked) and redirect to this node's own public URL.
    RedirectHere(Option<RoomClaim>),
    /// Redirect to the room's owner.
    RedirectOwner,
    /// Redirect to a node chosen by [`deadsfu_cluster::node_choice::choose_node`].
    RedirectChosen,
}

pub fn plan(f: &Facts<'_>) -> Plan {
    let claim = Some(RoomClaim::for_role(f.role));
    if f.redirected {
        // Served or refused here, never sent on: no loops, even while leases move.
        return Plan::Serve(claim);
    }
    match f.owner {
        Some(o) if o.node == f.this_node => {
            if f.via_service_name {
                Plan::RedirectHere(claim)
            } else {
                Plan::Serve(claim)
            }
        }
        Some(_) => Plan::RedirectOwner,
        None if !f.this_can_take => Plan::RedirectChosen,
        None if f.via_service_name => Plan::RedirectHere(claim),
        None => Plan::Serve(claim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(node: &str) -> RoomOwner {
        RoomOwner {
            node: node.into(),
            viewers_only: false,
        }
    }

    fn facts<'a>(owner: Option<&'a RoomOwner>) -> Facts<'a> {
        Facts {
            role: SessionRole::Publish,
            via_service_name: true,
            redirected: false,
            owner,
            this_node: "b",
            this_can_take: true,
        }
    }

    #[test]
    fn service_name_goes_to_the_owner_or_here_when_free() {
        let a = owner("a");
        assert_eq!(plan(&facts(Some(&a))), Plan::RedirectOwner);
        assert_eq!(
            plan(&facts(None)),
            Plan::RedirectHere(Some(RoomClaim::Publisher))
        );
        let b = owner("b");
        assert_eq!(
            plan(&facts(Some(&b))),
            Plan::RedirectHere(Some(RoomClaim::Publisher))
        );
        let busy = Facts {
            this_can_take: false,
            ..facts(None)
        };
        assert_eq!(plan(&busy), Plan::RedirectChosen);
    }

    #[test]
    fn own_name_serves_unless_another_node_owns_the_room() {
        let a = owner("a");
        let direct = |o| Facts {
            via_service_name: false,
            role: SessionRole::View,
            ..facts(o)
        };
        assert_eq!(plan(&direct(Some(&a))), Plan::RedirectOwner);
        assert_eq!(plan(&direct(None)), Plan::Serve(Some(RoomClaim::Viewers)));
        let draining = Facts {
            this_can_take: false,
            ..direct(None)
        };
        assert_eq!(plan(&draining), Plan::RedirectChosen);
    }

    #[test]
    fn a_redirected_request_is_never_redirected_again() {
        let a = owner("a");
        for via in [true, false] {
            for can in [true, false] {
                let f = Facts {
                    redirected: true,
                    via_service_name: via,
                    this_can_take: can,
                    ..facts(Some(&a))
                };
                assert_eq!(plan(&f), Plan::Serve(Some(RoomClaim::Publisher)));
            }
        }
    }
}
