//! The egress alone: sealing, NACK history and budgets, with a recording sink.
use super::*;
use crate::send_batch::RecordingSink;
use crate::srtp::tests::test_keys;
use deadsfu_media::SourceId;

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

/// Packets go out sealed to the viewer, then a sender report; NACKed ones go out again, byte
/// for byte, to wherever the viewer's authenticated RTCP now comes from; unknown ones not.
#[test]
fn resends_nacked_packets_on_the_viewers_current_path() {
    let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let now = Instant::now();
    let clock = WallClock::new(now, SystemTime::now());
    let sink = RecordingSink::default();
    let mut sends = SendBatch::new(Box::new(sink.clone()));
    let counters = Counters::default();
    let mut e = egress(a, now);
    assert!(e.write(&packets(4, now), &mut sends, &counters, now, &clock));
    sends.flush(&counters);
    let sent = sink.take();
    // Four media packets (payload + header + tag), then the first sender report.
    assert_eq!(sent.len(), 5, "{sent:?}");
    assert!(sent.iter().all(|(to, _)| *to == a));
    assert!(
        sent[..4]
            .iter()
            .all(|(_, d)| d.len() > 1000 && d[..] != [0x65; 1000][..])
    );
    let first_seq = e
        .video
        .as_ref()
        .unwrap()
        .history
        .iter()
        .flatten()
        .map(|h| h.index)
        .min()
        .unwrap() as u16;
    e.follow(b);
    e.resend_lost(
        1111,
        [(first_seq + 1, 0b10)].into_iter(),
        &mut sends,
        &counters,
        now,
    );
    e.resend_lost(
        1111,
        [(first_seq.wrapping_add(200), 0)].into_iter(),
        &mut sends,
        &counters,
        now,
    );
    sends.flush(&counters);
    let resent = sink.take();
    assert_eq!(resent.len(), 2, "{resent:?}");
    assert_eq!(resent[0], (b, sent[1].1.clone()), "the same sealed bytes");
    assert_eq!(resent[1], (b, sent[3].1.clone()));
    let mut snap = crate::metrics::MetricsSnapshot::default();
    snap.add(&counters);
    assert_eq!((snap.nacks_received, snap.retransmissions), (3, 2));
}

/// Retransmissions are capped per second, whatever the NACKs ask.
#[test]
fn resends_are_capped_per_second() {
    let now = Instant::now();
    let clock = WallClock::new(now, SystemTime::now());
    let sink = RecordingSink::default();
    let mut sends = SendBatch::new(Box::new(sink.clone()));
    let counters = Counters::default();
    let mut e = egress("127.0.0.1:4000".parse().unwrap(), now);
    e.write(&packets(16, now), &mut sends, &counters, now, &clock);
    let first = e
        .video
        .as_ref()
        .unwrap()
        .history
        .iter()
        .flatten()
        .map(|h| h.index)
        .min()
        .unwrap() as u16;
    for _ in 0..100 {
        e.resend_lost(
            1111,
            [(first, 0x7fff)].into_iter(),
            &mut sends,
            &counters,
            now,
        );
    }
    let mut snap = crate::metrics::MetricsSnapshot::default();
    snap.add(&counters);
    assert_eq!(snap.retransmissions, RESENDS_PER_SECOND);
}
