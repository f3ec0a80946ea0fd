//! FTL end to end: `deadsfu ftl-push` (ffmpeg-made H264 + Opus) into a real deadsfu, watched by
//! WHEP viewers (the str0m client).

mod common;

use std::time::Duration;

use common::{FtlPush, Sfu};
use deadsfu_client::{Peer, PeerOptions, Role, StreamSpec};

const WAIT: Duration = Duration::from_secs(20);

async fn viewer(sfu: &Sfu, room: &str) -> Peer {
    Peer::connect(
        &sfu.url(&format!("/whep/{room}")),
        Role::View,
        PeerOptions::default(),
    )
    .await
    .expect("viewer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ftl_channels_reach_their_viewers() {
    let sfu = Sfu::start(&[
        "--ftl-key",
        "1234-abcdefgh",
        "--ftl-key",
        "5678-ijklmnop",
        "--ftl-room",
        "5678=stage",
    ]);
    let mut early = viewer(&sfu, "1234").await;
    let _a = FtlPush::start(sfu.ftl_port, "1234-abcdefgh", &["--loop"]);
    let _b = FtlPush::start(sfu.ftl_port, "5678-ijklmnop", &["--loop"]);
    let mut staged = viewer(&sfu, "stage").await;
    for v in [&mut early, &mut staged] {
        let s = v
            .wait_until("FTL video and audio", WAIT, |s| {
                s.video.packets >= 150 && s.audio.packets >= 50
            })
            .await
            .unwrap();
        assert!(s.video.keyframes >= 1, "{s:?}");
        assert_eq!(s.video.payload_types.len(), 1);
    }
    // A viewer joining mid-stream gets a keyframe within one GOP (1 s here).
    let mut late = viewer(&sfu, "1234").await;
    let s = late
        .wait_until(
            "a keyframe for the late viewer",
            Duration::from_secs(5),
            |s| s.video.keyframes >= 1,
        )
        .await
        .unwrap();
    assert!(s.video.packets > 0);
    for v in [early, staged, late] {
        assert_eq!(v.delete().await.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_repair_deliberate_loss() {
    let sfu = Sfu::start(&["--ftl-key", "77-lossylossy"]);
    let mut v = viewer(&sfu, "77").await;
    let _push = FtlPush::start(
        sfu.ftl_port,
        "77-lossylossy",
        &["--loop", "--drop-percent", "5"],
    );
    let s = v
        .wait_until(
            "300 video packets with every gap repaired",
            Duration::from_secs(30),
            |s| s.video.packets >= 300 && s.video.gaps() == 0 && s.audio.gaps() == 0,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", v.stats()));
    assert!(s.video.distinct_seqs() >= 300);
    assert_eq!(v.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_and_second_publisher_are_refused_without_harm() {
    let keys = std::env::temp_dir().join(format!("deadsfu-ftl-keys-{}", std::process::id()));
    std::fs::write(&keys, "# channels\n900-rightsecret\n").unwrap();
    let sfu = Sfu::start(&["--ftl-keys-file", keys.to_str().unwrap()]);
    let mut v = viewer(&sfu, "900").await;
    let mut live = FtlPush::start(sfu.ftl_port, "900-rightsecret", &["--loop"]);
    v.wait_until("the live stream", WAIT, |s| s.video.packets >= 60)
        .await
        .unwrap();

    let (ok, log) = FtlPush::start(sfu.ftl_port, "900-wrongsecret", &[]).wait(WAIT);
    assert!(!ok && log.contains("405"), "wrong secret: {log}");
    let (ok, log) = FtlPush::start(sfu.ftl_port, "901-whatever", &[]).wait(WAIT);
    assert!(!ok && log.contains("401"), "unknown channel: {log}");
    let (ok, log) = FtlPush::start(sfu.ftl_port, "900-rightsecret", &[]).wait(WAIT);
    assert!(!ok && log.contains("406"), "second publisher: {log}");

    // WHIP and FTL share the room rule: the room is taken.
    let err = Peer::connect(
        &sfu.url("/whip/900"),
        Role::Publish(StreamSpec::default()),
        PeerOptions::default(),
    )
    .await
    .err()
    .expect("WHIP refused while FTL is live");
    assert!(
        matches!(err, deadsfu_client::ClientError::Status { status: 409, .. }),
        "{err}"
    );

    // The live stream was not disturbed.
    assert!(live.is_running());
    let before = v.stats().video.packets;
    let s = v
        .wait_until("the stream still flowing", WAIT, |s| {
            s.video.packets >= before + 60
        })
        .await
        .unwrap();
    assert_eq!(s.video.gaps(), 0);
    drop(live);
    let _ = std::fs::remove_file(keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_is_refused_while_whip_is_live() {
    let sfu = Sfu::start(&["--ftl-key", "31-whiproomkey"]);
    let mut p = Peer::connect(
        &sfu.url("/whip/31"),
        Role::Publish(StreamSpec::default()),
        PeerOptions::default(),
    )
    .await
    .unwrap();
    p.wait_until("WHIP publisher connected", WAIT, |s| s.connected)
        .await
        .unwrap();
    let (ok, log) = FtlPush::start(sfu.ftl_port, "31-whiproomkey", &[]).wait(WAIT);
    assert!(
        !ok && log.contains("406"),
        "FTL onto a WHIP-live room: {log}"
    );
    assert_eq!(p.delete().await.unwrap(), 200);
}
