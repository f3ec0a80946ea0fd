//! Configuration of the media engine.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Address the UDP sockets bind to (port comes from `udp_port`).
    pub bind_ip: IpAddr,
    /// Worker N binds `udp_port + N`; 0 gives each worker an ephemeral port.
    pub udp_port: u16,
    pub workers: usize,
    /// Addresses advertised as ICE host candidates.
    pub ice_hosts: Vec<IpAddr>,
    /// A session that has not connected within this time is dropped.
    pub connect_timeout: Duration,
    /// A connected session from which nothing arrives for this long is dropped.
    pub idle_timeout: Duration,
    /// Least time between two keyframe requests sent to one publisher.
    pub keyframe_request_interval: Duration,
    /// Keep each room's current GOP and start new viewers from it (instant start).
    pub gop_cache: bool,
    /// Looped to viewers of rooms without live video; `None` leaves them on the last picture.
    pub idle_clip: Option<Arc<deadsfu_media::IdleClip>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            udp_port: 8000,
            workers: 1,
            ice_hosts: vec![IpAddr::from([127, 0, 0, 1])],
            connect_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(15),
            keyframe_request_interval: Duration::from_millis(500),
            gop_cache: true,
            idle_clip: Some(Arc::new(deadsfu_media::IdleClip::builtin())),
        }
    }
}
