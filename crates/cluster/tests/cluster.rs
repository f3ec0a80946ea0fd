//! In-process tests against a real TLS redis-server (Debian's `redis-server` package).

mod support;

use std::time::Duration;

use deadsfu_cluster::bundle_fetch::{FetchError, fetch_bundle};
use deadsfu_cluster::issue::revoke;
use deadsfu_cluster::status::{read_status, render};
use deadsfu_cluster::{
    Bundle, Claim, ClusterError, ClusterEvent, ClusterNode, JoinUrl, LeaseEvent, LeaseKind,
    NodeConfig, NodeLoad, NodeRecord, NodeState, RedisConn, Role, subscribe_events,
};
use support::{TestCluster, eventually, get};

fn node_config(id: &str) -> NodeConfig {
    NodeConfig {
        node_id: id.into(),
        hostname: format!("{id}.example.test"),
        https_port: 8443,
        public_addrs: vec!["127.0.0.1".into()],
        ftl_addr: Some("127.0.0.1:8084".into()),
        region: "test".into(),
        version: "0.0.0-test".into(),
        public_url: None,
        proxy_protocol: false,
        https_addr: None,
    }
}

fn with_token(url: &str, token: &str) -> String {
    let (before, rest) = url.split_once("access_token=").unwrap();
    let fragment = rest.split_once('#').map(|(_, f)| f).unwrap();
    format!("{before}access_token={token}#{fragment}")
}

#[tokio::test]
async fn node_fetches_bundle_through_pinned_url_and_registers() {
    let mut cluster = TestCluster::start().await;
    let url = cluster.issue(Role::Sfu, "sfu-1").await;
    let admin = cluster.connect(Role::Admin, "ops").await;

    let node = ClusterNode::join_url(&JoinUrl::parse(&url).unwrap(), node_config("sfu-1"))
        .await
        .expect("node joins");
    node.report_load(NodeLoad {
        rooms: 2,
        viewers: 7,
        publishers: 1,
        egress_bps: 1_000_000,
        cpu_percent: 12.5,
    });
    let record = eventually(Duration::from_secs(5), "node record with load", || {
        let admin = admin.clone();
        async move {
            let record = NodeRecord::from_json(&get(&admin, "deadsfu:node:sfu-1").await?)?;
            (record.load.viewers == 7).then_some(record)
        }
    })
    .await;
    assert_eq!(record.config.hostname, "sfu-1.example.test");
    assert_eq!(record.state, NodeState::Serving);
    assert_eq!(
        get(&admin, "deadsfu:host:sfu-1.example.test")
            .await
            .as_deref(),
        Some("sfu-1")
    );
    let status = read_status(&admin).await.unwrap();
    assert_eq!(status.nodes.len(), 1);
    assert!(render(&status).contains("sfu-1.example.test"));

    // Wrong token: 401, and the message names no token.
    let wrong = with_token(&url, &"0".repeat(64));
    let err = fetch_bundle(&JoinUrl::parse(&wrong).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");

    // Wrong pin: the TLS handshake is refused before any request is sent.
    let (without_pin, _) = url.split_once("#sha256=").unwrap();
    let bad_pin = format!("{without_pin}#sha256={}", "ab".repeat(32));
    let err = fetch_bundle(&JoinUrl::parse(&bad_pin).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Request { .. }), "{err}");
    assert!(!err.to_string().contains("access_token"), "{err}");

    // No pin: the private CA is not among the system roots.
    let err = fetch_bundle(&JoinUrl::parse(without_pin).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Request { .. }), "{err}");

    // Revoked: the same URL now gets 401.
    revoke(&cluster.cluster_dir(), "sfu-1").await.unwrap();
    let err = fetch_bundle(&JoinUrl::parse(&url).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");

    node.leave().await;
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn bearer_header_and_query_token_both_work_and_failures_get_401() {
    let mut cluster = TestCluster::start().await;
    let url = cluster.issue(Role::Sfu, "sfu-b").await;
    let token = url
        .split("access_token=")
        .nth(1)
        .unwrap()
        .split('#')
        .next()
        .unwrap()
        .to_string();
    let pin = url.split_once("#sha256=").unwrap().1;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let base = format!("https://{}/bundle", cluster.bootstrap_addr);
    let response = client.get(&base).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let bundle = Bundle::from_zip(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(bundle.settings.name, "sfu-b");
    for bad in [
        client.get(&base),
        client.get(&base).bearer_auth("nope"),
        client.post(format!("{base}?access_token={token}")),
        client.get(format!(
            "https://{}/other?access_token=x",
            cluster.bootstrap_addr
        )),
    ] {
        assert_eq!(bad.send().await.unwrap().status(), 401);
    }
    assert_eq!(pin.len(), 64);
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn acl_proxy_reads_only_and_sfu_writes_its_keys_and_publishes() {
    let mut cluster = TestCluster::start().await;
    let sfu = cluster.connect(Role::Sfu, "sfu-1").await;
    let proxy = cluster.connect(Role::Proxy, "proxy-1").await;
    let admin_bundle = cluster.bundle(Role::Admin, "ops").await;
    let mut events = subscribe_events(&admin_bundle).await.unwrap();

    let mut s = sfu.manager();
    let () = redis::cmd("SET")
        .arg("deadsfu:room:r1")
        .arg("sfu-1")
        .query_async(&mut s)
        .await
        .expect("sfu writes room keys");
    let err = redis::cmd("SET")
        .arg("deadsfu:ftlkey:ch")
        .arg("x")
        .query_async::<()>(&mut s)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some("NOPERM"),
        "sfu must not write stream keys: {err}"
    );
    let err = redis::cmd("SET")
        .arg("elsewhere")
        .arg("x")
        .query_async::<()>(&mut s)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    let err = redis::cmd("FLUSHALL")
        .query_async::<()>(&mut s)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");

    let event = ClusterEvent::NodeUp {
        node: "sfu-1".into(),
    };
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("deadsfu:events")
        .arg(event.to_json())
        .query_async(&mut s)
        .await
        .expect("sfu publishes events");
    assert!(receivers >= 1);
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event arrives")
        .unwrap();
    assert_eq!(got, event);

    let mut p = proxy.manager();
    let value: Option<String> = redis::cmd("GET")
        .arg("deadsfu:room:r1")
        .query_async(&mut p)
        .await
        .expect("proxy reads");
    assert_eq!(value.as_deref(), Some("sfu-1"));
    for cmd in [
        redis::cmd("SET")
            .arg("deadsfu:room:r1")
            .arg("proxy")
            .clone(),
        redis::cmd("DEL").arg("deadsfu:room:r1").clone(),
        redis::cmd("PUBLISH").arg("deadsfu:events").arg("x").clone(),
    ] {
        let err = cmd.query_async::<()>(&mut p).await.unwrap_err();
        assert_eq!(err.code(), Some("NOPERM"), "{err}");
    }
    let err = redis::cmd("EVAL")
        .arg("return redis.call('SET', KEYS[1], 'x')")
        .arg(1)
        .arg("deadsfu:room:r1")
        .query_async::<()>(&mut p)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    // A proxy bundle cannot register a node either.
    let proxy_bundle = cluster.bundle(Role::Proxy, "proxy-2").await;
    assert!(
        ClusterNode::join_bundle(&proxy_bundle, node_config("p"))
            .await
            .is_err()
    );
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn redis_refuses_plaintext_and_clients_without_certificate() {
    let mut cluster = TestCluster::start().await;
    let bundle = cluster.bundle(Role::Admin, "ops").await;

    // Plain text: the TLS port never answers a RESP PING with PONG.
    let plain = redis::Client::open(format!("redis://{}/", cluster.redis_addr)).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let mut conn = plain.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    assert!(!matches!(result, Ok(Ok(_))), "plain-text PING answered");

    // TLS with the right CA and password but no client certificate.
    let (host, port) = cluster.redis_addr.split_once(':').unwrap();
    let info = redis::ConnectionAddr::TcpTls {
        host: host.into(),
        port: port.parse().unwrap(),
        insecure: false,
        tls_params: None,
    };
    use redis::IntoConnectionInfo;
    let info = info.into_connection_info().unwrap().set_redis_settings(
        redis::RedisConnectionInfo::default()
            .set_username("admin")
            .set_password(&bundle.settings.password),
    );
    let client = redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(bundle.ca_cert_pem.as_bytes().to_vec()),
        },
    )
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    assert!(
        !matches!(result, Ok(Ok(_))),
        "certificate-less client served"
    );

    // The bundle itself works.
    let conn = RedisConn::connect(&bundle).await.unwrap();
    let mut m = conn.manager();
    let pong: String = redis::cmd("PING").query_async(&mut m).await.unwrap();
    assert_eq!(pong, "PONG");
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn two_nodes_race_for_one_room_and_exactly_one_wins() {
    let mut cluster = TestCluster::start().await;
    let a_bundle = cluster.bundle(Role::Sfu, "node-a").await;
    let b_bundle = cluster.bundle(Role::Sfu, "node-b").await;
    let a = ClusterNode::join_bundle(&a_bundle, node_config("node-a"))
        .await
        .unwrap();
    let b = ClusterNode::join_bundle(&b_bundle, node_config("node-b"))
        .await
        .unwrap();
    for round in 0..20 {
        let room = format!("room-{round}");
        let (ra, rb) = tokio::join!(a.claim_room(&room), b.claim_room(&room));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let winners = [&ra, &rb].iter().filter(|c| ***c == Claim::Won).count();
        assert_eq!(winners, 1, "round {round}: {ra:?} {rb:?}");
        match (&ra, &rb) {
            (Claim::Won, Claim::HeldBy(owner)) => assert_eq!(owner, "node-a"),
            (Claim::HeldBy(owner), Claim::Won) => assert_eq!(owner, "node-b"),
            other => panic!("{other:?}"),
        }
        // Claiming again is idempotent for the owner.
        let again = if ra == Claim::Won { &a } else { &b };
        assert_eq!(again.claim_room(&room).await.unwrap(), Claim::Won);
    }
    // FTL channels: same rule, and the lease names the winner's FTL address.
    let (fa, fb) = tokio::join!(
        a.claim_ftl("chan", "127.0.0.1:1001"),
        b.claim_ftl("chan", "127.0.0.1:1002")
    );
    assert_eq!(
        [fa.unwrap(), fb.unwrap()]
            .iter()
            .filter(|c| **c == Claim::Won)
            .count(),
        1
    );
    a.leave().await;
    b.leave().await;
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn dropped_node_loses_record_and_leases_within_five_seconds() {
    let mut cluster = TestCluster::start().await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let bundle = cluster.bundle(Role::Sfu, "dies").await;
    let node = ClusterNode::join_bundle(&bundle, node_config("dies"))
        .await
        .unwrap();
    assert_eq!(node.claim_room("r").await.unwrap(), Claim::Won);
    assert_eq!(
        node.claim_ftl("c", "127.0.0.1:8084").await.unwrap(),
        Claim::Won
    );
    // Outlive one TTL to show the heartbeat keeps them.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for key in [
        "deadsfu:node:dies",
        "deadsfu:room:r",
        "deadsfu:ftl:c",
        "deadsfu:host:dies.example.test",
    ] {
        assert!(get(&admin, key).await.is_some(), "{key} kept alive");
    }
    drop(node);
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(5), "dead node's keys expire", || {
        let admin = admin.clone();
        async move {
            for key in [
                "deadsfu:node:dies",
                "deadsfu:room:r",
                "deadsfu:ftl:c",
                "deadsfu:host:dies.example.test",
            ] {
                if get(&admin, key).await.is_some() {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn draining_leaving_and_events() {
    let mut cluster = TestCluster::start().await;
    let admin_bundle = cluster.bundle(Role::Admin, "ops").await;
    let admin = RedisConn::connect(&admin_bundle).await.unwrap();
    let mut events = subscribe_events(&admin_bundle).await.unwrap();
    let bundle = cluster.bundle(Role::Sfu, "sfu-d").await;
    let node = ClusterNode::join_bundle(&bundle, node_config("sfu-d"))
        .await
        .unwrap();
    node.claim_room("r").await.unwrap();

    // Stream keys: stored by the admin, read by the node.
    let mut m = admin.manager();
    let () = redis::cmd("SET")
        .arg("deadsfu:ftlkey:chan")
        .arg("s3cret-key")
        .query_async(&mut m)
        .await
        .unwrap();
    assert_eq!(
        node.ftl_key("chan").await.unwrap().as_deref(),
        Some("s3cret-key")
    );
    assert_eq!(node.ftl_key("other").await.unwrap(), None);

    node.set_draining().await.unwrap();
    let record = NodeRecord::from_json(&get(&admin, "deadsfu:node:sfu-d").await.unwrap()).unwrap();
    assert_eq!(record.state, NodeState::Draining);
    node.leave().await;
    assert_eq!(get(&admin, "deadsfu:node:sfu-d").await, None);
    assert_eq!(get(&admin, "deadsfu:room:r").await, None);
    assert_eq!(get(&admin, "deadsfu:host:sfu-d.example.test").await, None);

    let mut seen = Vec::new();
    let expected = [
        ClusterEvent::LeaseTaken {
            kind: LeaseKind::Room,
            name: "r".into(),
            node: "sfu-d".into(),
        },
        ClusterEvent::NodeDraining {
            node: "sfu-d".into(),
        },
        ClusterEvent::LeaseReleased {
            kind: LeaseKind::Room,
            name: "r".into(),
            node: "sfu-d".into(),
        },
        ClusterEvent::NodeDown {
            node: "sfu-d".into(),
        },
    ];
    while !expected.iter().all(|e| seen.contains(e)) {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(event)) => seen.push(event),
            other => panic!("events missing; got {seen:?}, then {other:?}"),
        }
    }
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn redis_restart_nodes_reregister_and_retake_leases_without_stealing() {
    let mut cluster = TestCluster::start().await;
    let admin_bundle = cluster.bundle(Role::Admin, "ops").await;
    let admin = RedisConn::connect(&admin_bundle).await.unwrap();
    let a_bundle = cluster.bundle(Role::Sfu, "rs-a").await;
    let b_bundle = cluster.bundle(Role::Sfu, "rs-b").await;
    let a = ClusterNode::join_bundle(&a_bundle, node_config("rs-a"))
        .await
        .unwrap();
    let b = ClusterNode::join_bundle(&b_bundle, node_config("rs-b"))
        .await
        .unwrap();
    assert_eq!(a.claim_room("ra").await.unwrap(), Claim::Won);
    assert_eq!(b.claim_room("rb").await.unwrap(), Claim::Won);

    // Restart with the data gone, as after a failover to an empty replica.
    cluster.redis.stop();
    eventually(Duration::from_secs(5), "nodes notice the outage", || {
        let down = !a.redis_reachable() && !b.redis_reachable();
        async move { down.then_some(()) }
    })
    .await;
    // New rooms during the outage: answered at once, taken when Redis is back.
    let asked = std::time::Instant::now();
    assert!(matches!(
        a.claim_room("during").await,
        Err(ClusterError::Unavailable)
    ));
    assert!(asked.elapsed() < Duration::from_millis(500));
    let _ = std::fs::remove_file(cluster.cluster_dir().join("redis/data/dump.rdb"));
    cluster.redis.restart().await;

    eventually(
        Duration::from_secs(8),
        "nodes re-register and re-take leases",
        || {
            let admin = admin.clone();
            async move {
                for (key, owner) in [
                    ("deadsfu:room:ra", Some("rs-a")),
                    ("deadsfu:room:rb", Some("rs-b")),
                    ("deadsfu:room:during", Some("rs-a")),
                    ("deadsfu:host:rs-a.example.test", Some("rs-a")),
                    ("deadsfu:node:rs-a", None),
                    ("deadsfu:node:rs-b", None),
                ] {
                    let value = support::try_get(&admin, key).await?;
                    if owner.is_some_and(|o| o != value) {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    assert!(a.redis_reachable() && b.redis_reachable());

    // Another owner took node-a's room meanwhile: node-a must not take it back.
    let mut lost = a.lease_events();
    let mut m = admin.manager();
    let () = redis::cmd("SET")
        .arg("deadsfu:room:ra")
        .arg("node-z")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut m)
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), lost.recv())
        .await
        .expect("lease loss reported")
        .unwrap();
    assert_eq!(
        event,
        LeaseEvent::Lost {
            kind: LeaseKind::Room,
            name: "ra".into(),
            owner: "node-z".into()
        }
    );
    assert_eq!(a.lease_conflicts(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get(&admin, "deadsfu:room:ra").await.as_deref(),
        Some("node-z")
    );

    // Logged once per outage, not once per beat.
    let logs = support::captured_logs();
    let outage_lines = logs
        .lines()
        .filter(|l| l.contains("Redis unreachable") && l.contains("rs-a"))
        .count();
    assert_eq!(outage_lines, 1, "outage logged {outage_lines} times");
    a.leave().await;
    b.leave().await;
    cluster.assert_logs_clean();
}
