//! A cluster of real `deadsfu serve` nodes for integration tests: `deadsfu cluster init`, a
//! TLS `redis-server` with the config it writes, the bootstrap server, one sfu bundle per node,
//! and the nodes themselves on 127.0.0.x sharing one HTTPS port number, with one certificate
//! (rcgen, signed by a test CA) covering the service name and every node's hostname. Clients
//! (reqwest) trust that CA and resolve the names to the nodes' loopback addresses.
//!
//! Use it with `#[path = "common/cluster.rs"] mod cluster;`. Everything is stopped and removed
//! when dropped; when dropped while panicking, the nodes' log tails are printed.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadsfu_cluster::{JoinUrl, RedisConn};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_deadsfu");
/// The cluster's one public name.
pub const SERVICE: &str = "svc.test";
pub const LOG_TAIL: usize = 40;

// ---------------------------------------------------------------------------------------------
// Waiting

/// A deadline for a polling loop: `tick` sleeps a little, or panics with `what` and the
/// diagnostics once the time is up.
pub struct Deadline {
    what: String,
    at: Instant,
}

impl Deadline {
    pub fn new(what: impl Into<String>, timeout: Duration) -> Self {
        Self {
            what: what.into(),
            at: Instant::now() + timeout,
        }
    }

    pub fn passed(&self) -> bool {
        Instant::now() > self.at
    }

    pub async fn tick(&self, diagnostics: impl FnOnce() -> String) {
        if self.passed() {
            panic!("timed out waiting for {}\n{}", self.what, diagnostics());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and files

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `deadsfu ARGS` with its stderr (logs) to `log`, and no cluster URL but the one in `env`.
pub fn deadsfu(args: &[&str], env: &[(&str, &str)], log: &Path) -> Command {
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

fn run_ok(mut cmd: Command, log: &Path) -> String {
    let out = cmd.stdout(Stdio::piped()).output().expect("run deadsfu");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A test CA and one server certificate (files) for the given names.
pub struct TestPki {
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn make(dir: &Path, names: &[String]) -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "deadsfu cluster test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.to_vec()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_path = dir.join("server.crt");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, cert.pem() + &ca_pem).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        TestPki {
            ca_pem,
            cert: cert_path,
            key: key_path,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster's shared parts

/// `cluster init`, redis-server, the bootstrap server, an admin bundle and a Redis connection
/// of the test's own (the admin user may read and write every key).
pub struct Cluster {
    dir: tempfile::TempDir,
    cdir: PathBuf,
    redis_proc: Mutex<Proc>,
    _boot: Proc,
    pub admin_url: String,
    pub redis: RedisConn,
    pub pki: TestPki,
}

impl Cluster {
    /// `names`: every hostname the test certificate must cover.
    pub async fn start(prefix: &str, names: &[String]) -> Cluster {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
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
        let redis_proc = spawn_redis(&cdir, &log("redis.log"));
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
        let pki = TestPki::make(dir.path(), names);
        Cluster {
            dir,
            cdir,
            redis_proc: Mutex::new(redis_proc),
            _boot: boot,
            admin_url,
            redis,
            pki,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `cluster issue`: the bundle URL.
    pub fn issue(&self, role: &str, name: &str, extra: &[&str]) -> String {
        issue(self.dir.path(), &self.cdir, role, name, extra)
    }

    /// SIGKILL to redis-server (it stays dead until [`Cluster::restart_redis`]); waits for
    /// the process to be gone.
    pub fn kill_redis(&self) {
        let mut redis = self.redis_proc.lock().unwrap_or_else(|e| e.into_inner());
        let status = Command::new("kill")
            .args(["-KILL", &redis.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -KILL redis-server");
        let _ = redis.0.wait();
    }

    /// Starts redis-server again with the same config (killing it first if it still runs),
    /// and waits until the test's own connection answers PING again.
    pub async fn restart_redis(&self) {
        {
            let mut redis = self.redis_proc.lock().unwrap_or_else(|e| e.into_inner());
            if redis.0.try_wait().ok().flatten().is_none() {
                let _ = redis.0.kill();
                let _ = redis.0.wait();
            }
            *redis = spawn_redis(&self.cdir, &self.path("redis.log"));
        }
        let deadline = Deadline::new("Redis to answer again", Duration::from_secs(20));
        loop {
            let ping = redis::cmd("PING")
                .query_async::<String>(&mut self.redis.manager())
                .await;
            if ping.is_ok() {
                return;
            }
            deadline
                .tick(|| {
                    format!(
                        "last: {ping:?}\n{}",
                        tail(&self.path("redis.log"), LOG_TAIL)
                    )
                })
                .await;
        }
    }

    /// The test CA's certificate as a file (for curl).
    pub fn ca_file(&self) -> PathBuf {
        let path = self.path("ca.pem");
        if !path.exists() {
            std::fs::write(&path, &self.pki.ca_pem).unwrap();
        }
        path
    }

    pub fn room_key(&self, room: &str) -> String {
        self.redis.keys().room(room)
    }

    pub fn node_key(&self, node: &str) -> String {
        self.redis.keys().node(node)
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.redis.manager())
            .await
            .unwrap_or_else(|e| panic!("GET {key}: {e}"))
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl.as_millis() as u64);
        }
        cmd.query_async::<()>(&mut self.redis.manager())
            .await
            .unwrap_or_else(|e| panic!("SET {key}: {e}"));
    }

    pub async fn del(&self, key: &str) {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<i64>(&mut self.redis.manager())
            .await
            .unwrap_or_else(|e| panic!("DEL {key}: {e}"));
    }
}

/// redis-server with the cluster's config, its output appended to `log`.
fn spawn_redis(cdir: &Path, log: &Path) -> Proc {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Proc(
        Command::new("redis-server")
            .arg(cdir.join("redis/redis.conf"))
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)"),
    )
}

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

// ---------------------------------------------------------------------------------------------
// Nodes

/// One node to start: its name (node id, bundle name; hostname `{name}.test`), its loopback
/// address and flags of its own.
pub struct NodeSpec {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub extra: Vec<String>,
}

pub struct Node {
    pub name: &'static str,
    pub hostname: String,
    pub ip: Ipv4Addr,
    pub https: SocketAddr,
    pub http: SocketAddr,
    /// `https://{hostname}:{https port}` as given with --public-url by default, or the
    /// `--public-url` of the node's own flags (e.g. a proxy's port).
    pub public_url: String,
    /// The sfu bundle URL the node joined with.
    pub bundle_url: String,
    pub log: PathBuf,
    child: Mutex<Child>,
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }

    /// `https://{hostname}:{its own HTTPS port}{path}`: the node itself, not its public URL.
    pub fn direct_url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.hostname, self.https.port())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn tail(&self) -> String {
        format!(
            "--- {} ({}) log, last {LOG_TAIL} lines ---\n{}",
            self.name,
            self.ip,
            tail(&self.log, LOG_TAIL)
        )
    }

    /// Sends SIGTERM (the process goes on while it drains).
    pub fn sigterm(&self) {
        let pid = self.child.lock().unwrap().id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The exit status, if the process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Nodes of one cluster, and what clients need to reach them.
pub struct Nodes {
    pub list: Vec<Node>,
    pub https_port: u16,
    pub http_port: u16,
    pub ca_pem: String,
    /// The source address of [`Nodes::client`]'s connections (default: the kernel's choice).
    pub client_source: Option<IpAddr>,
}

/// Choices of [`Nodes::start_with`].
#[derive(Debug, Clone, Default)]
pub struct NodesOptions {
    /// Source address of the test's direct connections to the nodes (readiness and
    /// [`Nodes::client`]), e.g. one the nodes' `--proxy-protocol-from` does not cover.
    pub client_source: Option<IpAddr>,
    /// Addresses of nodes started later ([`Nodes::spawn_more`]): the HTTPS and HTTP port
    /// numbers are chosen free on these too.
    pub later_ips: Vec<Ipv4Addr>,
}

impl Nodes {
    /// Issues every node's bundle, then starts them all (issuing reloads Redis's ACL, which
    /// drops connections: a node whose join is cut would exit), then waits until each answers
    /// `/readyz` with 200 and every node record is in Redis. `common` flags go to every node
    /// (before its own).
    pub async fn start(cluster: &Cluster, specs: Vec<NodeSpec>, common: &[String]) -> Nodes {
        Self::start_with(cluster, specs, common, NodesOptions::default()).await
    }

    /// [`Nodes::start`] with options. A node's own `--public-url` or `--ftl-listen` (in
    /// `common` or its `extra`) replaces the default one.
    pub async fn start_with(
        cluster: &Cluster,
        specs: Vec<NodeSpec>,
        common: &[String],
        options: NodesOptions,
    ) -> Nodes {
        let mut ips: Vec<Ipv4Addr> = specs.iter().map(|s| s.ip).collect();
        ips.extend(&options.later_ips);
        let https_port = deadsfu_testkit::tcp_port_free_on_all(&ips);
        let http_port = deadsfu_testkit::tcp_port_free_on_all(&ips);
        let urls: Vec<String> = specs.iter().map(|s| issue_sfu(cluster, s.name)).collect();
        let list: Vec<Node> = specs
            .into_iter()
            .zip(urls)
            .map(|(spec, url)| spawn(cluster, spec, url, https_port, http_port, common))
            .collect();
        let nodes = Nodes {
            list,
            https_port,
            http_port,
            ca_pem: cluster.pki.ca_pem.clone(),
            client_source: options.client_source,
        };
        for node in &nodes.list {
            nodes.wait_ready_inner(cluster, node, true).await;
        }
        // Every node's record in Redis (a node reads the others' into its routing snapshot).
        for node in &nodes.list {
            let key = cluster.node_key(node.name);
            let deadline = Deadline::new(format!("{key} in Redis"), Duration::from_secs(10));
            while cluster.get(&key).await.is_none() {
                deadline.tick(|| nodes.tails()).await;
            }
        }
        nodes
    }

    /// Starts one more node of the cluster (not added to `list`) with a bundle issued earlier
    /// ([`issue_sfu`]), at the common port numbers, and waits until it is ready and
    /// registered.
    pub async fn spawn_more(
        &self,
        cluster: &Cluster,
        spec: NodeSpec,
        bundle_url: String,
        common: &[String],
    ) -> Node {
        let node = spawn(
            cluster,
            spec,
            bundle_url,
            self.https_port,
            self.http_port,
            common,
        );
        self.wait_ready(cluster, &node).await;
        node
    }

    /// Waits until `node` answers `/readyz` (at its own address) with 200 and its record is in
    /// Redis.
    pub async fn wait_ready(&self, cluster: &Cluster, node: &Node) {
        self.wait_ready_inner(cluster, node, false).await
    }

    /// `all`: panic if any node of `list` exits meanwhile (else only `node`).
    async fn wait_ready_inner(&self, cluster: &Cluster, node: &Node, all: bool) {
        let client = self
            .client_builder(false)
            .resolve(&node.hostname, node.https)
            .build()
            .unwrap();
        let deadline = Deadline::new(
            format!("{} to answer /readyz with 200", node.name),
            Duration::from_secs(30),
        );
        loop {
            if all {
                self.assert_running();
            }
            if let Some(status) = node.exited() {
                panic!(
                    "{} exited unexpectedly ({status})\n{}",
                    node.name,
                    node.tail()
                );
            }
            let status = client
                .get(node.direct_url("/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16());
            let registered = cluster.get(&cluster.node_key(node.name)).await.is_some();
            if matches!(status, Ok(200)) && registered {
                break;
            }
            deadline
                .tick(|| format!("last: {status:?}\n{}\n{}", self.tails(), node.tail()))
                .await;
        }
    }

    pub fn get(&self, name: &str) -> &Node {
        self.list
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// `https://svc.test:{port}{path}`.
    pub fn service_url(&self, path: &str) -> String {
        format!("https://{SERVICE}:{}{path}", self.https_port)
    }

    /// A client trusting the test CA that reaches every node's hostname, and the service name
    /// at `entry` (a node's name). `follow`: reqwest's default redirect policy (up to 10,
    /// `Authorization` dropped when crossing origins); else redirects are returned.
    pub fn client(&self, entry: Option<&str>, follow: bool) -> reqwest::Client {
        let mut b = self.client_builder(follow);
        for n in &self.list {
            b = b.resolve(&n.hostname, n.https);
        }
        if let Some(entry) = entry {
            b = b.resolve(SERVICE, self.get(entry).https);
        }
        b.build().unwrap()
    }

    /// A client builder trusting the test CA, with the redirect policy of `follow` (see
    /// [`Nodes::client`]) and the source address `client_source`; it resolves nothing.
    pub fn client_builder(&self, follow: bool) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA PEM"),
            )
            .timeout(Duration::from_secs(15))
            .redirect(if follow {
                reqwest::redirect::Policy::default()
            } else {
                reqwest::redirect::Policy::none()
            })
            .local_address(self.client_source)
    }

    pub fn tails(&self) -> String {
        self.list
            .iter()
            .map(Node::tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics (with the log tails) if a node exited.
    pub fn assert_running(&self) {
        for n in &self.list {
            if let Some(status) = n.exited() {
                panic!(
                    "{} exited unexpectedly ({status})\n{}",
                    n.name,
                    self.tails()
                );
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.tails());
        }
    }
}

/// The sfu bundle of node `name` (hostname `{name}.test`); issuing reloads Redis's ACL.
pub fn issue_sfu(cluster: &Cluster, name: &str) -> String {
    cluster.issue("sfu", name, &["--hostname", &format!("{name}.test")])
}

/// The value of `flag` in `args` (the last one), if given.
fn flag_value<'a>(args: impl IntoIterator<Item = &'a String>, flag: &str) -> Option<String> {
    let args: Vec<&String> = args.into_iter().collect();
    args.windows(2)
        .rev()
        .find(|w| w[0] == flag)
        .map(|w| w[1].clone())
}

fn spawn(
    cluster: &Cluster,
    spec: NodeSpec,
    bundle_url: String,
    https_port: u16,
    http_port: u16,
    common: &[String],
) -> Node {
    let hostname = format!("{}.test", spec.name);
    let https = SocketAddr::from((spec.ip, https_port));
    let http = SocketAddr::from((spec.ip, http_port));
    let own = || common.iter().chain(spec.extra.iter());
    let public_url = flag_value(own(), "--public-url")
        .unwrap_or_else(|| format!("https://{hostname}:{https_port}"));
    let mut defaults = vec![];
    if flag_value(own(), "--public-url").is_none() {
        defaults.extend(["--public-url".to_string(), public_url.clone()]);
    }
    if flag_value(own(), "--ftl-listen").is_none() {
        defaults.extend(["--ftl-listen".to_string(), String::new()]);
    }
    let log = cluster.path(&format!("{}.log", spec.name));
    let data_dir = cluster.path(&format!("{}-data", spec.name));
    let args: Vec<String> = [
        "serve",
        "--http",
        &http.to_string(),
        "--https",
        &https.to_string(),
        "--udp-port",
        "0",
        "--workers",
        "1",
        "--ice-candidate-host",
        "127.0.0.1",
        "--tls-cert",
        cluster.pki.cert.to_str().unwrap(),
        "--tls-key",
        cluster.pki.key.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--hostname",
        &hostname,
        "--node-id",
        spec.name,
        "--service-domain",
        SERVICE,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(defaults)
    .chain(common.iter().cloned())
    .chain(spec.extra)
    .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = deadsfu(&args, &[("DEADSFU_CLUSTER_URL", &bundle_url)], &log)
        .env("RUST_LOG", "info,str0m=warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start deadsfu serve");
    Node {
        name: spec.name,
        hostname,
        ip: spec.ip,
        https,
        http,
        public_url,
        bundle_url,
        log,
        child: Mutex::new(child),
    }
}
