//! The three roles a credential bundle can have. Proxy and admin names share their role's
//! Redis ACL user; each sfu name has its own (acl.rs), and the shared `sfu` user remains only
//! for sfu names issued before that.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An SFU node: writes its node record and leases, publishes events.
    Sfu,
    /// A front-line proxy: reads routing keys, subscribes to events.
    Proxy,
    /// The operator: everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Sfu, Role::Proxy, Role::Admin];

    /// The Redis ACL user shared by this role's names (for sfu: only names issued before
    /// per-node users).
    pub fn acl_user(self) -> &'static str {
        match self {
            Role::Sfu => "sfu",
            Role::Proxy => "proxy",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.acl_user())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sfu" => Ok(Role::Sfu),
            "proxy" => Ok(Role::Proxy),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (sfu, proxy or admin)")),
        }
    }
}
