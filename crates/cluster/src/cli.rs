//! `deadsfu cluster ...`: clap types the binary embeds, and the glue that runs them.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::bootstrap_server::BootstrapServer;
use crate::bundle::Bundle;
use crate::bundle_fetch::fetch_bundle;
use crate::cert_admin::{
    import_cert, normalise_domain, read_cert_listing, render_cert_listing, rfc3339_utc,
};
use crate::cert_store::NO_CLUSTER_KEY;
use crate::init::{InitOptions, init};
use crate::issue::{AclReload, export_bootstrap, issue_expiring, revoke};
use crate::join_url::{JoinUrl, URL_ENV, URL_FILE_ENV};
use crate::keys::DEFAULT_KEY_PREFIX;
use crate::redis_conn::RedisConn;
use crate::role::Role;
use crate::secret::Secret;
use crate::status::{read_status, render};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster directory: CA, certificates, redis.conf and ACL file.
    Init {
        #[arg(long, env = "DEADSFU_CLUSTER_DIR")]
        dir: PathBuf,
        /// Where Redis will listen (TLS), as nodes will reach it.
        #[arg(long, env = "DEADSFU_CLUSTER_REDIS_ADDR", value_name = "HOST:PORT")]
        redis_addr: String,
        /// Where `cluster serve` will listen, as nodes will reach it.
        #[arg(long, env = "DEADSFU_CLUSTER_BOOTSTRAP_ADDR", value_name = "HOST:PORT")]
        bootstrap_addr: String,
        /// Prefix of every Redis key.
        #[arg(long, env = "DEADSFU_CLUSTER_KEY_PREFIX", default_value = DEFAULT_KEY_PREFIX)]
        key_prefix: String,
    },
    /// Issue a credential bundle for one node or operator; prints its URL last.
    Issue {
        #[arg(long, env = "DEADSFU_CLUSTER_DIR")]
        dir: PathBuf,
        #[arg(long, value_enum)]
        role: Role,
        /// For sfu bundles, also the node id: the bundle may register only this node.
        #[arg(long)]
        name: String,
        /// The public hostname the sfu node serves; its bundle may lease only this one
        /// (default: the name). Sfu bundles only.
        #[arg(long)]
        hostname: Option<String>,
        /// The bundle stops working this long from now (e.g. 30d, 12h): its client
        /// certificate expires, and Redis refuses expired certificates at connect. Default:
        /// never (a Swarm or Kubernetes secret is fetched again at every restart).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// Make a name's access token useless and drop its Redis password (an sfu name's own
    /// Redis user).
    Revoke {
        #[arg(long, env = "DEADSFU_CLUSTER_DIR")]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Write, or bring up to date, a copy of the bootstrap directory (server certificate and
    /// key, bundles, token hashes; never the CA key) for `cluster serve` to run from. Run it
    /// again after `issue` and `revoke`.
    ExportBootstrap {
        /// The cluster directory.
        #[arg(long, env = "DEADSFU_CLUSTER_DIR")]
        dir: PathBuf,
        /// Where to write it (created if missing).
        #[arg(long, value_name = "OUT")]
        to: PathBuf,
    },
    /// Run the bootstrap HTTPS server that hands bundles out. It refuses to start from a
    /// directory holding the CA's private key.
    Serve {
        /// The bootstrap directory: the cluster directory's `bootstrap/`, or a copy written
        /// by `export-bootstrap`; never the cluster directory itself.
        #[arg(long, env = "DEADSFU_BOOTSTRAP_DIR")]
        dir: PathBuf,
        /// Default: the bootstrap address given to `init`.
        #[arg(long, env = "DEADSFU_CLUSTER_LISTEN", value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Show nodes, room owners and FTL channel owners (needs an admin bundle's
    /// DEADSFU_CLUSTER_URL).
    Status,
    /// Manage FTL stream keys (needs an admin bundle's DEADSFU_CLUSTER_URL).
    FtlKey {
        #[command(subcommand)]
        action: FtlKeyCommand,
    },
    /// The cluster's shared certificates (needs an admin bundle's DEADSFU_CLUSTER_URL).
    Cert {
        #[command(subcommand)]
        action: CertCommand,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertCommand {
    /// List stored certificates, ACME order locks and failure backoffs: domain, expiry,
    /// days left, issuer, lock holder, last error.
    Ls,
    /// Store a certificate obtained elsewhere for DOMAIN; every SFU serves it at once.
    Import {
        /// The name it is served for; the certificate must cover it (exactly or by wildcard).
        #[arg(long)]
        domain: String,
        /// PEM chain, leaf first.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// PEM private key of the leaf (stored encrypted with the cluster key).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

/// Largest certificate chain or key file `cert import` reads.
const MAX_PEM_FILE_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum FtlKeyCommand {
    /// Store CHANNEL's stream secret (`-` reads it from standard input).
    Set { channel: String, secret: String },
    /// Remove CHANNEL's stream secret.
    Rm { channel: String },
}

/// The node identity flags of `deadsfu serve` in cluster mode, for the binary to flatten.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This node's own public hostname (its certificate name, target of redirects; default:
    /// the hostname the sfu bundle was issued for).
    #[arg(long, env = "DEADSFU_HOSTNAME")]
    pub hostname: Option<String>,
    /// Region label shown to routing and operators.
    #[arg(long, env = "DEADSFU_REGION", default_value = "default")]
    pub region: String,
    /// Unique node id (default: the bundle's name for sfu bundles issued with a hostname,
    /// else the hostname).
    #[arg(long, env = "DEADSFU_NODE_ID")]
    pub node_id: Option<String>,
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Init {
            dir,
            redis_addr,
            bootstrap_addr,
            key_prefix,
        } => {
            let dir = init(
                &dir,
                &InitOptions {
                    redis_addr,
                    bootstrap_addr,
                    key_prefix,
                },
            )?;
            println!("Cluster directory ready: {}", dir.root().display());
            println!(
                "Start Redis:      redis-server {}",
                dir.redis_conf().display()
            );
            println!(
                "Start bootstrap:  deadsfu cluster serve --dir {}",
                dir.bootstrap_dir().display()
            );
            println!(
                "  (or elsewhere:  deadsfu cluster export-bootstrap --dir {} --to OUT; \
                 deadsfu cluster serve --dir OUT)",
                dir.root().display()
            );
            println!(
                "Issue bundles:    deadsfu cluster issue --dir {} --role sfu --name NAME",
                dir.root().display()
            );
        }
        ClusterCommand::Issue {
            dir,
            role,
            name,
            hostname,
            expires,
        } => {
            let issued = issue_expiring(&dir, role, &name, hostname.as_deref(), expires).await?;
            match &issued.acl_reloaded {
                AclReload::Reloaded => eprintln!("Redis users updated."),
                AclReload::RedisNotReachable(reason) => eprintln!(
                    "Redis not reachable ({reason}); it reads the new password when it starts \
                     (or run ACL LOAD)."
                ),
            }
            let what = match &issued.hostname {
                Some(hostname) => format!(
                    "{}, node id {}, hostname {hostname}",
                    issued.role, issued.name
                ),
                None => issued.role.to_string(),
            };
            eprintln!(
                "Bundle for {} ({what}). Give this URL to the node as {URL_ENV} (or in a file named by {URL_FILE_ENV}):",
                issued.name
            );
            println!("{}", issued.url.expose());
        }
        ClusterCommand::Revoke { dir, name } => {
            let reload = revoke(&dir, &name).await?;
            println!(
                "Revoked {name}: its access token no longer works and its Redis connections are closed."
            );
            if let AclReload::RedisNotReachable(reason) = reload {
                println!(
                    "Redis not reachable ({reason}); run ACL LOAD once it is up to drop the password."
                );
            }
        }
        ClusterCommand::ExportBootstrap { dir, to } => {
            let exported = export_bootstrap(&dir, &to)?;
            let bundles = exported.list_token_hashes()?.len();
            println!(
                "Bootstrap directory {} is up to date ({bundles} bundles, no CA key). Serve it: \
                 deadsfu cluster serve --dir {}",
                exported.root().display(),
                exported.root().display()
            );
        }
        ClusterCommand::Serve { dir, listen } => {
            let server = BootstrapServer::bind(&dir, listen.as_deref()).await?;
            eprintln!("Bootstrap server on https://{}", server.local_addr()?);
            server.run(shutdown_signal()).await;
        }
        ClusterCommand::Cert { action } => run_cert(action).await?,
        ClusterCommand::Status => {
            let conn = admin_connection().await?;
            print!("{}", render(&read_status(&conn).await?));
        }
        ClusterCommand::FtlKey { action } => {
            let conn = admin_connection().await?;
            let mut manager = conn.manager();
            match action {
                FtlKeyCommand::Set { channel, secret } => {
                    let secret = if secret == "-" {
                        let mut text = String::new();
                        std::io::stdin()
                            .take(4096)
                            .read_to_string(&mut text)
                            .context("reading the secret from standard input")?;
                        text.trim().to_string()
                    } else {
                        secret
                    };
                    if secret.is_empty() {
                        bail!("empty stream secret");
                    }
                    let () = redis::cmd("SET")
                        .arg(conn.keys().ftl_key(&channel))
                        .arg(&secret)
                        .query_async(&mut manager)
                        .await
                        .context("storing the stream key")?;
                    println!("Stream key for channel {channel} stored.");
                }
                FtlKeyCommand::Rm { channel } => {
                    let removed: i64 = redis::cmd("DEL")
                        .arg(conn.keys().ftl_key(&channel))
                        .query_async(&mut manager)
                        .await
                        .context("removing the stream key")?;
                    if removed == 0 {
                        bail!("no stream key stored for channel {channel}");
                    }
                    println!("Stream key for channel {channel} removed.");
                }
            }
        }
    }
    Ok(())
}

async fn run_cert(action: CertCommand) -> anyhow::Result<()> {
    match action {
        CertCommand::Ls => {
            let conn = admin_connection().await?;
            let rows = read_cert_listing(&conn).await?;
            if rows.is_empty() {
                println!("No certificates, locks or backoffs stored.");
            } else {
                print!("{}", render_cert_listing(&rows, unix_now()));
            }
        }
        CertCommand::Import { domain, cert, key } => {
            let chain_pem = read_pem_file(&cert, "certificate")?;
            let key_pem = Secret::new(read_pem_file(&key, "key")?);
            let bundle = admin_bundle().await?;
            let Some(cluster_key) = bundle.cluster_key() else {
                bail!("{NO_CLUSTER_KEY}");
            };
            let conn = RedisConn::connect(&bundle).await?;
            let stored =
                import_cert(conn, cluster_key, &domain, &chain_pem, key_pem.expose()).await?;
            println!(
                "Certificate for {} stored (issuer {}, valid until {}); every SFU serves it now.",
                normalise_domain(&domain),
                stored.issuer,
                rfc3339_utc(stored.not_after)
            );
        }
    }
    Ok(())
}

/// Reads a PEM file of bounded size. Errors name the file, never its contents.
fn read_pem_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the {what} file {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the {what} file {}", path.display()))?;
    if text.len() as u64 > MAX_PEM_FILE_BYTES {
        bail!(
            "the {what} file {} is larger than {MAX_PEM_FILE_BYTES} bytes",
            path.display()
        );
    }
    Ok(text)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn admin_connection() -> anyhow::Result<RedisConn> {
    Ok(RedisConn::connect(&admin_bundle().await?).await?)
}

/// The admin bundle named by the environment.
async fn admin_bundle() -> anyhow::Result<Bundle> {
    let Some(url) = JoinUrl::from_env()? else {
        bail!("set {URL_ENV} (or {URL_FILE_ENV}) to an admin bundle's URL");
    };
    let bundle = fetch_bundle(&url).await?;
    if bundle.settings.role != Role::Admin {
        bail!(
            "the bundle in {URL_ENV} has role {}; this command needs an admin bundle",
            bundle.settings.role
        );
    }
    Ok(bundle)
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
