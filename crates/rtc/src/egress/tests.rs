//! The egress alone: sealing, NACK history and budgets, with a recording sink.
use super::*;
use crate::send_batch::RecordingSink;
use crate::srtp::tests::test_keys;
use deadsfu_media::SourceId;
use recent_video::RECENT_VIDEO;

fn egress(dest: SocketAddr, now: Instant) -> ViewerEgress {
    ViewerEgress::one_video_track(dest, now, &test_keys())
}

fn packets(n: u64, now: Instant) -> Vec<(RoomId, Arc<MediaPacket>)> {
    (0..n)
        .map(|i| {
            let pkt = MediaPacket {
                source: SourceId(7),
                codec: Codec::H264 { profile: 0x42e0 },
                seq: 1000 + i,
                timestamp: 90_000,
                marker: i + 1 == n,
                // An IDR slice: the segment may start here.
                keyframe_start: i == 0,
                arrival: now,
                capture: now,
                payload: vec![0x65; 1000].into(),
            };
            (RoomId(1), Arc::new(pkt))
        })
        .collect()
}

/// What every test here drives an egress with: one instant, a recording sink, counters.
struct Rig {
    now: Instant,
    clock: WallClock,
    sink: RecordingSink,
    sends: SendBatch,
    counters: Counters,
}

impl Rig {
    fn new() -> Self {
        let now = Instant::now();
        let sink = RecordingSink::default();
        Rig {
            now,
            clock: WallClock::new(now, SystemTime::now()),
            sends: SendBatch::new(Box::new(sink.clone())),
            sink,
            counters: Counters::default(),
        }
    }

    /// Forwards `batch` to `e` as a worker does: its video kept once in `recent` first.
    fn write(
        &mut self,
        e: &mut ViewerEgress,
        recent: &mut RecentVideo,
        batch: &[(RoomId, Arc<MediaPacket>)],
    ) -> bool {
        let first = recent.push_videos(batch);
        e.write(
            batch,
            first,
            &mut self.sends,
            &self.counters,
            self.now,
            &self.clock,
        )
    }

    /// A NACK of `(pid, blp)` for the video track, answered from `recent`.
    fn nack(&mut self, e: &mut ViewerEgress, recent: &RecentVideo, pid: u16, blp: u16) {
        e.resend_lost(
            1111,
            [(pid, blp)].into_iter(),
            Some(recent),
            &mut self.sends,
            &self.counters,
            self.now,
        );
    }

    /// Everything sent since the last call.
    fn sent(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.sends.flush(&self.counters);
        self.sink.take()
    }

    fn snapshot(&self) -> crate::metrics::MetricsSnapshot {
        let mut snap = crate::metrics::MetricsSnapshot::default();
        snap.add(&self.counters);
        snap
    }
}

/// The lowest sequence number in the viewer's video history.
fn first_in_history(e: &ViewerEgress) -> u16 {
    let history = &e.video.as_ref().unwrap().history;
    history
        .iter()
        .flatten()
        .map(|h| h.header.index)
        .min()
        .unwrap() as u16
}

/// Packets go out sealed to the viewer, then a sender report; NACKed ones go out again, byte
/// for byte, to wherever the viewer's authenticated RTCP now comes from; unknown ones not.
#[test]
fn resends_nacked_packets_on_the_viewers_current_path() {
    let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let mut rig = Rig::new();
    let mut e = egress(a, rig.now);
    let mut recent = RecentVideo::default();
    assert!(rig.write(&mut e, &mut recent, &packets(4, rig.now)));
    let sent = rig.sent();
    // Four media packets (payload + header + tag), then the first sender report.
    assert_eq!(sent.len(), 5, "{sent:?}");
    assert!(sent.iter().all(|(to, _)| *to == a));
    assert!(
        sent[..4]
            .iter()
            .all(|(_, d)| d.len() > 1000 && d[..] != [0x65; 1000][..])
    );
    let first_seq = first_in_history(&e);
    e.follow(b);
    rig.nack(&mut e, &recent, first_seq + 1, 0b10);
    rig.nack(&mut e, &recent, first_seq.wrapping_add(200), 0);
    let resent = rig.sent();
    assert_eq!(resent.len(), 2, "{resent:?}");
    assert_eq!(resent[0], (b, sent[1].1.clone()), "the same sealed bytes");
    assert_eq!(resent[1], (b, sent[3].1.clone()));
    let snap = rig.snapshot();
    assert_eq!((snap.nacks_received, snap.retransmissions), (3, 2));
}

/// Retransmissions are capped per second, whatever the NACKs ask.
#[test]
fn resends_are_capped_per_second() {
    let mut rig = Rig::new();
    let mut e = egress("127.0.0.1:4000".parse().unwrap(), rig.now);
    let mut recent = RecentVideo::default();
    rig.write(&mut e, &mut recent, &packets(16, rig.now));
    let first = first_in_history(&e);
    for _ in 0..100 {
        rig.nack(&mut e, &recent, first, 0x7fff);
    }
    assert_eq!(rig.snapshot().retransmissions, RESENDS_PER_SECOND);
}

/// Forwarding a batch to viewers takes no reference per viewer: a video packet is held by the
/// batch and once by the room's recent video, however many viewers it went to.
#[test]
fn forwarding_takes_no_reference_per_viewer() {
    let mut rig = Rig::new();
    let mut viewers: Vec<ViewerEgress> = (0..5)
        .map(|i| egress(SocketAddr::from(([127, 0, 0, 1], 4000 + i)), rig.now))
        .collect();
    let mut recent = RecentVideo::default();
    let batch = packets(8, rig.now);
    let first = recent.push_videos(&batch);
    for v in &mut viewers {
        assert!(v.write(
            &batch,
            first,
            &mut rig.sends,
            &rig.counters,
            rig.now,
            &rig.clock
        ));
    }
    assert_eq!(
        rig.sent().len(),
        5 * (8 + 1),
        "every packet and a report each"
    );
    assert!(batch.iter().all(|(_, p)| Arc::strong_count(p) == 2));
    drop(viewers);
    assert!(batch.iter().all(|(_, p)| Arc::strong_count(p) == 2));
}

/// A NACK is answered from the room's recent video while it still holds the packet; not once
/// the ring has moved past it, and not after a room switch (the places kept were the former
/// room's). A replayed GOP is held by the viewer itself and answered from there.
#[test]
fn nacks_are_answered_while_the_room_still_holds_the_packet() {
    let mut rig = Rig::new();
    let now = rig.now;
    let mut e = egress("127.0.0.1:4000".parse().unwrap(), now);
    let mut recent = RecentVideo::default();
    let batch = packets(4, now);
    rig.write(&mut e, &mut recent, &batch);
    let seq = first_in_history(&e);
    rig.sent();
    rig.nack(&mut e, &recent, seq, 0);
    assert_eq!(rig.sent().len(), 1);

    // The room's ring moves on past the packet (other viewers here are sent newer video).
    let mut moved = RecentVideo::default();
    let place = moved.push_videos(&batch);
    for _ in 0..RECENT_VIDEO / 4 {
        moved.push_videos(&packets(4, now));
    }
    assert!(moved.get(place).is_none());
    rig.nack(&mut e, &moved, seq, 0);
    assert_eq!(rig.sent().len(), 0, "gone from the ring");

    // A switch: the history's places are the former room's.
    e.resync();
    rig.nack(&mut e, &recent, seq, 0);
    assert_eq!(rig.sent().len(), 0, "forgotten at the switch");

    // A GOP replay is held by the viewer: answered with no ring at all.
    let gop: Vec<Arc<MediaPacket>> = packets(3, now).into_iter().map(|(_, p)| p).collect();
    assert_eq!(e.replay(&gop, &mut rig.sends, &rig.counters, now), 3000);
    assert_eq!(rig.sent().len(), 3, "the GOP went out");
    let replayed = first_in_history(&e);
    rig.nack(&mut e, &RecentVideo::default(), replayed, 0);
    assert_eq!(rig.sent().len(), 1);
}

#[test]
fn recent_video_places_count_video_packets_only() {
    let now = Instant::now();
    let mut recent = RecentVideo::default();
    assert!(recent.get(0).is_none(), "nothing pushed yet");
    let mut batch = packets(3, now);
    let audio = MediaPacket {
        source: SourceId(7),
        codec: Codec::Opus,
        seq: 1,
        timestamp: 960,
        marker: false,
        keyframe_start: false,
        arrival: now,
        capture: now,
        payload: vec![0xfc; 80].into(),
    };
    batch.insert(1, (RoomId(1), Arc::new(audio)));
    assert_eq!(recent.push_videos(&batch), 0);
    assert_eq!(recent.push_videos(&batch), 3, "three video packets a batch");
    assert!(Arc::ptr_eq(recent.get(4).unwrap(), &batch[2].1));
    assert!(recent.get(6).is_none(), "not pushed yet");
}
