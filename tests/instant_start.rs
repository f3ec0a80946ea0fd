//! Instant start, room switching, the idle picture and the rooms API, end to end with the str0m
//! client. The synthetic publishers ignore keyframe requests (as FTL does), so a viewer's first
//! picture can only come quickly from deadsfu's GOP cache.

mod common;

use std::time::{Duration, Instant};

use common::Sfu;
use deadsfu_client::{Peer, PeerOptions, Role, StreamSpec};

const WAIT: Duration = Duration::from_secs(20);

async fn publish(sfu: &Sfu, room: &str, spec: StreamSpec) -> Peer {
    let mut p = Peer::connect(
        &sfu.url(&format!("/whip/{room}")),
        Role::Publish(spec),
        PeerOptions::default(),
    )
    .await
    .expect("publisher");
    p.wait_until("publisher connected", WAIT, |s| s.connected)
        .await
        .unwrap();
    p
}

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
async fn late_viewer_starts_from_the_gop_cache() {
    let sfu = Sfu::start(&[]);
    // A 4 s keyframe interval: without a GOP cache a viewer would wait up to 4 s.
    let spec = StreamSpec {
        keyframe_interval: 120,
        ..StreamSpec::default()
    };
    let p = publish(&sfu, "gop", spec).await;
    let mut warm = viewer(&sfu, "gop").await;
    warm.wait_until("the first keyframe", WAIT, |s| s.video.keyframes >= 1)
        .await
        .unwrap();
    // Join well inside the GOP (1.5 s after its keyframe).
    let joined_after = warm.stats().video.first_keyframe_at.unwrap() + Duration::from_millis(1500);
    tokio::time::sleep_until(joined_after.into()).await;
    let posted = Instant::now();
    let mut late = viewer(&sfu, "gop").await;
    let s = late
        .wait_until("a keyframe for the late viewer", WAIT, |s| {
            s.video.keyframes >= 1
        })
        .await
        .unwrap();
    let ttff = s.video.first_keyframe_at.unwrap() - posted;
    println!("time to first keyframe with a 4 s keyframe interval: {ttff:?}");
    assert!(
        ttff < Duration::from_secs(2),
        "first keyframe after {ttff:?}"
    );
    // The cached GOP was replayed at once (~45 frames), then the live edge followed with no gap
    // and no duplicate.
    let s = late
        .wait_until("the live edge", WAIT, |s| {
            s.video.packets >= s.video.distinct_seqs() as u64 && s.video.packets >= 150
        })
        .await
        .unwrap();
    assert_eq!(s.video.gaps(), 0, "{s:?}");
    assert_eq!(s.video.duplicates, 0, "{s:?}");
    assert_eq!(s.video.ssrcs.len(), 1);
    for peer in [late, warm, p] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_switches_rooms_without_renegotiation() {
    let sfu = Sfu::start(&[]);
    let a = publish(
        &sfu,
        "a",
        StreamSpec {
            fill: 0xa1,
            ..StreamSpec::default()
        },
    )
    .await;
    let b = publish(
        &sfu,
        "b",
        StreamSpec {
            fill: 0xb2,
            ..StreamSpec::default()
        },
    )
    .await;
    let mut v = viewer(&sfu, "a").await;
    v.wait_until("room a", WAIT, |s| {
        s.video.last_fill == 0xa1 && s.video.packets >= 30
    })
    .await
    .unwrap();

    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/room", v.session.url))
        .header("content-type", "application/json")
        .body(r#"{"room":"b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let switched = Instant::now();
    let s = v
        .wait_until("room b's picture", Duration::from_secs(2), |s| {
            s.video.last_fill == 0xb2 && s.video.keyframes >= 2
        })
        .await
        .unwrap();
    println!(
        "room switch to first packet of the new room: {:?}",
        switched.elapsed()
    );

    // The legacy route switches back.
    let id = v.session.url.rsplit('/').next().unwrap().to_owned();
    let res = http
        .get(sfu.url(&format!("/switchRoom?room=a&subuuid={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let before = s.video.packets;
    let s = v
        .wait_until("room a again", WAIT, |s| {
            s.video.last_fill == 0xa1 && s.video.packets > before + 30
        })
        .await
        .unwrap();
    assert_eq!(s.video.ssrcs.len(), 1, "one SSRC throughout: {s:?}");
    assert_eq!(
        s.video.gaps(),
        0,
        "continuous sequence numbers across switches: {s:?}"
    );
    assert_eq!(s.audio.gaps(), 0);
    assert!(!s.closed);

    // Bad requests.
    let res = http
        .post(sfu.url("/session/ffff/room"))
        .header("content-type", "application/json")
        .body(r#"{"room":"b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = http
        .post(format!("{}/room", v.session.url))
        .header("content-type", "application/json")
        .body("{nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .post(format!("{}/room", a.session.url))
        .header("content-type", "application/json")
        .body(r#"{"room":"b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422, "a publisher cannot switch rooms");
    for peer in [v, a, b] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_room_shows_the_idle_clip_until_live() {
    let sfu = Sfu::start(&[]);
    let mut v = viewer(&sfu, "quiet").await;
    let s = v
        .wait_until("the idle clip", Duration::from_secs(5), |s| {
            s.video.keyframes >= 2 && s.video.packets >= 20
        })
        .await
        .unwrap();
    let idle_fill = s.video.last_fill;
    assert_ne!(idle_fill, 0xc3);

    let p = publish(
        &sfu,
        "quiet",
        StreamSpec {
            fill: 0xc3,
            ..StreamSpec::default()
        },
    )
    .await;
    v.wait_until("the live stream", WAIT, |s| s.video.last_fill == 0xc3)
        .await
        .unwrap();
    let live_at = v.stats().video.packets;
    assert_eq!(p.delete().await.unwrap(), 200);
    // About a second after live video stops, the clip comes back.
    let s = v
        .wait_until("the idle clip again", Duration::from_secs(5), |s| {
            s.video.packets > live_at && s.video.last_fill != 0xc3
        })
        .await
        .unwrap();
    assert_eq!(
        s.video.gaps(),
        0,
        "continuous across idle -> live -> idle: {s:?}"
    );
    assert_eq!(s.video.ssrcs.len(), 1);
    assert_eq!(v.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_idle_clip_when_disabled() {
    let sfu = Sfu::start(&["--idle-clip", "none"]);
    let mut v = viewer(&sfu, "quiet").await;
    v.wait_until("connected", WAIT, |s| s.connected)
        .await
        .unwrap();
    let waited = v
        .wait_until("any video", Duration::from_secs(2), |s| s.video.packets > 0)
        .await;
    assert!(waited.is_err(), "no idle video with --idle-clip none");
    assert_eq!(v.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_api_and_event_stream() {
    let sfu = Sfu::start(&[]);
    let p = publish(&sfu, "api", StreamSpec::default()).await;
    let v = viewer(&sfu, "api").await;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    let room = loop {
        let text = http
            .get(sfu.url("/api/rooms"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let room = json["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "api")
            .cloned();
        if let Some(r) = room.filter(|r| r["viewers"] == 1 && r["bitrate_bps"].as_u64() > Some(0)) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "room never showed live with a viewer: {json}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(room["live"], true);
    assert_eq!(room["codec"], "H264");

    let mut events = http.get(sfu.url("/api/rooms/events")).send().await.unwrap();
    assert_eq!(
        events.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
        .await
        .expect("an event")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(
        text.contains("event: rooms") && text.contains("\"name\":\"api\""),
        "{text}"
    );
    for peer in [v, p] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
}
