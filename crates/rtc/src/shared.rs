//! State shared by the engine handle and the workers, touched off the media path only: the
//! configuration, the DTLS certificate, the rooms and the control side's session table.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use deadsfu_media::Rooms;

use crate::admission::SessionAdmission;
use crate::answered_formats::OfferShapes;
use crate::config::EngineConfig;
use crate::session::SessionKind;

/// A session as the control side knows it.
#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    pub worker: usize,
    pub serial: u64,
    pub kind: SessionKind,
    pub room: String,
    pub etag: String,
    pub remote_ufrag: Option<String>,
    /// Video codecs a viewer can receive (to refuse switching into a room it cannot play).
    pub receivable: Option<Vec<String>>,
}

/// State shared by the engine handle and the workers (touched off the media path only).
pub(crate) struct Shared {
    pub config: EngineConfig,
    /// One DTLS certificate for every session (generating a key per session costs time at
    /// each join for nothing: peers check the fingerprint in the SDP, not an identity).
    pub dtls_cert: Option<str0m::config::DtlsCert>,
    pub rooms: Rooms,
    pub admission: SessionAdmission,
    /// Live non-WebRTC publishers, and packets of theirs dropped at a full worker inbox.
    pub ingests: AtomicUsize,
    pub ingest_drops: AtomicU64,
    pub(crate) sessions: Mutex<HashMap<Arc<str>, SessionEntry>>,
    /// What recent offers' answers kept, per offer shape (cuts the next offers' parse).
    pub offer_shapes: OfferShapes,
}

impl Shared {
    pub fn new(config: EngineConfig) -> Shared {
        let dtls_cert = crate::dtls_tap::crypto_provider()
            .dtls_provider
            .generate_certificate();
        let admission = SessionAdmission::new(config.admission.clone());
        Shared {
            config,
            dtls_cert,
            admission,
            rooms: Rooms::new(),
            ingests: AtomicUsize::new(0),
            ingest_drops: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            offer_shapes: OfferShapes::default(),
        }
    }

    pub fn forget_session(&self, id: &str) {
        self.lock_sessions().remove(id);
    }

    pub(crate) fn lock_sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The advertised address a datagram from `from` was (most likely) sent to.
    pub fn local_ip_for(&self, from: SocketAddr) -> IpAddr {
        let hosts = &self.config.ice_hosts;
        hosts
            .iter()
            .find(|ip| {
                ip.is_loopback() == from.ip().is_loopback() && ip.is_ipv4() == from.is_ipv4()
            })
            .or_else(|| hosts.iter().find(|ip| ip.is_ipv4() == from.is_ipv4()))
            .or(hosts.first())
            .copied()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
}

/// A fresh entity tag for a session resource.
pub(crate) fn new_etag() -> String {
    format!("\"{}\"", hex::encode(rand::random::<[u8; 8]>()))
}
