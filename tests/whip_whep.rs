//! WHIP/WHEP behaviour of a real deadsfu process: ICE and DTLS variants, room rules, every
//! error status, bearer tokens, legacy routes, metrics and shutdown.

mod common;

use std::time::Duration;

use common::Sfu;
use deadsfu_client::cert::KeyType;
use deadsfu_client::{CandidateMode, Peer, PeerOptions, Role, StreamSpec, VideoCodec};
use reqwest::StatusCode;

const WAIT: Duration = Duration::from_secs(20);

async fn publish(sfu: &Sfu, room: &str, opts: PeerOptions) -> Peer {
    let mut p = Peer::connect(
        &sfu.url(&format!("/whip/{room}")),
        Role::Publish(StreamSpec::default()),
        opts,
    )
    .await
    .expect("publisher");
    p.wait_until("publisher connected", WAIT, |s| s.connected)
        .await
        .expect("publisher connects");
    p
}

async fn watch_ok(sfu: &Sfu, room: &str, opts: PeerOptions) -> Peer {
    let mut v = Peer::connect(&sfu.url(&format!("/whep/{room}")), Role::View, opts)
        .await
        .expect("viewer");
    let s = v
        .wait_until("60 video packets", WAIT, |s| {
            s.video.packets >= 60 && s.audio.packets >= 20
        })
        .await
        .expect("viewer receives media");
    assert!(s.video.keyframes >= 1);
    v
}

fn opts(candidates: CandidateMode) -> PeerOptions {
    PeerOptions {
        candidates,
        ..PeerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_without_candidates_connect_through_peer_reflexive() {
    let sfu = Sfu::start(&[]);
    let p = publish(&sfu, "prflx", opts(CandidateMode::None)).await;
    let v = watch_ok(&sfu, "prflx", opts(CandidateMode::None)).await;
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_candidates_connect() {
    let sfu = Sfu::start(&[]);
    let p = publish(&sfu, "trickle", opts(CandidateMode::Trickle)).await;
    let v = watch_ok(&sfu, "trickle", opts(CandidateMode::Trickle)).await;
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_peer_certificates_and_setup_active() {
    let sfu = Sfu::start(&[]);
    let rsa = PeerOptions {
        key_type: KeyType::Rsa,
        ..PeerOptions::default()
    };
    let p = publish(&sfu, "dtls", rsa.clone()).await;
    let ecdsa_active = PeerOptions {
        key_type: KeyType::Ecdsa,
        setup_active: true,
        ..PeerOptions::default()
    };
    let v1 = watch_ok(&sfu, "dtls", ecdsa_active).await;
    let rsa_active = PeerOptions {
        setup_active: true,
        ..rsa
    };
    let v2 = watch_ok(&sfu, "dtls", rsa_active).await;
    for peer in [v1, v2, p] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_publisher_gets_409_and_room_frees_on_delete() {
    let sfu = Sfu::start(&[]);
    let p = publish(&sfu, "busy", PeerOptions::default()).await;
    let err = Peer::connect(
        &sfu.url("/whip/busy"),
        Role::Publish(StreamSpec::default()),
        PeerOptions::default(),
    )
    .await
    .err()
    .expect("second publisher refused");
    assert!(
        matches!(&err, deadsfu_client::ClientError::Status { status: 409, body } if body.contains("\"status\":409")),
        "{err}"
    );
    assert_eq!(p.delete().await.unwrap(), 200);
    let p2 = publish(&sfu, "busy", PeerOptions::default()).await;
    assert_eq!(p2.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_publisher_is_freed_by_consent_timeout() {
    let sfu = Sfu::start(&["--idle-timeout", "2"]);
    let p = publish(&sfu, "vanish", PeerOptions::default()).await;
    let mut v = watch_ok(&sfu, "vanish", PeerOptions::default()).await;
    p.vanish().await;
    // The room takes a new publisher once the old one's consent has expired.
    let deadline = tokio::time::Instant::now() + WAIT;
    let p2 = loop {
        match Peer::connect(
            &sfu.url("/whip/vanish"),
            Role::Publish(StreamSpec::default()),
            PeerOptions::default(),
        )
        .await
        {
            Ok(p) => break p,
            Err(deadsfu_client::ClientError::Status { status: 409, .. }) => {
                assert!(tokio::time::Instant::now() < deadline, "room never freed");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    // The viewer stayed connected and gets the new publisher without renegotiating.
    let before = v.stats().video.packets;
    let s = v
        .wait_until("video from the new publisher", WAIT, |s| {
            s.video.packets >= before + 60
        })
        .await
        .unwrap();
    assert!(!s.closed);
    assert_eq!(s.video.ssrcs.len(), 1);
    assert_eq!(p2.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_that_cannot_take_the_publishers_codec_gets_422() {
    let sfu = Sfu::start(&[]);
    let mut p = Peer::connect(
        &sfu.url("/whip/vp8room"),
        Role::Publish(StreamSpec {
            codec: VideoCodec::Vp8,
            ..StreamSpec::default()
        }),
        PeerOptions::default(),
    )
    .await
    .unwrap();
    p.wait_until("publisher connected", WAIT, |s| s.connected)
        .await
        .unwrap();
    let h264_only = PeerOptions {
        view_codecs: vec![VideoCodec::H264],
        ..PeerOptions::default()
    };
    let err = Peer::connect(&sfu.url("/whep/vp8room"), Role::View, h264_only)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, deadsfu_client::ClientError::Status { status: 422, .. }),
        "{err}"
    );
    // A viewer that takes VP8 is served.
    let v = watch_ok(&sfu, "vp8room", PeerOptions::default()).await;
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_deadsfu_routes() {
    let sfu = Sfu::start(&[]);
    let mut p = Peer::connect(
        &sfu.url("/whip?room="),
        Role::Publish(StreamSpec::default()),
        PeerOptions::default(),
    )
    .await
    .unwrap();
    p.wait_until("publisher connected", WAIT, |s| s.connected)
        .await
        .unwrap();
    // An empty room name is mainroom, so a WHEP viewer of mainroom sees it too.
    let v1 = watch_ok(&sfu, "mainroom", PeerOptions::default()).await;
    let mut v2 = Peer::connect(
        &sfu.url("/whap?room=mainroom"),
        Role::View,
        PeerOptions::default(),
    )
    .await
    .unwrap();
    v2.wait_until("legacy viewer media", WAIT, |s| s.video.packets >= 60)
        .await
        .unwrap();
    for peer in [v1, v2, p] {
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
}

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtcp-mux\r\na=DIR\r\na=rtpmap:96 CODEC/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n";

fn offer(dir: &str, codec: &str) -> String {
    OFFER.replace("DIR", dir).replace("CODEC", codec)
}

async fn post(
    url: &str,
    ctype: &str,
    body: String,
    token: Option<&str>,
) -> (StatusCode, String, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", ctype)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, res.text().await.unwrap(), headers)
}

fn assert_problem(status: StatusCode, body: &str, headers: &reqwest::header::HeaderMap, want: u16) {
    assert_eq!(status.as_u16(), want, "body: {body}");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["status"], want);
    assert!(json["title"].as_str().is_some_and(|t| !t.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_has_a_problem_body() {
    let sfu = Sfu::start(&[]);
    let whip = sfu.url("/whip/errors");

    // A well-formed offer is accepted: the error cases below differ from it in one way each.
    let (s, answer, h) = post(&whip, "application/sdp", offer("sendonly", "H264"), None).await;
    assert_eq!(s, StatusCode::CREATED, "{answer}");
    assert!(
        answer.contains("a=candidate:") && answer.contains("127.0.0.1"),
        "{answer}"
    );
    let location = h.get("location").unwrap().to_str().unwrap().to_owned();
    let etag = h.get("etag").unwrap().to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    // Locations are absolute, on the name the client used.
    assert!(
        location.starts_with(&sfu.url("/session/")),
        "absolute Location: {location}"
    );
    let session = location.clone();

    let (s, b, h) = post(&whip, "application/sdp", "not sdp".into(), None).await;
    assert_problem(s, &b, &h, 400);
    // Errors never echo a parser's internals (its debug text once held a heap address).
    for broken in [
        offer("sendonly", "H264").replace("a=rtpmap:96 H264/90000", "a=rtpmap:99 "),
        offer("sendonly", "H264").replace("m=video 9", "m=video x"),
    ] {
        let (s, b, h) = post(&sfu.url("/whip/broken"), "application/sdp", broken, None).await;
        let expected = if s == 422 { 422 } else { 400 };
        assert_problem(s, &b, &h, expected);
        assert!(!b.contains("0x") && !b.contains("{ "), "{b}");
    }
    // Dots only are not a room name (encoded or not).
    for room in ["..", "%2e%2e", "."] {
        let (s, b, h) = post(
            &sfu.url(&format!("/whip/{room}")),
            "application/sdp",
            offer("sendonly", "H264"),
            None,
        )
        .await;
        // URL normalisation may turn the path into another route (405); never a session.
        assert!(s.is_client_error(), "{room}: {s}");
        if s == 400 {
            assert_problem(s, &b, &h, 400);
        }
    }
    let (s, b, h) = post(
        &sfu.url("/whip/second"),
        "application/sdp",
        offer("sendonly", "H265"),
        None,
    )
    .await;
    assert_problem(s, &b, &h, 422);
    let (s, b, h) = post(
        &sfu.url("/whip/third"),
        "application/sdp",
        offer("recvonly", "H264"),
        None,
    )
    .await;
    assert_problem(s, &b, &h, 422);
    let (s, b, h) = post(
        &sfu.url("/whep/fourth"),
        "application/sdp",
        offer("sendonly", "H264"),
        None,
    )
    .await;
    assert_problem(s, &b, &h, 422);
    let (s, b, h) = post(&whip, "text/plain", offer("sendonly", "H264"), None).await;
    assert_problem(s, &b, &h, 415);
    let huge = format!(
        "{}a=x-padding:{}\r\n",
        offer("sendonly", "H264"),
        "x".repeat(100_000)
    );
    let (s, b, h) = post(&whip, "application/sdp", huge, None).await;
    assert_problem(s, &b, &h, 413);
    let (s, b, h) = post(&whip, "application/sdp", offer("sendonly", "H264"), None).await;
    assert_problem(s, &b, &h, 409);
    let (s, b, h) = post(
        &sfu.url("/whip/bad%20room"),
        "application/sdp",
        offer("sendonly", "H264"),
        None,
    )
    .await;
    assert_problem(s, &b, &h, 400);

    let http = reqwest::Client::new();
    // PATCH: wrong content type, unknown session, trickle with a stale ETag, ICE restart
    // without If-Match, then a proper restart.
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
    let patch = |url: String, body: String, if_match: Option<&str>, ctype: &str| {
        let mut r = http.patch(url).header("content-type", ctype).body(body);
        if let Some(m) = if_match {
            r = r.header("if-match", m);
        }
        r.send()
    };
    let res = patch(session.clone(), frag.into(), None, "application/sdp")
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = patch(
        sfu.url("/session/00"),
        frag.into(),
        None,
        "application/trickle-ice-sdpfrag",
    )
    .await
    .unwrap();
    let (s, h) = (res.status(), res.headers().clone());
    assert_problem(s, &res.text().await.unwrap(), &h, 404);
    let res = patch(
        session.clone(),
        frag.into(),
        Some(&etag),
        "application/trickle-ice-sdpfrag",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 204);
    let res = patch(
        session.clone(),
        frag.into(),
        Some("\"stale\""),
        "application/trickle-ice-sdpfrag",
    )
    .await
    .unwrap();
    let (s, h) = (res.status(), res.headers().clone());
    assert_problem(s, &res.text().await.unwrap(), &h, 412);
    let restart = frag.replace("abcd", "wxyz");
    let res = patch(
        session.clone(),
        restart.clone(),
        None,
        "application/trickle-ice-sdpfrag",
    )
    .await
    .unwrap();
    let (s, h) = (res.status(), res.headers().clone());
    assert_problem(s, &res.text().await.unwrap(), &h, 428);
    // A wrong entity tag on a restart is a failed precondition, not a missing one.
    let res = patch(
        session.clone(),
        restart.clone(),
        Some("\"stale\""),
        "application/trickle-ice-sdpfrag",
    )
    .await
    .unwrap();
    let (s, h) = (res.status(), res.headers().clone());
    assert_problem(s, &res.text().await.unwrap(), &h, 412);
    // Credentials outside RFC 8839's lengths are refused.
    let long_ufrag = frag.replace("abcd", &"u".repeat(20_000));
    let res = patch(
        session.clone(),
        long_ufrag,
        Some("*"),
        "application/trickle-ice-sdpfrag",
    )
    .await
    .unwrap();
    let (s, h) = (res.status(), res.headers().clone());
    assert_problem(s, &res.text().await.unwrap(), &h, 400);
    let res = patch(
        session.clone(),
        restart,
        Some("*"),
        "application/trickle-ice-sdpfrag",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let new_etag = res
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/trickle-ice-sdpfrag"
    );
    let body = res.text().await.unwrap();
    assert!(
        body.contains("a=ice-ufrag:") && body.contains("a=ice-pwd:"),
        "{body}"
    );

    // DELETE ends it; a second DELETE finds nothing.
    assert_eq!(http.delete(&session).send().await.unwrap().status(), 200);
    let res = http.delete(&session).send().await.unwrap();
    let (s, h) = (res.status(), res.headers().clone());
    assert_problem(s, &res.text().await.unwrap(), &h, 404);

    // CORS preflight and WHIP's OPTIONS.
    let res = http
        .request(reqwest::Method::OPTIONS, &whip)
        .header("origin", "https://example.org")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(res.headers().get("accept-post").unwrap(), "application/sdp");
    let exposed = res
        .headers()
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap();
    for h in ["Location", "ETag", "Link"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    // The other routes pages on another origin call, with a token header or a JSON body.
    for (path, method) in [
        ("/api/rooms", "GET"),
        ("/api/rooms/events", "GET"),
        ("/session/abc/room", "POST"),
    ] {
        let res = http
            .request(reqwest::Method::OPTIONS, sfu.url(path))
            .header("origin", "https://example.org")
            .header("access-control-request-method", method)
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "OPTIONS {path}: {}",
            res.status()
        );
        let allowed = res
            .headers()
            .get("access-control-allow-methods")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(allowed.contains(method), "{path}: {allowed}");
        let headers = res
            .headers()
            .get("access-control-allow-headers")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(headers.contains("Authorization") && headers.contains("Content-Type"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_and_ice_server_links() {
    let sfu = Sfu::start(&[
        "--bearer-token",
        "s3cret",
        "--stun-server",
        "stun.example.net:3478",
        "--ice-server",
        "turn:turn.example.net",
    ]);
    let whip = sfu.url("/whip/auth");
    let (s, b, h) = post(&whip, "application/sdp", offer("sendonly", "H264"), None).await;
    assert_problem(s, &b, &h, 401);
    assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
    let (s, b, h) = post(
        &whip,
        "application/sdp",
        offer("sendonly", "H264"),
        Some("wrong"),
    )
    .await;
    assert_problem(s, &b, &h, 401);
    let (s, b, h) = post(
        &whip,
        "application/sdp",
        offer("sendonly", "H264"),
        Some("s3cret"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let links: Vec<_> = h
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        links,
        vec![
            "<stun:stun.example.net:3478>; rel=\"ice-server\"",
            "<turn:turn.example.net>; rel=\"ice-server\""
        ]
    );
    let session = h.get("location").unwrap().to_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    // ?access_token= works like the header.
    let (s, b, _) = post(
        &sfu.url("/whep/auth?access_token=s3cret"),
        "application/sdp",
        offer("recvonly", "H264"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // The session's own URL is its capability: no token needed to end it; an unknown one is
    // 404 whatever the token.
    assert_eq!(http.delete(&session).send().await.unwrap().status(), 200);
    assert_eq!(
        http.delete(sfu.url("/session/00112233445566778899aabbccddeeff"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Real peers with the token.
    let with_token = PeerOptions {
        token: Some("s3cret".into()),
        ..PeerOptions::default()
    };
    let p = publish(&sfu, "auth2", with_token.clone()).await;
    let v = watch_ok(&sfu, "auth2", with_token).await;
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_view_tokens_are_separate_rights() {
    let sfu = Sfu::start(&["--publish-token", "pub-t", "--view-token", "view-t"]);
    let whip = sfu.url("/whip/rights");
    let whep = sfu.url("/whep/rights");
    let cases = [
        (&whip, "sendonly", Some("view-t"), 401),
        (&whep, "recvonly", Some("pub-t"), 401),
        (&whep, "recvonly", None, 401),
        (&whip, "sendonly", Some("pub-t"), 201),
        (&whep, "recvonly", Some("view-t"), 201),
    ];
    for (url, dir, token, want) in cases {
        let (s, b, _) = post(url, "application/sdp", offer(dir, "H264"), token).await;
        assert_eq!(s.as_u16(), want, "{url} with {token:?}: {b}");
    }
    let http = reqwest::Client::new();
    let rooms = |t: Option<&str>| {
        let mut r = http.get(sfu.url("/api/rooms"));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(rooms(Some("pub-t")).await.unwrap().status(), 401);
    assert_eq!(rooms(Some("view-t")).await.unwrap().status(), 200);

    // Only a publish token: viewing is open.
    let open_view = Sfu::start(&["--publish-token", "pub-t"]);
    let (s, b, _) = post(
        &open_view.url("/whep/x"),
        "application/sdp",
        offer("recvonly", "H264"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_graceful_shutdown() {
    let sfu = Sfu::start(&[]);
    let p = publish(&sfu, "m", PeerOptions::default()).await;
    let v = watch_ok(&sfu, "m", PeerOptions::default()).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(sfu.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let text = http
        .get(sfu.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    assert!(value("deadsfu_packets_in_total") > 0);
    assert!(value("deadsfu_packets_out_total") > 0);
    assert_eq!(value("deadsfu_sessions{kind=\"publisher\"}"), 1);
    assert_eq!(value("deadsfu_sessions{kind=\"viewer\"}"), 1);
    assert!(text.contains("deadsfu_keyframe_requests_sent_total"));
    assert!(text.contains("deadsfu_nacks_received_total"));
    drop((p, v));
    assert!(sfu.terminate(), "deadsfu exits cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_repair_loss_on_both_legs() {
    let sfu = Sfu::start(&[]);
    // 5% of the publisher's RTP is lost on the way in: deadsfu NACKs it from the publisher.
    let p = publish(
        &sfu,
        "lossy",
        PeerOptions {
            drop_outgoing_percent: 5.0,
            ..PeerOptions::default()
        },
    )
    .await;
    // 5% is lost on the way to the viewer: the viewer's NACKs are served from deadsfu's buffer.
    let mut v = Peer::connect(
        &sfu.url("/whep/lossy"),
        Role::View,
        PeerOptions {
            drop_incoming_percent: 5.0,
            ..PeerOptions::default()
        },
    )
    .await
    .unwrap();
    let s = v
        .wait_until(
            "400 video packets, every gap repaired",
            Duration::from_secs(30),
            |s| s.video.distinct_seqs() >= 400 && s.video.gaps() == 0,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", v.stats()));
    assert!(s.video.packets >= 400);
    let http = reqwest::Client::new();
    let text = http
        .get(sfu.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let nacks: u64 = text
        .lines()
        .find(|l| l.starts_with("deadsfu_nacks_received_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    println!("viewer NACKs counted by deadsfu: {nacks}");
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
}
