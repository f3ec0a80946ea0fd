//! What the engine reports: counters for `/metrics`, session counts, rooms for `/api`.

use std::sync::atomic::Ordering;

use crate::engine::MediaEngine;
use crate::metrics::MetricsSnapshot;
use crate::session::SessionKind;

/// A room as `/api` shows it.
#[derive(Debug, Clone)]
pub struct RoomSummary {
    pub name: String,
    pub live: bool,
    pub viewers: usize,
    /// The last video codec published to the room.
    pub codec: Option<&'static str>,
    /// Payload bytes received from publishers so far (the API derives a bitrate).
    pub bytes_in: u64,
}

impl MediaEngine {
    /// Counters summed over all workers.
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut snap = MetricsSnapshot::default();
        for c in &self.inner.counters {
            snap.add(c);
        }
        let shared = &self.inner.shared;
        snap.fanout_drops += shared.ingest_drops.load(Ordering::Relaxed);
        let a = &shared.admission;
        snap.sessions_refused_total = a.refused_total.load(Ordering::Relaxed);
        snap.sessions_refused_pending = a.refused_pending.load(Ordering::Relaxed);
        snap.sessions_refused_rate = a.refused_rate.load(Ordering::Relaxed);
        (snap.offers_cut, snap.answers_from_template) = shared.offer_shapes.counts();

        snap
    }

    /// Sessions not yet connected.
    pub fn pending_sessions(&self) -> usize {
        self.inner.shared.admission.pending()
    }

    /// Live sessions by kind: (publishers, viewers).
    pub fn session_counts(&self) -> (usize, usize) {
        let sessions = self.inner.shared.lock_sessions();
        let publishers = sessions
            .values()
            .filter(|e| e.kind == SessionKind::Publisher)
            .count();
        let ingests = self.inner.shared.ingests.load(Ordering::Relaxed);
        (publishers + ingests, sessions.len() - publishers)
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        self.inner
            .shared
            .rooms
            .list()
            .iter()
            .map(|r| RoomSummary {
                name: r.name.clone(),
                live: r.has_publisher(),
                viewers: r.viewer_count(),
                codec: r.video_codec(),
                bytes_in: r.bytes_in(),
            })
            .collect()
    }
}
