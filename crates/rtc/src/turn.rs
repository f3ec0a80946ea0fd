//! One turn of a media worker's loop, over inputs the shell provides (the socket and channels,
//! or a test's queues): at most a fixed share from each source, then due timers and the turn's
//! fan-out. A busy socket cannot starve other workers' packets, commands or timers, nor they
//! the socket.

use std::net::SocketAddr;
use std::time::Instant;

use crate::messages::{Control, HandshakeJob, PeerMessage};
use crate::metrics::Counters;
use crate::worker_core::WorkerCore;

/// Most datagrams read from the socket per turn.
pub(crate) const DATAGRAMS_PER_TURN: usize = 64;
/// Most packets and requests taken from other workers per turn (cheap each: a queued
/// reference until the turn's fan-out).
pub(crate) const PEER_MESSAGES_PER_TURN: usize = 512;
/// Most control commands per turn.
pub(crate) const CONTROLS_PER_TURN: usize = 16;

/// Where a turn's inputs come from and where messages for other workers go.
pub(crate) trait TurnIo {
    /// The next datagram waiting, and its source.
    fn datagram(&mut self) -> Option<(SocketAddr, &[u8])>;
    fn peer_message(&mut self) -> Option<PeerMessage>;
    fn control(&mut self) -> Option<Control>;
    fn now(&mut self) -> Instant;
    /// Hands a message to another worker; false when its inbox is full (the message is lost).
    fn send_to_peer(&mut self, worker: usize, msg: PeerMessage) -> bool;
    /// Hands a job to the handshake threads; gives it back when they are busy.
    fn handshake(&mut self, job: HandshakeJob) -> Result<(), HandshakeJob>;
}

/// What a turn took from each source.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TurnReport {
    pub datagrams: usize,
    pub peer_messages: usize,
    pub controls: usize,
}

impl TurnReport {
    /// Whether every source was found empty (the shell may then wait).
    pub fn idle(&self) -> bool {
        self.datagrams == 0 && self.peer_messages == 0 && self.controls == 0
    }
}

pub(crate) fn run_turn(
    core: &mut WorkerCore,
    io: &mut impl TurnIo,
    counters: &Counters,
) -> TurnReport {
    let mut report = TurnReport::default();
    while report.datagrams < DATAGRAMS_PER_TURN {
        let now = io.now();
        let Some((from, data)) = io.datagram() else {
            break;
        };
        report.datagrams += 1;
        core.handle_datagram(now, from, data);
    }
    let now = io.now();
    while report.peer_messages < PEER_MESSAGES_PER_TURN {
        let Some(msg) = io.peer_message() else {
            break;
        };
        report.peer_messages += 1;
        core.handle_peer_message(now, msg);
    }
    while report.controls < CONTROLS_PER_TURN {
        let Some(control) = io.control() else {
            break;
        };
        report.controls += 1;
        core.handle_control(io.now(), control);
    }
    core.handle_timeout(io.now());
    let mut dropped = 0;
    for (worker, msg) in core.drain_peer_messages() {
        if !io.send_to_peer(worker, msg) {
            dropped += 1;
        }
    }
    if dropped > 0 {
        Counters::add(&counters.peer_drops, dropped);
    }
    let jobs: Vec<HandshakeJob> = core.drain_handshake_jobs().collect();
    for job in jobs {
        if let Err(job) = io.handshake(job) {
            core.handshake_job_refused(job);
        }
    }
    report
}

#[cfg(test)]
#[path = "turn_tests.rs"]
mod tests;
