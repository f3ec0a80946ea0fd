//! The shared certificate store against a real TLS redis-server: sealing at rest, the order
//! lock, the ACL of each role, and the announcement of new certificates.

mod support;

use std::time::Duration;

use deadsfu_cluster::cert_admin::{import_cert, read_cert_listing, render_cert_listing};
use deadsfu_cluster::{
    Bundle, ClusterEvent, ClusterKey, RedisCertStore, RedisConn, Role, subscribe_events,
};
use deadsfu_tls::{AlpnChallenge, Backoff, CertStore, KeyPem, LockOutcome, StoreError, StoredCert};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use support::{TestCluster, eventually, get};

/// A self-signed certificate for `names` and its key, as a validated pair.
fn cert_for(names: &[&str]) -> StoredCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    StoredCert::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}

async fn set_raw(conn: &RedisConn, key: &str, value: &str) {
    let mut m = conn.manager();
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut m)
        .await
        .unwrap();
}

async fn pttl(conn: &RedisConn, key: &str) -> i64 {
    let mut m = conn.manager();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut m)
        .await
        .unwrap()
}

fn cluster_key_file(cluster: &TestCluster) -> String {
    std::fs::read_to_string(cluster.cluster_dir().join("secrets/cluster.key"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn bundles_carry_the_cluster_secrets_by_role() {
    let mut cluster = TestCluster::start().await;
    let sfu = cluster.bundle(Role::Sfu, "sfu-1").await;
    let admin = cluster.bundle(Role::Admin, "ops").await;
    let proxy = cluster.bundle(Role::Proxy, "proxy-1").await;
    let key_hex = cluster_key_file(&cluster);
    assert_eq!(sfu.settings.cluster_key.as_deref(), Some(key_hex.as_str()));
    assert_eq!(
        admin.settings.cluster_key.as_deref(),
        Some(key_hex.as_str())
    );
    assert!(sfu.ticket_secret().is_some());
    assert_eq!(
        sfu.ticket_secret().unwrap().expose(),
        admin.ticket_secret().unwrap().expose()
    );
    assert_ne!(sfu.ticket_secret().unwrap().expose(), key_hex);
    assert!(proxy.settings.cluster_key.is_none() && proxy.cluster_key().is_none());
    assert!(proxy.settings.ticket_secret.is_none());
    assert!(!format!("{sfu:?}").contains(&key_hex[..16]));
    use std::os::unix::fs::PermissionsExt;
    for file in ["secrets/cluster.key", "secrets/ticket.key"] {
        let mode = std::fs::metadata(cluster.cluster_dir().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // A directory from before the secrets existed gets them at the next issue.
    std::fs::remove_dir_all(cluster.cluster_dir().join("secrets")).unwrap();
    let late_proxy = cluster.bundle(Role::Proxy, "proxy-2").await;
    assert!(late_proxy.settings.cluster_key.is_none());
    let late = cluster.bundle(Role::Sfu, "sfu-2").await;
    let new_hex = cluster_key_file(&cluster);
    assert_ne!(new_hex, key_hex);
    assert_eq!(late.settings.cluster_key.as_deref(), Some(new_hex.as_str()));
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn store_round_trip_keeps_private_keys_sealed_in_redis() {
    let mut cluster = TestCluster::start().await;
    let sfu = cluster.bundle(Role::Sfu, "sfu-1").await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let store = RedisCertStore::connect(&sfu).await.unwrap();
    assert!(store.has_cluster_key());
    cluster.secrets.push(cluster_key_file(&cluster));

    // Certificates.
    let cert = cert_for(&["a.example.test"]);
    assert!(store.load_cert("a.example.test").await.unwrap().is_none());
    store.store_cert("a.example.test", &cert).await.unwrap();
    let back = store.load_cert("a.example.test").await.unwrap().unwrap();
    assert_eq!(back.chain_pem, cert.chain_pem);
    assert_eq!(back.key_pem, cert.key_pem);
    assert_eq!(
        (back.not_after, back.not_before, &back.issuer),
        (cert.not_after, cert.not_before, &cert.issuer)
    );
    let raw = get(&admin, "deadsfu:cert:a.example.test").await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let sealed = json["key_sealed"].as_str().unwrap();
    assert!(!sealed.contains("BEGIN"), "{sealed}");
    assert!(!raw.contains("PRIVATE KEY"));
    assert!(PrivateKeyDer::from_pem_slice(raw.as_bytes()).is_err());
    assert!(PrivateKeyDer::from_pem_slice(sealed.as_bytes()).is_err());
    // The key's base64 body does not appear either.
    let key_body: String = cert
        .key_pem
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!raw.contains(&key_body[..32]));
    cluster.secrets.push(key_body[..32].to_string());
    assert_eq!(json["not_after"].as_i64(), Some(cert.not_after));
    assert_eq!(json["issuer"].as_str(), Some(cert.issuer.as_str()));
    assert_eq!(pttl(&admin, "deadsfu:cert:a.example.test").await, -1);

    let other = cert_for(&["b.example.test"]);
    store.store_cert("b.example.test", &other).await.unwrap();
    let mut listed = store.list_certs().await.unwrap();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let domains: Vec<&str> = listed.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(domains, ["a.example.test", "b.example.test"]);
    assert_eq!(listed[1].1.key_pem, other.key_pem);

    // ACME account: the credentials hold the account key, so they are sealed as a whole.
    let directory = "https://acme.example.test/directory";
    let credentials = r#"{"id":"https://acme.example.test/acct/1","key_pkcs8":"MIGHAgEAMBMGByqGSM49AgEG","directory":"https://acme.example.test/directory"}"#;
    assert!(store.load_account(directory).await.unwrap().is_none());
    store.store_account(directory, credentials).await.unwrap();
    assert_eq!(
        store.load_account(directory).await.unwrap().as_deref(),
        Some(credentials)
    );
    let raw = get(&admin, &format!("deadsfu:acme:account:{directory}"))
        .await
        .unwrap();
    assert!(
        !raw.contains("MIGHAgEA") && !raw.contains("key_pkcs8"),
        "{raw}"
    );

    // HTTP-01: stored as is (proxies serve it), with its TTL.
    store
        .put_http_challenge("tok1", "tok1.thumbprint", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.http_challenge("tok1").await.unwrap().as_deref(),
        Some("tok1.thumbprint")
    );
    let ttl = pttl(&admin, "deadsfu:acme:challenge:tok1").await;
    assert!((1..=60_000).contains(&ttl), "{ttl}");
    store.delete_http_challenge("tok1").await.unwrap();
    assert!(store.http_challenge("tok1").await.unwrap().is_none());

    // TLS-ALPN-01: certificate in clear, key sealed, with a TTL.
    let alpn_cert = cert_for(&["a.example.test"]);
    let answer = AlpnChallenge {
        cert_pem: alpn_cert.chain_pem.clone(),
        key_pem: alpn_cert.key_pem.clone(),
    };
    store
        .put_alpn_challenge("a.example.test", &answer, Duration::from_secs(60))
        .await
        .unwrap();
    let back = store
        .alpn_challenge("a.example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.cert_pem, answer.cert_pem);
    assert_eq!(back.key_pem, answer.key_pem);
    let raw = get(&admin, "deadsfu:acme:alpn:a.example.test")
        .await
        .unwrap();
    assert!(!raw.contains("PRIVATE KEY"));
    let ttl = pttl(&admin, "deadsfu:acme:alpn:a.example.test").await;
    assert!((1..=60_000).contains(&ttl), "{ttl}");
    store.delete_alpn_challenge("a.example.test").await.unwrap();
    assert!(
        store
            .alpn_challenge("a.example.test")
            .await
            .unwrap()
            .is_none()
    );

    // Backoff: plain JSON, expiring a day after each write.
    let backoff = Backoff {
        failures: 3,
        next_attempt_unix_ms: 1_900_000_000_000,
        last_error: "rateLimited: too many certificates".into(),
    };
    assert!(store.backoff("a.example.test").await.unwrap().is_none());
    store.set_backoff("a.example.test", &backoff).await.unwrap();
    assert_eq!(
        store.backoff("a.example.test").await.unwrap(),
        Some(backoff.clone())
    );
    let ttl = pttl(&admin, "deadsfu:acme:backoff:a.example.test").await;
    assert!(
        ttl > 23 * 3600 * 1000 && ttl <= 24 * 3600 * 1000,
        "backoff TTL {ttl}"
    );

    // `cert ls` sees certificates, the backoff, and a lock-only domain.
    assert_eq!(
        store
            .try_lock("c.example.test", "sfu-1/abc", Duration::from_secs(60))
            .await
            .unwrap(),
        LockOutcome::Acquired
    );
    let rows = read_cert_listing(&admin).await.unwrap();
    let text = render_cert_listing(&rows, 0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].starts_with("a.example.test"), "{text}");
    assert!(
        lines[1].ends_with("rateLimited: too many certificates"),
        "{text}"
    );
    assert!(lines[3].starts_with("c.example.test"), "{text}");
    assert!(lines[3].contains("sfu-1/abc"), "{text}");
    store.clear_backoff("a.example.test").await.unwrap();
    assert!(store.backoff("a.example.test").await.unwrap().is_none());
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn tampered_moved_or_foreign_values_are_corrupt_and_listing_skips_them() {
    let mut cluster = TestCluster::start().await;
    let sfu = cluster.bundle(Role::Sfu, "sfu-1").await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let store = RedisCertStore::connect(&sfu).await.unwrap();
    let good = cert_for(&["good.example.test"]);
    store.store_cert("good.example.test", &good).await.unwrap();
    let victim = cert_for(&["t.example.test"]);
    store.store_cert("t.example.test", &victim).await.unwrap();

    // Flip a character of the sealed key.
    let raw = get(&admin, "deadsfu:cert:t.example.test").await.unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let sealed = json["key_sealed"].as_str().unwrap().to_string();
    let mut chars: Vec<char> = sealed.chars().collect();
    let i = chars.len() - 5;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    json["key_sealed"] = serde_json::Value::String(chars.into_iter().collect());
    set_raw(&admin, "deadsfu:cert:t.example.test", &json.to_string()).await;
    let err = store.load_cert("t.example.test").await.unwrap_err();
    match &err {
        StoreError::Corrupt { what, name, .. } => {
            assert_eq!((*what, name.as_str()), ("certificate", "t.example.test"))
        }
        other => panic!("want Corrupt, got {other:?}"),
    }
    assert!(!err.to_string().contains("BEGIN"), "{err}");

    // A good value copied under another domain does not open there.
    let good_raw = get(&admin, "deadsfu:cert:good.example.test").await.unwrap();
    set_raw(&admin, "deadsfu:cert:moved.example.test", &good_raw).await;
    assert!(matches!(
        store.load_cert("moved.example.test").await,
        Err(StoreError::Corrupt { .. })
    ));
    // Nor under another family (an ALPN answer reusing the sealed key).
    let alpn = serde_json::json!({"cert_pem": good.chain_pem, "key_sealed": serde_json::from_str::<serde_json::Value>(&good_raw).unwrap()["key_sealed"]});
    set_raw(
        &admin,
        "deadsfu:acme:alpn:good.example.test",
        &alpn.to_string(),
    )
    .await;
    assert!(matches!(
        store.alpn_challenge("good.example.test").await,
        Err(StoreError::Corrupt { .. })
    ));
    // Garbage JSON.
    set_raw(&admin, "deadsfu:cert:junk.example.test", "not json").await;
    assert!(matches!(
        store.load_cert("junk.example.test").await,
        Err(StoreError::Corrupt { .. })
    ));

    // Another cluster's key.
    let foreign = RedisCertStore::new(
        RedisConn::connect(&sfu).await.unwrap(),
        Some(ClusterKey::generate()),
    );
    assert!(matches!(
        foreign.load_cert("good.example.test").await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(foreign.list_certs().await.unwrap().is_empty());

    // The listing keeps the good certificate and skips the rest.
    let listed = store.list_certs().await.unwrap();
    let domains: Vec<&str> = listed.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(domains, ["good.example.test"]);
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn without_a_cluster_key_private_keys_are_refused_but_the_rest_works() {
    let mut cluster = TestCluster::start().await;
    let mut sfu = cluster.bundle(Role::Sfu, "sfu-old").await;
    // As a bundle issued before the cluster key existed.
    sfu.settings.cluster_key = None;
    let old = RedisCertStore::connect(&sfu).await.unwrap();
    assert!(!old.has_cluster_key());
    let cert = cert_for(&["a.example.test"]);
    for err in [
        old.store_cert("a.example.test", &cert).await.unwrap_err(),
        old.store_account("https://acme.test/dir", "{}")
            .await
            .unwrap_err(),
        old.list_certs().await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("no cluster key")),
            "{err}"
        );
    }
    let admin = cluster.connect(Role::Admin, "ops").await;
    assert_eq!(get(&admin, "deadsfu:cert:a.example.test").await, None);
    // Locks, HTTP-01 answers and backoff need no key.
    assert_eq!(
        old.try_lock("a.example.test", "o", Duration::from_secs(5))
            .await
            .unwrap(),
        LockOutcome::Acquired
    );
    old.put_http_challenge("t", "t.k", Duration::from_secs(5))
        .await
        .unwrap();
    old.set_backoff("a.example.test", &Backoff::default())
        .await
        .unwrap();
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn one_order_lock_per_domain() {
    let mut cluster = TestCluster::start().await;
    let a = RedisCertStore::connect(&cluster.bundle(Role::Sfu, "sfu-a").await)
        .await
        .unwrap();
    let b = RedisCertStore::connect(&cluster.bundle(Role::Sfu, "sfu-b").await)
        .await
        .unwrap();
    let long = Duration::from_secs(30);
    let domain = "lock.example.test";

    assert_eq!(
        a.try_lock(domain, "owner-a", long).await.unwrap(),
        LockOutcome::Acquired
    );
    assert_eq!(
        b.try_lock(domain, "owner-b", long).await.unwrap(),
        LockOutcome::HeldBy("owner-a".into())
    );
    assert_eq!(
        a.lock_holder(domain).await.unwrap().as_deref(),
        Some("owner-a")
    );
    // The holder may take it again; refresh works for the holder only.
    assert_eq!(
        a.try_lock(domain, "owner-a", long).await.unwrap(),
        LockOutcome::Acquired
    );
    assert!(!b.refresh_lock(domain, "owner-b", long).await.unwrap());
    assert!(a.refresh_lock(domain, "owner-a", long).await.unwrap());
    // Unlock by the wrong owner does nothing.
    b.unlock(domain, "owner-b").await.unwrap();
    assert_eq!(
        b.try_lock(domain, "owner-b", long).await.unwrap(),
        LockOutcome::HeldBy("owner-a".into())
    );
    // Unlock by the owner frees it.
    a.unlock(domain, "owner-a").await.unwrap();
    assert_eq!(
        b.try_lock(domain, "owner-b", Duration::from_millis(300))
            .await
            .unwrap(),
        LockOutcome::Acquired
    );
    // A short lock vanishes by itself, and a lost lock cannot be refreshed back.
    let expired = eventually(Duration::from_secs(5), "the lock expires", || {
        let a = a.clone();
        async move { a.lock_holder(domain).await.unwrap().is_none().then_some(()) }
    });
    let started = std::time::Instant::now();
    expired.await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!b.refresh_lock(domain, "owner-b", long).await.unwrap());
    assert!(a.lock_holder(domain).await.unwrap().is_none());
    assert_eq!(
        a.try_lock(domain, "owner-a", long).await.unwrap(),
        LockOutcome::Acquired
    );

    // Racing for a fresh domain: exactly one wins.
    for round in 0..10 {
        let d = format!("race-{round}.example.test");
        let (ra, rb) = tokio::join!(
            a.try_lock(&d, "owner-a", long),
            b.try_lock(&d, "owner-b", long)
        );
        let outcomes = [ra.unwrap(), rb.unwrap()];
        let winners = outcomes
            .iter()
            .filter(|o| **o == LockOutcome::Acquired)
            .count();
        assert_eq!(winners, 1, "{outcomes:?}");
    }
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn proxy_reads_http_challenges_and_nothing_secret() {
    let mut cluster = TestCluster::start().await;
    let admin = cluster.connect(Role::Admin, "ops").await;
    let proxy = cluster.connect(Role::Proxy, "proxy-1").await;
    for key in [
        "deadsfu:acme:challenge:x",
        "deadsfu:cert:x",
        "deadsfu:acme:alpn:x",
        "deadsfu:acme:account:x",
        "deadsfu:acme:lock:x",
        "deadsfu:acme:backoff:x",
    ] {
        set_raw(&admin, key, "v").await;
    }
    let mut p = proxy.manager();
    let value: Option<String> = redis::cmd("GET")
        .arg("deadsfu:acme:challenge:x")
        .query_async(&mut p)
        .await
        .expect("proxy reads HTTP-01 answers");
    assert_eq!(value.as_deref(), Some("v"));
    // Through the store too (a proxy's store has no cluster key).
    let store = RedisCertStore::new(proxy.clone(), None);
    assert_eq!(
        store.http_challenge("x").await.unwrap().as_deref(),
        Some("v")
    );
    for key in [
        "deadsfu:cert:x",
        "deadsfu:acme:alpn:x",
        "deadsfu:acme:account:x",
        "deadsfu:acme:lock:x",
        "deadsfu:acme:backoff:x",
    ] {
        let err = redis::cmd("GET")
            .arg(key)
            .query_async::<Option<String>>(&mut p)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("NOPERM"), "{key}: {err}");
    }
    let err = redis::cmd("SET")
        .arg("deadsfu:acme:challenge:x")
        .arg("forged")
        .query_async::<()>(&mut p)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    assert!(matches!(
        store
            .put_http_challenge("y", "forged", Duration::from_secs(5))
            .await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.alpn_challenge("x").await,
        Err(StoreError::Unavailable(_))
    ));
    cluster.assert_logs_clean();
}

#[tokio::test]
async fn stored_and_imported_certificates_are_announced() {
    let mut cluster = TestCluster::start().await;
    let admin_bundle: Bundle = cluster.bundle(Role::Admin, "ops").await;
    let mut events = subscribe_events(&admin_bundle).await.unwrap();
    let sfu = cluster.bundle(Role::Sfu, "sfu-1").await;
    let store = RedisCertStore::connect(&sfu).await.unwrap();
    store
        .store_cert("new.example.test", &cert_for(&["new.example.test"]))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event arrives")
        .unwrap();
    assert_eq!(
        got,
        ClusterEvent::CertUpdated {
            domain: "new.example.test".into()
        }
    );

    // Import with the admin bundle: checked against the names, sealed with its key,
    // readable by the sfu, announced.
    let admin = RedisConn::connect(&admin_bundle).await.unwrap();
    let key = admin_bundle.cluster_key().unwrap();
    let bought = cert_for(&["*.bought.example.test"]);
    let err = import_cert(
        admin.clone(),
        key.clone(),
        "bought.example.test",
        &bought.chain_pem,
        bought.key_pem.expose(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not cover"), "{err}");
    let other_key = cert_for(&["x.test"]).key_pem;
    assert!(
        import_cert(
            admin.clone(),
            key.clone(),
            "www.bought.example.test",
            &bought.chain_pem,
            other_key.expose(),
        )
        .await
        .is_err()
    );
    import_cert(
        admin.clone(),
        key,
        "WWW.bought.example.test.",
        &bought.chain_pem,
        bought.key_pem.expose(),
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event arrives")
        .unwrap();
    assert_eq!(
        got,
        ClusterEvent::CertUpdated {
            domain: "www.bought.example.test".into()
        }
    );
    let served = store
        .load_cert("www.bought.example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served.key_pem, KeyPem::new(bought.key_pem.expose()));
    cluster.assert_logs_clean();
}
