//! End to end through a real deadsfu process with the str0m-based client: a synthetic
//! H264 + Opus publisher, several WHEP viewers, publisher changes.

mod common;

use std::time::Duration;

use common::Sfu;
use deadsfu_client::{Peer, PeerOptions, Role, StreamSpec};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_receive_continuous_stream_across_publishers() {
    let sfu = Sfu::start(&[]);
    let mut viewers = Vec::new();
    for _ in 0..3 {
        viewers.push(
            Peer::connect(&sfu.url("/whep/fan"), Role::View, PeerOptions::default())
                .await
                .expect("viewer"),
        );
    }
    let mut publisher = Peer::connect(
        &sfu.url("/whip/fan"),
        Role::Publish(StreamSpec::default()),
        PeerOptions::default(),
    )
    .await
    .expect("publisher");
    publisher
        .wait_until("publisher connected", WAIT, |s| s.connected)
        .await
        .unwrap();
    for v in &mut viewers {
        let s = v
            .wait_until("100 video and 50 audio packets", WAIT, |s| {
                s.video.packets >= 100 && s.audio.packets >= 50
            })
            .await
            .unwrap();
        assert!(
            s.video.keyframes >= 1,
            "the first video packet is a keyframe"
        );
    }

    // The publisher leaves; a new one (other SSRCs, other sequence numbers) arrives.
    assert_eq!(publisher.delete().await.unwrap(), 200);
    let before: Vec<u64> = viewers.iter().map(|v| v.stats().video.packets).collect();
    let mut second = Peer::connect(
        &sfu.url("/whip/fan"),
        Role::Publish(StreamSpec::default()),
        PeerOptions::default(),
    )
    .await
    .expect("second publisher");
    second
        .wait_until("second publisher connected", WAIT, |s| s.connected)
        .await
        .unwrap();
    for (v, before) in viewers.iter_mut().zip(before) {
        let s = v
            .wait_until("video from the second publisher", WAIT, |s| {
                s.video.packets >= before + 100
            })
            .await
            .unwrap();
        assert_eq!(s.video.ssrcs.len(), 1, "one SSRC toward the viewer: {s:?}");
        assert_eq!(s.audio.ssrcs.len(), 1, "one audio SSRC toward the viewer");
        assert_eq!(s.video.gaps(), 0, "continuous video sequence numbers");
        assert_eq!(s.audio.gaps(), 0, "continuous audio sequence numbers");
        assert!(!s.closed, "viewer stayed connected");
    }
    assert_eq!(second.delete().await.unwrap(), 200);
    for v in viewers {
        assert_eq!(v.delete().await.unwrap(), 200);
    }
}
