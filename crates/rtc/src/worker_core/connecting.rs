//! Sessions without a live peer on this worker: parked ones, woken by their first check signed
//! with their password, and those connecting on a handshake thread, whose datagrams the worker
//! passes on until the connected peer comes back (`handshakes.rs`).

use std::net::SocketAddr;
use std::time::Instant;

use super::{HeldCheck, PeerBuild, Slot, WorkerCore};
use crate::budget::PerSecond;
use crate::messages::{Handover, HandshakeJob};
use crate::metrics::Counters;
use crate::session::{HANDSHAKE_DATAGRAMS_PER_SECOND, Peer, Role};
use crate::stun;

impl WorkerCore {
    /// A datagram for a session whose peer is not here; `known`: from an address bound to it.
    pub(super) fn receive_connecting(
        &mut self,
        now: Instant,
        from: SocketAddr,
        slot: Slot,
        known: bool,
        buf: &[u8],
    ) {
        let session = self.sessions.get_mut(slot);
        let serial = session.serial;
        match &mut session.peer {
            Peer::Parked(recipe) => {
                // Only a check signed with the session's password wakes it; its peer is built
                // and connected off the worker, and the check answered there.
                if !stun::is_check_signed_with(buf, &recipe.local.pass) {
                    Counters::add(&self.counters.stun_integrity_failures, 1);
                    return;
                }
                let ice_pass = recipe.local.pass.as_str().into();
                let Peer::Parked(recipe) = std::mem::replace(
                    &mut session.peer,
                    Peer::Handshaking {
                        ice_pass,
                        datagrams: PerSecond::new(HANDSHAKE_DATAGRAMS_PER_SECOND, now),
                    },
                ) else {
                    unreachable!("matched as parked above");
                };
                // The check's integrity held: its source is the session's.
                self.demux.bind(from, slot, &mut session.addrs);
                self.handshake_jobs.push(HandshakeJob::Start(PeerBuild {
                    serial,
                    recipe,
                    check: HeldCheck {
                        at: now,
                        from,
                        bytes: buf.to_vec(),
                    },
                }));
            }
            Peer::Handshaking {
                ice_pass,
                datagrams,
            } => {
                if !known {
                    // A check from another of the client's addresses binds it only when signed.
                    if !stun::is_check_signed_with(buf, ice_pass) {
                        Counters::add(&self.counters.stun_integrity_failures, 1);
                        return;
                    }
                    self.demux.bind(from, slot, &mut session.addrs);
                }
                if !datagrams.take(now) {
                    Counters::add(&self.counters.handshake_datagrams_dropped, 1);
                    return;
                }
                self.handshake_jobs.push(HandshakeJob::Datagram {
                    serial,
                    datagram: HeldCheck {
                        at: now,
                        from,
                        bytes: buf.to_vec(),
                    },
                });
            }
            Peer::Live(_) => unreachable!("a live peer is fed by `receive`"),
        }
    }

    /// A job the handshake threads could not take (their queue is full): a session to start is
    /// parked again (its client's next check tries anew), a datagram is lost (sent again).
    pub fn handshake_job_refused(&mut self, job: HandshakeJob) {
        match job {
            HandshakeJob::Start(build) => {
                if let Some(slot) = self.sessions.slot_of(build.serial) {
                    let session = self.sessions.get_mut(slot);
                    if matches!(session.peer, Peer::Handshaking { .. }) {
                        session.peer = Peer::Parked(build.recipe);
                    }
                }
                Counters::add(&self.counters.peer_builds_refused, 1);
            }
            HandshakeJob::Datagram { .. } => {
                Counters::add(&self.counters.handshake_datagrams_dropped, 1);
            }
            // The handshake thread drops it when its connect time is up.
            HandshakeJob::Cancel { .. } => {}
        }
    }

    /// Takes in a session's peer that connected on a handshake thread, with what it reported
    /// meanwhile.
    pub(super) fn peer_connected(&mut self, handover: Handover, now: Instant) {
        let Handover {
            serial,
            rtc,
            events,
            keys,
            destination,
        } = handover;
        let Some(slot) = self.sessions.slot_of(serial) else {
            return; // ended meanwhile
        };
        let session = self.sessions.get_mut(slot);
        if !matches!(session.peer, Peer::Handshaking { .. }) {
            return;
        }
        session.peer = Peer::Live(rtc);
        session.last_input = now;
        if let Role::Viewer(viewer) = &mut session.role {
            if let Some(keys) = keys
                && !viewer.set_srtp_keys(&keys)
            {
                tracing::warn!(session = serial, ?keys, "unusable SRTP keys");
            }
            if let Some(to) = destination {
                viewer.follow(to);
            }
        }
        for event in events {
            session.handle_event(event, &mut self.outbox, &self.counters);
        }
        self.drain(slot, now);
    }
}
