//! Sessions connecting, without I/O: the str0m peers of sessions whose first check held, from
//! their build (`session_setup::build_peer`) through ICE and the DTLS handshake, until they
//! connect and go to their media worker. All of a session's set-up but its first check's
//! verification thus runs off the media workers, so a join storm cannot stall forwarding to
//! viewers already watching.
//!
//! Fed jobs from the workers (start a session's handshake, a datagram of it, cancel it) and
//! the time; gives datagrams to send from a worker's socket and commands for the workers (a
//! connected peer, a failure, a datagram that came after the hand-over). The shell is
//! `handshake_thread.rs`; the tests drive this core directly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use crate::dtls_tap::SrtpKeys;
use crate::messages::{Command, Handover, HandshakeJob, PeerBuild};
use crate::metrics::Counters;
use crate::session::feed_datagram;
use crate::session_setup::build_peer;
use crate::shared::Shared;

/// Sessions connecting on one handshake thread at most; beyond, a new one fails (the
/// engine's limit on sessions not yet connected is far below this).
const MAX_HANDSHAKES: usize = 8_192;
/// Events a connecting peer may report before it connects (state changes, media added).
const MAX_EARLY_EVENTS: usize = 64;
/// How long datagrams of a session handed over are still sent after it to its worker.
const LATE_DATAGRAMS_FOR: Duration = Duration::from_secs(2);

/// A datagram to send from a worker's socket.
pub(crate) struct Transmit {
    pub worker: usize,
    pub to: SocketAddr,
    pub contents: Vec<u8>,
}

struct Handshake {
    worker: usize,
    rtc: Box<Rtc>,
    /// Ends here unconnected by then (the worker's connect timeout, counted from the build).
    deadline: Instant,
    /// str0m's next timeout.
    timeout: Instant,
    events: Vec<Event>,
    keys: Option<SrtpKeys>,
    destination: Option<SocketAddr>,
    connected: bool,
}

pub(crate) struct Handshakes {
    shared: Arc<Shared>,
    /// The workers' UDP ports, by worker index.
    ports: Vec<u16>,
    counters: Arc<Counters>,
    connecting: HashMap<u64, Handshake>,
    /// Sessions whose first check came, waiting for their peer to be built: the shell builds
    /// them when it has nothing more urgent (`start_waiting`), so that handshakes under way
    /// finish before new ones start and a join storm's first frames come in turn.
    waiting: VecDeque<(usize, PeerBuild)>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Sessions handed over lately: (worker, when).
    handed_over: HashMap<u64, (usize, Instant)>,
    transmits: Vec<Transmit>,
    commands: Vec<(usize, Command)>,
}

impl Handshakes {
    pub fn new(shared: Arc<Shared>, ports: Vec<u16>, counters: Arc<Counters>) -> Self {
        Handshakes {
            shared,
            ports,
            counters,
            connecting: HashMap::new(),
            waiting: VecDeque::new(),
            timers: BinaryHeap::new(),
            handed_over: HashMap::new(),
            transmits: Vec::new(),
            commands: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn connecting(&self) -> usize {
        self.connecting.len()
    }

    /// When [`Handshakes::handle_timeout`] is next needed, if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Datagrams to send, to be taken after each input.
    pub fn drain_transmits(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.transmits.drain(..)
    }

    /// Commands for the workers (worker index, command), to be taken after each input.
    pub fn drain_commands(&mut self) -> std::vec::Drain<'_, (usize, Command)> {
        self.commands.drain(..)
    }

    pub fn handle_job(&mut self, now: Instant, worker: usize, job: HandshakeJob) {
        match job {
            HandshakeJob::Start(build) => {
                if self.connecting.len() + self.waiting.len() >= MAX_HANDSHAKES {
                    tracing::warn!(session = build.serial, "too many sessions connecting");
                    let serial = build.serial;
                    let reason = "too many sessions connecting";
                    self.commands
                        .push((worker, Command::PeerFailed { serial, reason }));
                } else {
                    self.waiting.push_back((worker, build));
                }
            }
            HandshakeJob::Datagram { serial, datagram } => {
                if self.connecting.contains_key(&serial) {
                    self.receive(serial, datagram.at.max(now), datagram.from, &datagram.bytes);
                    self.drain(serial, now);
                } else if let Some((worker, _)) = self.handed_over.get(&serial) {
                    // Sent to us before the worker had the peer back: it goes on there.
                    self.commands
                        .push((*worker, Command::LateDatagram { serial, datagram }));
                }
            }
            HandshakeJob::Cancel { serial } => {
                self.connecting.remove(&serial);
                self.waiting.retain(|(_, b)| b.serial != serial);
            }
        }
    }

    /// Whether sessions wait for their peer to be built.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Builds the peers of at most `max` waiting sessions, oldest first, each answering the
    /// check that woke it.
    pub fn start_waiting(&mut self, now: Instant, max: usize) {
        for _ in 0..max {
            let Some((worker, build)) = self.waiting.pop_front() else {
                return;
            };
            self.start(now, worker, build);
        }
    }

    /// Runs the timeouts that are due and drops what expired.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, serial))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(h) = self.connecting.get_mut(&serial) else {
                continue;
            };
            if h.timeout != at && h.deadline != at {
                continue; // superseded
            }
            if now >= h.deadline {
                let worker = h.worker;
                self.connecting.remove(&serial);
                self.commands.push((
                    worker,
                    Command::PeerFailed {
                        serial,
                        reason: "did not connect in time",
                    },
                ));
                continue;
            }
            if let Err(e) = h.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(session = serial, error = %e, "timeout input rejected");
            }
            self.drain(serial, now);
        }
        self.handed_over
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < LATE_DATAGRAMS_FOR);
    }

    fn start(&mut self, now: Instant, worker: usize, build: PeerBuild) {
        let PeerBuild {
            serial,
            recipe,
            check,
        } = build;
        let port = self.ports.get(worker).copied().unwrap_or(0);
        let rtc = match build_peer(&self.shared, port, *recipe, now) {
            Ok(rtc) => Some(rtc),
            Err(e) => {
                tracing::warn!(session = serial, error = %e, "peer not built");
                None
            }
        };
        let Some(rtc) = rtc else {
            self.commands.push((
                worker,
                Command::PeerFailed {
                    serial,
                    reason: "peer not built",
                },
            ));
            return;
        };
        Counters::add(&self.counters.peer_builds, 1);
        let deadline = now + self.shared.config.connect_timeout;
        self.connecting.insert(
            serial,
            Handshake {
                worker,
                rtc: Box::new(rtc),
                deadline,
                timeout: now,
                events: Vec::new(),
                keys: None,
                destination: None,
                connected: false,
            },
        );
        self.timers.push(Reverse((deadline, serial)));
        // The check is fed as new (str0m's clock must not go back) from its source.
        self.receive(serial, check.at.max(now), check.from, &check.bytes);
        self.drain(serial, now);
    }

    fn receive(&mut self, serial: u64, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Some(h) = self.connecting.get_mut(&serial) else {
            return;
        };
        let to = SocketAddr::new(
            self.shared.local_ip_for(from),
            self.ports.get(h.worker).copied().unwrap_or(0),
        );
        if let Err(e) = feed_datagram(&mut h.rtc, now, from, to, bytes) {
            tracing::debug!(session = serial, error = %e, "input rejected");
        }
    }

    /// Drains a connecting peer's outputs; hands it over once connected, or gives up on it.
    fn drain(&mut self, serial: u64, now: Instant) {
        let Some(h) = self.connecting.get_mut(&serial) else {
            return;
        };
        let failed = loop {
            let output = h.rtc.poll_output();
            if let Some(keys) = crate::dtls_tap::take_keys() {
                h.keys = Some(keys);
            }
            match output {
                Ok(Output::Timeout(at)) => {
                    let at = at.max(now).min(h.deadline);
                    if at != h.timeout {
                        h.timeout = at;
                        self.timers.push(Reverse((at, serial)));
                    }
                    break None;
                }
                Ok(Output::Transmit(t)) => {
                    if t.contents.first().is_some_and(|b| *b >= 4) {
                        h.destination = Some(t.destination);
                    }
                    Counters::add(&self.counters.packets_out, 1);
                    Counters::add(&self.counters.bytes_out, t.contents.len() as u64);
                    self.transmits.push(Transmit {
                        worker: h.worker,
                        to: t.destination,
                        contents: t.contents.into(),
                    });
                }
                Ok(Output::Event(Event::Connected)) => {
                    h.connected = true;
                    h.events.push(Event::Connected);
                }
                Ok(Output::Event(Event::Closed)) => break Some("peer closed"),
                Ok(Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => break Some("ICE disconnected"),
                Ok(Output::Event(event)) => {
                    if h.events.len() < MAX_EARLY_EVENTS {
                        h.events.push(event);
                    }
                }
                Err(e) => {
                    tracing::debug!(session = serial, error = %e, "session failed");
                    break Some("WebRTC error");
                }
            }
        };
        if let Some(reason) = failed {
            let worker = h.worker;
            self.connecting.remove(&serial);
            self.commands
                .push((worker, Command::PeerFailed { serial, reason }));
            return;
        }
        if h.connected
            && let Some(h) = self.connecting.remove(&serial)
        {
            self.handed_over.insert(serial, (h.worker, now));
            let handover = Handover {
                serial,
                rtc: h.rtc,
                events: h.events,
                keys: h.keys,
                destination: h.destination,
            };
            self.commands
                .push((h.worker, Command::PeerConnected(Box::new(handover))));
        }
    }
}
