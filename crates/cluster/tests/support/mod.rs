//! Test fixtures: a real TLS redis-server on a free loopback port, configured by the crate's
//! own `init`, the bootstrap server, issued bundles, captured logs, polling with deadlines.
#![allow(dead_code)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deadsfu_cluster::bootstrap_server::BootstrapServer;
use deadsfu_cluster::bundle_fetch::fetch_bundle;
use deadsfu_cluster::init::{InitOptions, init};
use deadsfu_cluster::issue::issue;
use deadsfu_cluster::{Bundle, JoinUrl, RedisConn, Role};
use tokio::task::JoinHandle;

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- captured logs ----

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<LogBuffer> = OnceLock::new();

/// Installs (once per test binary) a subscriber that records every log line at debug level.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = LogBuffer(Arc::new(Mutex::new(Vec::new())));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    });
}

pub fn captured_logs() -> String {
    let buffer = LOGS.get().expect("capture_logs() first");
    String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned()
}

/// Fails if any secret appears in `text`.
pub fn assert_no_secrets(text: &str, secrets: &[String], source: &str) {
    assert!(
        !text.is_empty() || source != "logs",
        "no log lines were captured"
    );
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{source} contain a secret (first 6 chars {})",
            &secret[..6.min(secret.len())]
        );
    }
}

// ---- redis-server ----

/// A redis-server child, killed on drop.
pub struct RedisProcess {
    child: Option<Child>,
    conf: PathBuf,
    log: PathBuf,
}

impl RedisProcess {
    pub fn start(conf: &Path, log: &Path) -> Self {
        let mut process = Self {
            child: None,
            conf: conf.to_path_buf(),
            log: log.to_path_buf(),
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new("redis-server")
            .arg(&self.conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install Debian's package: \
                     apt-get install -y redis-server"
                )
            });
        self.child = Some(child);
    }

    /// Waits for "Ready to accept connections" in its log.
    pub async fn wait_ready(&mut self) {
        let log = self.log.clone();
        let exited = eventually(Duration::from_secs(15), "redis-server ready", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let status = self.child.as_mut().unwrap().try_wait().unwrap();
            async move {
                if text.contains("Ready to accept connections") {
                    Some(None)
                } else {
                    status.map(|s| Some((s, text)))
                }
            }
        })
        .await;
        if let Some((status, text)) = exited {
            panic!("redis-server exited ({status}) before it was ready:\n{text}");
        }
    }

    /// Stops it (SIGTERM, so it behaves as in a normal restart) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe_kill(child.id(), "TERM");
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal by pid with the system's `kill` (only to processes the test started).
pub fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

// ---- a whole test cluster ----

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub redis: RedisProcess,
    pub redis_addr: String,
    pub bootstrap_addr: String,
    bootstrap: JoinHandle<()>,
    /// Every token and password handed out, to check logs against.
    pub secrets: Vec<String>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.bootstrap.abort();
    }
}

impl TestCluster {
    /// init → redis-server with the generated config → bootstrap server. A free port can be
    /// taken by another test between being found and being bound: then it starts again.
    pub async fn start() -> Self {
        for _ in 0..4 {
            if let Some(cluster) = Self::try_start().await {
                return cluster;
            }
        }
        panic!("no free ports for the test cluster after 4 tries");
    }

    async fn try_start() -> Option<Self> {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let cluster_dir = dir.path().join("cluster");
        let redis_addr = format!(
            "127.0.0.1:{}",
            deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
        );
        let bootstrap_addr = format!(
            "127.0.0.1:{}",
            deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
        );
        init(
            &cluster_dir,
            &InitOptions {
                redis_addr: redis_addr.clone(),
                bootstrap_addr: bootstrap_addr.clone(),
                key_prefix: "deadsfu:".into(),
            },
        )
        .expect("cluster init");
        let mut redis = RedisProcess::start(
            &cluster_dir.join("redis/redis.conf"),
            &dir.path().join("redis.log"),
        );
        redis.wait_ready().await;
        let server = match BootstrapServer::bind(&cluster_dir.join("bootstrap"), None).await {
            Ok(server) => server,
            Err(e) if format!("{e:?}").contains("AddrInUse") => return None,
            Err(e) => panic!("bootstrap server binds: {e:?}"),
        };
        let bootstrap = tokio::spawn(server.run(std::future::pending()));
        Some(Self {
            dir,
            redis,
            redis_addr,
            bootstrap_addr,
            bootstrap,
            secrets: Vec::new(),
        })
    }

    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// Issues a bundle and returns its URL (text, as a node would get it). Sfu bundles get
    /// the hostname `{name}.example.test`, as the tests' node configurations have.
    pub async fn issue(&mut self, role: Role, name: &str) -> String {
        let hostname = (role == Role::Sfu).then(|| format!("{name}.example.test"));
        self.issue_with_hostname(role, name, hostname.as_deref())
            .await
    }

    /// Issues a bundle with the given hostname (sfu only; `None`: the name).
    pub async fn issue_with_hostname(
        &mut self,
        role: Role,
        name: &str,
        hostname: Option<&str>,
    ) -> String {
        let issued = issue(&self.cluster_dir(), role, name, hostname)
            .await
            .expect("issue");
        let url = issued.url.expose().to_string();
        let token = url
            .split("access_token=")
            .nth(1)
            .unwrap()
            .split('#')
            .next()
            .unwrap()
            .to_string();
        self.secrets.push(token);
        let zip = std::fs::read(
            self.cluster_dir()
                .join("names")
                .join(name)
                .join("bundle.zip"),
        )
        .unwrap();
        let bundle = Bundle::from_zip(&zip).unwrap();
        self.secrets.push(bundle.settings.password.clone());
        url
    }

    /// Issues and fetches a bundle through the bootstrap server.
    pub async fn bundle(&mut self, role: Role, name: &str) -> Bundle {
        let url = self.issue(role, name).await;
        fetch_bundle(&JoinUrl::parse(&url).unwrap())
            .await
            .expect("bundle fetch")
    }

    /// Issues and fetches an sfu bundle bound to `name` and `hostname`.
    pub async fn sfu_bundle(&mut self, name: &str, hostname: &str) -> Bundle {
        let url = self
            .issue_with_hostname(Role::Sfu, name, Some(hostname))
            .await;
        fetch_bundle(&JoinUrl::parse(&url).unwrap())
            .await
            .expect("bundle fetch")
    }

    pub async fn connect(&mut self, role: Role, name: &str) -> RedisConn {
        let bundle = self.bundle(role, name).await;
        RedisConn::connect(&bundle).await.expect("Redis connects")
    }

    pub fn assert_logs_clean(&self) {
        assert_no_secrets(&captured_logs(), &self.secrets, "logs");
    }
}

/// Runs `cmd` on `conn`, again (up to 3 times) when the connection had been closed: every
/// `issue` and `revoke` reloads Redis's ACL, and Redis 7.0 then closes the connections of every
/// ACL user; the connection manager reconnects on the next command.
pub async fn query<T: redis::FromRedisValue>(
    conn: &RedisConn,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let mut attempt = 0;
    loop {
        let mut manager = conn.manager();
        match cmd.query_async(&mut manager).await {
            Err(e) if attempt < 3 && (e.is_io_error() || e.is_connection_dropped()) => {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// GET a key as admin.
pub async fn get(conn: &RedisConn, key: &str) -> Option<String> {
    query(conn, redis::cmd("GET").arg(key)).await.expect("GET")
}

/// GET that treats a failing connection (e.g. mid-reconnect) as "not there yet".
pub async fn try_get(conn: &RedisConn, key: &str) -> Option<String> {
    let mut manager = conn.manager();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut manager)
        .await
        .ok()
        .flatten()
}
