//! Command line of HTTPS (`--tls-cert`, `--acme-*`, `--data-dir`) and the wiring of the
//! node's certificate sources: files, ACME, and the store (a directory standalone, Redis in
//! a cluster).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use deadsfu_tls::{
    AcmeConfig, CertResolver, CertStore, ChallengeKind, DirStore, HttpsOptions, NodeHttps,
};

use crate::membership::Membership;

#[derive(Debug, Clone, Args)]
pub struct HttpsArgs {
    /// PEM certificate chain to serve (with --tls-key); re-read when it changes or on SIGHUP.
    #[arg(long, env = "DEADSFU_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DEADSFU_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Obtain a certificate for this name with ACME (repeatable; `*.example.com` needs
    /// --acme-challenge dns-01 and --acme-dns-hook).
    #[arg(
        long = "acme-domain",
        env = "DEADSFU_ACME_DOMAIN",
        value_delimiter = ','
    )]
    pub acme_domain: Vec<String>,
    /// Contact address given to the CA.
    #[arg(long, env = "DEADSFU_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// ACME directory URL (default: Let's Encrypt production).
    #[arg(long, env = "DEADSFU_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// Use Let's Encrypt's staging directory.
    #[arg(long, env = "DEADSFU_ACME_STAGING", conflicts_with = "acme_directory")]
    pub acme_staging: bool,
    /// Root certificate (PEM) to trust for the ACME server's own HTTPS (private CAs, tests).
    #[arg(long, env = "DEADSFU_ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// tls-alpn-01, http-01 or dns-01 (default: tls-alpn-01, falling back to http-01).
    #[arg(long, env = "DEADSFU_ACME_CHALLENGE")]
    pub acme_challenge: Option<ChallengeKind>,
    /// DNS-01: command called as `CMD set|clear NAME VALUE` to publish TXT records.
    #[arg(long, env = "DEADSFU_ACME_DNS_HOOK")]
    pub acme_dns_hook: Option<String>,
    /// Renew when this much validity remains, e.g. 30d (default: a third of the lifetime).
    #[arg(long, env = "DEADSFU_ACME_RENEW_BEFORE", value_parser = humantime::parse_duration)]
    pub acme_renew_before: Option<Duration>,
    /// Standalone storage of the ACME account and certificates.
    #[arg(long, env = "DEADSFU_DATA_DIR", default_value = "./deadsfu-data")]
    pub data_dir: PathBuf,
    /// Backoff unit after failed orders (waits of 1, 10, then 60 units). For tests.
    #[arg(long, env = "DEADSFU_ACME_RETRY_UNIT", value_parser = humantime::parse_duration, default_value = "60s", hide = true)]
    pub acme_retry_unit: Duration,
    /// TTL of the cluster-wide order lock of a domain. For tests.
    #[arg(long, env = "DEADSFU_ACME_LOCK_TTL", value_parser = humantime::parse_duration, default_value = "90s", hide = true)]
    pub acme_lock_ttl: Duration,
}

/// Settings that only make sense together, checked before anything starts.
pub fn check(args: &HttpsArgs, https_on: bool) -> anyhow::Result<()> {
    let wants_tls = args.tls_cert.is_some() || !args.acme_domain.is_empty();
    if wants_tls && !https_on {
        bail!("--tls-cert and --acme-domain need --https ADDR");
    }
    for d in &args.acme_domain {
        let name = d.strip_prefix("*.").unwrap_or(d);
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.contains('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            && !name.contains("..");
        if !ok {
            bail!("--acme-domain {d:?} is not a DNS name");
        }
        if d.starts_with("*.") && args.acme_dns_hook.is_none() {
            bail!("--acme-domain {d:?} is a wildcard: it needs DNS-01 and --acme-dns-hook CMD");
        }
    }
    if args.acme_challenge == Some(ChallengeKind::Dns01) && args.acme_dns_hook.is_none() {
        bail!("--acme-challenge dns-01 needs --acme-dns-hook CMD");
    }
    Ok(())
}

/// A node's running HTTPS and the store behind it.
pub struct RunningHttps {
    pub node: Arc<NodeHttps>,
    pub resolver: Arc<CertResolver>,
    pub store: Arc<dyn CertStore>,
}

/// Starts the certificate sources of the HTTPS listener on `local`. `node_name` names this node
/// in ACME lock values.
pub async fn start(
    tls: &HttpsArgs,
    node_name: String,
    local: SocketAddr,
    http_on: bool,
    cluster: Option<&Membership>,
) -> anyhow::Result<RunningHttps> {
    let store: Arc<dyn CertStore> = match cluster {
        Some(c) => c.cert_store(),
        None => {
            if tls.acme_domain.is_empty() && tls.tls_cert.is_none() {
                bail!(
                    "--https {local} has no certificate: give --tls-cert/--tls-key or --acme-domain"
                );
            }
            Arc::new(
                DirStore::open(&tls.data_dir)
                    .with_context(|| format!("--data-dir {}", tls.data_dir.display()))?,
            )
        }
    };
    let acme = (!tls.acme_domain.is_empty()).then(|| {
        let mut config = AcmeConfig::new(
            tls.acme_domain
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
        );
        config.email = tls.acme_email.clone();
        if let Some(dir) = &tls.acme_directory {
            config.directory_url = dir.clone();
        } else if tls.acme_staging {
            config.directory_url = deadsfu_tls::LETS_ENCRYPT_STAGING.to_string();
        }
        config.ca_root = tls.acme_ca_root.clone();
        config.challenge = tls.acme_challenge;
        config.http_enabled = http_on;
        config.dns_hook = tls.acme_dns_hook.clone();
        config.renew_before = tls.acme_renew_before;
        config.retry_unit = tls.acme_retry_unit;
        config.lock_ttl = tls.acme_lock_ttl;
        config.node_name = node_name.clone();
        config
    });
    let options = HttpsOptions {
        files: tls.tls_cert.clone().zip(tls.tls_key.clone()),
        acme,
        serve_store: cluster.is_some(),
        handshake_timeout: deadsfu_server::listen::HANDSHAKE_TIMEOUT,
    };
    let node = NodeHttps::start(options, store.clone())
        .await
        .context("starting HTTPS")?;
    if let Some(c) = cluster {
        c.follow_certificates(node.clone());
    }
    Ok(RunningHttps {
        resolver: node.resolver.clone(),
        node,
        store,
    })
}
