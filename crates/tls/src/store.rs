//! Where ACME accounts, certificates, order locks, challenge answers and failure backoff live:
//! a directory for a standalone node ([`crate::DirStore`]), Redis for a cluster (the `cluster`
//! crate's store). Storage and locking are one contract, as in certmagic: after taking a
//! domain's lock, the caller looks in the store again before ordering.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::key_pem::KeyPem;

/// A certificate as stored: PEM chain, PEM private key, and facts read from the leaf so a
/// listing needs no parsing.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredCert {
    pub chain_pem: String,
    pub key_pem: KeyPem,
    /// Leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// Leaf's notBefore, Unix seconds.
    pub not_before: i64,
    /// Leaf issuer's common name (or the whole issuer name when it has none).
    pub issuer: String,
}

impl std::fmt::Debug for StoredCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCert")
            .field("not_after", &self.not_after)
            .field("not_before", &self.not_before)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The answer to a TLS-ALPN-01 challenge for one domain: a self-signed certificate carrying
/// the `acmeIdentifier` extension, and its key.
#[derive(Clone, Serialize, Deserialize)]
pub struct AlpnChallenge {
    pub cert_pem: String,
    pub key_pem: KeyPem,
}

/// Shared failure backoff of one domain (DESIGN.md §6 `acme:backoff:{domain}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Failed orders in a row.
    pub failures: u32,
    /// No order before this time (Unix milliseconds).
    pub next_attempt_unix_ms: u64,
    /// What went wrong last, for `cluster cert ls` and logs.
    pub last_error: String,
}

/// Outcome of [`CertStore::try_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// The caller holds the lock until it expires, is refreshed, or is released.
    Acquired,
    /// Someone else holds it: their owner token (which names the holder).
    HeldBy(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("certificate store unavailable: {0}")]
    Unavailable(String),
    #[error("stored {what} for {name:?} is unusable: {reason}")]
    Corrupt {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("certificate store I/O: {0}")]
    Io(String),
}

/// Storage and locking for ACME. Every method is bounded in time by the implementation.
#[async_trait]
pub trait CertStore: Send + Sync + 'static {
    /// ACME account credentials (instant-acme's JSON) for one directory URL.
    async fn load_account(&self, directory: &str) -> Result<Option<String>, StoreError>;
    async fn store_account(
        &self,
        directory: &str,
        credentials_json: &str,
    ) -> Result<(), StoreError>;

    async fn load_cert(&self, domain: &str) -> Result<Option<StoredCert>, StoreError>;
    /// Stores a certificate and tells every node serving from this store about it.
    async fn store_cert(&self, domain: &str, cert: &StoredCert) -> Result<(), StoreError>;
    /// Every stored certificate, for serving names other nodes obtained.
    async fn list_certs(&self) -> Result<Vec<(String, StoredCert)>, StoreError>;

    /// One order per domain: `owner` is a random token naming the holder.
    async fn try_lock(
        &self,
        domain: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockOutcome, StoreError>;
    /// Extends the lock if `owner` still holds it; false if it was lost.
    async fn refresh_lock(
        &self,
        domain: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Releases the lock if `owner` holds it (compare and delete).
    async fn unlock(&self, domain: &str, owner: &str) -> Result<(), StoreError>;

    /// HTTP-01: the key authorisation served at `/.well-known/acme-challenge/{token}`.
    async fn put_http_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    async fn http_challenge(&self, token: &str) -> Result<Option<String>, StoreError>;
    async fn delete_http_challenge(&self, token: &str) -> Result<(), StoreError>;

    /// TLS-ALPN-01: the certificate answered for `domain` on ALPN `acme-tls/1`.
    async fn put_alpn_challenge(
        &self,
        domain: &str,
        answer: &AlpnChallenge,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    async fn alpn_challenge(&self, domain: &str) -> Result<Option<AlpnChallenge>, StoreError>;
    async fn delete_alpn_challenge(&self, domain: &str) -> Result<(), StoreError>;

    async fn backoff(&self, domain: &str) -> Result<Option<Backoff>, StoreError>;
    async fn set_backoff(&self, domain: &str, backoff: &Backoff) -> Result<(), StoreError>;
    async fn clear_backoff(&self, domain: &str) -> Result<(), StoreError>;
}
