//! HTTPS for deadsfu nodes (DESIGN.md §2, decision 2).
//!
//! - [`CertResolver`]: picks the certificate by SNI from three sources in order of precedence:
//!   certificate files, ACME, and the shared store (names other nodes obtained).
//! - [`FileCerts`]: `--tls-cert`/`--tls-key`, re-read when the files change or on SIGHUP.
//! - [`AcmeManager`]: orders and renews certificates with instant-acme, one order per domain
//!   across the whole cluster, answering TLS-ALPN-01, HTTP-01 or DNS-01.
//! - [`CertStore`]: where accounts, certificates, locks and challenge answers live;
//!   [`DirStore`] is the standalone one, Redis the cluster one (in the `cluster` crate).
//! - [`HttpsAcceptor`]: the TLS handshake of the HTTPS listener, answering `acme-tls/1`
//!   from the store before anything else.

mod acceptor;
mod acme;
mod dir_store;
mod dns_hook;
mod files;
mod https_node;
mod key_pem;
mod pem_pair;
mod resolver;
mod store;

pub use acceptor::{ACME_TLS_ALPN, AcceptError, HttpsAcceptor, server_config};
pub use acme::{
    AcmeConfig, AcmeError, AcmeManager, AcmeStats, ChallengeKind, LETS_ENCRYPT_PRODUCTION,
    LETS_ENCRYPT_STAGING, MIN_RENEW_AGE, alpn_answer, backoff_delay, renewal_due,
};
pub use dir_store::DirStore;
pub use files::{FileCertError, FileCerts};
pub use https_node::{HttpsError, HttpsOptions, NodeHttps};
pub use key_pem::KeyPem;
pub use pem_pair::{CertError, ServedCert};
pub use resolver::{CertResolver, CertSource, CertStatus, rfc3339};
pub use store::{AlpnChallenge, Backoff, CertStore, LockOutcome, StoreError, StoredCert};
