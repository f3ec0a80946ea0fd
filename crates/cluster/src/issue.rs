//! `cluster issue` and `cluster revoke`: one client certificate, Redis password and access
//! token per name, kept under `DIR/names/NAME/`. Each sfu name gets its own Redis ACL user
//! (acl.rs), bound to the node id NAME and one hostname.
//!
//! Only hashes of the token and of the password stay beside the bundle, so the bootstrap
//! server and the ACL file never hold them in clear (the bundle itself does, 0600). Each
//! issue and revoke brings `DIR/bootstrap/` up to date, the directory the bootstrap server
//! serves from; [`export_bootstrap`] writes a copy of it elsewhere.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::acl::{self, NodeUser};
use crate::bootstrap_dir::{BootstrapDir, BootstrapDirError, sync_bootstrap_dir};
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
    #[error(
        "bad hostname {0:?}: use 1 to 253 letters, digits, '.', '_' or '-', not starting or \
         ending with '.'"
    )]
    BadHostname(String),
    #[error("a hostname is only issued with sfu bundles, not with {0} bundles")]
    HostnameNotForRole(Role),
    #[error("hostname {hostname:?} is already issued to {name:?} (revoke it first)")]
    HostnameInUse { hostname: String, name: String },
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
    #[error(transparent)]
    BootstrapDir(#[from] BootstrapDirError),
}

/// Kept beside each name's bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameMeta {
    pub role: Role,
    pub token_sha256: String,
    pub password_sha256: String,
    /// The hostname an sfu name may lease. Present for sfu names issued since per-node ACL
    /// users exist (their user is [`acl::node_acl_user`]); absent for older sfu names, whose
    /// password sits on the shared `sfu` user, and for proxy and admin names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// When the bundle's client certificate expires (seconds since the Unix epoch); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<u64>,
}

/// Result of `issue`.
#[derive(Debug)]
pub struct Issued {
    pub name: String,
    pub role: Role,
    /// The hostname the node must serve (sfu bundles).
    pub hostname: Option<String>,
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

/// A node's public hostname as issued: DNS-like characters only (so nothing that could act as
/// a glob in an ACL key pattern), at most 253 of them, no leading or trailing dot. Compared
/// in lower case, as DNS names are.
pub fn valid_hostname(hostname: &str) -> bool {
    (1..=253).contains(&hostname.len())
        && hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !hostname.starts_with('.')
        && !hostname.ends_with('.')
        && acl::literal_in_pattern(hostname)
}

/// The hostname an sfu name is issued with: the one given, else the name; lower-cased.
fn issued_hostname(
    role: Role,
    name: &str,
    hostname: Option<&str>,
) -> Result<Option<String>, IssueError> {
    match (role, hostname) {
        (Role::Sfu, given) => {
            let hostname = given.unwrap_or(name).to_ascii_lowercase();
            if valid_hostname(&hostname) {
                Ok(Some(hostname))
            } else {
                Err(IssueError::BadHostname(given.unwrap_or(name).into()))
            }
        }
        (role, Some(_)) => Err(IssueError::HostnameNotForRole(role)),
        (_, None) => Ok(None),
    }
}

fn open(dir: &Path) -> Result<(ClusterDir, ClusterSettings), IssueError> {
    let dir = ClusterDir::new(dir)?;
    let settings = dir
        .read_settings()
        .map_err(|e| IssueError::NotInitialised(dir.root().display().to_string(), e))?;
    Ok((dir, settings))
}

/// Issues a bundle to `name`. An sfu bundle is bound to the node id `name` and to `hostname`
/// (default: `name`), and logs in as the name's own ACL user; proxy and admin bundles take no
/// hostname. Issuing a name again replaces its credentials.
pub async fn issue(
    dir: &Path,
    role: Role,
    name: &str,
    hostname: Option<&str>,
) -> Result<Issued, IssueError> {
    issue_expiring(dir, role, name, hostname, None).await
}

/// [`issue`], with a bundle that stops working `expires` from now (none: never).
///
/// The expiry is the client certificate's notAfter: Redis verifies client certificates at
/// every TLS handshake (`tls-auth-clients yes`), so once it passes the holder cannot open a
/// connection, with no process of ours having to be up to remove it. Connections opened
/// before stay until they close (or `revoke`, which closes them); the name's ACL user and
/// token remain until revoked, and the token hands out the expired bundle.
pub async fn issue_expiring(
    dir: &Path,
    role: Role,
    name: &str,
    hostname: Option<&str>,
    expires: Option<Duration>,
) -> Result<Issued, IssueError> {
    if !valid_name(name) || !acl::literal_in_pattern(name) {
        return Err(IssueError::BadName(name.into()));
    }
    if name == "operator" {
        return Err(IssueError::ReservedName(name.into()));
    }
    let hostname = issued_hostname(role, name, hostname)?;
    let (dir, settings) = open(dir)?;
    if let Some(hostname) = &hostname {
        // Two users able to write one `host:` key would defeat the per-node grant.
        for (other, meta) in list_names(&dir)? {
            if other != name && meta.hostname.as_ref() == Some(hostname) {
                return Err(IssueError::HostnameInUse {
                    hostname: hostname.clone(),
                    name: other,
                });
            }
        }
    }
    let ca_cert_pem = fs::read_to_string(dir.ca_cert())?;
    let signer = CaSigner::from_key_pem(&fs::read_to_string(dir.ca_key())?)?;
    // Proxies serve only public data: they never get the secrets. Directories made before
    // the secrets existed get them now.
    let secrets = match role {
        Role::Sfu | Role::Admin => Some(dir.cluster_secrets()?),
        Role::Proxy => None,
    };
    let expires_unix = expires.map(|after| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(after)
            .as_secs()
    });
    let client = signer.client_cert(name, expires_unix)?;
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
            user: match role {
                Role::Sfu => acl::node_acl_user(name),
                Role::Proxy | Role::Admin => role.acl_user().into(),
            },
            password: password.expose().into(),
            key_prefix: settings.key_prefix.clone(),
            cluster_key: secrets.as_ref().map(|s| s.cluster_key.clone()),
            ticket_secret: secrets.map(|s| s.ticket_secret),
            hostname: hostname.clone(),
        },
    };
    let meta = NameMeta {
        role,
        token_sha256: token.sha256_hex(),
        password_sha256: password.sha256_hex(),
        hostname: hostname.clone(),
        expires_unix,
    };
    let name_dir = dir.name_dir(name);
    create_private_dir(&name_dir)?;
    write_private(&name_dir.join("bundle.zip"), &bundle.to_zip()?)?;
    write_private(
        &name_dir.join("meta.toml"),
        toml::to_string(&meta).expect("meta serialises").as_bytes(),
    )?;
    sync_bootstrap_dir(&dir, &settings, &list_names(&dir)?, &dir.bootstrap_dir())?;

    let fingerprint = pki::cert_fingerprint_hex(&fs::read_to_string(dir.bootstrap_cert())?)
        .ok_or(IssueError::BadBootstrapCert)?;
    let url = Secret::new(format!(
        "https://{}/bundle?access_token={}#sha256={}",
        settings.bootstrap_addr,
        token.expose(),
        fingerprint
    ));
    let acl_reloaded = rewrite_acl_and_reload(&dir, &settings).await?;
    tracing::info!(%name, %role, hostname = hostname.as_deref().unwrap_or("-"), expires_unix = ?expires_unix, "bundle issued");
    Ok(Issued {
        name: name.into(),
        role,
        hostname,
        url,
        acl_reloaded,
    })
}

/// Makes the name's token useless, drops its Redis password, and closes its live Redis
/// connections (`CLIENT KILL USER`).
///
/// An sfu name with its own ACL user: the user is switched off first (no new AUTH), its
/// connections killed, then the user deleted from Redis (see `reload_acl`). A name on a
/// shared role user (proxy, admin, older sfu names): Redis cannot tell its connections from
/// the other holders', so every connection of that user is closed after the update; the
/// others reconnect with their own, still valid, passwords.
pub async fn revoke(dir: &Path, name: &str) -> Result<AclReload, IssueError> {
    if !valid_name(name) {
        return Err(IssueError::BadName(name.into()));
    }
    let (dir, settings) = open(dir)?;
    let name_dir = dir.name_dir(name);
    let meta_path = name_dir.join("meta.toml");
    if !meta_path.exists() {
        return Err(IssueError::UnknownName(name.into()));
    }
    let meta: NameMeta =
        toml::from_str(&fs::read_to_string(&meta_path)?).map_err(|e| IssueError::BadMeta {
            name: name.into(),
            reason: e.message().to_string(),
        })?;
    let own_user = matches!((meta.role, &meta.hostname), (Role::Sfu, Some(_)))
        .then(|| acl::node_acl_user(name));
    if let Some(user) = &own_user {
        // Best effort: with Redis down there is nothing to close, and the file below is
        // what it reads when it starts.
        let _ = operator_commands(
            &dir,
            vec![
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(user)
                    .arg("off")
                    .clone(),
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("USER")
                    .arg(user)
                    .clone(),
            ],
        )
        .await;
    }
    // The token stops working first, then the bundle goes.
    let _ = fs::remove_file(name_dir.join("meta.toml"));
    sync_bootstrap_dir(&dir, &settings, &list_names(&dir)?, &dir.bootstrap_dir())?;
    fs::remove_dir_all(&name_dir)?;
    let reload = rewrite_acl_and_reload(&dir, &settings).await?;
    if own_user.is_none() && reload == AclReload::Reloaded {
        let shared = meta.role.acl_user();
        let _ = operator_commands(
            &dir,
            vec![
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("USER")
                    .arg(shared)
                    .clone(),
            ],
        )
        .await;
    }
    tracing::info!(%name, "bundle revoked");
    Ok(reload)
}

/// Writes, or brings up to date, a bootstrap directory at `to` from the cluster directory
/// `dir`: everything `cluster serve` needs, without the CA key. Run it again after `issue` and
/// `revoke` when the server runs from a copy (`DIR/bootstrap/` itself is always current).
pub fn export_bootstrap(dir: &Path, to: &Path) -> Result<BootstrapDir, IssueError> {
    let (dir, settings) = open(dir)?;
    Ok(sync_bootstrap_dir(&dir, &settings, &list_names(&dir)?, to)?)
}

/// Runs `commands` with the operator's own credentials, in order, each allowed to fail
/// (`CLIENT KILL` with no connection to kill is an error).
async fn operator_commands(dir: &ClusterDir, commands: Vec<redis::Cmd>) -> Result<(), String> {
    let attempt = async {
        let zip = fs::read(dir.operator_dir().join("bundle.zip")).map_err(|e| e.to_string())?;
        let bundle = Bundle::from_zip(&zip).map_err(|e| e.to_string())?;
        let conn = RedisConn::connect(&bundle)
            .await
            .map_err(|e| e.to_string())?;
        let mut manager = conn.manager();
        for command in commands {
            if let Err(error) = command.query_async::<redis::Value>(&mut manager).await {
                tracing::debug!(%error, "operator command failed");
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
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
    let mut nodes = Vec::new();
    for (name, meta) in list_names(dir)? {
        match (meta.role, meta.hostname) {
            (Role::Sfu, Some(hostname)) => {
                // Hand-edited metadata must not widen a node's grant.
                if !valid_hostname(&hostname) || !acl::literal_in_pattern(&name) {
                    return Err(IssueError::BadMeta {
                        name,
                        reason: format!("bad hostname {hostname:?}"),
                    });
                }
                nodes.push(NodeUser {
                    name,
                    hostname,
                    password_sha256: meta.password_sha256,
                });
            }
            // Sfu names issued before per-node users: the shared `sfu` user.
            (role, _) => hashes.push((role, meta.password_sha256)),
        }
    }
    let keys = Keys::new(settings.key_prefix.clone());
    let acl_text = acl::acl_file(&keys, &hashes, &nodes);
    write_private(&dir.redis_acl(), acl_text.as_bytes())?;
    Ok(reload_acl(dir, &acl_text).await)
}

/// Brings a running Redis's users in line with the ACL file just written (`acl_text`), with
/// the operator's own credentials: `ACL SETUSER name reset RULES` for each user of the file,
/// `ACL DELUSER` for the users no longer in it. Redis 7.0's `ACL LOAD` would do the same at
/// once, but it closes the connections of every ACL user (every node and proxy, their event
/// subscriptions with them) at each `issue`; SETUSER closes none, and DELUSER only those of
/// the user it removes. `ACL LOAD` stays the fallback when a SETUSER is refused.
async fn reload_acl(dir: &ClusterDir, acl_text: &str) -> AclReload {
    let attempt = async {
        let zip = fs::read(dir.operator_dir().join("bundle.zip")).map_err(|e| e.to_string())?;
        let bundle = Bundle::from_zip(&zip).map_err(|e| e.to_string())?;
        let conn = RedisConn::connect(&bundle)
            .await
            .map_err(|e| e.to_string())?;
        let mut manager = conn.manager();
        let mut wanted = Vec::new();
        let mut applied = true;
        for line in acl_text.lines() {
            let mut tokens = line.split_whitespace();
            let (Some("user"), Some(user)) = (tokens.next(), tokens.next()) else {
                continue;
            };
            wanted.push(user.to_string());
            let mut setuser = redis::cmd("ACL");
            setuser.arg("SETUSER").arg(user).arg("reset");
            for rule in tokens {
                setuser.arg(rule);
            }
            if let Err(error) = setuser.query_async::<()>(&mut manager).await {
                tracing::warn!(%user, %error, "ACL SETUSER refused; reloading the ACL file");
                applied = false;
                break;
            }
        }
        if !applied {
            return redis::cmd("ACL")
                .arg("LOAD")
                .query_async::<()>(&mut manager)
                .await
                .map_err(|e| e.to_string());
        }
        let present: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut manager)
            .await
            .map_err(|e| e.to_string())?;
        for user in present.iter().filter(|u| !wanted.contains(u)) {
            redis::cmd("ACL")
                .arg("DELUSER")
                .arg(user)
                .query_async::<()>(&mut manager)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => AclReload::Reloaded,
        Ok(Err(reason)) => AclReload::RedisNotReachable(reason),
        Err(_) => AclReload::RedisNotReachable("timed out".into()),
    }
}
