//! A minimal cluster member without media, for trying a cluster out and for the process-level
//! tests: `node` joins like `deadsfu serve` does in cluster mode and holds the given rooms;
//! `cluster ...` runs the operator commands exactly as `deadsfu cluster ...` does.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use deadsfu_cluster::bundle_fetch::fetch_bundle;
use deadsfu_cluster::{Claim, ClusterCommand, ClusterNode, JoinUrl, NodeConfig, NodeLoad};

#[derive(Parser)]
#[command(name = "deadsfu-cluster-node")]
enum Cli {
    /// Operator commands (`deadsfu cluster ...`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Join the cluster named by DEADSFU_CLUSTER_URL and hold rooms until SIGTERM.
    Node {
        /// Default: the bundle's name (sfu bundles issued with a hostname), else the hostname.
        #[arg(long)]
        node_id: Option<String>,
        /// Default: the bundle's hostname, else the node id.
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long, default_value = "default")]
        region: String,
        /// Rooms to claim after joining.
        #[arg(long = "room")]
        rooms: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse() {
        Cli::Cluster(cmd) => deadsfu_cluster::run(cmd).await,
        Cli::Node {
            node_id,
            hostname,
            region,
            rooms,
        } => {
            let url = JoinUrl::from_env()?.context("DEADSFU_CLUSTER_URL is not set")?;
            let bundle = fetch_bundle(&url).await?;
            // Flags first, then what the bundle is bound to; a flag contradicting the bundle
            // is refused by `join_bundle`.
            let hostname = hostname
                .or_else(|| bundle.hostname().map(str::to_owned))
                .or_else(|| node_id.clone())
                .context("--hostname or --node-id is needed with this bundle")?;
            let node_id = node_id
                .or_else(|| bundle.node_id().map(str::to_owned))
                .unwrap_or_else(|| hostname.clone());
            let config = NodeConfig {
                hostname,
                node_id,
                https_port: 443,
                public_addrs: vec!["127.0.0.1".into()],
                ftl_addr: None,
                region,
                version: env!("CARGO_PKG_VERSION").into(),
                public_url: None,
                proxy_protocol: false,
                https_addr: None,
            };
            let node = ClusterNode::join_bundle(&bundle, config).await?;
            // Lines on stdout are the test-visible protocol: one per claim.
            let mut stdout = std::io::stdout();
            for room in &rooms {
                match node.claim_room(room).await? {
                    Claim::Won => writeln!(stdout, "room {room} won")?,
                    Claim::HeldBy(owner) => writeln!(stdout, "room {room} held-by {owner}")?,
                }
            }
            node.report_load(NodeLoad {
                rooms: rooms.len() as u32,
                ..NodeLoad::default()
            });
            writeln!(stdout, "ready")?;
            stdout.flush()?;
            deadsfu_cluster::cli::shutdown_signal().await;
            node.set_draining().await.ok();
            node.leave().await;
            Ok(())
        }
    }
}
