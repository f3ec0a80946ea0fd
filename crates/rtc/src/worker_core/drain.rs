//! Draining a session after each input: its datagrams out, its events acted on, its next
//! timeout scheduled; and the timers that run sessions whose time has come.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use str0m::rtp::RawPacket;
use str0m::{Event, Input, Output};

use deadsfu_media::RoomId;

use super::rooms::LocalRoom;
use super::{MAX_TIMER_GAP, Slot, WorkerCore};
use crate::metrics::Counters;
use crate::send_batch::SendBatch;
use crate::session::{Outbox, Role, Session};
use crate::stun;

impl WorkerCore {
    /// Drains a session's outputs: sends its datagrams, collects its events, schedules its
    /// next timeout, then acts on what it reported (packets to fan out, keyframe requests, end).
    pub(super) fn drain(&mut self, slot: Slot, now: Instant) {
        let Some(session) = self.sessions.try_get_mut(slot) else {
            return;
        };
        let answered = drain_session(
            session,
            &self.rooms,
            &mut self.outbox,
            &mut self.timers,
            &mut self.sends,
            &self.counters,
            now,
        );
        if let Some(from) = answered {
            // str0m answered a check from this source: its integrity held, so bind it.
            let session = self.sessions.get_mut(slot);
            self.demux.bind(from, slot, &mut session.addrs);
        }
        let session = self.sessions.get_mut(slot);
        let serial = session.serial;
        let room = session.room.clone();
        if !self.outbox.packets.is_empty() {
            let mut packets = std::mem::take(&mut self.outbox.packets);
            for pkt in packets.drain(..) {
                self.route(&room, pkt);
            }
            // Hand the (empty) vector back so its capacity is reused.
            self.outbox.packets = packets;
        }
        if std::mem::take(&mut self.outbox.viewer_connected) {
            self.replay_gop(slot, room.id, now);
            if let Some(local) = self.rooms.get_mut(&room.id)
                && !local.live_recently(now)
            {
                // The idle clip starts again at its keyframe, so the newcomer has a picture at
                // the next frame rather than at the clip's next loop.
                local.idle_playing = false;
            }
        }
        if std::mem::take(&mut self.outbox.keyframe_request) {
            self.request_keyframe(&room, now);
        }
        if let Some(reason) = self.outbox.ended.take() {
            self.end_session(serial, reason);
        }
    }

    pub(super) fn handle_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, serial))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.sessions.slot_of(serial) else {
                continue;
            };
            let session = self.sessions.get_mut(slot);
            if session.scheduled != Some(at) {
                continue; // superseded by an earlier entry that already ran
            }
            session.scheduled = None;
            let config = &self.shared.config;
            if !session.connected && now.duration_since(session.created) > config.connect_timeout {
                self.end_session(serial, "did not connect in time");
                continue;
            }
            if session.connected && now.duration_since(session.last_input) > config.idle_timeout {
                self.end_session(serial, "nothing received (consent timeout)");
                continue;
            }
            if let (Role::Publisher(p), Some(rtc)) = (&mut session.role, session.peer.live())
                && p.keyframe_gate.poll(now)
                && p.send_keyframe_request(rtc)
            {
                Counters::add(&self.counters.keyframe_requests_sent, 1);
            }
            let replay = session.replay_at.is_some_and(|t| t <= now);
            if replay {
                session.replay_at = None;
            }
            let room = session.room.clone();
            if session.timeout <= now
                && let Some(rtc) = session.peer.live()
                && let Err(e) = rtc.handle_input(Input::Timeout(now))
            {
                tracing::debug!(session = %session.id, error = %e, "timeout input rejected");
            }
            self.drain(slot, now);
            if replay && self.sessions.try_get_mut(slot).is_some() {
                self.replay_gop(slot, room.id, now);
                self.request_keyframe(&room, now);
            }
        }
    }
}

/// Drains one session's `poll_output` until it asks for a timeout. Returns the source of the
/// datagram being handled when str0m answered its STUN check (a Binding success response).
pub(super) fn drain_session(
    session: &mut Session,
    rooms: &HashMap<RoomId, LocalRoom>,
    outbox: &mut Outbox,
    timers: &mut BinaryHeap<Reverse<(Instant, u64)>>,
    sends: &mut SendBatch,
    counters: &Counters,
    now: Instant,
) -> Option<SocketAddr> {
    let mut answered = None;
    loop {
        let Some(rtc) = session.peer.live() else {
            // No peer yet: only the connect deadline to watch.
            schedule(session, timers, now + MAX_TIMER_GAP);
            return None;
        };
        let output = rtc.poll_output();
        if let Some(keys) = crate::dtls_tap::take_keys()
            && let Role::Viewer(viewer) = &mut session.role
            && !viewer.set_srtp_keys(&keys)
        {
            // str0m finished this session's DTLS handshake in the call just made.
            tracing::warn!(session = session.serial, ?keys, "unusable SRTP keys");
        }
        match output {
            Ok(Output::Timeout(at)) => {
                schedule(session, timers, at.min(now + MAX_TIMER_GAP));
                return answered;
            }
            Ok(Output::Transmit(t)) => {
                if session.last_source == Some(t.destination)
                    && stun::is_binding_success(&t.contents)
                {
                    answered = Some(t.destination);
                }
                if session.check_transmit(t.destination, &t.contents) {
                    sends.push(t.destination, &t.contents, counters);
                }
            }
            Ok(Output::Event(Event::RawPacket(raw))) => {
                if let RawPacket::RtcpRx(rtcp) = *raw {
                    let recent = rooms.get(&session.room.id).map(|r| &r.recent_video);
                    session.handle_viewer_rtcp(&rtcp, recent, sends, counters, now);
                }
            }
            Ok(Output::Event(event)) => session.handle_event(event, outbox, counters),
            Err(e) => {
                tracing::debug!(session = %session.id, error = %e, "session failed");
                outbox.ended = Some("WebRTC error");
                return answered;
            }
        }
    }
}

/// Sets the session's next timeout to `at` and puts it on the timer heap (with a coalesced
/// switch's replay, due on the same timer, when that is sooner).
fn schedule(session: &mut Session, timers: &mut BinaryHeap<Reverse<(Instant, u64)>>, at: Instant) {
    session.timeout = at;
    let wake = session.replay_at.map_or(at, |r| r.min(at));
    if session.scheduled.is_none_or(|s| wake < s) {
        session.scheduled = Some(wake);
        timers.push(Reverse((wake, session.serial)));
    }
}
