//! A room's recent video packets on one worker, for its viewers' retransmissions. Each packet is
//! held here once per worker, and a viewer's NACK history keeps only the packet's place in this
//! ring: forwarding a packet to a viewer then costs no reference count (it cost two per viewer,
//! on a count that workers on several cores share).

use std::sync::Arc;

use deadsfu_media::{MediaKind, MediaPacket, RoomId};

/// Video packets kept per room and worker: twice a viewer's history
/// ([`super::track_out::HISTORY`]), so that a viewer whose last packets skip some of the
/// room's (it waited for a keyframe after a change of publisher) still finds all of its own.
pub(crate) const RECENT_VIDEO: usize = 512;

/// The ring; places count every video packet pushed, from 0.
#[derive(Default)]
pub(crate) struct RecentVideo {
    /// Empty until the first push (rooms with no viewers on this worker hold nothing).
    ring: Vec<Option<Arc<MediaPacket>>>,
    next: u64,
}

impl RecentVideo {
    /// Keeps the video packets of a fan-out batch, in order; returns the place of the first
    /// (the others follow it one by one, as [`super::ViewerEgress::write`] counts them).
    pub fn push_videos(&mut self, packets: &[(RoomId, Arc<MediaPacket>)]) -> u64 {
        let first = self.next;
        for (_, pkt) in packets {
            if pkt.kind() != MediaKind::Video {
                continue;
            }
            if self.ring.is_empty() {
                self.ring = vec![None; RECENT_VIDEO];
            }
            self.ring[(self.next % RECENT_VIDEO as u64) as usize] = Some(pkt.clone());
            self.next += 1;
        }
        first
    }

    /// The packet at `place`, unless it has been overwritten (or was never pushed).
    pub fn get(&self, place: u64) -> Option<&Arc<MediaPacket>> {
        if place >= self.next || self.next - place > RECENT_VIDEO as u64 {
            return None;
        }
        self.ring[(place % RECENT_VIDEO as u64) as usize].as_ref()
    }
}
