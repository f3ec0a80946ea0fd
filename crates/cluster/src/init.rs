//! `cluster init`: the cluster directory with its CA, the bootstrap server's and Redis's
//! certificates, a ready `redis.conf`, the ACL file, and the cluster key and ticket secret
//! (`secrets/`). `bootstrap/` is complete as the bootstrap server's own directory
//! ([`crate::bootstrap_dir`]).

use std::path::Path;

use crate::acl;
use crate::bootstrap_dir::{BootstrapDirError, sync_bootstrap_dir};
use crate::bundle::{Bundle, BundleSettings};
use crate::cluster_dir::{
    ClusterDir, ClusterSettings, create_private_dir, write_private, write_public,
};
use crate::keys::Keys;
use crate::pki::{self, CaSigner, PkiError};
use crate::redis_conn::split_host_port;
use crate::role::Role;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already holds a cluster (cluster.toml exists); refusing to replace its CA")]
    AlreadyInitialised(String),
    #[error("bad address {0:?} (want host:port)")]
    BadAddress(String),
    #[error("bad key prefix {0:?} (letters, digits, '_', '-', '.', ':' only)")]
    BadKeyPrefix(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot write the cluster directory: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error(transparent)]
    BootstrapDir(#[from] BootstrapDirError),
}

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub redis_addr: String,
    pub bootstrap_addr: String,
    pub key_prefix: String,
}

pub fn init(dir: &Path, options: &InitOptions) -> Result<ClusterDir, InitError> {
    let dir = ClusterDir::new(dir)?;
    if dir.settings().exists() {
        return Err(InitError::AlreadyInitialised(
            dir.root().display().to_string(),
        ));
    }
    let (redis_host, redis_port) = split_host_port(&options.redis_addr)
        .ok_or_else(|| InitError::BadAddress(options.redis_addr.clone()))?;
    let (bootstrap_host, _) = split_host_port(&options.bootstrap_addr)
        .ok_or_else(|| InitError::BadAddress(options.bootstrap_addr.clone()))?;
    if !valid_key_prefix(&options.key_prefix) {
        return Err(InitError::BadKeyPrefix(options.key_prefix.clone()));
    }

    for sub in [
        "ca",
        "bootstrap",
        "redis",
        "redis/data",
        "operator",
        "names",
        "secrets",
    ] {
        create_private_dir(&dir.root().join(sub))?;
    }

    let ca = pki::new_ca()?;
    write_public(&dir.ca_cert(), ca.cert_pem.as_bytes())?;
    write_private(&dir.ca_key(), ca.key_pem.as_bytes())?;
    let signer = CaSigner::from_key_pem(&ca.key_pem)?;

    let bootstrap = signer.server_cert(&bootstrap_host)?;
    write_public(&dir.bootstrap_cert(), bootstrap.cert_pem.as_bytes())?;
    write_private(&dir.bootstrap_key(), bootstrap.key_pem.as_bytes())?;

    let redis = signer.server_cert(&redis_host)?;
    write_public(&dir.redis_cert(), redis.cert_pem.as_bytes())?;
    write_private(&dir.redis_key(), redis.key_pem.as_bytes())?;

    // Created before any bundle, since sfu and admin bundles carry them.
    let secrets = dir.cluster_secrets()?;

    // The tooling's own admin credentials, used by `issue`/`revoke` to reload the ACL file.
    let operator_password = Secret::random();
    let operator_cert = signer.client_cert("operator", None)?;
    let operator = Bundle {
        ca_cert_pem: ca.cert_pem.clone(),
        client_cert_pem: operator_cert.cert_pem,
        client_key_pem: Secret::new(operator_cert.key_pem),
        settings: BundleSettings {
            name: "operator".into(),
            role: Role::Admin,
            redis_addrs: vec![options.redis_addr.clone()],
            user: Role::Admin.acl_user().into(),
            password: operator_password.expose().into(),
            key_prefix: options.key_prefix.clone(),
            cluster_key: Some(secrets.cluster_key),
            ticket_secret: Some(secrets.ticket_secret),
            hostname: None,
        },
    };
    write_private(&dir.operator_dir().join("bundle.zip"), &operator.to_zip()?)?;
    write_private(
        &dir.operator_dir().join("password.sha256"),
        operator_password.sha256_hex().as_bytes(),
    )?;

    let settings = ClusterSettings {
        redis_addr: options.redis_addr.clone(),
        bootstrap_addr: options.bootstrap_addr.clone(),
        key_prefix: options.key_prefix.clone(),
    };
    write_private(
        &dir.redis_conf(),
        redis_conf(&dir, &redis_host, redis_port).as_bytes(),
    )?;
    write_private(
        &dir.redis_acl(),
        acl::acl_file(
            &Keys::new(options.key_prefix.clone()),
            &[(Role::Admin, operator_password.sha256_hex())],
            &[],
        )
        .as_bytes(),
    )?;
    // What the bootstrap server reads, and nothing else: `bootstrap/`.
    sync_bootstrap_dir(&dir, &settings, &[], &dir.bootstrap_dir())?;
    // Written last: its presence means the directory is complete.
    write_private(
        &dir.settings(),
        toml::to_string(&settings)
            .expect("settings serialise")
            .as_bytes(),
    )?;
    tracing::info!(dir = %dir.root().display(), redis = %options.redis_addr, bootstrap = %options.bootstrap_addr, "cluster directory initialised");
    Ok(dir)
}

fn valid_key_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
}

fn redis_conf(dir: &ClusterDir, host: &str, port: u16) -> String {
    // An IP is bound as given; a DNS name could resolve to anything, so listen everywhere
    // and rely on mutual TLS and the ACL.
    let bind = if host.parse::<std::net::IpAddr>().is_ok() {
        host.to_string()
    } else if host == "localhost" {
        "127.0.0.1 -::1".to_string()
    } else {
        "* -::*".to_string()
    };
    format!(
        "# Generated by `deadsfu cluster init`. Start with: redis-server {conf}\n\
         # TLS only, clients must show a certificate from the cluster CA, one ACL user per role and sfu name.\n\
         port 0\n\
         bind {bind}\n\
         tls-port {port}\n\
         tls-cert-file {cert}\n\
         tls-key-file {key}\n\
         tls-ca-cert-file {ca}\n\
         tls-auth-clients yes\n\
         tls-protocols \"TLSv1.2 TLSv1.3\"\n\
         protected-mode no\n\
         aclfile {acl}\n\
         dir {data}\n\
         daemonize no\n",
        conf = dir.redis_conf().display(),
        cert = dir.redis_cert().display(),
        key = dir.redis_key().display(),
        ca = dir.ca_cert().display(),
        acl = dir.redis_acl().display(),
        data = dir.redis_data().display(),
    )
}
