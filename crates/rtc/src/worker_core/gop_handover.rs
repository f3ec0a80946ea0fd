//! Which workers a room's packets go to, and the GOP a worker needs when it starts receiving
//! them. A room's packets go only to the workers with viewers of it (the bits of
//! `Room::viewing_workers`) and to its GOP keeper (the publisher's worker, or one chosen by the
//! room's id for a publisher outside the workers). A worker whose first viewer of a room joins
//! sets its bit and asks the keeper for the room's GOP; until it comes (or a short wait is up)
//! its viewers of the room get nothing, and the packets that arrive meanwhile are held and
//! merged after the GOP, so a newcomer still starts at once from a keyframe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::{MediaPacket, Room, RoomId};

use super::{PeerMessage, Slot, WorkerCore};

/// Longest a worker waits for a room's GOP from its keeper before starting its viewers without
/// it (they then start at the next keyframe, which they ask for).
pub(crate) const GOP_WAIT: Duration = Duration::from_secs(1);

impl WorkerCore {
    /// `slot` views `room` here; the first viewer makes this worker one the room's packets go
    /// to, and asks the keeper for the room's GOP.
    pub(super) fn viewer_added(&mut self, room: &Arc<Room>, slot: Slot, now: Instant) {
        let local = self.rooms.entry(room.id).or_default();
        local.viewers.push(slot);
        room.viewer_joined();
        if local.viewers.len() > 1 {
            return;
        }
        room.set_viewing(self.index, true);
        let keeper = room.gop_keeper(self.workers);
        if keeper == self.index || local.awaiting_gop.is_some() {
            return;
        }
        // What this worker kept of the room's GOP stopped with its last viewer: stale.
        local.gop.clear();
        local.awaiting_gop = Some(now + GOP_WAIT);
        self.gop_waits.push((room.id, now + GOP_WAIT));
        self.to_peers.push((
            keeper,
            PeerMessage::GopRequest {
                room: room.id,
                from: self.index,
            },
        ));
    }

    /// `slot` no longer views `room` here; after the last viewer, the room's packets stop
    /// coming here.
    pub(super) fn viewer_removed(&mut self, room: &Arc<Room>, slot: Slot) {
        let Some(local) = self.rooms.get_mut(&room.id) else {
            return;
        };
        if !local.remove_viewer(slot) {
            return;
        }
        room.viewer_left();
        if local.viewers.is_empty() {
            room.set_viewing(self.index, false);
        }
    }

    /// The workers a packet of `room` published here goes to (besides this one).
    pub(super) fn route_targets(&self, room: &Room) -> u64 {
        room.viewing_workers() & !(1u64 << self.index)
    }

    /// Another worker asks for the GOP of a room kept here.
    pub(super) fn send_gop(&mut self, room: RoomId, to: usize) {
        let packets = self
            .rooms
            .get(&room)
            .map(|local| local.gop.packets().to_vec())
            .unwrap_or_default();
        self.to_peers.push((to, PeerMessage::Gop { room, packets }));
    }

    /// The GOP asked for has come (`Some`) or the wait is up (`None`): it and the packets
    /// held meanwhile become the room's GOP here, replayed to its connected viewers.
    pub(super) fn gop_arrived(
        &mut self,
        room: RoomId,
        packets: Option<Vec<Arc<MediaPacket>>>,
        now: Instant,
    ) {
        let Some(local) = self.rooms.get_mut(&room) else {
            return;
        };
        if local.awaiting_gop.take().is_none() {
            // An answer later than the wait (a busy keeper): still of use while no keyframe
            // has come here since, else the viewers would wait for the publisher's next one.
            let Some(packets) = packets else {
                return;
            };
            if !local.gop.packets().is_empty() {
                return;
            }
            for p in &packets {
                local.gop.push(p);
            }
        } else {
            self.gop_waits.retain(|(r, _)| *r != room);
            local.gop.clear();
            // Oldest first; the cache drops what it has already (by sequence number) and what
            // comes before its keyframe.
            for p in packets.iter().flatten().chain(local.held.iter()) {
                local.gop.push(p);
            }
            local.held.clear();
        }
        let viewers = local.viewers.clone();
        for slot in viewers {
            self.replay_gop(slot, room, now);
        }
    }

    /// Ends the waits for GOPs that did not come in time.
    pub(super) fn expire_gop_waits(&mut self, now: Instant) {
        if self.gop_waits.iter().all(|(_, at)| *at > now) {
            return;
        }
        let expired: Vec<RoomId> = self
            .gop_waits
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(room, _)| *room)
            .collect();
        for room in expired {
            self.gop_arrived(room, None, now);
            self.gop_waits.retain(|(r, _)| *r != room);
        }
    }

    /// The earliest GOP wait to end, if any.
    pub(super) fn next_gop_wait(&self) -> Option<Instant> {
        self.gop_waits.iter().map(|(_, at)| *at).min()
    }
}
