//! Fairness of a turn between the socket, other workers, commands and timers.

use std::collections::VecDeque;

use super::{DATAGRAMS_PER_TURN, TurnIo, run_turn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::{MediaPacket, RoomId};

use str0m::media::Direction;

use crate::messages::HandshakeJob;
use crate::worker_core::tests::*;
use crate::worker_core::*;

/// Inputs of a turn from in-memory queues; the socket can be made endless.
#[derive(Default)]
struct FakeIo {
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    endless_datagram: Option<(SocketAddr, Vec<u8>)>,
    peer: VecDeque<PeerMessage>,
    endless_peer: Option<(RoomId, Arc<MediaPacket>)>,
    controls: VecDeque<Control>,
    now: Option<Instant>,
    to_peers: usize,
    current: Option<(SocketAddr, Vec<u8>)>,
}

impl TurnIo for FakeIo {
    fn datagram(&mut self) -> Option<(SocketAddr, &[u8])> {
        self.current = Some(
            self.datagrams
                .pop_front()
                .or_else(|| self.endless_datagram.clone())?,
        );
        self.current.as_ref().map(|(from, d)| (*from, &d[..]))
    }
    fn peer_message(&mut self) -> Option<PeerMessage> {
        self.peer.pop_front().or_else(|| {
            let (room, packet) = self.endless_peer.clone()?;
            Some(PeerMessage::Packet { room, packet })
        })
    }
    fn control(&mut self) -> Option<Control> {
        self.controls.pop_front()
    }
    fn now(&mut self) -> Instant {
        self.now.unwrap()
    }
    fn send_to_peer(&mut self, _: usize, _: PeerMessage) -> bool {
        self.to_peers += 1;
        true
    }
    fn handshake(&mut self, job: HandshakeJob) -> Result<(), HandshakeJob> {
        Err(job)
    }
}

#[test]
fn a_busy_socket_starves_neither_timers_nor_other_workers() {
    let mut cfg = config();
    cfg.connect_timeout = Duration::from_secs(2);
    let mut net = Net::new(0, 2, cfg);
    // A viewer that never connects, and a socket that never runs dry.
    let _v = net.peer("r", Direction::RecvOnly, 6001);
    let room = net.shared.rooms.get_or_create("r").id;
    let mut io = FakeIo {
        endless_datagram: Some((SocketAddr::from(([127, 0, 0, 9], 9)), vec![0x80; 100])),
        now: Some(net.now),
        ..Default::default()
    };
    io.peer.extend(
        frame(1, 1, 1, 3, true, net.now)
            .into_iter()
            .map(|packet| PeerMessage::Packet { room, packet }),
    );
    let counters = net.counters.clone();
    let report = run_turn(&mut net.core, &mut io, &counters);
    assert_eq!(
        report.datagrams, DATAGRAMS_PER_TURN,
        "a turn reads a bounded share"
    );
    assert_eq!(
        report.peer_messages, 3,
        "other workers' packets are served in the same turn"
    );
    assert_eq!(net.core.session_count(), 1);
    // Time passes beyond the connect deadline, the socket still busy: the timer fires.
    io.now = Some(net.now + Duration::from_secs(3));
    run_turn(&mut net.core, &mut io, &counters);
    assert_eq!(
        net.core.session_count(),
        0,
        "the connect deadline ended the session"
    );
}

#[test]
fn a_flood_from_other_workers_does_not_starve_the_socket() {
    let mut net = Net::new(0, 2, config());
    let room = net.shared.rooms.get_or_create("r").id;
    let pkt = frame(1, 1, 1, 1, true, net.now).remove(0);
    let mut io = FakeIo {
        endless_peer: Some((room, pkt)),
        now: Some(net.now),
        ..Default::default()
    };
    io.datagrams
        .extend((0..10).map(|_| (SocketAddr::from(([127, 0, 0, 9], 9)), vec![0x80; 50])));
    let counters = net.counters.clone();
    let report = run_turn(&mut net.core, &mut io, &counters);
    assert_eq!(report.datagrams, 10);
    assert_eq!(report.peer_messages, crate::turn::PEER_MESSAGES_PER_TURN);
    let report = run_turn(&mut net.core, &mut io, &counters);
    assert_eq!(
        report.peer_messages,
        crate::turn::PEER_MESSAGES_PER_TURN,
        "bounded every turn"
    );
}
