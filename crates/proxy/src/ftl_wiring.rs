//! Starts the FTL proxy of `deadsfu proxy` when `--ftl-listen` is set.

use std::sync::Arc;

use crate::ftl_routes::FtlRoutes;
use crate::run::ProxyArgs;

/// Renders the FTL proxy's metrics into the admin page.
pub type FtlMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

pub async fn start(
    args: &ProxyArgs,
    routes: Arc<dyn FtlRoutes>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<FtlMetrics>> {
    let _ = (args, routes, stop);
    Ok(None)
}
