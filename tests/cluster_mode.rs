//! `deadsfu serve` in cluster mode, with the real binary, a real TLS redis-server and the
//! operator commands: a node joins through its bundle URL, leases the rooms it serves, shows in
//! `deadsfu cluster status`, and leaves on SIGTERM.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deadsfu_client::{Peer, PeerOptions, Role};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_deadsfu");

/// Removes a directory when dropped, even when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

/// Runs an operator command to completion; returns its stdout.
fn run(args: &[&str], env: &[(&str, &str)], log: &Path) -> String {
    let out = deadsfu(args, env, log).output().expect("run deadsfu");
    assert!(
        out.status.success(),
        "deadsfu {args:?} failed: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `check` until it returns Some, failing after `timeout`.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_joins_leases_rooms_and_leaves() {
    let dir = std::env::temp_dir().join(format!("deadsfu-cluster-mode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveOnDrop(dir.clone());
    let cdir = dir.join("cluster");
    let cdir_s = cdir.to_str().unwrap();
    let log = |name: &str| dir.join(name);
    let redis_addr = format!(
        "127.0.0.1:{}",
        deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
    );
    let boot_addr = format!(
        "127.0.0.1:{}",
        deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
    );

    run(
        &[
            "cluster",
            "init",
            "--dir",
            cdir_s,
            "--redis-addr",
            &redis_addr,
            "--bootstrap-addr",
            &boot_addr,
        ],
        &[],
        &log("init.log"),
    );
    let _redis = Proc(
        Command::new("redis-server")
            .arg(cdir.join("redis/redis.conf"))
            .stdout(std::fs::File::create(log("redis.log")).unwrap())
            .spawn()
            .expect("redis-server (apt-get install redis-server)"),
    );
    let _boot = Proc(
        deadsfu(
            &["cluster", "serve", "--dir", &format!("{cdir_s}/bootstrap")],
            &[],
            &log("bootstrap.log"),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let last_line = |s: String| s.lines().last().unwrap_or_default().to_owned();
    let sfu_url = last_line(run(
        &[
            "cluster",
            "issue",
            "--dir",
            cdir_s,
            "--role",
            "sfu",
            "--name",
            "sfu-a.test",
        ],
        &[],
        &log("issue-sfu.log"),
    ));
    let admin_url = last_line(run(
        &[
            "cluster", "issue", "--dir", cdir_s, "--role", "admin", "--name", "ops",
        ],
        &[],
        &log("issue-admin.log"),
    ));
    assert!(
        sfu_url.starts_with("https://") && sfu_url.contains("#sha256="),
        "{sfu_url}"
    );

    // The bootstrap server and Redis come up on their own time: the node retries until both
    // answer (a start that fails is restarted, as a supervisor would).
    let http = deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST);
    let ftl = deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST);
    let ftl_listen = format!("127.0.0.1:{ftl}");
    let url_file = dir.join("sfu.url");
    std::fs::write(&url_file, &sfu_url).unwrap();
    let serve_args = [
        "serve",
        "--http",
        &format!("127.0.0.1:{http}"),
        "--udp-port",
        "0",
        "--workers",
        "1",
        "--ice-candidate-host",
        "127.0.0.1",
        "--hostname",
        "sfu-a.test",
        "--region",
        "test",
        "--ftl-listen",
        &ftl_listen,
        "--ftl-udp-port",
        "0",
    ];
    let start_node = || {
        deadsfu(
            &serve_args,
            &[("DEADSFU_CLUSTER_URL_FILE", url_file.to_str().unwrap())],
            &log("node.log"),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
    };
    let mut node = Proc(start_node());
    let status = |dir: &Path| {
        let out = deadsfu(
            &["cluster", "status"],
            &[("DEADSFU_CLUSTER_URL", &admin_url)],
            &dir.join("status.log"),
        )
        .stdout(Stdio::piped())
        .output()
        .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    eventually(
        "the node in cluster status",
        Duration::from_secs(30),
        || {
            if let Ok(Some(_)) = node.0.try_wait() {
                node = Proc(start_node());
                return None;
            }
            status(&dir).filter(|s| s.contains("sfu-a.test") && s.contains("serving"))
        },
    )
    .await;

    // A viewer opens room "lobby" on the node: the node takes its lease.
    let viewer = Peer::connect(
        &format!("http://127.0.0.1:{http}/whep/lobby"),
        Role::View,
        PeerOptions::default(),
    )
    .await
    .expect("viewer");
    eventually("the lobby lease", Duration::from_secs(10), || {
        status(&dir).filter(|s| {
            s.lines()
                .any(|l| l.starts_with("lobby") && l.contains("sfu-a.test"))
        })
    })
    .await;
    assert_eq!(viewer.delete().await.unwrap(), 200);
    eventually("the lobby lease released", Duration::from_secs(10), || {
        status(&dir).filter(|s| !s.lines().any(|l| l.starts_with("lobby")))
    })
    .await;

    // FTL stream keys live in the cluster: set one, stream with it, watch it; removing the key
    // ends the stream with FTL's 410.
    let admin = [("DEADSFU_CLUSTER_URL", admin_url.as_str())];
    run(
        &["cluster", "ftl-key", "set", "777", "clustersecret"],
        &admin,
        &log("ftl-key.log"),
    );
    let mut push = common::FtlPush::start(ftl, "777-clustersecret", &["--loop"]);
    let mut ftl_viewer = Peer::connect(
        &format!("http://127.0.0.1:{http}/whep/777"),
        Role::View,
        PeerOptions::default(),
    )
    .await
    .expect("FTL viewer");
    ftl_viewer
        .wait_until("the FTL stream", Duration::from_secs(20), |s| {
            s.video.packets >= 60
        })
        .await
        .unwrap();
    // The FTL channel's lease names this node's FTL address (the room's lease does not).
    eventually("the FTL channel lease", Duration::from_secs(10), || {
        status(&dir).filter(|s| {
            s.lines().any(|l| {
                l.starts_with("777") && l.contains("sfu-a.test") && l.contains(&ftl_listen)
            })
        })
    })
    .await;
    if !push.is_running() {
        let (_, log) = push.wait(Duration::from_secs(1));
        panic!(
            "the FTL push ended early: {log}\n{}",
            std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
        );
    }
    run(
        &["cluster", "ftl-key", "rm", "777"],
        &admin,
        &log("ftl-key.log"),
    );
    let (ok, push_log) = push.wait(Duration::from_secs(15));
    assert!(
        !ok && push_log.contains("410"),
        "removed key ends the stream: {push_log}"
    );
    assert_eq!(ftl_viewer.delete().await.unwrap(), 200);

    // SIGTERM: the node drains and leaves the registry.
    let _ = Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status();
    eventually("the node gone from status", Duration::from_secs(10), || {
        status(&dir).filter(|s| !s.contains("sfu-a.test"))
    })
    .await;

    // Secrets never reach the logs.
    let token = sfu_url
        .split("access_token=")
        .nth(1)
        .unwrap()
        .split(['&', '#'])
        .next()
        .unwrap();
    for name in ["node.log", "bootstrap.log", "status.log"] {
        let text = std::fs::read_to_string(log(name)).unwrap_or_default();
        assert!(!text.contains(token), "{name} contains the access token");
    }
    drop(node);
}
