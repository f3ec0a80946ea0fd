//! An SFU node assembled from the parts (DESIGN.md §3): the FTL-to-room bridge and its stream-key
//! directory, the certificate sources of HTTPS, and in cluster mode the glue to the cluster:
//! room and channel leases, load reports, certificate events, and the routing decisions of the
//! front door (307 to the node that serves a room, with a signed ticket).

pub mod certificates;
pub mod front_door;
pub mod ftl_bridge;
mod load_report;
pub mod membership;
pub mod routing;
pub mod ticket;

pub use certificates::{HttpsArgs, RunningHttps};
pub use front_door::ClusterFrontDoor;
pub use ftl_bridge::FtlArgs;
pub use membership::{FtlLease, Membership, MembershipSettings};
