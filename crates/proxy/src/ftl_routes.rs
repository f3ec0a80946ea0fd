//! What the FTL proxy needs from routing: a channel's stream secret and the SFU to send it to.

use std::net::SocketAddr;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum FtlRouteError {
    /// Redis unreachable and nothing cached: the client should retry.
    #[error("routing state unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait FtlRoutes: Send + Sync + 'static {
    /// The stream secret of `channel` (`ftlkey:{channel}`), `None` if the channel is unknown.
    async fn channel_secret(&self, channel: u32) -> Result<Option<String>, FtlRouteError>;
    /// The FTL control address of the SFU for `channel`: the owner of `ftl:{channel}` if the
    /// channel is live somewhere, else a node chosen like the SFUs choose. `None`: no usable
    /// node.
    fn sfu_for_channel(&self, channel: u32) -> Option<SocketAddr>;
}
