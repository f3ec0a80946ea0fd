//! Obtaining and renewing certificates with ACME (instant-acme), one order per domain across
//! every node that shares the store.
//!
//! Each configured domain has its own task. It looks in the store first and serves what it
//! finds; when nothing usable is there, or renewal is due, it honours the shared backoff,
//! takes the domain's lock, looks in the store again (another node may have just finished),
//! and only then orders. The lock is refreshed at a third of its TTL while the order runs and
//! released by compare-and-delete; a node that dies holding it loses it within the TTL.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rand::Rng;
use tokio::sync::Notify;

use crate::KeyPem;
use crate::dns_hook::DnsHook;
use crate::pem_pair::ServedCert;
use crate::resolver::{CertResolver, CertSource};
use crate::store::{AlpnChallenge, Backoff, CertStore, LockOutcome, StoreError, StoredCert};

pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Which challenge proves control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    TlsAlpn01,
    Http01,
    Dns01,
}

impl std::str::FromStr for ChallengeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            "http-01" => Ok(Self::Http01),
            "dns-01" => Ok(Self::Dns01),
            other => Err(format!(
                "unknown ACME challenge {other:?} (tls-alpn-01, http-01 or dns-01)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Names to obtain certificates for (`*.example.com` allowed, with DNS-01).
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory_url: String,
    /// Root to trust for the ACME server's own HTTPS (private CAs, tests).
    pub ca_root: Option<PathBuf>,
    /// `None`: TLS-ALPN-01, falling back to HTTP-01 when the CA does not offer it or it failed.
    pub challenge: Option<ChallengeKind>,
    /// Whether this node answers HTTP-01 (plain HTTP is on).
    pub http_enabled: bool,
    pub dns_hook: Option<String>,
    /// Renew when this much validity remains; `None`: a third of the lifetime (or ARI).
    pub renew_before: Option<Duration>,
    /// Backoff unit: failed orders wait 1, 10, then 60 units (60 s by default, so after three
    /// failures at most one order per hour per domain).
    pub retry_unit: Duration,
    /// TTL of a domain's order lock.
    pub lock_ttl: Duration,
    /// Names this node in lock values, for `cluster cert ls`.
    pub node_name: String,
}

impl AcmeConfig {
    pub fn new(domains: Vec<String>) -> Self {
        Self {
            domains,
            email: None,
            directory_url: LETS_ENCRYPT_PRODUCTION.to_string(),
            ca_root: None,
            challenge: None,
            http_enabled: true,
            dns_hook: None,
            renew_before: None,
            retry_unit: Duration::from_secs(60),
            lock_ttl: Duration::from_secs(90),
            node_name: "node".to_string(),
        }
    }
}

/// Counters for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct AcmeStats {
    pub orders_started: AtomicU64,
    pub orders_failed: AtomicU64,
    pub certificates_obtained: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the CA offers no usable challenge for {domain} (wanted {wanted})")]
    NoChallenge { domain: String, wanted: String },
    #[error("{0} needs DNS-01, which needs --acme-dns-hook")]
    WildcardNeedsDns(String),
    #[error("DNS hook: {0}")]
    DnsHook(String),
    #[error("authorization for {domain} failed: {detail}")]
    Invalid { domain: String, detail: String },
    #[error("the order lock for {0} was lost mid-order")]
    LockLost(String),
    #[error("ACME step timed out: {0}")]
    Timeout(&'static str),
    #[error("the CA's certificate does not load: {0}")]
    BadCertificate(String),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Protocol(e.to_string())
    }
}

/// How long each network step of an order may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Challenge answers live this long in the store.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// Even when nothing seems due, look at the store this often (missed events heal).
const RECHECK: Duration = Duration::from_secs(300);
/// A certificate is never renewed within this time of its issue, whatever `renew_before`
/// says: guards the CA's duplicate-certificate limits against a renew-before longer than
/// the lifetime.
pub const MIN_RENEW_AGE: Duration = Duration::from_secs(3600);
/// How often a certificate's ARI window is asked for again.
const ARI_RECHECK: Duration = Duration::from_secs(6 * 3600);

async fn step<T, E: Into<AcmeError>>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, AcmeError> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(AcmeError::Timeout(what)),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When a certificate should be renewed (Unix seconds).
pub fn renewal_due(not_before: i64, not_after: i64, renew_before: Option<Duration>) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let before = match renew_before {
        Some(d) => d.as_secs() as i64,
        None => lifetime / 3,
    };
    (not_after - before).max(not_before + MIN_RENEW_AGE.as_secs() as i64)
}

/// Delay after the `failures`-th failure in a row: 1, 10, then 60 units.
pub fn backoff_delay(failures: u32, unit: Duration) -> Duration {
    let units = match failures {
        0 | 1 => 1,
        2 => 10,
        _ => 60,
    };
    unit * units
}

/// Orders and renews certificates for the configured domains.
pub struct AcmeManager {
    config: AcmeConfig,
    store: Arc<dyn CertStore>,
    resolver: Arc<CertResolver>,
    dns_hook: Option<DnsHook>,
    wake: Notify,
    pub stats: AcmeStats,
    account: tokio::sync::Mutex<Option<Account>>,
    /// False once the CA said it has no ARI.
    ari_supported: std::sync::atomic::AtomicBool,
    /// (fingerprint, suggested due time, when asked) of the last ARI answer.
    ari_cache: tokio::sync::Mutex<Option<(String, Option<i64>, std::time::Instant)>>,
}

impl AcmeManager {
    pub fn new(
        config: AcmeConfig,
        store: Arc<dyn CertStore>,
        resolver: Arc<CertResolver>,
    ) -> Result<Arc<Self>, AcmeError> {
        for d in &config.domains {
            if d.starts_with("*.") && config.dns_hook.is_none() {
                return Err(AcmeError::WildcardNeedsDns(d.clone()));
            }
        }
        let dns_hook = config.dns_hook.clone().map(DnsHook::new);
        Ok(Arc::new(Self {
            config,
            store,
            resolver,
            dns_hook,
            wake: Notify::new(),
            stats: AcmeStats::default(),
            account: tokio::sync::Mutex::new(None),
            ari_supported: std::sync::atomic::AtomicBool::new(true),
            ari_cache: tokio::sync::Mutex::new(None),
        }))
    }

    /// Serves whatever the store already holds for the configured domains, at once (a restart
    /// orders nothing when the stored certificate is still good).
    pub async fn load_stored(&self) {
        for domain in &self.config.domains {
            match self.store.load_cert(domain).await {
                Ok(Some(stored)) => {
                    self.install(domain, &stored);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(domain, error = %e, "stored certificate not usable"),
            }
        }
    }

    /// Another node stored a certificate: look again now instead of at the next poll.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Starts one task per domain; they run until the returned handles are aborted.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.config
            .domains
            .iter()
            .map(|d| {
                let me = self.clone();
                let domain = d.clone();
                tokio::spawn(async move { me.run_domain(domain).await })
            })
            .collect()
    }

    fn install(&self, domain: &str, stored: &StoredCert) -> Option<ServedCert> {
        match ServedCert::from_stored(stored) {
            Ok(served) => {
                let current = self.resolver_fingerprint(domain);
                if current.as_deref() != Some(served.fingerprint.as_str()) {
                    tracing::info!(domain, not_after = %crate::resolver::rfc3339(served.not_after), issuer = %served.issuer, fingerprint = %served.fingerprint, "serving certificate");
                }
                self.resolver
                    .insert(CertSource::Acme, domain, served.clone());
                Some(served)
            }
            Err(e) => {
                tracing::warn!(domain, error = %e, "stored certificate does not load");
                None
            }
        }
    }

    fn resolver_fingerprint(&self, domain: &str) -> Option<String> {
        self.resolver
            .status()
            .into_iter()
            .find(|s| s.source == CertSource::Acme && s.name == domain)
            .map(|s| s.fingerprint)
    }

    async fn sleep_or_wake(&self, until_unix_ms: u64) {
        let wait = Duration::from_millis(until_unix_ms.saturating_sub(unix_ms_now()));
        let notified = self.wake.notified();
        tokio::select! {
            _ = tokio::time::sleep(wait.min(RECHECK)) => {}
            _ = notified => {}
        }
    }

    /// The stored certificate for `domain` if it is usable and not yet due for renewal.
    async fn current(&self, domain: &str) -> Result<Option<(ServedCert, i64)>, StoreError> {
        let Some(stored) = self.store.load_cert(domain).await? else {
            return Ok(None);
        };
        let Some(served) = self.install(domain, &stored) else {
            return Ok(None);
        };
        let mut due = renewal_due(
            served.not_before,
            served.not_after,
            self.config.renew_before,
        );
        if self.config.renew_before.is_none()
            && let Some(suggested) = self.ari_due(&served).await
        {
            // The CA's window (RFC 9773) wins over the rule of thumb, within the same guard
            // against renewing a fresh certificate.
            due = suggested.max(served.not_before + MIN_RENEW_AGE.as_secs() as i64);
        }
        Ok(Some((served, due)))
    }

    /// ACME Renewal Information: a time inside the CA's suggested window for `served`, when the
    /// CA offers ARI. Asked at most once per [`ARI_RECHECK`] per certificate.
    async fn ari_due(&self, served: &ServedCert) -> Option<i64> {
        if !self.ari_supported.load(Ordering::Relaxed) {
            return None;
        }
        {
            let cache = self.ari_cache.lock().await;
            if let Some((fingerprint, due, asked)) = cache.as_ref()
                && *fingerprint == served.fingerprint
                && asked.elapsed() < ARI_RECHECK
            {
                return *due;
            }
        }
        let account = self.account(false).await.ok()?;
        let leaf = served.certified.cert.first()?;
        let id = instant_acme::CertificateIdentifier::try_from(leaf).ok()?;
        let answer = tokio::time::timeout(STEP_TIMEOUT, account.renewal_info(&id)).await;
        let due = match answer {
            Ok(Ok((info, _retry_after))) => {
                let start = info.suggested_window.start.unix_timestamp();
                let end = info.suggested_window.end.unix_timestamp().max(start);
                // A random point in the window spreads a fleet's renewals (RFC 9773 §4.2).
                let due = start + rand::rng().random_range(0..=(end - start));
                tracing::debug!(fingerprint = %served.fingerprint, due, "renewal window from the CA");
                Some(due)
            }
            Ok(Err(instant_acme::Error::Unsupported(_))) => {
                self.ari_supported.store(false, Ordering::Relaxed);
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "renewal information unavailable");
                None
            }
            Err(_) => None,
        };
        *self.ari_cache.lock().await =
            Some((served.fingerprint.clone(), due, std::time::Instant::now()));
        due
    }

    async fn run_domain(self: Arc<Self>, domain: String) {
        let owner = format!(
            "{}/{:016x}",
            self.config.node_name,
            rand::rng().random::<u64>()
        );
        let mut store_errors_logged = false;
        loop {
            let now_ms = unix_ms_now();
            let current = match self.current(&domain).await {
                Ok(c) => {
                    store_errors_logged = false;
                    c
                }
                // The stored certificate cannot be used (its key does not decrypt, say):
                // keep serving what is loaded and order a replacement.
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::warn!(%domain, error = %e, "stored certificate unusable; ordering a replacement, the one loaded (if any) keeps serving");
                    None
                }
                Err(e) => {
                    if !store_errors_logged {
                        tracing::warn!(%domain, error = %e, "certificate store unreachable; serving what is loaded");
                        store_errors_logged = true;
                    }
                    self.sleep_or_wake(now_ms + 2000).await;
                    continue;
                }
            };
            if let Some((_, due)) = &current {
                let due_ms = (*due).max(0) as u64 * 1000;
                if due_ms > now_ms {
                    self.sleep_or_wake(due_ms).await;
                    continue;
                }
            }
            match self.store.backoff(&domain).await {
                Ok(Some(b)) if b.next_attempt_unix_ms > now_ms => {
                    self.sleep_or_wake(b.next_attempt_unix_ms).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%domain, error = %e, "backoff unreadable");
                    self.sleep_or_wake(now_ms + 2000).await;
                    continue;
                }
            }
            match self
                .store
                .try_lock(&domain, &owner, self.config.lock_ttl)
                .await
            {
                Ok(LockOutcome::Acquired) => {}
                Ok(LockOutcome::HeldBy(holder)) => {
                    tracing::debug!(%domain, %holder, "another node is ordering; waiting");
                    let poll = (self.config.lock_ttl / 3).max(Duration::from_millis(200));
                    self.sleep_or_wake(now_ms + poll.as_millis() as u64).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%domain, error = %e, "lock unavailable");
                    self.sleep_or_wake(now_ms + 2000).await;
                    continue;
                }
            }
            // Look again under the lock: another node may have finished while we waited.
            let still_needed = match self.current(&domain).await {
                Ok(Some((_, due))) => due <= unix_now(),
                Ok(None) | Err(StoreError::Corrupt { .. }) => true,
                Err(_) => false,
            };
            if still_needed {
                let failures = match self.store.backoff(&domain).await {
                    Ok(b) => b.map_or(0, |b| b.failures),
                    Err(_) => 0,
                };
                self.order_under_lock(&domain, &owner, failures, current.is_some())
                    .await;
            }
            if let Err(e) = self.store.unlock(&domain, &owner).await {
                tracing::debug!(%domain, error = %e, "unlock failed; the lock expires by itself");
            }
        }
    }

    async fn order_under_lock(&self, domain: &str, owner: &str, failures: u32, renewal: bool) {
        self.stats.orders_started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            domain,
            renewal,
            attempt = failures + 1,
            "ordering a certificate"
        );
        let ttl = self.config.lock_ttl;
        let refresh = async {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match self.store.refresh_lock(domain, owner, ttl).await {
                    Ok(true) => {}
                    Ok(false) => return AcmeError::LockLost(domain.to_string()),
                    // Redis away for a moment: keep going; the TTL covers short gaps.
                    Err(e) => tracing::debug!(domain, error = %e, "lock refresh failed"),
                }
            }
        };
        let result = tokio::select! {
            r = self.order(domain, failures) => r,
            lost = refresh => Err(lost),
        };
        match result {
            Ok(stored) => {
                self.stats
                    .certificates_obtained
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.store.store_cert(domain, &stored).await {
                    tracing::warn!(domain, error = %e, "certificate obtained but not stored; serving it from memory");
                }
                let _ = self.store.clear_backoff(domain).await;
                self.install(domain, &stored);
                tracing::info!(domain, not_after = %crate::resolver::rfc3339(stored.not_after), "certificate obtained");
            }
            Err(e) => {
                self.stats.orders_failed.fetch_add(1, Ordering::Relaxed);
                let failures = failures + 1;
                let delay = backoff_delay(failures, self.config.retry_unit);
                let backoff = Backoff {
                    failures,
                    next_attempt_unix_ms: unix_ms_now() + delay.as_millis() as u64,
                    last_error: e.to_string(),
                };
                if let Err(se) = self.store.set_backoff(domain, &backoff).await {
                    tracing::debug!(domain, error = %se, "backoff not recorded");
                }
                tracing::warn!(domain, error = %e, failures, retry_in = ?delay, "certificate order failed; the current certificate (if any) keeps serving");
            }
        }
    }

    /// The ACME account: cached, else restored from the store, else created. `fresh` skips
    /// both (the CA no longer knows the stored one, e.g. a test CA that restarted).
    async fn account(&self, fresh: bool) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let (Some(a), false) = (slot.as_ref(), fresh) {
            return Ok(a.clone());
        }
        let directory = &self.config.directory_url;
        let builder = || match &self.config.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let stored = if fresh {
            None
        } else {
            self.store.load_account(directory).await?
        };
        let account = match stored {
            Some(json) => {
                let creds: AccountCredentials =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                        what: "ACME account",
                        name: directory.clone(),
                        reason: e.to_string(),
                    })?;
                step("restoring the account", builder()?.from_credentials(creds)).await?
            }
            None => {
                let contact: Vec<String> = self
                    .config
                    .email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = step(
                    "creating the account",
                    builder()?.create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    ),
                )
                .await?;
                let json = serde_json::to_string(&creds)
                    .map_err(|e| AcmeError::Protocol(e.to_string()))?;
                self.store.store_account(directory, &json).await?;
                tracing::info!(directory = %directory, "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// The challenge to use for `domain` on this attempt.
    fn preferred(&self, domain: &str, failures: u32) -> Vec<ChallengeKind> {
        if domain.starts_with("*.") {
            return vec![ChallengeKind::Dns01];
        }
        match self.config.challenge {
            Some(c) => vec![c],
            None if !self.config.http_enabled => vec![ChallengeKind::TlsAlpn01],
            // Default: TLS-ALPN-01 first; after a failure, HTTP-01 first.
            None if failures % 2 == 1 => vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
            None => vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01],
        }
    }

    async fn order(&self, domain: &str, failures: u32) -> Result<StoredCert, AcmeError> {
        let identifiers = [Identifier::Dns(domain.to_string())];
        let account = self.account(false).await?;
        let mut order = match step(
            "creating the order",
            account.new_order(&NewOrder::new(&identifiers)),
        )
        .await
        {
            Err(AcmeError::Protocol(e)) if e.contains("accountDoesNotExist") => {
                tracing::info!(
                    "the CA no longer knows the stored ACME account; creating a new one"
                );
                let account = self.account(true).await?;
                step(
                    "creating the order",
                    account.new_order(&NewOrder::new(&identifiers)),
                )
                .await?
            }
            other => other?,
        };
        let wanted = self.preferred(domain, failures);
        let mut cleanup: Vec<(ChallengeKind, String, String)> = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = step("fetching authorizations", async {
                Ok::<_, AcmeError>(authorizations.next().await)
            })
            .await?
            {
                let mut authz = authz?;
                if authz.status == instant_acme::AuthorizationStatus::Valid {
                    continue;
                }
                let name = authz.identifier().to_string();
                let kind = wanted
                    .iter()
                    .copied()
                    .find(|k| {
                        authz
                            .challenges
                            .iter()
                            .any(|c| c.r#type == challenge_type(*k))
                    })
                    .ok_or_else(|| AcmeError::NoChallenge {
                        domain: name.clone(),
                        wanted: format!("{wanted:?}"),
                    })?;
                let mut challenge = authz
                    .challenge(challenge_type(kind))
                    .expect("offered challenge is present");
                let key_auth = challenge.key_authorization();
                match kind {
                    ChallengeKind::Http01 => {
                        let token = challenge.token.clone();
                        self.store
                            .put_http_challenge(&token, key_auth.as_str(), CHALLENGE_TTL)
                            .await?;
                        cleanup.push((kind, token, String::new()));
                    }
                    ChallengeKind::TlsAlpn01 => {
                        let answer = alpn_answer(&name, key_auth.digest().as_ref())?;
                        self.store
                            .put_alpn_challenge(&name, &answer, CHALLENGE_TTL)
                            .await?;
                        cleanup.push((kind, name.clone(), String::new()));
                    }
                    ChallengeKind::Dns01 => {
                        let hook = self
                            .dns_hook
                            .as_ref()
                            .ok_or_else(|| AcmeError::WildcardNeedsDns(name.clone()))?;
                        let record = format!("_acme-challenge.{}", name.trim_start_matches("*."));
                        let value = key_auth.dns_value();
                        hook.run("set", &record, &value)
                            .await
                            .map_err(AcmeError::DnsHook)?;
                        cleanup.push((kind, record, value));
                    }
                }
                tracing::debug!(%name, challenge = ?kind, "challenge answer in place");
                step("marking the challenge ready", challenge.set_ready()).await?;
            }
            let retries = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .backoff(1.5)
                .timeout(Duration::from_secs(120));
            let status = order.poll_ready(&retries).await?;
            if status != OrderStatus::Ready {
                let detail = order
                    .state()
                    .error
                    .as_ref()
                    .and_then(|p| p.detail.clone())
                    .unwrap_or_else(|| format!("order is {status:?}"));
                return Err(AcmeError::Invalid {
                    domain: domain.to_string(),
                    detail,
                });
            }
            let key_pem = step("finalizing", order.finalize()).await?;
            let chain_pem = order.poll_certificate(&retries).await?;
            StoredCert::from_pem(&chain_pem, &key_pem)
                .map_err(|e| AcmeError::BadCertificate(e.to_string()))
        }
        .await;
        for (kind, name, value) in cleanup {
            let done = match kind {
                ChallengeKind::Http01 => self
                    .store
                    .delete_http_challenge(&name)
                    .await
                    .err()
                    .map(|e| e.to_string()),
                ChallengeKind::TlsAlpn01 => self
                    .store
                    .delete_alpn_challenge(&name)
                    .await
                    .err()
                    .map(|e| e.to_string()),
                ChallengeKind::Dns01 => match &self.dns_hook {
                    Some(h) => h.run("clear", &name, &value).await.err(),
                    None => None,
                },
            };
            if let Some(e) = done {
                tracing::debug!(%name, error = %e, "challenge clean-up failed");
            }
        }
        result
    }
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    }
}

/// RFC 8737: a self-signed certificate for `domain` carrying the SHA-256 of the key
/// authorisation in the critical `acmeIdentifier` extension.
pub fn alpn_answer(domain: &str, digest: &[u8]) -> Result<AlpnChallenge, AcmeError> {
    let err = |e: rcgen::Error| AcmeError::Protocol(format!("TLS-ALPN-01 certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(err)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(AlpnChallenge {
        cert_pem: cert.pem(),
        key_pem: KeyPem::new(key.serialize_pem()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_when_a_third_remains_but_never_within_an_hour_of_issue() {
        let day = 86_400;
        assert_eq!(renewal_due(0, 90 * day, None), 60 * day);
        assert_eq!(
            renewal_due(0, 90 * day, Some(Duration::from_secs(30 * 86_400))),
            60 * day
        );
        // renew-before longer than the lifetime: once, an hour after issue, not in a loop.
        assert_eq!(
            renewal_due(
                1000,
                1000 + 90 * day,
                Some(Duration::from_secs(400 * 86_400))
            ),
            1000 + 3600
        );
    }

    #[test]
    fn backoff_reaches_an_hour_after_three_failures() {
        let unit = Duration::from_secs(60);
        assert_eq!(backoff_delay(1, unit), Duration::from_secs(60));
        assert_eq!(backoff_delay(2, unit), Duration::from_secs(600));
        assert_eq!(backoff_delay(3, unit), Duration::from_secs(3600));
        assert_eq!(backoff_delay(9, unit), Duration::from_secs(3600));
    }

    #[test]
    fn alpn_answer_is_a_certificate_for_the_domain() {
        let answer = alpn_answer("sfu.test", &[7u8; 32]).unwrap();
        crate::pem_pair::certified_key_unchecked(&answer.cert_pem, answer.key_pem.expose())
            .unwrap();
        let (_, cert) = x509_parser::pem::parse_x509_pem(answer.cert_pem.as_bytes()).unwrap();
        let cert = cert.parse_x509().unwrap();
        // id-pe-acmeIdentifier, critical, holding the digest as an OCTET STRING.
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
    }
}
