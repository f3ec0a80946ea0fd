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
    pub admission: AdmissionConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            udp_port: 8000,
            workers: 1,
            ice_hosts: vec![IpAddr::from([127, 0, 0, 1])],
            // Long enough for a peer behind a slow TURN allocation; short enough that a session
            // that will never connect gives its place back soon.
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            keyframe_request_interval: Duration::from_millis(500),
            gop_cache: true,
            idle_clip: Some(Arc::new(deadsfu_media::IdleClip::builtin())),
            admission: AdmissionConfig::default(),
        }
    }
}

/// Limits on new sessions (see `admission.rs`).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Sessions in all (connected or not); beyond, 503.
    pub max_sessions: usize,
    /// Sessions not yet connected, in all (beyond, 503) and per client (beyond, 429).
    pub max_pending: usize,
    pub max_pending_per_ip: usize,
    /// New sessions per second per client, with a burst (beyond, 429).
    pub new_sessions_per_ip_per_second: f64,
    pub new_sessions_per_ip_burst: f64,
}

impl AdmissionConfig {
    /// Defaults sized for a machine with `memory_bytes` available: a connected viewer costs
    /// about 100 KiB and one still connecting about as much again (its DTLS state), so half of
    /// the memory is allowed to sessions at 256 KiB each.
    pub fn for_memory(memory_bytes: u64) -> Self {
        let max_sessions = ((memory_bytes / 2) / (256 << 10)).clamp(100, 200_000) as usize;
        AdmissionConfig {
            max_sessions,
            max_pending: (max_sessions / 4).clamp(50, 2_000),
            max_pending_per_ip: 20,
            new_sessions_per_ip_per_second: 20.0,
            new_sessions_per_ip_burst: 50.0,
        }
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig::for_memory(4 << 30)
    }
}
