//! Fan-out: a publisher's packets to other workers and, at the end of each turn, to this
//! worker's viewers room by room; GOP replay on join and switch; keyframe requests to
//! publishers wherever they are; the idle clip for rooms without live video.

use std::sync::Arc;
use std::time::Instant;

use deadsfu_media::{IdleClip, MediaKind, MediaPacket, Room, RoomId};

use super::{PeerMessage, SWITCH_COALESCE, Slot, TIDY_EVERY, WorkerCore};
use crate::error::SessionError;
use crate::metrics::Counters;
use crate::session::Role;

impl WorkerCore {
    /// Gives a viewer the room's current GOP at once, so its first picture needs no keyframe
    /// from the publisher; within its replay budget.
    pub(super) fn replay_gop(&mut self, slot: Slot, room: RoomId, now: Instant) {
        let Some(local) = self.rooms.get(&room) else {
            return;
        };
        if local.awaiting_gop.is_some() {
            return; // replayed when the GOP comes (`gop_arrived`)
        }
        let gop = local.gop.packets();
        if gop.is_empty() {
            return;
        }
        let session = self.sessions.get_mut(slot);
        if !session.take_replay_budget(local.gop.bytes(), now) {
            Counters::add(&self.counters.replays_refused, 1);
            return;
        }
        if let Some(viewer) = session.connected_viewer() {
            viewer.replay(gop, &mut self.sends, &self.counters, now);
            Counters::add(&self.counters.gop_replays, 1);
        }
    }

    /// Moves a viewer to another room without renegotiation: its tracks restart at the new
    /// room's GOP (or next keyframe), with SSRC, sequence numbers and timestamps continuing.
    pub(super) fn switch_room(
        &mut self,
        serial: u64,
        room: Arc<Room>,
        now: Instant,
    ) -> Result<(), SessionError> {
        let Some(slot) = self.sessions.slot_of(serial) else {
            self.shared.rooms.release(room);
            return Err(SessionError::NotFound);
        };
        let session = self.sessions.get_mut(slot);
        let Role::Viewer(viewer) = &mut session.role else {
            self.shared.rooms.release(room);
            return Err(SessionError::Unsupported(
                "only viewers can switch rooms".into(),
            ));
        };
        if !session.switches.take(now) {
            self.shared.rooms.release(room);
            return Err(SessionError::TooManyRequests);
        }
        viewer.resync();
        // A switch overtaking another within the coalescing time replays nothing now: the
        // room the viewer settles on is replayed once, when switching has stopped.
        let overtaking = session
            .last_switch
            .is_some_and(|t| now.saturating_duration_since(t) < SWITCH_COALESCE);
        session.last_switch = Some(now);
        if overtaking {
            let at = now + SWITCH_COALESCE;
            session.replay_at = Some(at);
            if session.scheduled.is_none_or(|s| at < s) {
                session.scheduled = Some(at);
                self.timers.push(std::cmp::Reverse((at, serial)));
            }
        }
        let old = std::mem::replace(&mut session.room, room.clone());
        self.viewer_removed(&old, slot);
        self.viewer_added(&room, slot, now);
        tracing::info!(session = serial, from = %old.name, to = %room.name, "viewer switched rooms");
        self.shared.rooms.release(old);
        if !overtaking {
            self.replay_gop(slot, room.id, now);
            self.request_keyframe(&room, now);
        }
        Ok(())
    }

    /// Sends a publisher's packet to the other workers with viewers of its room (one reference
    /// each) and queues it for this worker's viewers and GOP.
    pub(super) fn route(&mut self, room: &Arc<Room>, pkt: Arc<MediaPacket>) {
        room.record_ingress(pkt.codec, pkt.payload.len());
        let mut targets = self.route_targets(room);
        while targets != 0 {
            let w = targets.trailing_zeros() as usize;
            targets &= targets - 1;
            let packet = pkt.clone();
            self.to_peers.push((
                w,
                PeerMessage::Packet {
                    room: room.id,
                    packet,
                },
            ));
        }
        self.pending.push((room.id, pkt));
    }

    /// Forwards this turn's room packets to this worker's viewers, room by room in order.
    pub(super) fn flush_fanout(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        if pending.windows(2).any(|w| w[0].0 != w[1].0) {
            // Several rooms this turn: group them (a stable sort keeps each room's order).
            pending.sort_by_key(|(room, _)| *room);
        }
        let mut start = 0;
        while start < pending.len() {
            let room = pending[start].0;
            let len = pending[start..]
                .iter()
                .take_while(|(r, _)| *r == room)
                .count();
            self.fanout_batch(room, &pending[start..start + len], now);
            start += len;
        }
        pending.clear();
        // Hand the (empty) vector back so its capacity is reused.
        self.pending = pending;
    }

    /// Forwards packets of one room to this worker's viewers of it, viewer by viewer, so each
    /// viewer's packets of the turn leave together.
    pub(super) fn fanout_batch(
        &mut self,
        room: RoomId,
        packets: &[(RoomId, Arc<MediaPacket>)],
        now: Instant,
    ) {
        let local = self.rooms.entry(room).or_default();
        let awaiting = local.awaiting_gop.is_some();
        for (_, pkt) in packets {
            if awaiting {
                local.hold(pkt);
            }
            if pkt.kind() == MediaKind::Video && !pkt.source.is_idle() {
                if self.shared.config.gop_cache && !awaiting {
                    local.gop.push(pkt);
                }
                local.last_live_video = Some(pkt.arrival);
            }
        }
        if awaiting || local.viewers.is_empty() {
            // The viewers here start when the room's GOP comes; with none, nothing is kept.
            return;
        }
        // Held once here for every viewer's NACKs (the viewers keep places, not references).
        let first_video_place = local.recent_video.push_videos(packets);
        for slot in &local.viewers {
            if let Some(viewer) = self.sessions.get_mut(*slot).connected_viewer() {
                viewer.write(
                    packets,
                    first_video_place,
                    &mut self.sends,
                    &self.counters,
                    now,
                    &self.clock,
                );
            }
        }
    }

    /// Asks the room's publisher for a keyframe, wherever it is; requests within a short
    /// interval merge into one.
    pub(super) fn request_keyframe(&mut self, room: &Arc<Room>, now: Instant) {
        let Some(worker) = room.publisher_worker() else {
            return;
        };
        if worker == self.index {
            self.keyframe_request_local(room.id, now);
            return;
        }
        let local = self.rooms.entry(room.id).or_default();
        if local.take_keyframe_request(now) {
            self.to_peers
                .push((worker, PeerMessage::KeyframeRequest { room: room.id }));
        }
    }

    pub(super) fn keyframe_request_local(&mut self, room: RoomId, now: Instant) {
        let Some(slot) = self.rooms.get(&room).and_then(|r| r.publisher) else {
            return;
        };
        let session = self.sessions.get_mut(slot);
        let (Role::Publisher(p), Some(rtc)) = (&mut session.role, session.peer.live()) else {
            return;
        };
        if p.keyframe_gate.request(now) && p.send_keyframe_request(rtc) {
            Counters::add(&self.counters.keyframe_requests_sent, 1);
            self.drain(slot, now);
        }
    }

    /// Tidies the rooms at most once a second (see [`LocalRoom::tidy`]).
    pub(super) fn tidy_rooms(&mut self, now: Instant) {
        if now < self.next_tidy {
            return;
        }
        self.next_tidy = now + TIDY_EVERY;
        self.rooms.retain(|_, local| local.tidy(now));
    }

    /// Sends the next idle-clip frame to viewers of rooms without live video.
    pub(super) fn play_idle(&mut self, now: Instant) {
        let Some(next) = self.next_idle_frame else {
            return;
        };
        if now < next {
            return;
        }
        let Some(clip) = self.shared.config.idle_clip.clone() else {
            self.next_idle_frame = None;
            return;
        };
        let clip: &IdleClip = &clip;
        self.next_idle_frame = Some(next.max(now - clip.frame_interval()) + clip.frame_interval());
        let mut packets = std::mem::take(&mut self.idle_packets);
        for (id, local) in self.rooms.iter_mut() {
            if local.viewers.is_empty() || local.live_recently(now) {
                local.idle_playing = false;
                continue;
            }
            if !local.idle_playing {
                // Start at the clip's keyframe so viewers get a picture at once.
                local.idle.restart();
                local.idle_playing = true;
            }
            local.idle.next_frame(clip, now, &mut packets);
            self.pending.extend(packets.drain(..).map(|p| (*id, p)));
        }
        self.idle_packets = packets;
        if self.sessions.len() == 0 {
            // Nothing to show the clip to: sleep until a session arrives.
            self.next_idle_frame = None;
        }
    }
}
