//! HTTPS of a standalone node, with Debian's pebble as the ACME CA (and challtestsrv as its DNS):
//! certificates by TLS-ALPN-01, HTTP-01 and DNS-01 (wildcard), served from `--data-dir` after a
//! restart without a new order, backoff while the CA is down, certificate files and their
//! reload, and the errors of bad input. Media runs over HTTPS signalling with the str0m client.

#[path = "common/pebble.rs"]
mod pebble;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadsfu_client::{Peer, PeerOptions, Role, StreamSpec};
use pebble::{Pebble, PebbleOptions};

const BIN: &str = env!("CARGO_BIN_EXE_deadsfu");
const NODE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const DOMAIN: &str = "sfu.test";
const WAIT: Duration = Duration::from_secs(30);

/// A `deadsfu serve` child with its log lines collected; killed when dropped.
struct Node {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    http: SocketAddr,
    https: SocketAddr,
}

impl Node {
    fn start(http: SocketAddr, https: SocketAddr, extra: &[&str]) -> Node {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--http",
                &http.to_string(),
                "--https",
                &https.to_string(),
            ])
            .args([
                "--udp-port",
                "0",
                "--workers",
                "1",
                "--ice-candidate-host",
                "127.0.0.1",
            ])
            .args(["--ftl-listen", ""])
            .args(extra)
            .env_remove("DEADSFU_CLUSTER_URL")
            .env("RUST_LOG", "info,str0m=warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start deadsfu");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Node {
            child,
            logs,
            http,
            https,
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn log_tail(&self) -> String {
        let logs = self.logs.lock().unwrap();
        logs[logs.len().saturating_sub(40)..].join("\n")
    }

    fn plain(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    fn secure(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https.port())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn sighup(&self) {
        Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client trusting only `root_pem`, resolving `names` to the node's HTTPS address.
fn client(root_pem: &str, node: &Node, names: &[&str]) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5));
    for n in names {
        b = b.resolve(n, node.https);
    }
    b.build().unwrap()
}

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The certificates the node reports on `/healthz` (over plain HTTP).
async fn health(node: &Node) -> Option<serde_json::Value> {
    let res = plain_client()
        .get(node.plain("/healthz"))
        .send()
        .await
        .ok()?;
    res.json().await.ok()
}

async fn served(node: &Node, name: &str) -> Option<serde_json::Value> {
    let h = health(node).await?;
    h["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// Polls until `check` gives Some, failing with the node's log after `timeout`.
async fn eventually<T, F, Fut>(node: &Node, what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; deadsfu log tail:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until HTTPS for `host` verifies against the CA's root and answers `/healthz`.
async fn wait_https(node: &Node, root: &str, host: &str) {
    let c = client(root, node, &[host]);
    let url = node.secure(host, "/healthz");
    eventually(
        node,
        &format!("a trusted certificate for {host}"),
        WAIT,
        || {
            let c = c.clone();
            let url = url.clone();
            async move {
                let r = c.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;
}

/// A str0m publisher and viewer over HTTPS; the viewer must receive video and audio.
async fn media_over_https(node: &Node, root: &str, room: &str) {
    let opts = PeerOptions {
        http_client: Some(client(root, node, &[DOMAIN])),
        ..PeerOptions::default()
    };
    let mut p = Peer::connect(
        &node.secure(DOMAIN, &format!("/whip/{room}")),
        Role::Publish(StreamSpec::default()),
        opts.clone(),
    )
    .await
    .expect("WHIP over HTTPS");
    p.wait_until("publisher connected", WAIT, |s| s.connected)
        .await
        .expect("publisher connects");
    let mut v = Peer::connect(
        &node.secure(DOMAIN, &format!("/whep/{room}")),
        Role::View,
        opts,
    )
    .await
    .expect("WHEP over HTTPS");
    v.wait_until("media", WAIT, |s| {
        s.video.packets >= 60 && s.audio.packets >= 20
    })
    .await
    .expect("the viewer receives media");
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
}

fn acme_args(pebble: &Pebble, data_dir: &Path, domain: &str, challenge: &str) -> Vec<String> {
    vec![
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--acme-domain".into(),
        domain.into(),
        "--acme-email".into(),
        "ops@sfu.test".into(),
        "--acme-directory".into(),
        pebble.directory_url(),
        "--acme-ca-root".into(),
        pebble.listener_ca_path().display().to_string(),
        "--acme-challenge".into(),
        challenge.into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

struct Setup {
    pebble: Pebble,
    http: SocketAddr,
    https: SocketAddr,
    dir: tempfile::TempDir,
}

async fn setup(env: Vec<(String, String)>) -> Setup {
    let (hp, tp) = (
        deadsfu_testkit::free_tcp_port(NODE_IP),
        deadsfu_testkit::free_tcp_port(NODE_IP),
    );
    let pebble = Pebble::start(PebbleOptions {
        http_port: hp,
        tls_port: tp,
        default_ipv4: NODE_IP,
        env,
    })
    .await;
    Setup {
        pebble,
        http: SocketAddr::new(IpAddr::V4(NODE_IP), hp),
        https: SocketAddr::new(IpAddr::V4(NODE_IP), tp),
        dir: tempfile::tempdir().unwrap(),
    }
}

async fn issue_serve_and_restart(challenge: &str) {
    let s = setup(Vec::new()).await;
    let data = s.dir.path().join("data");
    let args = acme_args(&s.pebble, &data, DOMAIN, challenge);
    let node = Node::start(s.http, s.https, &strs(&args));
    let root = s.pebble.issuing_root_pem().await;
    wait_https(&node, &root, DOMAIN).await;
    let cert = served(&node, DOMAIN)
        .await
        .expect("/healthz lists the certificate");
    assert_eq!(cert["source"], "acme");
    assert!(
        cert["issuer"].as_str().unwrap().contains("Pebble"),
        "{cert}"
    );
    assert!(cert["not_after_unix"].as_i64().unwrap() > 0);
    assert_eq!(s.pebble.orders(), 1);
    media_over_https(
        &node,
        &root,
        &format!("room-{}", challenge.replace('-', "")),
    )
    .await;

    // Plain HTTP: pages go to HTTPS, health stays plain.
    let res = plain_client()
        .get(node.plain("/send?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(
        res.headers()["location"],
        format!("https://{}:{}/send?x=1", NODE_IP, s.https.port()).as_str()
    );
    drop(node);

    // Restart on the same data dir: the first handshake already has the stored certificate.
    let node = Node::start(s.http, s.https, &strs(&args));
    let c = client(&root, &node, &[DOMAIN]);
    let first = eventually(&node, "HTTPS after the restart", WAIT, || {
        let c = c.clone();
        let url = node.secure(DOMAIN, "/healthz");
        async move {
            match c.get(&url).send().await {
                Ok(r) => Some(Ok(r.status())),
                // Connection refused until the listener is up; a TLS failure would be a bug.
                Err(e) if e.is_connect() && format!("{e:?}").contains("refused") => None,
                Err(e) => Some(Err(format!("{e:?}"))),
            }
        }
    })
    .await;
    assert_eq!(first, Ok(reqwest::StatusCode::OK), "{}", node.log_tail());
    assert_eq!(
        served(&node, DOMAIN).await.unwrap()["fingerprint"],
        cert["fingerprint"]
    );
    assert_eq!(s.pebble.orders(), 1, "the restart ordered again");
    assert!(!node.logs().contains("ordering a certificate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certificate_media_and_restart_without_order() {
    issue_serve_and_restart("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_certificate_media_and_restart_without_order() {
    issue_serve_and_restart("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_01_wildcard_through_the_hook() {
    let s = setup(Vec::new()).await;
    let data = s.dir.path().join("data");
    let hook = format!(
        "{}/tests/acme/dns-hook.sh {}",
        env!("CARGO_MANIFEST_DIR"),
        s.pebble.challtestsrv_base()
    );
    let mut args = acme_args(&s.pebble, &data, "*.sfu.test", "dns-01");
    args.extend(["--acme-dns-hook".to_string(), hook]);
    let node = Node::start(s.http, s.https, &strs(&args));
    let root = s.pebble.issuing_root_pem().await;
    wait_https(&node, &root, "a.sfu.test").await;
    wait_https(&node, &root, "b.sfu.test").await;
    let cert = served(&node, "*.sfu.test").await.expect("wildcard listed");
    assert_eq!(cert["source"], "acme");
    assert_eq!(s.pebble.orders(), 1);
    // The wildcard covers one label only: the bare name gets no certificate.
    let c = client(&root, &node, &["sfu.test"]);
    assert!(
        c.get(node.secure("sfu.test", "/healthz"))
            .send()
            .await
            .is_err()
    );
}

/// A self-signed certificate for `name`, issued two hours ago (old enough to renew).
fn write_old_cert(dir: &Path, name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(2);
    params.not_after = now + time::Duration::days(30);
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(cert.der()))
}

async fn metric(node: &Node, name: &str) -> Option<u64> {
    let text = plain_client()
        .get(node.plain("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_down_keeps_serving_backs_off_and_recovers() {
    let mut s = setup(Vec::new()).await;
    let data = s.dir.path().join("data");
    // A stored certificate that is due for renewal (renew-before longer than its life).
    let old = write_old_cert(&data.join("certs").join(DOMAIN), DOMAIN);
    s.pebble.stop();
    let mut args = acme_args(&s.pebble, &data, DOMAIN, "tls-alpn-01");
    args.extend(
        [
            "--acme-renew-before",
            "3650days",
            "--acme-retry-unit",
            "200ms",
        ]
        .map(String::from),
    );
    let started = Instant::now();
    let node = Node::start(s.http, s.https, &strs(&args));
    // Served at once from the data dir.
    let cert = eventually(&node, "the stored certificate", WAIT, || {
        served(&node, DOMAIN)
    })
    .await;
    assert_eq!(cert["fingerprint"], old.as_str());
    // Backoff: attempts at 0, 1 and 11 units, then 71: three in the first 8 s.
    tokio::time::sleep_until((started + Duration::from_secs(8)).into()).await;
    let attempts = metric(&node, "deadsfu_acme_orders_total").await.unwrap();
    let failures = metric(&node, "deadsfu_acme_order_failures_total")
        .await
        .unwrap();
    println!("attempts in the first 8 s with the CA down: {attempts} ({failures} failed)");
    assert_eq!(attempts, 3, "{}", node.log_tail());
    assert_eq!(failures, 3);
    assert!(node.logs().contains("certificate order failed"));
    // Still serving the old certificate.
    assert_eq!(
        served(&node, DOMAIN).await.unwrap()["fingerprint"],
        old.as_str()
    );

    s.pebble.restart().await;
    let root = s.pebble.issuing_root_pem().await;
    wait_https(&node, &root, DOMAIN).await;
    println!(
        "certificate obtained {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(metric(&node, "deadsfu_acme_orders_total").await.unwrap(), 4);
}

fn write_pair(
    dir: &Path,
    name: &str,
    cert_file: &str,
    key_file: &str,
) -> (PathBuf, PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join(cert_file), dir.join(key_file));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    use sha2::Digest;
    (c, k, hex::encode(sha2::Sha256::digest(cert.der())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_reload_and_bad_pairs_keep_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (c, k, first) = write_pair(d, "files.test", "cert.pem", "key.pem");
    let (_, other_key, _) = write_pair(d, "other.test", "other.pem", "other.key");
    let http = SocketAddr::new(IpAddr::V4(NODE_IP), deadsfu_testkit::free_tcp_port(NODE_IP));
    let https = SocketAddr::new(IpAddr::V4(NODE_IP), deadsfu_testkit::free_tcp_port(NODE_IP));
    let (cs, ks) = (c.display().to_string(), k.display().to_string());

    // A mismatched pair at start: a clear error, no server.
    let bad_key = other_key.display().to_string();
    let mut bad = Node::start(http, https, &["--tls-cert", &cs, "--tls-key", &bad_key]);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = bad.exited() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "deadsfu kept running with a bad pair"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    assert!(
        bad.logs().contains("does not belong to the certificate"),
        "{}",
        bad.logs()
    );
    drop(bad);

    let node = Node::start(http, https, &["--tls-cert", &cs, "--tls-key", &ks]);
    let cert = eventually(&node, "the file certificate", WAIT, || {
        served(&node, "files.test")
    })
    .await;
    assert_eq!(cert["fingerprint"], first.as_str());
    assert_eq!(cert["source"], "files");
    // Unknown names get a TLS alert, not this certificate.
    let root = std::fs::read_to_string(&c).unwrap();
    let unknown = client(&root, &node, &["unknown.test"]);
    let err = unknown
        .get(node.secure("unknown.test", "/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("alert"),
        "{err:?}"
    );
    let known = client(&root, &node, &["files.test"]);
    assert_eq!(
        known
            .get(node.secure("files.test", "/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A key that does not match: not taken, said why, the old pair keeps serving.
    std::fs::copy(&other_key, &k).unwrap();
    node.sighup();
    eventually(&node, "the refusal in the log", WAIT, || {
        let l = node.logs();
        async move { l.contains("certificate files not reloaded").then_some(()) }
    })
    .await;
    assert_eq!(
        served(&node, "files.test").await.unwrap()["fingerprint"],
        first.as_str()
    );

    // A good new pair is picked up without a restart (file change, no signal needed).
    let (_, _, second) = write_pair(d, "files.test", "cert.pem", "key.pem");
    eventually(&node, "the new certificate", WAIT, || async {
        let c = served(&node, "files.test").await?;
        (c["fingerprint"] == second.as_str()).then_some(())
    })
    .await;
    let root = std::fs::read_to_string(&c).unwrap();
    let known = client(&root, &node, &["files.test"]);
    assert_eq!(
        known
            .get(node.secure("files.test", "/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_failing_validation_is_reported_and_the_node_keeps_running() {
    let s = setup(Vec::new()).await;
    // fail.test resolves to an address where nothing answers the challenge.
    s.pebble
        .add_a("fail.test", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)))
        .await;
    let data = s.dir.path().join("data");
    let mut args = acme_args(&s.pebble, &data, "fail.test", "tls-alpn-01");
    args.extend(["--acme-domain", DOMAIN].map(String::from));
    let node = Node::start(s.http, s.https, &strs(&args));
    let root = s.pebble.issuing_root_pem().await;
    // The good domain is served; the failing one is reported with its name.
    wait_https(&node, &root, DOMAIN).await;
    eventually(&node, "the failed order in the log", WAIT, || {
        let l = node.logs();
        async move {
            l.lines()
                .any(|l| l.contains("certificate order failed") && l.contains("fail.test"))
                .then_some(())
        }
    })
    .await;
    assert!(served(&node, "fail.test").await.is_none());
    assert_eq!(health(&node).await.unwrap()["status"], "ok");
}
