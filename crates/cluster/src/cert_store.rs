//! The cluster's certificate store (DESIGN.md §6): [`deadsfu_tls::CertStore`] on Redis, so
//! every SFU serves the certificates any of them obtained, and the whole cluster places one
//! ACME order per domain.
//!
//! | key | value |
//! |---|---|
//! | `cert:{domain}` | JSON: chain PEM, sealed private key, not-after, not-before, issuer; no TTL |
//! | `acme:account:{directory}` | JSON: sealed account credentials (they hold the account key) |
//! | `acme:lock:{domain}` | the holder's random owner token, with a TTL |
//! | `acme:challenge:{token}` | the HTTP-01 key authorisation as is (proxies serve it), TTL |
//! | `acme:alpn:{domain}` | JSON: TLS-ALPN-01 certificate and sealed key, TTL |
//! | `acme:backoff:{domain}` | JSON of [`Backoff`], 24 h TTL from each write |
//!
//! Private keys are sealed with the cluster key ([`ClusterKey`]) bound to the key name they
//! are stored under, so Redis's data alone yields no private key and a value copied under
//! another name does not open. A bundle without the cluster key can still use the parts that
//! need none (locks, HTTP-01 answers, backoff).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use deadsfu_tls::{AlpnChallenge, Backoff, CertStore, KeyPem, LockOutcome, StoreError, StoredCert};
use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::cert_crypto::ClusterKey;
use crate::error::ClusterError;
use crate::events::ClusterEvent;
use crate::keys::Keys;
use crate::lease::{LeaseOutcome, LeaseScripts};
use crate::redis_conn::{RedisConn, describe};

/// Longest any single store call may take (a few round trips, each bounded by the
/// connection's response timeout; this also covers waiting for a reconnect).
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest [`CertStore::list_certs`] may take (SCAN and MGET in batches).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a backoff record outlives its last write: a domain nobody retries for a day
/// starts afresh.
pub const BACKOFF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Upper bound on certificates listed, so a huge keyspace cannot stall a node.
pub const MAX_LISTED_CERTS: usize = 10_000;

/// What a store call says when the bundle has no cluster key.
pub const NO_CLUSTER_KEY: &str = "this bundle carries no cluster key, so private keys cannot be read or stored; reissue it \
     with `deadsfu cluster issue`";

/// Extends KEYS[1]'s TTL to ARGV[2] ms only while it holds ARGV[1]. Never re-takes a lost lock:
/// after expiry someone else may be ordering.
const REFRESH_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// `cert:{domain}` as stored.
#[derive(Serialize, Deserialize)]
struct CertRecord {
    chain_pem: String,
    key_sealed: String,
    not_after: i64,
    not_before: i64,
    issuer: String,
}

/// The plain facts of a stored certificate, readable without the cluster key (`cert ls`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CertSummary {
    /// Leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// Leaf's notBefore, Unix seconds.
    pub not_before: i64,
    pub issuer: String,
}

impl CertSummary {
    /// Reads the public part of a `cert:{domain}` value.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// `acme:account:{directory}` as stored.
#[derive(Serialize, Deserialize)]
struct AccountRecord {
    credentials_sealed: String,
}

/// `acme:alpn:{domain}` as stored.
#[derive(Serialize, Deserialize)]
struct AlpnRecord {
    cert_pem: String,
    key_sealed: String,
}

/// [`CertStore`] on the cluster's Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisCertStore {
    conn: RedisConn,
    keys: Keys,
    key: Option<ClusterKey>,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    lease: LeaseScripts,
    refresh_lock: Script,
}

impl std::fmt::Debug for RedisCertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCertStore")
            .field("redis", &self.conn.addr())
            .field("prefix", &self.keys.prefix())
            .field("has_cluster_key", &self.key.is_some())
            .finish()
    }
}

impl RedisCertStore {
    /// `key` is the bundle's cluster key ([`Bundle::cluster_key`]); without it, certificates,
    /// accounts and TLS-ALPN answers can be neither read nor written.
    pub fn new(conn: RedisConn, key: Option<ClusterKey>) -> Self {
        Self {
            keys: conn.keys().clone(),
            conn,
            key,
            scripts: std::sync::Arc::new(Scripts {
                lease: LeaseScripts::default(),
                refresh_lock: Script::new(REFRESH_LOCK),
            }),
        }
    }

    /// Connects with a bundle and uses its cluster key.
    pub async fn connect(bundle: &Bundle) -> Result<Self, ClusterError> {
        let conn = RedisConn::connect(bundle).await?;
        Ok(Self::new(conn, bundle.cluster_key()))
    }

    pub fn has_cluster_key(&self) -> bool {
        self.key.is_some()
    }

    /// The owner token holding `acme:lock:{domain}`, if any (for `cluster cert ls`).
    pub async fn lock_holder(&self, domain: &str) -> Result<Option<String>, StoreError> {
        let key = self.keys.acme_lock(domain);
        bounded(STORE_CALL_TIMEOUT, async {
            get(&mut self.conn.manager(), &key).await
        })
        .await
    }

    fn cluster_key(&self) -> Result<&ClusterKey, StoreError> {
        self.key
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable(NO_CLUSTER_KEY.into()))
    }

    /// The additional data a sealed value is bound to: its key name without the prefix, so a
    /// value copied to another name (or another family) fails to open.
    fn aad<'a>(&self, full_key: &'a str) -> &'a [u8] {
        full_key
            .strip_prefix(self.keys.prefix())
            .unwrap_or(full_key)
            .as_bytes()
    }

    fn open_key(
        &self,
        what: &'static str,
        name: &str,
        full_key: &str,
        sealed: &str,
    ) -> Result<KeyPem, StoreError> {
        let plain = self
            .cluster_key()?
            .open(sealed, self.aad(full_key))
            .map_err(|e| corrupt(what, name, e.to_string()))?;
        String::from_utf8(plain)
            .map(KeyPem::new)
            .map_err(|_| corrupt(what, name, "the decrypted key is not text".into()))
    }

    fn open_cert(
        &self,
        domain: &str,
        full_key: &str,
        json: &str,
    ) -> Result<StoredCert, StoreError> {
        let record: CertRecord = serde_json::from_str(json)
            .map_err(|_| corrupt("certificate", domain, "not a certificate record".into()))?;
        let key_pem = self.open_key("certificate", domain, full_key, &record.key_sealed)?;
        Ok(StoredCert {
            chain_pem: record.chain_pem,
            key_pem,
            not_after: record.not_after,
            not_before: record.not_before,
            issuer: record.issuer,
        })
    }

    async fn publish(&self, event: ClusterEvent) {
        if let Err(err) = crate::events::publish(&self.conn, &event).await {
            // The certificate is stored; nodes also find it when they next list the store.
            tracing::warn!(error = %describe(&err), ?event, "announcing a stored certificate failed");
        }
    }
}

fn corrupt(what: &'static str, name: &str, reason: String) -> StoreError {
    StoreError::Corrupt {
        what,
        name: name.to_string(),
        reason,
    }
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(describe(&err))
}

/// Runs one store call with a deadline.
async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!(
            "Redis did not answer within {limit:?}"
        )))
    })
}

async fn get(conn: &mut ConnectionManager, key: &str) -> Result<Option<String>, StoreError> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(unavailable)
}

async fn set(
    conn: &mut ConnectionManager,
    key: &str,
    value: &str,
    ttl: Option<Duration>,
) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(ttl_ms(ttl));
    }
    cmd.query_async(conn).await.map_err(unavailable)
}

async fn del(conn: &mut ConnectionManager, key: &str) -> Result<(), StoreError> {
    redis::cmd("DEL")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// A TTL in milliseconds; Redis refuses 0.
fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl CertStore for RedisCertStore {
    async fn load_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let key = self.keys.acme_account(directory);
        bounded(STORE_CALL_TIMEOUT, async {
            let Some(json) = get(&mut self.conn.manager(), &key).await? else {
                return Ok(None);
            };
            let record: AccountRecord = serde_json::from_str(&json)
                .map_err(|_| corrupt("ACME account", directory, "not an account record".into()))?;
            let credentials =
                self.open_key("ACME account", directory, &key, &record.credentials_sealed)?;
            Ok(Some(credentials.expose().to_owned()))
        })
        .await
    }

    async fn store_account(
        &self,
        directory: &str,
        credentials_json: &str,
    ) -> Result<(), StoreError> {
        let key = self.keys.acme_account(directory);
        let record = AccountRecord {
            credentials_sealed: self
                .cluster_key()?
                .seal(credentials_json.as_bytes(), self.aad(&key)),
        };
        let json = serde_json::to_string(&record).expect("records serialise");
        bounded(STORE_CALL_TIMEOUT, async {
            set(&mut self.conn.manager(), &key, &json, None).await
        })
        .await?;
        tracing::info!(%directory, "ACME account stored");
        Ok(())
    }

    async fn load_cert(&self, domain: &str) -> Result<Option<StoredCert>, StoreError> {
        let key = self.keys.cert(domain);
        bounded(STORE_CALL_TIMEOUT, async {
            match get(&mut self.conn.manager(), &key).await? {
                Some(json) => self.open_cert(domain, &key, &json).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn store_cert(&self, domain: &str, cert: &StoredCert) -> Result<(), StoreError> {
        let key = self.keys.cert(domain);
        let record = CertRecord {
            chain_pem: cert.chain_pem.clone(),
            key_sealed: self
                .cluster_key()?
                .seal(cert.key_pem.expose().as_bytes(), self.aad(&key)),
            not_after: cert.not_after,
            not_before: cert.not_before,
            issuer: cert.issuer.clone(),
        };
        let json = serde_json::to_string(&record).expect("records serialise");
        bounded(STORE_CALL_TIMEOUT, async {
            set(&mut self.conn.manager(), &key, &json, None).await?;
            self.publish(ClusterEvent::CertUpdated {
                domain: domain.to_string(),
            })
            .await;
            Ok(())
        })
        .await?;
        tracing::info!(%domain, not_after = cert.not_after, issuer = %cert.issuer, "certificate stored");
        Ok(())
    }

    async fn list_certs(&self) -> Result<Vec<(String, StoredCert)>, StoreError> {
        self.cluster_key()?;
        bounded(LIST_TIMEOUT, async {
            let mut conn = self.conn.manager();
            let entries = scan_family(&mut conn, &self.keys, "cert:", MAX_LISTED_CERTS).await?;
            let mut out = Vec::with_capacity(entries.len());
            for (key, json) in entries {
                let Some(domain) = self.keys.strip("cert:", &key) else {
                    continue;
                };
                match self.open_cert(domain, &key, &json) {
                    Ok(cert) => out.push((domain.to_string(), cert)),
                    // One bad entry must not hide every other certificate.
                    Err(err) => {
                        tracing::debug!(%domain, error = %err, "stored certificate skipped")
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn try_lock(
        &self,
        domain: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockOutcome, StoreError> {
        let key = self.keys.acme_lock(domain);
        // The lease script: SET NX PX, or PEXPIRE when `owner` already holds it.
        let outcome = bounded(STORE_CALL_TIMEOUT, async {
            self.scripts
                .lease
                .claim(
                    &mut self.conn.manager(),
                    &key,
                    owner,
                    Duration::from_millis(ttl_ms(ttl)),
                )
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await?;
        Ok(match outcome {
            LeaseOutcome::Taken | LeaseOutcome::Refreshed => {
                tracing::debug!(%domain, "ACME order lock taken");
                LockOutcome::Acquired
            }
            LeaseOutcome::HeldBy(holder) => LockOutcome::HeldBy(holder),
        })
    }

    async fn refresh_lock(
        &self,
        domain: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.acme_lock(domain);
        let refreshed: i64 = bounded(STORE_CALL_TIMEOUT, async {
            self.scripts
                .refresh_lock
                .key(&key)
                .arg(owner)
                .arg(ttl_ms(ttl))
                .invoke_async(&mut self.conn.manager())
                .await
                .map_err(unavailable)
        })
        .await?;
        if refreshed != 1 {
            tracing::debug!(%domain, "ACME order lock lost before its refresh");
        }
        Ok(refreshed == 1)
    }

    async fn unlock(&self, domain: &str, owner: &str) -> Result<(), StoreError> {
        let key = self.keys.acme_lock(domain);
        let released = bounded(STORE_CALL_TIMEOUT, async {
            self.scripts
                .lease
                .release(&mut self.conn.manager(), &key, owner)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await?;
        tracing::debug!(%domain, released, "ACME order lock released");
        Ok(())
    }

    async fn put_http_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.keys.acme_challenge(token);
        bounded(STORE_CALL_TIMEOUT, async {
            set(&mut self.conn.manager(), &key, key_authorization, Some(ttl)).await
        })
        .await
    }

    async fn http_challenge(&self, token: &str) -> Result<Option<String>, StoreError> {
        let key = self.keys.acme_challenge(token);
        bounded(STORE_CALL_TIMEOUT, async {
            get(&mut self.conn.manager(), &key).await
        })
        .await
    }

    async fn delete_http_challenge(&self, token: &str) -> Result<(), StoreError> {
        let key = self.keys.acme_challenge(token);
        bounded(STORE_CALL_TIMEOUT, async {
            del(&mut self.conn.manager(), &key).await
        })
        .await
    }

    async fn put_alpn_challenge(
        &self,
        domain: &str,
        answer: &AlpnChallenge,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.keys.acme_alpn(domain);
        let record = AlpnRecord {
            cert_pem: answer.cert_pem.clone(),
            key_sealed: self
                .cluster_key()?
                .seal(answer.key_pem.expose().as_bytes(), self.aad(&key)),
        };
        let json = serde_json::to_string(&record).expect("records serialise");
        bounded(STORE_CALL_TIMEOUT, async {
            set(&mut self.conn.manager(), &key, &json, Some(ttl)).await
        })
        .await
    }

    async fn alpn_challenge(&self, domain: &str) -> Result<Option<AlpnChallenge>, StoreError> {
        let key = self.keys.acme_alpn(domain);
        bounded(STORE_CALL_TIMEOUT, async {
            let Some(json) = get(&mut self.conn.manager(), &key).await? else {
                return Ok(None);
            };
            let record: AlpnRecord = serde_json::from_str(&json).map_err(|_| {
                corrupt("TLS-ALPN-01 answer", domain, "not an answer record".into())
            })?;
            let key_pem = self.open_key("TLS-ALPN-01 answer", domain, &key, &record.key_sealed)?;
            Ok(Some(AlpnChallenge {
                cert_pem: record.cert_pem,
                key_pem,
            }))
        })
        .await
    }

    async fn delete_alpn_challenge(&self, domain: &str) -> Result<(), StoreError> {
        let key = self.keys.acme_alpn(domain);
        bounded(STORE_CALL_TIMEOUT, async {
            del(&mut self.conn.manager(), &key).await
        })
        .await
    }

    async fn backoff(&self, domain: &str) -> Result<Option<Backoff>, StoreError> {
        let key = self.keys.acme_backoff(domain);
        bounded(STORE_CALL_TIMEOUT, async {
            match get(&mut self.conn.manager(), &key).await? {
                Some(json) => serde_json::from_str(&json)
                    .map(Some)
                    .map_err(|_| corrupt("ACME backoff", domain, "not a backoff record".into())),
                None => Ok(None),
            }
        })
        .await
    }

    async fn set_backoff(&self, domain: &str, backoff: &Backoff) -> Result<(), StoreError> {
        let key = self.keys.acme_backoff(domain);
        let json = serde_json::to_string(backoff).expect("backoff serialises");
        bounded(STORE_CALL_TIMEOUT, async {
            set(&mut self.conn.manager(), &key, &json, Some(BACKOFF_TTL)).await
        })
        .await?;
        tracing::debug!(%domain, failures = backoff.failures, next_attempt_unix_ms = backoff.next_attempt_unix_ms, "ACME backoff recorded");
        Ok(())
    }

    async fn clear_backoff(&self, domain: &str) -> Result<(), StoreError> {
        let key = self.keys.acme_backoff(domain);
        bounded(STORE_CALL_TIMEOUT, async {
            del(&mut self.conn.manager(), &key).await
        })
        .await
    }
}

/// [`crate::status::scan_family`] with the store's error type.
pub(crate) async fn scan_family(
    conn: &mut ConnectionManager,
    keys: &Keys,
    family: &str,
    limit: usize,
) -> Result<Vec<(String, String)>, StoreError> {
    crate::status::scan_family(conn, keys, family, limit)
        .await
        .map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_a_record_without_the_key() {
        let record = CertRecord {
            chain_pem: "CHAIN".into(),
            key_sealed: "v1.x.y".into(),
            not_after: 2_000_000_000,
            not_before: 1_000_000_000,
            issuer: "R11".into(),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            CertSummary::from_json(&json),
            Some(CertSummary {
                not_after: 2_000_000_000,
                not_before: 1_000_000_000,
                issuer: "R11".into(),
            })
        );
    }

    #[test]
    fn ttls_are_never_zero() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_millis(300)), 300);
    }
}
