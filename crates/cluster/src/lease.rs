//! Leases: keys written with a TTL by their owner only. Taken with `SET NX PX`; refreshed
//! and released by compare-and-set in Lua, so two nodes never both hold one and a dead
//! node's leases expire on their own.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::ClusterError;

/// Lifetime of a lease (and of a node record) without refresh.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// Marks a room lease taken for viewers waiting in an empty room: a publisher on any node
/// may take it over (the viewers' web player then follows the room to its publisher).
pub const WEAK_SUFFIX: &str = "~viewers";

/// Takes each key if free, refreshes it if it already holds our value, takes it over if it is
/// held weakly (value ending in [`WEAK_SUFFIX`]) and ours is not, leaves it alone otherwise.
/// KEYS: lease keys; ARGV[1]: TTL in ms; ARGV[1 + i]: our value for KEYS[i].
/// Returns, per key, the outcome code and the current holder's value.
const CLAIM_MANY: &str = r#"
local weak = '~viewers'
local function is_weak(v) return v and string.sub(v, -string.len(weak)) == weak end
local out = {}
for i, key in ipairs(KEYS) do
  local mine = ARGV[i + 1]
  if redis.call('SET', key, mine, 'NX', 'PX', ARGV[1]) then
    out[#out + 1] = 1
    out[#out + 1] = mine
  else
    local cur = redis.call('GET', key)
    if cur == mine then
      redis.call('PEXPIRE', key, ARGV[1])
      out[#out + 1] = 2
      out[#out + 1] = cur
    elseif is_weak(cur) and not is_weak(mine) then
      redis.call('SET', key, mine, 'PX', ARGV[1])
      out[#out + 1] = 1
      out[#out + 1] = mine
    else
      out[#out + 1] = 0
      out[#out + 1] = cur or ''
    end
  end
end
return out
"#;

/// Deletes KEYS[1] only while it holds ARGV[1].
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Outcome of taking or refreshing one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// It was free and is ours now.
    Taken,
    /// It was ours already; its TTL is renewed.
    Refreshed,
    /// Someone else holds it; their value.
    HeldBy(String),
}

impl LeaseOutcome {
    pub fn is_ours(&self) -> bool {
        !matches!(self, LeaseOutcome::HeldBy(_))
    }
}

/// The lease scripts, hashed once.
pub struct LeaseScripts {
    claim_many: Script,
    release: Script,
}

impl Default for LeaseScripts {
    fn default() -> Self {
        Self {
            claim_many: Script::new(CLAIM_MANY),
            release: Script::new(RELEASE),
        }
    }
}

impl LeaseScripts {
    /// Takes or refreshes every `(key, value)` in one round trip.
    pub async fn claim_many(
        &self,
        conn: &mut ConnectionManager,
        leases: &[(String, String)],
        ttl: Duration,
    ) -> Result<Vec<LeaseOutcome>, ClusterError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.claim_many.prepare_invoke();
        invocation.arg(ttl.as_millis() as u64);
        for (key, value) in leases {
            invocation.key(key).arg(value);
        }
        let raw: Vec<redis::Value> = invocation.invoke_async(conn).await?;
        let mut out = Vec::with_capacity(leases.len());
        for pair in raw.chunks(2) {
            let code: i64 = redis::from_redis_value_ref(&pair[0])
                .map_err(|e| ClusterError::Redis(e.to_string()))?;
            let holder: String = redis::from_redis_value_ref(&pair[1])
                .map_err(|e| ClusterError::Redis(e.to_string()))?;
            out.push(match code {
                1 => LeaseOutcome::Taken,
                2 => LeaseOutcome::Refreshed,
                _ => LeaseOutcome::HeldBy(holder),
            });
        }
        if out.len() != leases.len() {
            return Err(ClusterError::Redis(
                "lease script returned a short reply".into(),
            ));
        }
        Ok(out)
    }

    pub async fn claim(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, ClusterError> {
        let mut out = self
            .claim_many(conn, &[(key.to_string(), value.to_string())], ttl)
            .await?;
        Ok(out.remove(0))
    }

    /// Deletes the lease if it still holds `value`. True if it did.
    pub async fn release(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
        value: &str,
    ) -> Result<bool, ClusterError> {
        let deleted: i64 = self.release.key(key).arg(value).invoke_async(conn).await?;
        Ok(deleted == 1)
    }
}
