//! Starts the FTL proxy of `deadsfu proxy` when `--ftl-listen` is set.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::ftl::{FtlProxy, FtlProxyConfig};
use crate::ftl_routes::FtlRoutes;
use crate::run::ProxyArgs;

/// Renders the FTL proxy's metrics into the admin page.
pub type FtlMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

pub async fn start(
    args: &ProxyArgs,
    routes: Arc<dyn FtlRoutes>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<FtlMetrics>> {
    let listen = args.ftl_listen.trim();
    if listen.is_empty() {
        return Ok(None);
    }
    let control: SocketAddr = listen
        .parse()
        .with_context(|| format!("--ftl-listen {listen:?}"))?;
    let mut config = FtlProxyConfig::new(control, args.ftl_udp_port);
    config.backend_source = args.backend_source;
    let proxy = FtlProxy::bind(config, routes)
        .await
        .with_context(|| format!("binding the FTL proxy on {control}"))?;
    println!(
        "  ftl: control {}, media UDP {}",
        proxy.control_addr(),
        proxy.udp_addr()
    );
    let stats = proxy.stats();
    tokio::spawn(proxy.run(stop));
    Ok(Some(Arc::new(move |out: &mut String| {
        stats.snapshot().write_prometheus(out)
    })))
}
