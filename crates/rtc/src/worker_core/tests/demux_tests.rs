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
    assert!(
        net.sink.take().iter().all(|(to, _)| *to != attacker),
        "no answer to a forgery"
    );
    // Its source is not bound: what it sends next is unknown.
    let before = net.metrics().unknown_datagrams;
    net.core.handle_datagram(net.now, attacker, &[0x80; 40]);
    assert_eq!(net.metrics().unknown_datagrams, before + 1);
    // The genuine check is answered and its source bound.
    net.core.handle_datagram(net.now, v.addr, &check);
    net.core.handle_timeout(net.now);
    assert!(
        net.sink
            .take()
            .iter()
            .any(|(to, d)| *to == v.addr && crate::stun::is_binding_success(d))
    );
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
    assert!(
        net.sink
            .take()
            .iter()
            .any(|(to, d)| *to == w.addr && crate::stun::is_binding_success(d)),
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
    assert!(
        net.sink
            .take()
            .iter()
            .all(|(to, d)| *to != x.addr || !crate::stun::is_binding_success(d))
    );
}
