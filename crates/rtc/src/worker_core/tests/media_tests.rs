//! Fan-out, GOP replay, idle clip, publisher change and keyframe requests.

use std::sync::Arc;

use str0m::media::Direction;

use super::*;

#[test]
fn a_connected_viewer_gets_the_rooms_packets_in_order() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    let room = net.shared.rooms.get_or_create("r").id;
    let pkts = frame(7, 100, 9000, 5, true, net.now);
    net.inject(room, &pkts);
    net.step(&mut [&mut v]);
    assert_eq!(v.video.len(), 5);
    assert_consecutive(&v.video_seqs());
    assert_eq!(v.video[0].1, pkts[0].payload.to_vec());
}

#[test]
fn a_joining_viewer_is_replayed_the_gop_at_once() {
    let mut net = Net::new(0, 1, config());
    let room = net.shared.rooms.get_or_create("r").id;
    // The room's GOP arrives before anyone watches: a keyframe and a delta frame.
    let now = net.now;
    let mut gop = frame(7, 100, 9000, 3, true, now);
    gop.extend(frame(7, 103, 12000, 2, false, now));
    net.inject(room, &gop);
    net.step(&mut []);
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    assert_eq!(
        v.video.len(),
        5,
        "the whole GOP, without waiting for a new keyframe"
    );
    assert_consecutive(&v.video_seqs());
}

#[test]
fn a_switch_replays_the_new_rooms_gop_and_is_rate_limited() {
    let mut net = Net::new(0, 1, config());
    let a = net.shared.rooms.get_or_create("a").id;
    let b = net.shared.rooms.get_or_create("b").id;
    let now = net.now;
    net.inject(a, &frame(1, 10, 1000, 2, true, now));
    net.inject(b, &frame(2, 500, 5000, 4, true, now));
    net.step(&mut []);
    let mut v = net.peer("a", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    assert_eq!(v.video.len(), 2);
    let serial = v.serial;
    let switch = |net: &mut Net, to: &str| {
        let room = net.shared.rooms.get_or_create(to);
        let (tx, rx) = std::sync::mpsc::channel();
        let reply: ReplyTo = Box::new(move |r| tx.send(r).is_ok());
        net.core.handle_control(
            net.now,
            Control {
                command: Command::SwitchRoom { serial, room },
                reply: Some(reply),
            },
        );
        match rx.recv().unwrap() {
            Reply::Done(r) => r,
            other => panic!("{other:?}"),
        }
    };
    switch(&mut net, "b").unwrap();
    net.step(&mut [&mut v]);
    assert_eq!(v.video.len(), 6, "room b's GOP follows at once");
    assert_consecutive(&v.video_seqs());
    // A handful of switches a second are allowed; beyond, 429.
    let results: Vec<_> = (0..10)
        .map(|i| switch(&mut net, if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(SessionError::TooManyRequests)))
        .count();
    assert_eq!(refused, 10 - (SWITCHES_PER_SECOND as usize - 1));
}

#[test]
fn a_publishers_packets_reach_this_workers_viewers_and_the_workers_with_viewers_shared() {
    let mut net = Net::new(0, 4, config());
    let mut p = net.peer("r", Direction::SendOnly, 6001);
    let mut v = net.peer("r", Direction::RecvOnly, 6002);
    net.connect(&mut [&mut p, &mut v]);
    let _ = net.core.drain_peer_messages().count();
    // Workers 1 and 3 have viewers of the room, worker 2 has none.
    let room = net.shared.rooms.get_or_create("r");
    room.set_viewing(1, true);
    room.set_viewing(3, true);
    let mid = p.video_mid.unwrap();
    let pt = p.send_pt();
    for i in 0..3u16 {
        let mut payload = vec![0x41u8; 300];
        if i == 0 {
            payload[0] = 0x65;
        }
        let now = net.now;
        let mut api = p.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).unwrap();
        let write = RtpWrite::new(pt, (1000 + i as u64).into(), 90_000, now, payload)
            .marker(i == 2)
            .nackable(true);
        tx.write_rtp(write);
    }
    net.step(&mut [&mut p, &mut v]);
    net.step(&mut [&mut p, &mut v]);
    assert_eq!(v.video.len(), 3, "this worker's viewer");
    let sent: Vec<(usize, Arc<MediaPacket>)> = net
        .core
        .drain_peer_messages()
        .filter_map(|(w, m)| match m {
            PeerMessage::Packet { packet, .. } => Some((w, packet)),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 6, "each packet to workers 1 and 3 only");
    for pair in sent.chunks(2) {
        assert_eq!((pair[0].0, pair[1].0), (1, 3));
        assert!(Arc::ptr_eq(&pair[0].1, &pair[1].1), "shared, not copied");
    }
    room.set_viewing(1, false);
    room.set_viewing(3, false);
    net.shared.rooms.release(room);
}

/// A worker whose first viewer of a room joins starts receiving the room's packets and gets
/// its GOP from the keeper (the publisher's worker); packets that come before the GOP are held
/// and follow it, so the viewer starts at the keyframe with nothing missing or repeated. The
/// last viewer leaving stops the packets.
#[test]
fn a_workers_first_viewer_gets_the_rooms_gop_from_its_keeper() {
    let mut net = Net::new(1, 2, config());
    let room = net.shared.rooms.get_or_create("r");
    assert!(room.try_claim_publisher(99, Some(0)));
    let mut keeper = WorkerCore::new(
        0,
        SERVER.port(),
        2,
        net.shared.clone(),
        Arc::new(Counters::default()),
        Box::new(RecordingSink::default()),
        net.now,
        SystemTime::now(),
    );
    // The keeper has a GOP: a keyframe of 3 packets and a delta frame of 2.
    let now = net.now;
    for packet in frame(99, 1, 1000, 3, true, now)
        .into_iter()
        .chain(frame(99, 4, 4000, 2, false, now))
    {
        let msg = PeerMessage::Packet {
            room: room.id,
            packet,
        };
        keeper.handle_peer_message(now, msg);
    }
    keeper.handle_timeout(now);
    assert_eq!(
        room.viewing_workers(),
        0,
        "no viewers anywhere: no packets to send"
    );
    // A viewer joins on worker 1: its bit is set and the keeper asked for the GOP.
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    assert_eq!(room.viewing_workers(), 0b10);
    let asked: Vec<_> = net.core.drain_peer_messages().collect();
    let [
        (
            0,
            PeerMessage::GopRequest {
                room: asked_room,
                from: 1,
            },
        ),
    ] = asked[..]
    else {
        panic!("one GOP request to the keeper");
    };
    assert_eq!(asked_room, room.id);
    // A live packet reaches worker 1 before the GOP does: it is held, not lost.
    net.inject(room.id, &frame(99, 6, 7000, 1, false, now));
    net.core.handle_timeout(now);
    keeper.handle_peer_message(
        now,
        PeerMessage::GopRequest {
            room: room.id,
            from: 1,
        },
    );
    let answer: Vec<_> = keeper.drain_peer_messages().collect();
    let [(1, ref gop @ PeerMessage::Gop { .. })] = answer[..] else {
        panic!("the GOP, to worker 1");
    };
    let PeerMessage::Gop { packets, .. } = gop else {
        unreachable!()
    };
    assert_eq!(packets.len(), 5);
    let msg = PeerMessage::Gop {
        room: room.id,
        packets: packets.clone(),
    };
    net.core.handle_peer_message(net.now, msg);
    net.connect(&mut [&mut v]);
    assert_eq!(v.video_seqs().len(), 6, "the GOP and the held packet");
    assert_consecutive(&v.video_seqs());
    assert_eq!(v.video[0].1[0] & 0x1f, 5, "starting at the keyframe");
    // The viewer leaves: worker 1 gets no more of the room.
    net.core.handle_control(
        net.now,
        Control {
            command: Command::Close { serial: v.serial },
            reply: None,
        },
    );
    assert_eq!(room.viewing_workers(), 0);
    net.shared.rooms.release(room);
}

/// Worker 1 of 2 with a viewer of room "r", whose publisher (and GOP keeper) is on worker 0;
/// the GOP request the viewer made is dropped, unanswered.
fn viewer_away_from_the_keeper() -> (Net, Arc<deadsfu_media::Room>, Peer) {
    let mut net = Net::new(1, 2, config());
    let room = net.shared.rooms.get_or_create("r");
    assert!(room.try_claim_publisher(99, Some(0)));
    let v = net.peer("r", Direction::RecvOnly, 6001);
    let _ = net.core.drain_peer_messages().count();
    (net, room, v)
}

/// Without an answer from the keeper, the viewers start after a short wait from what came.
#[test]
fn a_gop_that_does_not_come_is_not_waited_for_long() {
    let (mut net, room, mut v) = viewer_away_from_the_keeper();
    let now = net.now;
    net.core.handle_timeout(now);
    assert!(net.core.poll_timeout(now) <= now + gop_handover::GOP_WAIT);
    net.now += gop_handover::GOP_WAIT;
    net.inject(room.id, &frame(99, 1, 1000, 2, true, net.now));
    net.connect(&mut [&mut v]);
    assert_eq!(v.video_seqs().len(), 2, "what came, replayed");
    net.shared.rooms.release(room);
}

#[test]
fn the_idle_clip_hands_over_to_live_video_and_back() {
    let mut cfg = config();
    cfg.idle_clip = Some(Arc::new(deadsfu_media::IdleClip::builtin()));
    let mut net = Net::new(0, 1, cfg);
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    for _ in 0..40 {
        net.step(&mut [&mut v]);
    }
    let idle = v.video.len();
    assert!(
        idle > 0,
        "the idle clip plays while the room has no live video"
    );
    // Live video: the viewer switches to it at its keyframe, on one continuous sequence.
    let room = net.shared.rooms.get_or_create("r").id;
    let live_payload = frame(9, 1, 1000, 1, true, net.now)[0].payload.to_vec();
    for i in 0..20u64 {
        let now = net.now;
        net.inject(
            room,
            &frame(9, 1 + i * 2, 1000 + i as u32 * 3000, 2, i == 0, now),
        );
        net.step(&mut [&mut v]);
    }
    let first_live = v.video.iter().position(|(_, p)| *p == live_payload);
    let first_live = first_live.expect("live video reached the viewer");
    assert!(
        v.video[first_live..]
            .iter()
            .all(|(_, p)| p[0] == 0x65 || p[0] == 0x41)
    );
    assert_consecutive(&v.video_seqs());
    // Live video stops: after the idle delay the clip comes back.
    let before = v.video.len();
    for _ in 0..((deadsfu_media::rewrite::IDLE_AFTER.as_millis() / STEP.as_millis()) + 100) {
        net.step(&mut [&mut v]);
    }
    assert!(
        v.video.len() > before + 5,
        "the idle clip resumes after live video stops"
    );
    assert_consecutive(&v.video_seqs());
}

#[test]
fn a_new_publisher_continues_the_viewers_sequence() {
    let mut net = Net::new(0, 1, config());
    let mut v = net.peer("r", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    let room = net.shared.rooms.get_or_create("r").id;
    let now = net.now;
    net.inject(room, &frame(1, 100, 1000, 3, true, now));
    net.step(&mut [&mut v]);
    // Another source with unrelated numbering: the viewer's numbering continues.
    let now = net.now;
    net.inject(room, &frame(2, 60_000, 777, 3, true, now));
    net.step(&mut [&mut v]);
    assert_eq!(v.video.len(), 6);
    assert_consecutive(&v.video_seqs());
}

#[test]
fn keyframe_requests_for_a_remote_publisher_merge() {
    let mut net = Net::new(0, 2, config());
    let room = net.shared.rooms.get_or_create("r");
    assert!(
        room.try_claim_publisher(999, Some(1)),
        "publisher on worker 1"
    );
    let mut v1 = net.peer("r", Direction::RecvOnly, 6001);
    let mut v2 = net.peer("r", Direction::RecvOnly, 6002);
    net.connect(&mut [&mut v1, &mut v2]);
    let requests = |net: &mut Net| {
        net.core
            .drain_peer_messages()
            .filter(|(w, m)| *w == 1 && matches!(m, PeerMessage::KeyframeRequest { .. }))
            .count()
    };
    // Both viewers connected within a few steps: their requests merge.
    let first = requests(&mut net);
    assert!(first >= 1);
    assert!(first <= 2, "{first} requests for two joins");
    // A storm of PLIs from one viewer within the merge interval: at most one more request.
    let mid = v1.video_mid.unwrap();
    for _ in 0..50 {
        if let Some(rx) = v1.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
        }
        net.step(&mut [&mut v1, &mut v2]);
    }
    let storm = requests(&mut net);
    let steps_ms = 50 * STEP.as_millis() as usize;
    let most = steps_ms / rooms::KEYFRAME_REQUEST_MERGE.as_millis() as usize + 1;
    assert!(storm <= most, "{storm} requests in {steps_ms} ms");
}

#[test]
fn switches_overtaken_within_the_coalescing_time_replay_once() {
    let mut net = Net::new(0, 1, config());
    // Held for the whole test, as the engine holds rooms with sessions or publishers.
    let (room_a, room_b) = (
        net.shared.rooms.get_or_create("a"),
        net.shared.rooms.get_or_create("b"),
    );
    let (a, b) = (room_a.id, room_b.id);
    let mut v = net.peer("a", Direction::RecvOnly, 6001);
    net.connect(&mut [&mut v]);
    // Both rooms live from here on: a keyframe, then a delta frame every step.
    let mut seq = 0;
    let mut live = |net: &mut Net, key: bool| {
        let now = net.now;
        seq += 1;
        net.inject(a, &frame(1, seq, seq as u32 * 3000, 1, key, now));
        net.inject(b, &frame(2, seq, seq as u32 * 3000, 1, key, now));
    };
    live(&mut net, true);
    net.step(&mut [&mut v]);
    let serial = v.serial;
    let switch = |net: &mut Net, to: &str| {
        let room = net.shared.rooms.get_or_create(to);
        let command = Command::SwitchRoom { serial, room };
        net.core.handle_control(
            net.now,
            Control {
                command,
                reply: None,
            },
        );
    };
    let replays = |net: &Net| net.metrics().gop_replays;
    // The first switch replays at once.
    let before = replays(&net);
    switch(&mut net, "b");
    assert_eq!(replays(&net), before + 1);
    // Two more within the coalescing time: nothing now, then one replay where it settled.
    live(&mut net, false);
    net.step(&mut [&mut v]);
    switch(&mut net, "a");
    live(&mut net, false);
    net.step(&mut [&mut v]);
    switch(&mut net, "b");
    assert_eq!(
        replays(&net),
        before + 1,
        "overtaken switches replay nothing at once"
    );
    for _ in 0..(300 / STEP.as_millis()) {
        live(&mut net, false);
        net.step(&mut [&mut v]);
    }
    assert_eq!(
        replays(&net),
        before + 2,
        "one replay once switching stopped"
    );
    assert_consecutive(&v.video_seqs());
}

/// A GOP that comes after the wait is still used while no keyframe has come since.
#[test]
fn a_late_gop_is_used_while_no_keyframe_came() {
    let (mut net, room, mut v) = viewer_away_from_the_keeper();
    let now = net.now;
    let gop = frame(99, 1, 1000, 2, true, now);
    // Only a delta frame reaches this worker before the wait is up: nothing to start from.
    net.inject(room.id, &frame(99, 3, 4000, 1, false, now));
    net.now += gop_handover::GOP_WAIT;
    net.connect(&mut [&mut v]);
    assert!(v.video.is_empty());
    let late = PeerMessage::Gop {
        room: room.id,
        packets: gop,
    };
    net.core.handle_peer_message(net.now, late);
    net.core.handle_timeout(net.now);
    net.step(&mut [&mut v]);
    assert_eq!(v.video_seqs().len(), 2, "the late GOP, replayed");
    assert_eq!(v.video[0].1[0] & 0x1f, 5, "from its keyframe");
    net.shared.rooms.release(room);
}
