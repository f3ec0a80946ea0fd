//! `cluster issue` and `cluster revoke`: one client certificate, Redis password and access
//! token per name, kept under `DIR/names/NAME/`.
//!
//! Only hashes of the token and of the password stay beside the bundle, so the bootstrap
//! server and the ACL file never hold them in clear (the bundle itself does, 0600).

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::acl;
use crate::bundle::{Bundle, BundleSettings};
use crate::cluster_dir::{ClusterDir, ClusterSettings, create_private_dir, write_private};
use crate::keys::Keys;
use crate::pki::{self, CaSigner, PkiError};
use crate::redis_conn::RedisConn;
use crate::role::Role;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0} is not a cluster directory (run `deadsfu cluster init` first): {1}")]
    NotInitialised(String, std::io::Error),
    #[error("bad name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("no bundle was issued to {0:?}")]
    UnknownName(String),
    #[error("the name {0:?} is reserved")]
    ReservedName(String),
    #[error("cannot read the bootstrap certificate")]
    BadBootstrapCert,
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot read or write the cluster directory: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error("bad metadata for {name:?}: {reason}")]
    BadMeta { name: String, reason: String },
}

/// Kept beside each name's bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameMeta {
    pub role: Role,
    pub token_sha256: String,
    pub password_sha256: String,
}

/// Result of `issue`.
#[derive(Debug)]
pub struct Issued {
    pub name: String,
    pub role: Role,
    /// `https://BOOTSTRAP/bundle?access_token=...#sha256=...`: give it to the node as
    /// `DEADSFU_CLUSTER_URL`.
    pub url: Secret,
    /// Whether a running Redis took the new password at once (otherwise it will at start).
    pub acl_reloaded: AclReload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclReload {
    Reloaded,
    RedisNotReachable(String),
}

pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('.')
}

fn open(dir: &Path) -> Result<(ClusterDir, ClusterSettings), IssueError> {
    let dir = ClusterDir::new(dir)?;
    let settings = dir
        .read_settings()
        .map_err(|e| IssueError::NotInitialised(dir.root().display().to_string(), e))?;
    Ok((dir, settings))
}

pub async fn issue(dir: &Path, role: Role, name: &str) -> Result<Issued, IssueError> {
    if !valid_name(name) {
        return Err(IssueError::BadName(name.into()));
    }
    if name == "operator" {
        return Err(IssueError::ReservedName(name.into()));
    }
    let (dir, settings) = open(dir)?;
    let ca_cert_pem = fs::read_to_string(dir.ca_cert())?;
    let signer = CaSigner::from_key_pem(&fs::read_to_string(dir.ca_key())?)?;
    // Proxies serve only public data: they never get the secrets. Directories made before
    // the secrets existed get them now.
    let secrets = match role {
        Role::Sfu | Role::Admin => Some(dir.cluster_secrets()?),
        Role::Proxy => None,
    };
    let client = signer.client_cert(name)?;
    let password = Secret::random();
    let token = Secret::random();
    let bundle = Bundle {
        ca_cert_pem,
        client_cert_pem: client.cert_pem,
        client_key_pem: Secret::new(client.key_pem),
        settings: BundleSettings {
            name: name.into(),
            role,
            redis_addrs: vec![settings.redis_addr.clone()],
            user: role.acl_user().into(),
            password: password.expose().into(),
            key_prefix: settings.key_prefix.clone(),
            cluster_key: secrets.as_ref().map(|s| s.cluster_key.clone()),
            ticket_secret: secrets.map(|s| s.ticket_secret),
        },
    };
    let meta = NameMeta {
        role,
        token_sha256: token.sha256_hex(),
        password_sha256: password.sha256_hex(),
    };
    let name_dir = dir.name_dir(name);
    create_private_dir(&name_dir)?;
    write_private(&name_dir.join("bundle.zip"), &bundle.to_zip()?)?;
    write_private(
        &name_dir.join("meta.toml"),
        toml::to_string(&meta).expect("meta serialises").as_bytes(),
    )?;

    let fingerprint = pki::cert_fingerprint_hex(&fs::read_to_string(dir.bootstrap_cert())?)
        .ok_or(IssueError::BadBootstrapCert)?;
    let url = Secret::new(format!(
        "https://{}/bundle?access_token={}#sha256={}",
        settings.bootstrap_addr,
        token.expose(),
        fingerprint
    ));
    let acl_reloaded = rewrite_acl_and_reload(&dir, &settings).await?;
    tracing::info!(%name, %role, "bundle issued");
    Ok(Issued {
        name: name.into(),
        role,
        url,
        acl_reloaded,
    })
}

pub async fn revoke(dir: &Path, name: &str) -> Result<AclReload, IssueError> {
    if !valid_name(name) {
        return Err(IssueError::BadName(name.into()));
    }
    let (dir, settings) = open(dir)?;
    let name_dir = dir.name_dir(name);
    if !name_dir.join("meta.toml").exists() {
        return Err(IssueError::UnknownName(name.into()));
    }
    fs::remove_dir_all(&name_dir)?;
    let reload = rewrite_acl_and_reload(&dir, &settings).await?;
    tracing::info!(%name, "bundle revoked");
    Ok(reload)
}

/// All names currently issued, with their metadata.
pub fn list_names(dir: &ClusterDir) -> Result<Vec<(String, NameMeta)>, IssueError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir.names_dir()) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta_path = entry.path().join("meta.toml");
        if !valid_name(&name) || !meta_path.exists() {
            continue;
        }
        let meta: NameMeta =
            toml::from_str(&fs::read_to_string(meta_path)?).map_err(|e| IssueError::BadMeta {
                name: name.clone(),
                reason: e.message().to_string(),
            })?;
        out.push((name, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

async fn rewrite_acl_and_reload(
    dir: &ClusterDir,
    settings: &ClusterSettings,
) -> Result<AclReload, IssueError> {
    let mut hashes = vec![(
        Role::Admin,
        fs::read_to_string(dir.operator_dir().join("password.sha256"))?
            .trim()
            .to_string(),
    )];
    for (_, meta) in list_names(dir)? {
        hashes.push((meta.role, meta.password_sha256));
    }
    let keys = Keys::new(settings.key_prefix.clone());
    write_private(&dir.redis_acl(), acl::acl_file(&keys, &hashes).as_bytes())?;
    Ok(reload_acl(dir).await)
}

/// Asks a running Redis to re-read the ACL file, with the operator's own credentials.
async fn reload_acl(dir: &ClusterDir) -> AclReload {
    let attempt = async {
        let zip = fs::read(dir.operator_dir().join("bundle.zip")).map_err(|e| e.to_string())?;
        let bundle = Bundle::from_zip(&zip).map_err(|e| e.to_string())?;
        let conn = RedisConn::connect(&bundle)
            .await
            .map_err(|e| e.to_string())?;
        let mut manager = conn.manager();
        redis::cmd("ACL")
            .arg("LOAD")
            .query_async::<()>(&mut manager)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => AclReload::Reloaded,
        Ok(Err(reason)) => AclReload::RedisNotReachable(reason),
        Err(_) => AclReload::RedisNotReachable("timed out".into()),
    }
}
