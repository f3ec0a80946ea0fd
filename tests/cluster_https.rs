//! HTTPS with ACME in a cluster, with the real binary: three `deadsfu serve` nodes on
//! 127.0.0.2-4 sharing a real TLS redis-server (the certificate store) and a real ACME CA
//! (pebble, TLS-ALPN-01 validated on 127.0.0.2 at the nodes' common HTTPS port).
//!
//! - the cluster places one order and every node serves the same certificate;
//! - a node killed while holding the order lock is replaced by another within the lock TTL;
//! - a renewal reaches every node without a restart and without dropping a live viewer;
//! - a certificate whose sealed key does not open is reported and the node keeps serving.
//!
//! The tests run one at a time (each starts Redis, pebble and up to three nodes; the
//! machine may have two cores, and test 2 measures a time).

#[path = "common/pebble.rs"]
mod pebble;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_client::{Peer, PeerOptions, Role, StreamSpec};
use deadsfu_cluster::{JoinUrl, RedisConn};
use pebble::{Pebble, PebbleOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_deadsfu");
const DOMAIN: &str = "svc.test";
const NODE_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];
const NODE_NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
const LOG_TAIL: usize = 40;

/// One test at a time (see the module comment).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Waiting

/// A deadline for a polling loop: `tick` sleeps a little, or fails with `what` and the
/// diagnostics once the time is up.
struct Deadline {
    what: String,
    at: Instant,
}

impl Deadline {
    fn new(what: impl Into<String>, timeout: Duration) -> Self {
        Self {
            what: what.into(),
            at: Instant::now() + timeout,
        }
    }

    async fn tick(&self, diagnostics: impl FnOnce() -> String) {
        self.tick_after(Duration::from_millis(100), diagnostics)
            .await;
    }

    async fn tick_after(&self, pause: Duration, diagnostics: impl FnOnce() -> String) {
        if Instant::now() > self.at {
            panic!("timed out waiting for {}\n{}", self.what, diagnostics());
        }
        tokio::time::sleep(pause).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deadsfu(args: &[&str], env: &[(&str, &str)], log: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DEADSFU_CLUSTER_URL")
        .env_remove("DEADSFU_CLUSTER_URL_FILE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The cluster: `cluster init`, redis-server with its TLS config, the bootstrap server, an admin
// bundle and a Redis connection of the test's own.

/// Fields drop in order: the processes stop before the directory is removed.
struct Cluster {
    _redis: Proc,
    _boot: Proc,
    redis: RedisConn,
    admin_url: String,
    cdir: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("deadsfu-cluster-https-")
            .tempdir()
            .unwrap();
        let cdir = dir.path().join("cluster");
        let cdir_s = cdir.to_str().unwrap().to_owned();
        let redis_addr = format!(
            "127.0.0.1:{}",
            deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
        );
        let boot_addr = format!(
            "127.0.0.1:{}",
            deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
        );
        let log = |name: &str| dir.path().join(name);
        run_ok(
            deadsfu(
                &[
                    "cluster",
                    "init",
                    "--dir",
                    &cdir_s,
                    "--redis-addr",
                    &redis_addr,
                    "--bootstrap-addr",
                    &boot_addr,
                ],
                &[],
                &log("init.log"),
            ),
            &log("init.log"),
        );
        let redis_proc = Proc(
            Command::new("redis-server")
                .arg(cdir.join("redis/redis.conf"))
                .stdout(std::fs::File::create(log("redis.log")).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (apt-get install redis-server)"),
        );
        let boot = Proc(
            deadsfu(
                &["cluster", "serve", "--dir", &format!("{cdir_s}/bootstrap")],
                &[],
                &log("bootstrap.log"),
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        );
        let admin_url = issue(dir.path(), &cdir, "admin", "ops", &[]);
        let redis = connect_admin(dir.path(), &admin_url).await;
        Cluster {
            _redis: redis_proc,
            _boot: boot,
            redis,
            admin_url,
            cdir,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self, role: &str, name: &str, extra: &[&str]) -> String {
        issue(self.dir.path(), &self.cdir, role, name, extra)
    }

    /// Runs an operator command with the admin bundle; its stdout, or its stderr as the error.
    fn admin(&self, args: &[&str], log_name: &str) -> Result<String, String> {
        let log = self.path(log_name);
        let out = deadsfu(args, &[("DEADSFU_CLUSTER_URL", &self.admin_url)], &log)
            .stdout(Stdio::piped())
            .output()
            .expect("run deadsfu");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "deadsfu {args:?}: {}\n{}",
                out.status,
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    /// `cluster cert import` of a PEM pair for `domain`.
    fn import(&self, domain: &str, chain_pem: &str, key_pem: &str) {
        let cert = self.path("import.crt");
        let key = self.path("import.key");
        std::fs::write(&cert, chain_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let out = self.admin(
            &[
                "cluster",
                "cert",
                "import",
                "--domain",
                domain,
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
            "import.log",
        );
        if let Err(e) = out {
            panic!("cert import failed: {e}");
        }
    }

    fn cert_key(&self, domain: &str) -> String {
        self.redis.keys().cert(domain)
    }

    fn lock_key(&self, domain: &str) -> String {
        self.redis.keys().acme_lock(domain)
    }

    async fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.redis.manager())
            .await
            .unwrap_or_else(|e| panic!("GET {key}: {e}"))
    }

    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl.as_millis() as u64);
        }
        cmd.query_async::<()>(&mut self.redis.manager())
            .await
            .unwrap_or_else(|e| panic!("SET {key}: {e}"));
    }

    async fn del(&self, key: &str) {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<i64>(&mut self.redis.manager())
            .await
            .unwrap_or_else(|e| panic!("DEL {key}: {e}"));
    }

    /// Announces `domain` on the events channel, as a node storing a certificate does.
    async fn publish_cert_updated(&self, domain: &str) {
        let event = serde_json::json!({"event": "cert_updated", "domain": domain}).to_string();
        redis::cmd("PUBLISH")
            .arg(self.redis.keys().events_channel())
            .arg(event)
            .query_async::<i64>(&mut self.redis.manager())
            .await
            .unwrap_or_else(|e| panic!("PUBLISH: {e}"));
    }
}

/// `cluster issue`: the bundle URL (the last line of its output).
fn issue(dir: &Path, cdir: &Path, role: &str, name: &str, extra: &[&str]) -> String {
    let log = dir.join(format!("issue-{name}.log"));
    let mut args = vec![
        "cluster",
        "issue",
        "--dir",
        cdir.to_str().unwrap(),
        "--role",
        role,
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    let out = run_ok(deadsfu(&args, &[], &log), &log);
    let url = out.lines().last().unwrap_or_default().to_owned();
    assert!(url.starts_with("https://"), "bundle URL: {out}");
    url
}

/// Fetches the admin bundle and connects to Redis, retrying while the bootstrap server and
/// Redis come up.
async fn connect_admin(dir: &Path, admin_url: &str) -> RedisConn {
    let url = JoinUrl::parse(admin_url).expect("admin URL parses");
    let deadline = Deadline::new("the bootstrap server and Redis", Duration::from_secs(20));
    loop {
        let last = match deadsfu_cluster::bundle_fetch::fetch_bundle(&url).await {
            Ok(bundle) => match RedisConn::connect(&bundle).await {
                Ok(conn) => {
                    let mut m = conn.manager();
                    match redis::cmd("PING").query_async::<String>(&mut m).await {
                        Ok(_) => return conn,
                        Err(e) => format!("PING: {e}"),
                    }
                }
                Err(e) => format!("Redis: {e}"),
            },
            Err(e) => format!("bundle: {e}"),
        };
        deadline
            .tick(|| {
                format!(
                    "last error: {last}\n--- bootstrap.log ---\n{}\n--- redis.log ---\n{}",
                    tail(&dir.join("bootstrap.log"), LOG_TAIL),
                    tail(&dir.join("redis.log"), LOG_TAIL)
                )
            })
            .await;
    }
}

fn run_ok(mut cmd: Command, log: &Path) -> String {
    let out = cmd.stdout(Stdio::piped()).output().expect("run deadsfu");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    String::from_utf8(out.stdout).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Nodes

struct Node {
    name: &'static str,
    ip: Ipv4Addr,
    https: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
    child: Child,
    /// Killed on purpose by the test (not a failure when it is gone).
    killed: bool,
}

impl Node {
    /// `deadsfu serve` in cluster mode with HTTPS on `ip:https_port`, plain HTTP on
    /// `ip:http_port`, no FTL.
    fn spawn(
        cluster: &Cluster,
        index: usize,
        url: &str,
        https_port: u16,
        http_port: u16,
        extra: &[String],
        rust_log: &str,
    ) -> Node {
        let (name, ip) = (NODE_NAMES[index], NODE_IPS[index]);
        let hostname = format!("{name}.test");
        let https = SocketAddr::from((ip, https_port));
        let http = SocketAddr::from((ip, http_port));
        let log = cluster.path(&format!("{name}.log"));
        let (http_s, https_s) = (http.to_string(), https.to_string());
        let mut args = vec![
            "serve",
            "--http",
            &http_s,
            "--https",
            &https_s,
            "--udp-port",
            "0",
            "--workers",
            "1",
            "--ice-candidate-host",
            "127.0.0.1",
            "--ftl-listen",
            "",
            "--hostname",
            &hostname,
            "--node-id",
            name,
        ];
        args.extend(extra.iter().map(String::as_str));
        let child = deadsfu(&args, &[("DEADSFU_CLUSTER_URL", url)], &log)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .spawn()
            .expect("start deadsfu serve");
        Node {
            name,
            ip,
            https,
            http,
            log,
            child,
            killed: false,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn tail(&self) -> String {
        format!(
            "--- {} ({}) log, last {LOG_TAIL} lines ---\n{}",
            self.name,
            self.ip,
            tail(&self.log, LOG_TAIL)
        )
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        self.killed = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn http_get(&self, path: &str) -> Option<String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let res = client
            .get(format!("http://{}{path}", self.http))
            .send()
            .await
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        res.text().await.ok()
    }

    /// A counter of `/metrics` (0 when absent).
    async fn metric(&self, name: &str) -> u64 {
        let text = self.http_get("/metrics").await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the first `count` nodes at the same moment. Their bundles are issued first: issuing
/// reloads Redis's ACL, which drops connections, and a node whose join is cut exits.
fn start_nodes(
    cluster: &Cluster,
    count: usize,
    https_port: u16,
    http_port: u16,
    extra: &[String],
    rust_log: &str,
) -> Vec<Node> {
    // An sfu bundle names its node id and hostname.
    let urls: Vec<String> = NODE_NAMES[..count]
        .iter()
        .map(|name| cluster.issue("sfu", name, &["--hostname", &format!("{name}.test")]))
        .collect();
    urls.iter()
        .enumerate()
        .map(|(i, url)| Node::spawn(cluster, i, url, https_port, http_port, extra, rust_log))
        .collect()
}

fn diagnostics(nodes: &[Node], pebble: Option<&Pebble>) -> String {
    let mut out: Vec<String> = nodes.iter().map(Node::tail).collect();
    if let Some(p) = pebble {
        out.push(p.log());
    }
    out.join("\n")
}

fn assert_all_running(nodes: &mut [Node], pebble: Option<&Pebble>) {
    for i in 0..nodes.len() {
        if nodes[i].killed {
            continue;
        }
        if let Ok(Some(status)) = nodes[i].child.try_wait() {
            panic!(
                "{} exited unexpectedly ({status})\n{}",
                nodes[i].name,
                diagnostics(nodes, pebble)
            );
        }
    }
}

/// The ACME flags every node of a test uses, against `pebble`, then `extra`.
fn acme_args(pebble: &Pebble, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--acme-domain",
        DOMAIN,
        "--acme-directory",
        &pebble.directory_url(),
        "--acme-ca-root",
        pebble.listener_ca_path().to_str().unwrap(),
        "--acme-challenge",
        "tls-alpn-01",
        "--acme-retry-unit",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

// ---------------------------------------------------------------------------------------------
// TLS client side

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(cert.expect("root PEM"))
            .expect("root certificate");
    }
    roots
}

/// A client that accepts only certificates chaining to `root_pem`.
fn trusting(root_pem: &str) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(root_pem))
            .with_no_client_auth(),
    )
}

/// Accepts any certificate (whose handshake signature checks out), to see what is presented.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn any_cert() -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
            .with_no_client_auth(),
    )
}

/// A full TLS handshake with `addr`, SNI `sni`: the chain the server presented.
async fn presented(
    addr: SocketAddr,
    sni: &str,
    config: &Arc<ClientConfig>,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.get_ref()
            .1
            .peer_certificates()
            .map(<[CertificateDer<'static>]>::to_vec)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| "no certificate presented".to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .unwrap_or_else(|_| Err("handshake timed out".into()))
}

/// SHA-256 of a certificate's DER, lowercase hex (as `/healthz` reports it).
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    sha2::Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `chain` is valid for `sni` under `root_pem`.
fn chains_to(chain: &[CertificateDer<'static>], root_pem: &str, sni: &str) -> bool {
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root_pem)), provider())
            .build()
            .unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Certificates made here

/// A CA of the test's own: (issuer, its PEM).
fn test_ca() -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "deadsfu cluster_https test CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    (Issuer::new(params, key), pem)
}

/// A server certificate for `name` valid from `not_before` to `not_after` (from now), signed
/// by `issuer` or self-signed: (chain PEM, key PEM, fingerprint).
fn server_cert(
    name: &str,
    not_before: time::Duration,
    not_after: time::Duration,
    issuer: Option<&Issuer<'static, KeyPair>>,
) -> (String, String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + not_before;
    params.not_after = now + not_after;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} (imported)"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let fp = fingerprint(cert.der());
    (cert.pem(), key.serialize_pem(), fp)
}

/// Starts pebble validating TLS-ALPN-01 on `tls_port` at 127.0.0.2.
async fn start_pebble(tls_port: u16, http_port: u16, env: &[(&str, &str)]) -> Pebble {
    Pebble::start(PebbleOptions {
        http_port,
        tls_port,
        default_ipv4: NODE_IPS[0],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .await
}

/// Waits until `node` presents a certificate chaining to `root_pem` for DOMAIN; returns the
/// leaf's fingerprint.
async fn wait_for_issued(
    nodes: &mut [Node],
    index: usize,
    config: &Arc<ClientConfig>,
    pebble: &Pebble,
    timeout: Duration,
) -> String {
    let deadline = Deadline::new(
        format!(
            "{} to present a pebble-issued certificate for {DOMAIN}",
            nodes[index].name
        ),
        timeout,
    );
    loop {
        let last = match presented(nodes[index].https, DOMAIN, config).await {
            Ok(chain) => return fingerprint(&chain[0]),
            Err(e) => e,
        };
        assert_all_running(nodes, Some(pebble));
        deadline
            .tick(|| {
                format!(
                    "last handshake: {last}\n{}",
                    diagnostics(nodes, Some(pebble))
                )
            })
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_one_order_same_certificate() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let https_port = deadsfu_testkit::tcp_port_free_on_all(&NODE_IPS);
    let http_port = deadsfu_testkit::tcp_port_free_on_all(&NODE_IPS);
    let pebble = start_pebble(https_port, http_port, &[]).await;
    let root = pebble.issuing_root_pem().await;
    let acme = acme_args(&pebble, &[]);

    // All three at the same moment.
    let started = Instant::now();
    let mut nodes = start_nodes(&cluster, 3, https_port, http_port, &acme, "info,str0m=warn");
    let config = trusting(&root);
    let mut fingerprints = Vec::new();
    for i in 0..3 {
        let fp = wait_for_issued(&mut nodes, i, &config, &pebble, Duration::from_secs(60)).await;
        println!(
            "{} presents the pebble certificate {:.1} s after the start",
            nodes[i].name,
            started.elapsed().as_secs_f64()
        );
        fingerprints.push(fp);
    }

    assert_eq!(
        pebble.orders(),
        1,
        "one order for the whole cluster\n{}",
        diagnostics(&nodes, Some(&pebble))
    );
    // Observation window (not synchronisation): no node orders after the fact.
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window {
        assert_eq!(
            pebble.orders(),
            1,
            "a late order\n{}",
            diagnostics(&nodes, Some(&pebble))
        );
        assert_all_running(&mut nodes, Some(&pebble));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fingerprints.iter().all(|f| *f == fingerprints[0]),
        "every node serves the same certificate: {fingerprints:?}"
    );

    // The counters agree: one order and one certificate across the cluster.
    let mut orders = 0;
    let mut obtained = 0;
    for n in &nodes {
        orders += n.metric("deadsfu_acme_orders_total").await;
        obtained += n.metric("deadsfu_acme_certificates_total").await;
    }
    assert_eq!((orders, obtained), (1, 1), "cluster-wide ACME counters");
    // /healthz names the certificate everywhere, with the same fingerprint.
    for n in &nodes {
        let health = n.http_get("/healthz").await.expect("/healthz");
        assert!(
            health.contains(&fingerprints[0]) && health.contains(DOMAIN),
            "{} /healthz: {health}",
            n.name
        );
    }

    // The store holds the chain and a sealed key, never the key in the clear.
    let stored = cluster
        .get(&cluster.cert_key(DOMAIN))
        .await
        .expect("the certificate is stored in Redis");
    assert!(stored.contains("BEGIN CERTIFICATE"), "{stored}");
    assert!(
        !stored.contains("PRIVATE KEY"),
        "the stored certificate record holds a clear private key"
    );
    assert_all_running(&mut nodes, Some(&pebble));
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_holder_killed_mid_order_another_completes() {
    let _serial = SERIAL.lock().await;
    const LOCK_TTL: Duration = Duration::from_secs(3);
    let cluster = Cluster::start().await;
    let https_port = deadsfu_testkit::tcp_port_free_on_all(&NODE_IPS);
    let http_port = deadsfu_testkit::tcp_port_free_on_all(&NODE_IPS);
    // Validation waits a random 0-3 s (pebble 2.4: rand.Intn(PEBBLE_VA_SLEEPTIME) seconds).
    let pebble = start_pebble(
        https_port,
        http_port,
        &[("PEBBLE_VA_NOSLEEP", "0"), ("PEBBLE_VA_SLEEPTIME", "4")],
    )
    .await;
    let root = pebble.issuing_root_pem().await;
    let acme = acme_args(&pebble, &["--acme-lock-ttl", "3s"]);
    let mut nodes = start_nodes(&cluster, 3, https_port, http_port, &acme, "info,str0m=warn");

    // Wait until a node holds the lock (its value is "{node-id}/{random}") and pebble has its
    // order, then kill that node: mid-order, with the lock held.
    let lock_key = cluster.lock_key(DOMAIN);
    let deadline = Deadline::new(
        "a node to hold the order lock with an order placed",
        Duration::from_secs(30),
    );
    let holder = loop {
        if let Some(value) = cluster.get(&lock_key).await
            && pebble.orders() >= 1
        {
            let id = value.split('/').next().unwrap_or_default().to_owned();
            break nodes
                .iter()
                .position(|n| n.name == id)
                .unwrap_or_else(|| panic!("lock held by an unknown node: {value}"));
        }
        assert_all_running(&mut nodes, Some(&pebble));
        deadline
            .tick_after(Duration::from_millis(10), || {
                diagnostics(&nodes, Some(&pebble))
            })
            .await;
    };
    nodes[holder].kill();
    let killed_at = Instant::now();
    let orders_at_kill = pebble.orders();
    println!(
        "killed the lock holder {} ({}) with {orders_at_kill} order(s) placed",
        nodes[holder].name, nodes[holder].ip
    );
    assert!(
        cluster.get(&cluster.cert_key(DOMAIN)).await.is_none(),
        "the order finished before the kill: the test proves nothing\n{}",
        diagnostics(&nodes, Some(&pebble))
    );
    assert_eq!(
        orders_at_kill,
        1,
        "only the lock holder ordered while it lived\n{}",
        diagnostics(&nodes, Some(&pebble))
    );
    // Pebble 2.4 validates on the first address of the name only: the name must lead to a
    // live node, as a health-checked DNS record or load balancer would.
    if nodes[holder].ip == NODE_IPS[0] {
        let survivor = nodes.iter().find(|n| !n.killed).unwrap().ip;
        pebble.set_default_ipv4(survivor).await;
    }

    let config = trusting(&root);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    let mut fingerprints = Vec::new();
    for &i in &survivors {
        fingerprints
            .push(wait_for_issued(&mut nodes, i, &config, &pebble, Duration::from_secs(60)).await);
    }
    let took = killed_at.elapsed();
    println!(
        "both survivors present a pebble certificate {:.2} s after the kill (bound: lock TTL {:?} + one order)",
        took.as_secs_f64(),
        LOCK_TTL
    );
    assert!(
        took <= LOCK_TTL + Duration::from_secs(30),
        "took {took:?} after the kill\n{}",
        diagnostics(&nodes, Some(&pebble))
    );
    assert_eq!(
        fingerprints[0], fingerprints[1],
        "survivors serve one certificate"
    );

    // One survivor ordered, once; the other waited for it.
    let ordered: Vec<usize> = survivors
        .iter()
        .map(|&i| nodes[i].count("certificate obtained"))
        .collect();
    assert_eq!(
        ordered.iter().sum::<usize>(),
        1,
        "exactly one survivor obtained the certificate: {ordered:?}\n{}",
        diagnostics(&nodes, Some(&pebble))
    );
    let orders = pebble.orders();
    println!("pebble orders in all: {orders}");
    assert!(
        orders <= 2,
        "the dead holder's order and one more at most, got {orders}\n{}",
        diagnostics(&nodes, Some(&pebble))
    );
    assert_all_running(&mut nodes, Some(&pebble));
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_is_picked_up_by_every_node_without_restart() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let https_port = deadsfu_testkit::tcp_port_free_on_all(&NODE_IPS);
    let http_port = deadsfu_testkit::tcp_port_free_on_all(&NODE_IPS);
    let pebble = start_pebble(https_port, http_port, &[]).await;
    let root = pebble.issuing_root_pem().await;

    // A certificate bought elsewhere, two hours old, 30 days left: with a renew-before longer
    // than any lifetime it is due at once.
    let (chain, key, imported) = server_cert(
        DOMAIN,
        time::Duration::hours(-2),
        time::Duration::days(30),
        None,
    );
    cluster.import(DOMAIN, &chain, &key);
    // Hold the domain's order lock as another node would, so the renewal waits until the live
    // viewer is in place.
    let lock_key = cluster.lock_key(DOMAIN);
    cluster
        .set(&lock_key, "operator/hold", Some(Duration::from_secs(120)))
        .await;

    let acme = acme_args(
        &pebble,
        &["--acme-renew-before", "3650days", "--acme-lock-ttl", "3s"],
    );
    let mut nodes = start_nodes(&cluster, 3, https_port, http_port, &acme, "info,str0m=warn");

    // Every node serves the imported certificate first.
    let any = any_cert();
    for i in 0..3 {
        let deadline = Deadline::new(
            format!("{} to serve the imported certificate", nodes[i].name),
            Duration::from_secs(30),
        );
        loop {
            let last = match presented(nodes[i].https, DOMAIN, &any).await {
                Ok(chain) if fingerprint(&chain[0]) == imported => break,
                Ok(chain) => format!("presented {}", fingerprint(&chain[0])),
                Err(e) => e,
            };
            assert_all_running(&mut nodes, Some(&pebble));
            deadline
                .tick(|| format!("last: {last}\n{}", diagnostics(&nodes, Some(&pebble))))
                .await;
        }
    }

    // A live stream on node-a, watched over its plain HTTP.
    let base = format!("http://{}", nodes[0].http);
    let mut publisher = Peer::connect(
        &format!("{base}/whip/live"),
        Role::Publish(StreamSpec::default()),
        PeerOptions::default(),
    )
    .await
    .expect("publisher");
    publisher
        .wait_until("publisher connected", Duration::from_secs(15), |s| {
            s.connected
        })
        .await
        .expect("publisher connects");
    let mut viewer = Peer::connect(
        &format!("{base}/whep/live"),
        Role::View,
        PeerOptions::default(),
    )
    .await
    .expect("viewer");
    viewer
        .wait_until("the viewer receives video", Duration::from_secs(15), |s| {
            s.video.packets >= 30
        })
        .await
        .expect("viewer receives the stream");
    assert_eq!(pebble.orders(), 0, "no order while the lock is held");

    // Let the renewal go.
    cluster.del(&lock_key).await;
    let released = Instant::now();
    let config = trusting(&root);
    let mut fingerprints = Vec::new();
    for i in 0..3 {
        let deadline = Deadline::new(
            format!("{} to serve the renewed certificate", nodes[i].name),
            Duration::from_secs(60),
        );
        loop {
            let last = match presented(nodes[i].https, DOMAIN, &any).await {
                Ok(chain) if chains_to(&chain, &root, DOMAIN) => {
                    fingerprints.push(fingerprint(&chain[0]));
                    break;
                }
                Ok(chain) if fingerprint(&chain[0]) == imported => {
                    "still the imported certificate".to_string()
                }
                Ok(chain) => format!("an unknown certificate {}", fingerprint(&chain[0])),
                Err(e) => e,
            };
            assert_all_running(&mut nodes, Some(&pebble));
            deadline
                .tick(|| format!("last: {last}\n{}", diagnostics(&nodes, Some(&pebble))))
                .await;
        }
        println!(
            "{} serves the renewed certificate {:.2} s after the lock was released",
            nodes[i].name,
            released.elapsed().as_secs_f64()
        );
    }
    assert!(
        fingerprints.iter().all(|f| *f == fingerprints[0]),
        "one renewed certificate: {fingerprints:?}"
    );
    // The real thing, with a client trusting only pebble's root.
    for n in &nodes {
        let chain = presented(n.https, DOMAIN, &config)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", n.name));
        assert_eq!(fingerprint(&chain[0]), fingerprints[0]);
    }

    // The viewer kept receiving through the switch.
    let at_switch = viewer.stats().video.packets;
    let stats = viewer
        .wait_until(
            "the viewer keeps receiving after the switch",
            Duration::from_secs(15),
            |s| s.video.packets >= at_switch + 60 && !s.closed,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "viewer after the switch: {e}: {:?}\n{}",
                viewer.stats().video,
                diagnostics(&nodes, Some(&pebble))
            )
        });
    assert!(stats.connected, "viewer still connected");

    // One node renewed; the others took the certificate from the store.
    let renewing: Vec<(&str, usize)> = nodes
        .iter()
        .map(|n| (n.name, n.count("ordering a certificate")))
        .collect();
    assert_eq!(
        renewing.iter().map(|(_, c)| c).sum::<usize>(),
        1,
        "one node orders: {renewing:?}"
    );
    assert!(
        nodes
            .iter()
            .any(|n| n.count("ordering a certificate") == 1 && n.count("renewal=true") == 1),
        "the order is a renewal\n{}",
        diagnostics(&nodes, Some(&pebble))
    );
    // One order: the new certificate is under an hour old, so it is not renewed again.
    assert_eq!(pebble.orders(), 1, "{}", diagnostics(&nodes, Some(&pebble)));
    let window = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window {
        assert_eq!(
            pebble.orders(),
            1,
            "renewed again\n{}",
            diagnostics(&nodes, Some(&pebble))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No node restarted: every process the test started is still running.
    assert_all_running(&mut nodes, Some(&pebble));
    let _ = viewer.delete().await;
    let _ = publisher.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn undecryptable_key_in_redis_is_a_clear_error_and_node_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let (ca, ca_pem) = test_ca();
    let (chain, key, imported) = server_cert(
        DOMAIN,
        time::Duration::hours(-1),
        time::Duration::days(30),
        Some(&ca),
    );
    cluster.import(DOMAIN, &chain, &key);

    // One node, HTTPS from the store only (no ACME). Debug lines of the certificate event
    // handler show when an announcement has been handled.
    let https_port = deadsfu_testkit::tcp_port_free_on_all(&NODE_IPS[..1]);
    let http_port = deadsfu_testkit::tcp_port_free_on_all(&NODE_IPS[..1]);
    let mut nodes = start_nodes(
        &cluster,
        1,
        https_port,
        http_port,
        &[],
        "info,str0m=warn,deadsfu_tls::https_node=debug",
    );
    let trusted = trusting(&ca_pem);
    let deadline = Deadline::new(
        "the node to serve the imported certificate",
        Duration::from_secs(30),
    );
    loop {
        let last = match presented(nodes[0].https, DOMAIN, &trusted).await {
            Ok(chain) if fingerprint(&chain[0]) == imported => break,
            Ok(chain) => format!("presented {}", fingerprint(&chain[0])),
            Err(e) => e,
        };
        assert_all_running(&mut nodes, None);
        deadline
            .tick(|| format!("last: {last}\n{}", diagnostics(&nodes, None)))
            .await;
    }
    // The node follows the events channel (its subscription may come after the start-up).
    let deadline = Deadline::new(
        "the node to hear certificate events",
        Duration::from_secs(15),
    );
    // Announce probe names until one is heard (the import came before the start, so any
    // announcement logged is a probe).
    let mut probe = 0;
    loop {
        if nodes[0].count("certificate update announced") > 0 {
            break;
        }
        probe += 1;
        cluster
            .publish_cert_updated(&format!("probe{probe}.test"))
            .await;
        assert_all_running(&mut nodes, None);
        deadline.tick(|| diagnostics(&nodes, None)).await;
    }

    // Corrupt the sealed key: flip one character of its ciphertext (it stays base64url, so
    // the value parses and only decryption fails).
    let cert_key = cluster.cert_key(DOMAIN);
    let json = cluster.get(&cert_key).await.expect("stored certificate");
    let mut record: serde_json::Value = serde_json::from_str(&json).unwrap();
    let sealed = record["key_sealed"]
        .as_str()
        .expect("a key_sealed field")
        .to_owned();
    let body_start = sealed.rfind('.').expect("version.nonce.body") + 1;
    let at = body_start + (sealed.len() - body_start) / 2;
    let mut bytes = sealed.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    record["key_sealed"] = String::from_utf8(bytes).unwrap().into();
    let log_before = nodes[0].log_text().lines().count();
    cluster.set(&cert_key, &record.to_string(), None).await;
    cluster.publish_cert_updated(DOMAIN).await;
    // Events are handled one after another: once a later announcement is logged, the reload
    // for the corrupt one is done.
    cluster.publish_cert_updated("barrier.test").await;
    let deadline = Deadline::new(
        "the node to handle the announcements",
        Duration::from_secs(15),
    );
    loop {
        let text = nodes[0].log_text();
        if text
            .lines()
            .skip(log_before)
            .any(|l| l.contains("certificate update announced") && l.contains("barrier.test"))
        {
            break;
        }
        assert_all_running(&mut nodes, None);
        deadline.tick(|| diagnostics(&nodes, None)).await;
    }

    let mut failures = Vec::new();
    // Observation window: the old certificate keeps being served.
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window {
        match presented(nodes[0].https, DOMAIN, &trusted).await {
            Ok(chain) if fingerprint(&chain[0]) == imported => {}
            Ok(chain) => {
                failures.push(format!(
                    "after the corrupt record the node presents {} instead of the loaded {imported}",
                    fingerprint(&chain[0])
                ));
                break;
            }
            Err(e) => {
                failures.push(format!(
                    "after the corrupt record the node no longer serves {DOMAIN}: {e}"
                ));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A warning or error naming the domain, at the default log level.
    let errors: Vec<String> = nodes[0]
        .log_text()
        .lines()
        .skip(log_before)
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains(DOMAIN))
        .map(str::to_owned)
        .collect();
    if errors.is_empty() {
        failures.push(format!(
            "no WARN/ERROR line mentions {DOMAIN} after its record became undecryptable"
        ));
    } else {
        println!("the node reported: {}", errors.join("\n"));
    }
    // The operator can still look at the store.
    match cluster.admin(&["cluster", "cert", "ls"], "cert-ls.log") {
        Ok(out) if out.contains(DOMAIN) => println!("cert ls:\n{out}"),
        Ok(out) => failures.push(format!("cert ls does not list {DOMAIN}:\n{out}")),
        Err(e) => failures.push(format!("cert ls failed: {e}")),
    }
    assert_all_running(&mut nodes, None);
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        diagnostics(&nodes, None)
    );
}
