//! Per-node Redis users against a real TLS redis-server: each sfu name may write only its own
//! `node:` and `host:` keys beside the shared ones, revoking drops its user, readers believe a
//! `host:` lease only with a live matching node record, and bundles from before per-node
//! users keep working.

mod support;

use std::time::Duration;

use deadsfu_cluster::Bundle;
use deadsfu_cluster::issue::{IssueError, NameMeta, issue, issue_expiring, revoke};
use deadsfu_cluster::status::read_status;
use deadsfu_cluster::{
    Claim, ClusterError, ClusterNode, NodeConfig, NodeRecord, RedisConn, Role, host_owner,
    live_nodes, node_record::unix_ms_now,
};
use support::{TestCluster, eventually, get, query};

fn node_config(id: &str, hostname: &str) -> NodeConfig {
    NodeConfig {
        node_id: id.into(),
        hostname: hostname.into(),
        https_port: 8443,
        public_addrs: vec!["127.0.0.1".into()],
        ftl_addr: None,
        region: "test".into(),
        version: "0.0.0-test".into(),
        public_url: None,
        proxy_protocol: false,
        https_addr: None,
    }
}

async fn run(conn: &RedisConn, cmd: &redis::Cmd) -> Result<redis::Value, redis::RedisError> {
    query(conn, cmd).await
}

fn set(key: &str, value: &str) -> redis::Cmd {
    redis::cmd("SET").arg(key).arg(value).clone()
}

fn del(key: &str) -> redis::Cmd {
    redis::cmd("DEL").arg(key).clone()
}

/// Refused by the ACL: NOPERM, or inside a script Redis 7.0's "can't access" script error.
async fn assert_noperm(conn: &RedisConn, cmd: redis::Cmd, what: &str) {
    let err = run(conn, &cmd).await.expect_err(what);
    let text = err.to_string();
    assert!(
        err.code() == Some("NOPERM")
            || text.contains("NOPERM")
            || text.contains("user executing the script can't access"),
        "{what}: want NOPERM, got {err}"
    );
}

async fn acl_users(admin: &RedisConn) -> Vec<String> {
    query(admin, redis::cmd("ACL").arg("USERS")).await.unwrap()
}

#[tokio::test]
async fn a_node_user_cannot_write_another_nodes_node_or_host_key() {
    let mut cluster = TestCluster::start().await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let a = cluster.sfu_bundle("node-a", "a.example.test").await;
    let b = cluster.sfu_bundle("node-b", "b.example.test").await;
    assert_eq!(a.settings.user, "sfu-node-a");
    assert_eq!(
        (a.node_id(), a.hostname()),
        (Some("node-a"), Some("a.example.test"))
    );
    let users = acl_users(&admin).await;
    assert!(
        users.contains(&"sfu-node-a".to_string()) && users.contains(&"sfu-node-b".to_string()),
        "{users:?}"
    );
    assert!(
        !users.contains(&"sfu".to_string()),
        "no shared sfu user: {users:?}"
    );

    let node_b = ClusterNode::join_bundle(&b, node_config("node-b", "b.example.test"))
        .await
        .expect("node b joins with its own bundle");
    let conn_a = RedisConn::connect(&a).await.unwrap();

    // Another node's keys: neither written, nor deleted, nor extended, nor reached by a script.
    for key in ["deadsfu:node:node-b", "deadsfu:host:b.example.test"] {
        assert_noperm(&conn_a, set(key, "node-a"), &format!("SET {key}")).await;
        assert_noperm(&conn_a, del(key), &format!("DEL {key}")).await;
        assert_noperm(
            &conn_a,
            redis::cmd("PEXPIRE").arg(key).arg(1).clone(),
            &format!("PEXPIRE {key}"),
        )
        .await;
        assert_noperm(
            &conn_a,
            redis::cmd("EVAL")
                .arg("return redis.call('DEL', KEYS[1])")
                .arg(1)
                .arg(key)
                .clone(),
            &format!("EVAL declaring {key}"),
        )
        .await;
        assert_noperm(
            &conn_a,
            redis::cmd("EVAL")
                .arg(format!("return redis.call('SET', '{key}', 'node-a')"))
                .arg(0)
                .clone(),
            &format!("EVAL touching {key} undeclared"),
        )
        .await;
        // Nor a not-yet-registered node's or hostname's keys.
        assert_noperm(&conn_a, set("deadsfu:node:node-c", "x"), "SET node:node-c").await;
        assert_noperm(
            &conn_a,
            set("deadsfu:host:c.example.test", "node-a"),
            "SET host:c",
        )
        .await;
    }
    // But read for routing.
    let record = get(&conn_a, "deadsfu:node:node-b")
        .await
        .expect("reads node-b");
    assert!(NodeRecord::from_json(&record).is_some());
    assert_eq!(
        get(&conn_a, "deadsfu:host:b.example.test").await.as_deref(),
        Some("node-b")
    );
    // Node b's keys are untouched.
    assert_eq!(
        get(&admin, "deadsfu:host:b.example.test").await.as_deref(),
        Some("node-b")
    );

    // Its own node and host keys, and the shared families, it writes.
    for key in [
        "deadsfu:node:node-a",
        "deadsfu:host:a.example.test",
        "deadsfu:room:r1",
        "deadsfu:ftl:c1",
        "deadsfu:cert:a.example.test",
        "deadsfu:acme:lock:a.example.test",
        "deadsfu:acme:challenge:tok",
    ] {
        run(&conn_a, &set(key, "node-a"))
            .await
            .unwrap_or_else(|e| panic!("SET {key}: {e}"));
        run(&conn_a, &del(key))
            .await
            .unwrap_or_else(|e| panic!("DEL {key}: {e}"));
    }
    assert_noperm(&conn_a, set("deadsfu:ftlkey:c1", "x"), "SET ftlkey").await;
    run(
        &conn_a,
        redis::cmd("PUBLISH").arg("deadsfu:events").arg("{}"),
    )
    .await
    .expect("publishes events");

    // Joining as node b with node a's credentials, bypassing the bundle check, is refused by
    // Redis itself.
    let err = ClusterNode::join(
        RedisConn::connect(&a).await.unwrap(),
        node_config("node-b", "b.example.test"),
    )
    .await
    .err()
    .expect("cannot register as node-b");
    assert!(
        matches!(&err, ClusterError::Redis(m) if m.to_ascii_uppercase().contains("NOPERM")),
        "{err}"
    );

    // Its own identity joins, and the heartbeat keeps its keys.
    let node_a = ClusterNode::join_bundle(&a, node_config("node-a", "a.example.test"))
        .await
        .expect("node a joins");
    assert_eq!(node_a.claim_room("r-a").await.unwrap(), Claim::Won);
    // Past one TTL: the heartbeat's scripts refreshed the record and both leases.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(node_a.redis_reachable());
    assert!(get(&admin, "deadsfu:node:node-a").await.is_some());
    assert_eq!(
        get(&admin, "deadsfu:room:r-a").await.as_deref(),
        Some("node-a")
    );
    assert_eq!(
        get(&admin, "deadsfu:host:a.example.test").await.as_deref(),
        Some("node-a")
    );
    assert_eq!(node_a.lease_conflicts(), 0);
    node_a.leave().await;
    node_b.leave().await;
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn a_bound_bundle_refuses_another_identity_and_issue_checks_hostnames() {
    let mut cluster = TestCluster::start().await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let a = cluster.sfu_bundle("node-a", "a.example.test").await;
    for (config, what) in [
        (node_config("node-x", "a.example.test"), "node id"),
        (node_config("node-a", "x.example.test"), "hostname"),
    ] {
        match ClusterNode::join_bundle(&a, config).await {
            Err(ClusterError::IdentityMismatch {
                what: got,
                configured,
                bundle,
            }) => {
                assert_eq!(got, what);
                assert!(configured.starts_with(if what == "node id" { "node-x" } else { "x." }));
                assert!(bundle == "node-a" || bundle == "a.example.test");
            }
            Err(other) => panic!("{what}: {other}"),
            Ok(_) => panic!("{what}: joined"),
        }
    }
    assert_eq!(get(&admin, "deadsfu:node:node-x").await, None);
    // DNS names compare without case; the bundle's spelling is recorded.
    let node = ClusterNode::join_bundle(&a, node_config("node-a", "A.Example.TEST"))
        .await
        .unwrap();
    assert_eq!(node.hostname(), "a.example.test");
    assert_eq!(
        get(&admin, "deadsfu:host:a.example.test").await.as_deref(),
        Some("node-a")
    );
    node.leave().await;

    let dir = cluster.cluster_dir();
    // The hostname defaults to the name, in lower case.
    let issued = issue(&dir, Role::Sfu, "Node-D", None).await.unwrap();
    assert_eq!(issued.hostname.as_deref(), Some("node-d"));
    for bad in [
        "*.example.test",
        "a?.test",
        "a[b].test",
        "a\\b",
        "a b",
        ".a.test",
        "a.test.",
        "",
    ] {
        assert!(
            matches!(
                issue(&dir, Role::Sfu, "node-e", Some(bad)).await,
                Err(IssueError::BadHostname(_))
            ),
            "{bad:?}"
        );
    }
    for bad in ["node*", "n?", "n[1]", "n\\1", "n 1"] {
        assert!(
            matches!(
                issue(&dir, Role::Sfu, bad, None).await,
                Err(IssueError::BadName(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        issue(&dir, Role::Proxy, "proxy-1", Some("p.example.test")).await,
        Err(IssueError::HostnameNotForRole(Role::Proxy))
    ));
    // One hostname, one name: two users able to write one `host:` key would defeat the grant.
    assert!(matches!(
        issue(&dir, Role::Sfu, "node-f", Some("A.example.test")).await,
        Err(IssueError::HostnameInUse { name, .. }) if name == "node-a"
    ));
    // Re-issuing a name keeps or changes its own hostname.
    issue(&dir, Role::Sfu, "node-a", Some("a2.example.test"))
        .await
        .unwrap();
    issue(&dir, Role::Sfu, "node-f", Some("a.example.test"))
        .await
        .unwrap();
    assert!(!dir.join("names/node-e").exists());
    cluster.assert_logs_clean();
}

/// Issuing a name updates Redis's users one by one: the connections (and event subscriptions)
/// of the nodes already running stay open, where Redis 7.0's `ACL LOAD` would close them all.
#[tokio::test]
async fn issuing_a_name_closes_no_running_nodes_connection() {
    let mut cluster = TestCluster::start().await;
    let a = cluster.sfu_bundle("node-a", "a.example.test").await;
    let conn_a = RedisConn::connect(&a).await.unwrap();
    let client_id = |conn: RedisConn| async move {
        // No retry: a closed connection must show as an error or a new id.
        let mut m = conn.manager();
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async::<i64>(&mut m)
            .await
    };
    let before = client_id(conn_a.clone()).await.unwrap();
    cluster.sfu_bundle("node-b", "b.example.test").await;
    cluster.connect(Role::Proxy, "edge-1").await;
    assert_eq!(
        client_id(conn_a.clone()).await.ok(),
        Some(before),
        "node a's connection survived two issues"
    );
    // And the new user is there, with its grants.
    let b = cluster.sfu_bundle("node-b", "b.example.test").await;
    let conn_b = RedisConn::connect(&b).await.unwrap();
    assert_noperm(&conn_b, set("deadsfu:node:node-a", "x"), "SET node:node-a").await;
    run(&conn_b, &set("deadsfu:node:node-b", "{}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn revoke_removes_the_node_user() {
    let mut cluster = TestCluster::start().await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let a = cluster.sfu_bundle("node-a", "a.example.test").await;
    let b = cluster.sfu_bundle("node-b", "b.example.test").await;
    let conn_a = RedisConn::connect(&a).await.unwrap();
    let conn_b = RedisConn::connect(&b).await.unwrap();
    run(&conn_a, &redis::cmd("PING")).await.unwrap();
    let clients_of = |user: &'static str| {
        let admin = admin.clone();
        async move {
            // Each `issue` reloads the ACL, which can drop the admin's connection (seen as a
            // broken pipe): the manager reconnects, but the first command may meet the old
            // socket.
            let list: String = eventually(Duration::from_secs(5), "CLIENT LIST", || {
                let mut m = admin.manager();
                async move {
                    redis::cmd("CLIENT")
                        .arg("LIST")
                        .query_async::<String>(&mut m)
                        .await
                        .ok()
                }
            })
            .await;
            list.lines()
                .filter(|l| l.contains(&format!(" user={user} ")))
                .count()
        }
    };
    assert_eq!(clients_of("sfu-node-a").await, 1);

    revoke(&cluster.cluster_dir(), "node-a").await.unwrap();
    // Its live connection was closed by revoke itself (nothing to wait for).
    assert_eq!(clients_of("sfu-node-a").await, 0);
    assert_eq!(clients_of("sfu-node-b").await, 1);
    let users = eventually(Duration::from_secs(5), "admin connection back", || {
        let admin = admin.clone();
        async move {
            let mut m = admin.manager();
            redis::cmd("ACL")
                .arg("USERS")
                .query_async::<Vec<String>>(&mut m)
                .await
                .ok()
        }
    })
    .await;
    assert!(!users.contains(&"sfu-node-a".to_string()), "{users:?}");
    assert!(users.contains(&"sfu-node-b".to_string()), "{users:?}");
    let acl = std::fs::read_to_string(cluster.cluster_dir().join("redis/users.acl")).unwrap();
    assert!(!acl.contains("sfu-node-a"), "{acl}");

    // The revoked connection's next AUTH (its reconnect) fails, and so does a new one.
    eventually(
        Duration::from_secs(5),
        "revoked connection stops working",
        || {
            let conn_a = conn_a.clone();
            async move {
                run(&conn_a, &redis::cmd("PING"))
                    .await
                    .is_err()
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(run(&conn_a, &redis::cmd("PING")).await.is_err());
    assert!(RedisConn::connect(&a).await.is_err());
    let other = RedisConn::connect(&b).await.unwrap();
    let err = eventually(Duration::from_secs(5), "AUTH as node-a refused", || {
        let mut m = other.manager();
        let password = a.settings.password.clone();
        async move {
            let result: redis::RedisResult<()> = redis::cmd("AUTH")
                .arg("sfu-node-a")
                .arg(password)
                .query_async(&mut m)
                .await;
            result
                .err()
                .filter(|e| e.code() == Some("WRONGPASS") || e.to_string().contains("WRONGPASS"))
        }
    })
    .await;
    assert!(!err.to_string().contains(&a.settings.password));

    // The other node is unaffected (after at most one reconnect).
    eventually(Duration::from_secs(5), "node-b still writes", || {
        let conn_b = conn_b.clone();
        async move {
            run(&conn_b, &set("deadsfu:node:node-b", "x"))
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn host_owner_believes_a_lease_only_with_a_live_matching_record() {
    let mut cluster = TestCluster::start().await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let proxy = cluster.connect(Role::Proxy, "proxy-1").await;
    let a = cluster.sfu_bundle("node-a", "a.example.test").await;
    let b = cluster.sfu_bundle("node-b", "b.example.test").await;
    let c = cluster.sfu_bundle("node-c", "c.example.test").await;
    let node_a = ClusterNode::join_bundle(&a, node_config("node-a", "a.example.test"))
        .await
        .unwrap();
    let node_b = ClusterNode::join_bundle(&b, node_config("node-b", "b.example.test"))
        .await
        .unwrap();

    // Live and matching: believed, by proxies (read-only) and by nodes alike.
    let owner = host_owner(&proxy, "a.example.test")
        .await
        .unwrap()
        .expect("node-a serves a.example.test");
    assert_eq!(owner.config.node_id, "node-a");
    assert_eq!(
        node_b
            .host_owner("a.example.test")
            .await
            .unwrap()
            .map(|r| r.config.node_id),
        Some("node-a".to_string())
    );

    // No lease.
    assert_eq!(host_owner(&proxy, "none.example.test").await.unwrap(), None);

    // A lease naming a node without a record.
    let mut m = admin.manager();
    let () = redis::cmd("SET")
        .arg("deadsfu:host:ghost.example.test")
        .arg("node-gone")
        .query_async(&mut m)
        .await
        .unwrap();
    assert_eq!(
        host_owner(&proxy, "ghost.example.test").await.unwrap(),
        None
    );

    // A node's own lease pointing at another node's record: the record names another
    // hostname. Node c may write its own host key, so this is what a misbehaving node can do.
    let conn_c = RedisConn::connect(&c).await.unwrap();
    run(&conn_c, &set("deadsfu:host:c.example.test", "node-b"))
        .await
        .expect("node c writes its own host key");
    assert_eq!(host_owner(&proxy, "c.example.test").await.unwrap(), None);

    // A stale record (heartbeat 10 s old) behind a lease.
    let mut stale =
        NodeRecord::from_json(&get(&admin, "deadsfu:node:node-a").await.unwrap()).unwrap();
    stale.config.node_id = "node-stale".into();
    stale.config.hostname = "stale.example.test".into();
    stale.heartbeat_unix_ms = unix_ms_now() - 10_000;
    for (key, value) in [
        ("deadsfu:node:node-stale", stale.to_json()),
        ("deadsfu:host:stale.example.test", "node-stale".to_string()),
        ("deadsfu:node:junk", "not a record".to_string()),
    ] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut m)
            .await
            .unwrap();
    }
    assert_eq!(
        host_owner(&proxy, "stale.example.test").await.unwrap(),
        None
    );
    // The same record, fresh, is believed.
    stale.heartbeat_unix_ms = unix_ms_now();
    let () = redis::cmd("SET")
        .arg("deadsfu:node:node-stale")
        .arg(stale.to_json())
        .query_async(&mut m)
        .await
        .unwrap();
    assert!(
        host_owner(&proxy, "stale.example.test")
            .await
            .unwrap()
            .is_some()
    );
    stale.heartbeat_unix_ms = unix_ms_now() - 10_000;
    let () = redis::cmd("SET")
        .arg("deadsfu:node:node-stale")
        .arg(stale.to_json())
        .query_async(&mut m)
        .await
        .unwrap();

    // Live nodes: fresh records only, unreadable ones skipped; status still shows the stale.
    let live: Vec<String> = live_nodes(&proxy)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.config.node_id)
        .collect();
    assert_eq!(live, ["node-a", "node-b"]);
    assert_eq!(node_a.live_nodes().await.unwrap().len(), 2);
    let status = read_status(&admin).await.unwrap();
    assert!(
        status
            .nodes
            .iter()
            .any(|n| n.config.node_id == "node-stale")
    );

    // A node that leaves is no longer believed even while a lease copy lingers.
    node_b.leave().await;
    let () = redis::cmd("SET")
        .arg("deadsfu:host:b.example.test")
        .arg("node-b")
        .query_async(&mut m)
        .await
        .unwrap();
    assert_eq!(host_owner(&proxy, "b.example.test").await.unwrap(), None);
    node_a.leave().await;
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn an_sfu_bundle_from_before_per_node_users_still_joins() {
    let mut cluster = TestCluster::start().await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let dir = cluster.cluster_dir();
    // Make "old-1" look as `issue` left it before per-node users: no hostname in its metadata,
    // and a bundle logging in as the shared `sfu` user.
    let mut old = cluster.bundle(Role::Sfu, "old-1").await;
    let meta_path = dir.join("names/old-1/meta.toml");
    let mut meta: NameMeta = toml::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta.hostname = None;
    let text = toml::to_string(&meta).unwrap();
    assert!(!text.contains("hostname"), "{text}");
    std::fs::write(&meta_path, text).unwrap();
    old.settings.user = "sfu".into();
    old.settings.hostname = None;
    assert_eq!((old.node_id(), old.hostname()), (None, None));
    // The next issue rewrites the ACL file: the shared user comes back for it.
    let new = cluster.sfu_bundle("new-1", "new-1.example.test").await;
    let acl = std::fs::read_to_string(dir.join("redis/users.acl")).unwrap();
    assert!(acl.lines().any(|l| l.starts_with("user sfu on ")), "{acl}");
    assert!(
        acl.lines().any(|l| l.starts_with("user sfu-new-1 on ")),
        "{acl}"
    );

    // Any node id and hostname, as before.
    let node = ClusterNode::join_bundle(&old, node_config("legacy", "legacy.example.test"))
        .await
        .expect("an old bundle joins");
    assert_eq!(
        host_owner(&admin, "legacy.example.test")
            .await
            .unwrap()
            .map(|r| r.config.node_id),
        Some("legacy".to_string())
    );
    node.leave().await;
    let new_node = ClusterNode::join_bundle(&new, node_config("new-1", "new-1.example.test"))
        .await
        .unwrap();
    new_node.leave().await;

    // Revoking the last old name removes the shared user.
    revoke(&dir, "old-1").await.unwrap();
    let acl = std::fs::read_to_string(dir.join("redis/users.acl")).unwrap();
    assert!(!acl.lines().any(|l| l.starts_with("user sfu ")), "{acl}");
    let users = eventually(Duration::from_secs(5), "admin connection back", || {
        let admin = admin.clone();
        async move {
            let mut m = admin.manager();
            redis::cmd("ACL")
                .arg("USERS")
                .query_async::<Vec<String>>(&mut m)
                .await
                .ok()
        }
    })
    .await;
    assert!(!users.contains(&"sfu".to_string()), "{users:?}");
    assert!(RedisConn::connect(&old).await.is_err());
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn an_expired_bundle_cannot_connect() {
    let cluster = TestCluster::start().await;
    let expires = Duration::from_secs(2);
    issue_expiring(
        &cluster.cluster_dir(),
        Role::Sfu,
        "node-x",
        Some("x.example.test"),
        Some(expires),
    )
    .await
    .unwrap();
    let zip = std::fs::read(cluster.cluster_dir().join("names/node-x/bundle.zip")).unwrap();
    let bundle = Bundle::from_zip(&zip).unwrap();
    let meta: NameMeta = toml::from_str(
        &std::fs::read_to_string(cluster.cluster_dir().join("names/node-x/meta.toml")).unwrap(),
    )
    .unwrap();
    assert!(meta.expires_unix.is_some());
    let issued_at = std::time::Instant::now();
    // Valid now...
    let conn = RedisConn::connect(&bundle)
        .await
        .expect("connects before expiry");
    run(&conn, &redis::cmd("PING")).await.unwrap();
    drop(conn);
    // ...and refused at the TLS handshake once the certificate's notAfter has passed (whole
    // seconds, so at most a second or two after `expires`).
    let refused_after = eventually(Duration::from_secs(10), "expired bundle refused", || {
        let bundle = bundle.clone();
        async move {
            RedisConn::connect(&bundle)
                .await
                .is_err()
                .then(|| issued_at.elapsed())
        }
    })
    .await;
    assert!(
        refused_after >= expires - Duration::from_millis(1100),
        "{refused_after:?}"
    );
    // A bundle without expiry is not affected.
    let mut cluster = cluster;
    let other = cluster.sfu_bundle("node-y", "y.example.test").await;
    assert!(RedisConn::connect(&other).await.is_ok());
}
