//! A worker's view of the rooms its sessions are in: who publishes and who views here, the
//! room's recent video (GOP) to start viewers from, and the idle clip played while no live
//! video comes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::rewrite::IDLE_AFTER;
use deadsfu_media::{GopCache, IdlePlayer, MediaPacket};

use super::demux::Slot;
use crate::egress::RecentVideo;

/// GOP cache bounds per room: a 4 s GOP at 8 Mbit/s fits.
const GOP_MAX_BYTES: usize = 4 << 20;
const GOP_MAX_PACKETS: usize = 4096;
/// Packets held per room while waiting for its GOP; beyond, the oldest are dropped.
const MAX_HELD: usize = 4096;
/// Least time between two keyframe requests this worker forwards for one room: requests from
/// many viewers (a join storm, a PLI flood) merge into one.
pub(crate) const KEYFRAME_REQUEST_MERGE: Duration = Duration::from_millis(100);

pub(crate) struct LocalRoom {
    pub publisher: Option<Slot>,
    pub viewers: Vec<Slot>,
    pub gop: GopCache,
    /// When live video last passed through; the idle clip plays after [`IDLE_AFTER`] without.
    pub last_live_video: Option<Instant>,
    pub idle: IdlePlayer,
    pub idle_playing: bool,
    /// When this worker last asked the room's publisher for a keyframe.
    pub last_keyframe_request: Option<Instant>,
    /// Waiting (until then at the latest) for the room's GOP from its keeper: the viewers here
    /// get nothing until it comes, and the room's packets meanwhile are `held`.
    pub awaiting_gop: Option<Instant>,
    pub held: Vec<Arc<MediaPacket>>,
    /// The video packets last forwarded to the viewers here, for their NACKs.
    pub recent_video: RecentVideo,
}

impl Default for LocalRoom {
    fn default() -> Self {
        LocalRoom {
            publisher: None,
            viewers: Vec::new(),
            gop: GopCache::new(GOP_MAX_BYTES, GOP_MAX_PACKETS),
            last_live_video: None,
            idle: IdlePlayer::default(),
            idle_playing: false,
            last_keyframe_request: None,
            awaiting_gop: None,
            held: Vec::new(),
            recent_video: RecentVideo::default(),
        }
    }
}

impl LocalRoom {
    pub fn live_recently(&self, now: Instant) -> bool {
        self.last_live_video
            .is_some_and(|t| now.saturating_duration_since(t) < IDLE_AFTER)
    }

    /// Whether a keyframe request for this room should go out now (merging those within
    /// [`KEYFRAME_REQUEST_MERGE`]).
    pub fn take_keyframe_request(&mut self, now: Instant) -> bool {
        if self
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REQUEST_MERGE)
        {
            return false;
        }
        self.last_keyframe_request = Some(now);
        true
    }

    /// Forgets the GOP when live video stopped (a viewer joining later must not be replayed a
    /// departed publisher's last pictures); false when nothing here uses the room any more.
    pub fn tidy(&mut self, now: Instant) -> bool {
        let live = self.live_recently(now);
        if !live {
            self.gop.clear();
        }
        live || self.publisher.is_some() || !self.viewers.is_empty()
    }

    /// Keeps a packet that came while waiting for the room's GOP.
    pub fn hold(&mut self, packet: &Arc<MediaPacket>) {
        if self.held.len() >= MAX_HELD {
            self.held.remove(0);
        }
        self.held.push(packet.clone());
    }

    pub fn remove_viewer(&mut self, slot: Slot) -> bool {
        match self.viewers.iter().position(|s| *s == slot) {
            Some(i) => {
                self.viewers.swap_remove(i);
                true
            }
            None => false,
        }
    }
}
