//! Demultiplexing: checks bind sources only when verified, floods are cut early.

use std::net::SocketAddr;
use std::time::Duration;

use str0m::media::Direction;

use super::*;

#[test]
fn a_check_binds_its_source_only_when_its_integrity_holds() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    let check = v.first_check(net.now);
    // The same check with a broken MESSAGE-INTEGRITY, from another source.
    let mut forged = check.clone();
    let n = forged.len();
    forged[n - 10] ^= 0xff;
    let attacker = SocketAddr::from(([127, 0, 0, 9], 7000));
    net.core.handle_datagram(net.now, attacker, &forged);
    net.core.handle_timeout(net.now);
    assert_eq!(
        net.core.drain_handshake_jobs().count(),
        0,
        "no peer for a forgery"
    );
    assert_eq!(net.metrics().stun_integrity_failures, 1);
    assert!(
        net.sink.take().iter().all(|(to, _)| *to != attacker),
        "no answer to a forgery"
    );
    // Its source is not bound: what it sends next is unknown.
    let before = net.metrics().unknown_datagrams;
    net.core.handle_datagram(net.now, attacker, &[0x80; 40]);
    assert_eq!(net.metrics().unknown_datagrams, before + 1);
    // The genuine check is answered, once the session's peer is built, and its source bound.
    net.core.handle_datagram(net.now, v.addr, &check);
    net.core.handle_timeout(net.now);
    net.build_peers();
    assert!(net.answered(v.addr));
    net.connect(&mut [&mut v]);
}

#[test]
fn a_flood_of_checks_for_one_ufrag_is_cut_before_integrity_checks() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    let check = v.first_check(net.now);
    for i in 0..2000u16 {
        let from = SocketAddr::from(([127, 0, 1, (i % 250) as u8], 10_000 + i));
        net.core.handle_datagram(net.now, from, &check);
    }
    let limited = net.metrics().stun_rate_limited;
    assert!(
        limited >= 2000 - demux::CHECKS_PER_UFRAG as u64,
        "{limited}"
    );
    // The session itself still connects once the second has turned.
    net.now += Duration::from_secs(1);
    net.connect(&mut [&mut v]);
}

/// Media from a bound address is handled as it comes; a check from a new source waits for the
/// end of the turn (after the turn's media), then is answered and its source bound.
#[test]
fn checks_from_new_sources_wait_for_the_end_of_the_turn() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    net.sink.take();
    // A second viewer's first check comes from a source not bound yet.
    let mut w = net.peer("r", Direction::RecvOnly, 6002);
    let check = w.first_check(net.now);
    net.core.handle_datagram(net.now, w.addr, &check);
    // Not handled yet: the source is not bound, so what it sends next in this turn is unknown.
    let before = net.metrics().unknown_datagrams;
    net.core.handle_datagram(net.now, w.addr, &[0x80; 40]);
    assert_eq!(net.metrics().unknown_datagrams, before + 1);
    net.core.handle_timeout(net.now);
    net.build_peers();
    assert!(
        net.answered(w.addr),
        "the held check is answered at the end of the turn"
    );
    // A check whose session ended before the turn's end is dropped, not fed to another.
    let mut x = net.peer("r", Direction::RecvOnly, 6003);
    let check = x.first_check(net.now);
    net.core.handle_datagram(net.now, x.addr, &check);
    net.core.handle_control(
        net.now,
        crate::worker_core::Control {
            command: crate::worker_core::Command::Close { serial: x.serial },
            reply: None,
        },
    );
    net.core.handle_timeout(net.now);
    net.build_peers();
    assert!(!net.answered(x.addr));
}

/// A session has no str0m peer until a check signed with its password comes; that check binds
/// its source and goes to a handshake thread, where the peer is built, answers it and connects
/// (the worker passes the session's datagrams on meanwhile), then comes back to the worker. A
/// busy handshake thread parks the session again.
#[test]
fn a_session_gets_its_peer_at_its_first_signed_check_and_connects_off_the_worker() {
    use crate::messages::HandshakeJob;
    use crate::session::Peer;
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    let slot = net.core.sessions.slot_of(v.serial).unwrap();
    let parked = |net: &mut Net| matches!(net.core.sessions.get_mut(slot).peer, Peer::Parked(_));
    assert!(parked(&mut net), "no peer at the answer");
    let check = v.first_check(net.now);
    // The handshake threads are busy: parked again, nothing answered.
    net.core.handle_datagram(net.now, v.addr, &check);
    net.core.handle_timeout(net.now);
    let start = net.core.drain_handshake_jobs().next().expect("a start");
    assert!(matches!(start, HandshakeJob::Start(_)));
    net.core.handshake_job_refused(start);
    assert!(parked(&mut net));
    assert_eq!(net.metrics().peer_builds_refused, 1);
    // The client's next check starts the handshake; what it sends meanwhile is passed on.
    net.core.handle_datagram(net.now, v.addr, &check);
    net.core.handle_timeout(net.now);
    let start = net.core.drain_handshake_jobs().next().expect("a start");
    assert!(matches!(
        net.core.sessions.get_mut(slot).peer,
        Peer::Handshaking { .. }
    ));
    net.core.handle_datagram(net.now, v.addr, &check);
    net.core.handle_timeout(net.now);
    let jobs: Vec<_> = net.core.drain_handshake_jobs().collect();
    assert!(
        matches!(jobs[..], [HandshakeJob::Datagram { .. }]),
        "one start per session; later datagrams are passed on"
    );
    assert!(
        net.sink.take().is_empty(),
        "the worker answers nothing itself"
    );
    net.finish_build(start);
    assert!(
        net.answered(v.addr),
        "the held check is answered by the built peer"
    );
    assert_eq!(net.metrics().peer_builds, 1);
    for job in jobs {
        net.finish_build(job);
    }
    net.connect(&mut [&mut v]);
    assert!(matches!(
        net.core.sessions.get_mut(slot).peer,
        Peer::Live(_)
    ));
    assert_eq!(net.handshakes.connecting(), 0, "handed over");
    // A datagram of it that reaches the handshake thread after the hand-over goes back.
    net.handshakes.handle_job(
        net.now,
        0,
        HandshakeJob::Datagram {
            serial: v.serial,
            datagram: HeldCheck {
                at: net.now,
                from: v.addr,
                bytes: check.clone(),
            },
        },
    );
    let back: Vec<_> = net.handshakes.drain_commands().collect();
    assert!(matches!(
        back[..],
        [(0, Command::LateDatagram { serial, .. })] if serial == v.serial
    ));
}

/// A connecting session passes at most its budget of datagrams a second to its handshake
/// thread, takes a check from a new source only when signed with its password, and its
/// handshake is cancelled when it ends.
#[test]
fn a_connecting_session_is_bounded_and_cancelled_with_its_session() {
    use crate::session::HANDSHAKE_DATAGRAMS_PER_SECOND;
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    let check = v.first_check(net.now);
    net.core.handle_datagram(net.now, v.addr, &check);
    net.core.handle_timeout(net.now);
    net.build_peers();
    assert_eq!(net.handshakes.connecting(), 1);
    for _ in 0..2 * HANDSHAKE_DATAGRAMS_PER_SECOND {
        net.core.handle_datagram(net.now, v.addr, &[0x16; 60]);
    }
    let passed = net.core.drain_handshake_jobs().count() as u64;
    assert_eq!(passed, HANDSHAKE_DATAGRAMS_PER_SECOND);
    assert_eq!(
        net.metrics().handshake_datagrams_dropped,
        HANDSHAKE_DATAGRAMS_PER_SECOND
    );
    // A forged check from another source binds nothing.
    net.now += Duration::from_secs(1);
    let mut forged = check.clone();
    let n = forged.len();
    forged[n - 10] ^= 0xff;
    let other = SocketAddr::from(([127, 0, 0, 9], 7000));
    net.core.handle_datagram(net.now, other, &forged);
    net.core.handle_timeout(net.now);
    assert_eq!(net.core.drain_handshake_jobs().count(), 0);
    assert_eq!(net.metrics().stun_integrity_failures, 1);
    // The session ends on the worker: its handshake goes too.
    net.core.handle_control(
        net.now,
        Control {
            command: Command::Close { serial: v.serial },
            reply: None,
        },
    );
    net.build_peers();
    assert_eq!(net.handshakes.connecting(), 0);
}

/// An ICE restart before the first check gives the parked session new credentials: the
/// client's checks with the old password no longer wake it.
#[test]
fn an_ice_restart_before_the_first_check_changes_the_parked_credentials() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    let old_check = v.first_check(net.now);
    let (tx, rx) = std::sync::mpsc::channel();
    net.core.handle_control(
        net.now,
        Control {
            command: Command::RestartIce {
                serial: v.serial,
                remote: str0m::IceCreds::new(),
            },
            reply: Some(Box::new(move |r| tx.send(r).is_ok())),
        },
    );
    let Ok(Reply::IceRestarted(Ok(local))) = rx.recv() else {
        panic!("restarted");
    };
    net.core.handle_datagram(net.now, v.addr, &old_check);
    net.core.handle_timeout(net.now);
    assert_eq!(net.core.drain_handshake_jobs().count(), 0);
    assert_eq!(net.metrics().unknown_datagrams, 1, "the old ufrag is gone");
    // A check for the new credentials wakes it.
    let mut check = old_check.clone();
    let old_ufrag = crate::stun::local_ufrag(&old_check).unwrap().to_owned();
    let tail = &old_check[20..];
    let user_at = tail
        .windows(old_ufrag.len())
        .position(|w| w == old_ufrag.as_bytes())
        .unwrap();
    assert_eq!(local.ufrag.len(), old_ufrag.len());
    check[20 + user_at..20 + user_at + old_ufrag.len()].copy_from_slice(local.ufrag.as_bytes());
    // Re-sign: drop the old MESSAGE-INTEGRITY and FINGERPRINT, sign with the new password.
    let body_end = check.len() - 24 - 8;
    check.truncate(body_end);
    crate::stun::sign(&mut check, &local.pass);
    net.core.handle_datagram(net.now, v.addr, &check);
    net.core.handle_timeout(net.now);
    assert_eq!(net.core.drain_handshake_jobs().count(), 1);
}
