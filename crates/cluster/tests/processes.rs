//! Process-level tests: the operator commands and nodes as separate processes (the
//! `deadsfu-cluster-node` binary runs `cluster ...` exactly as `deadsfu cluster ...` does),
//! against a real TLS redis-server.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use deadsfu_cluster::bundle_fetch::fetch_bundle;
use deadsfu_cluster::{JoinUrl, RedisConn};
use support::{RedisProcess, assert_no_secrets, eventually, try_get};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_deadsfu-cluster-node");

/// A child killed on drop, its stderr going to a file.
struct Proc {
    child: Child,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, &str)], stderr: &Path) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("DEADSFU_CLUSTER_URL")
            .env_remove("DEADSFU_CLUSTER_URL_FILE")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).unwrap())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("spawn deadsfu-cluster-node"),
            stderr: stderr.to_path_buf(),
        }
    }

    /// Stdout lines up to and including `last`, within 15 s.
    async fn lines_until(&mut self, last: &str) -> Vec<String> {
        let stdout = self.child.stdout.as_mut().unwrap();
        let mut reader = BufReader::new(stdout).lines();
        let mut lines = Vec::new();
        let read = async {
            while let Some(line) = reader.next_line().await.unwrap() {
                let done = line == last;
                lines.push(line);
                if done {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(15), read)
            .await
            .is_err()
        {
            panic!(
                "no {last:?} line; got {lines:?}; stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        lines
    }

    fn signal(&self, signal: &str) {
        support::unsafe_kill(self.child.id().expect("running"), signal);
    }
}

/// Runs `deadsfu-cluster-node cluster ...` to completion; returns stdout, stderr.
async fn cluster_cmd(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("cluster")
        .args(args)
        .env_remove("DEADSFU_CLUSTER_URL")
        .env_remove("DEADSFU_CLUSTER_URL_FILE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("command finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "cluster {args:?} failed: {stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// Runs `deadsfu-cluster-node cluster ...`, which must fail; returns its stderr.
async fn cluster_cmd_failing(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(BIN)
            .arg("cluster")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("command finishes")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "cluster {args:?} succeeded: {stderr}"
    );
    stderr
}

/// Every PEM private key in the files under `dir`, and in the bundles (zips) among them.
fn private_keys_under(dir: &Path) -> Vec<(PathBuf, String)> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut keys = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let mut texts = vec![String::from_utf8_lossy(&bytes).into_owned()];
            if path.extension().is_some_and(|e| e == "zip") {
                let bundle = deadsfu_cluster::Bundle::from_zip(&bytes).unwrap();
                texts.push(bundle.client_key_pem.expose().to_string());
            }
            for text in texts {
                for key in PrivateKeyDer::pem_slice_iter(text.as_bytes()) {
                    let key = key.unwrap();
                    let pem = rcgen::KeyPair::try_from(&key).unwrap().serialize_pem();
                    keys.push((path.clone(), pem));
                }
            }
        }
    }
    keys
}

#[tokio::test]
async fn the_bootstrap_server_runs_only_from_a_directory_without_the_ca_key() {
    use rcgen::PublicKeyData;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let dir_s = dir.to_str().unwrap();
    let exported = tmp.path().join("exported");
    let exported_s = exported.to_str().unwrap();
    let bootstrap_addr = format!(
        "127.0.0.1:{}",
        deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
    );
    // No Redis: issue and revoke only report that it is not reachable.
    let redis_addr = format!(
        "127.0.0.1:{}",
        deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
    );
    cluster_cmd(
        &[
            "init",
            "--dir",
            dir_s,
            "--redis-addr",
            &redis_addr,
            "--bootstrap-addr",
            &bootstrap_addr,
        ],
        &[],
    )
    .await;

    // The cluster directory holds the CA key: refused, before binding anything.
    let refused = cluster_cmd_failing(&["serve", "--dir", dir_s]).await;
    assert!(
        refused.contains("CA's private key") && refused.contains("export-bootstrap"),
        "{refused}"
    );
    // So is any directory with the CA key in it, whatever the file is called.
    let planted = tmp.path().join("planted");
    cluster_cmd(
        &[
            "export-bootstrap",
            "--dir",
            dir_s,
            "--to",
            planted.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    std::fs::copy(dir.join("ca/ca.key"), planted.join("bundles/backup.pem")).unwrap();
    let refused = cluster_cmd_failing(&["serve", "--dir", planted.to_str().unwrap()]).await;
    assert!(refused.contains("backup.pem"), "{refused}");
    // Exporting onto the cluster directory is refused too.
    cluster_cmd_failing(&["export-bootstrap", "--dir", dir_s, "--to", dir_s]).await;

    let (stdout, _) = cluster_cmd(
        &["issue", "--dir", dir_s, "--role", "sfu", "--name", "joiner"],
        &[],
    )
    .await;
    let url = stdout.lines().last().unwrap().to_string();
    let (stdout, _) = cluster_cmd(
        &["export-bootstrap", "--dir", dir_s, "--to", exported_s],
        &[],
    )
    .await;
    assert!(stdout.contains("1 bundles"), "{stdout}");

    // The export holds private keys (the server's, the bundle's client key), none the CA's.
    let ca_key_pem = std::fs::read_to_string(dir.join("ca/ca.key")).unwrap();
    let ca_public = rcgen::KeyPair::from_pem(&ca_key_pem)
        .unwrap()
        .subject_public_key_info();
    let keys = private_keys_under(&exported);
    assert!(keys.len() >= 2, "{keys:?}");
    for (path, pem) in &keys {
        let public = rcgen::KeyPair::from_pem(pem)
            .unwrap()
            .subject_public_key_info();
        assert_ne!(public, ca_public, "{} holds the CA key", path.display());
    }

    // A joining node fetches its bundle from a server running on the export.
    let serve_log = tmp.path().join("serve.log");
    let _serve = Proc::spawn(&["cluster", "serve", "--dir", exported_s], &[], &serve_log);
    let bundle = eventually(Duration::from_secs(10), "bootstrap server answers", || {
        let url = url.clone();
        async move { fetch_bundle(&JoinUrl::parse(&url).unwrap()).await.ok() }
    })
    .await;
    assert_eq!(bundle.settings.name, "joiner");
    let issued = deadsfu_cluster::Bundle::from_zip(
        &std::fs::read(dir.join("names/joiner/bundle.zip")).unwrap(),
    )
    .unwrap();
    assert_eq!(bundle.settings.password, issued.settings.password);

    // Revoked, and exported again: the copy no longer hands the bundle out.
    cluster_cmd(&["revoke", "--dir", dir_s, "--name", "joiner"], &[]).await;
    let (stdout, _) = cluster_cmd(
        &["export-bootstrap", "--dir", dir_s, "--to", exported_s],
        &[],
    )
    .await;
    assert!(stdout.contains("0 bundles"), "{stdout}");
    assert!(!exported.join("bundles/joiner").exists());
    assert!(
        fetch_bundle(&JoinUrl::parse(&url).unwrap()).await.is_err(),
        "a revoked token still fetches"
    );
    let log = std::fs::read_to_string(&serve_log).unwrap();
    assert_no_secrets(
        &log,
        &[token_of(&url), issued.settings.password.clone()],
        "serve.log",
    );
}

fn token_of(url: &str) -> String {
    url.split("access_token=")
        .nth(1)
        .unwrap()
        .split('#')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn operator_commands_and_node_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let dir_s = dir.to_str().unwrap();
    let redis_addr = format!(
        "127.0.0.1:{}",
        deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
    );
    let bootstrap_addr = format!(
        "127.0.0.1:{}",
        deadsfu_testkit::free_tcp_port(Ipv4Addr::LOCALHOST)
    );
    cluster_cmd(
        &[
            "init",
            "--dir",
            dir_s,
            "--redis-addr",
            &redis_addr,
            "--bootstrap-addr",
            &bootstrap_addr,
        ],
        &[],
    )
    .await;
    // Secrets in the directory are private.
    use std::os::unix::fs::PermissionsExt;
    for secret in [
        "ca/ca.key",
        "redis/redis.key",
        "bootstrap/server.key",
        "redis/users.acl",
        "secrets/cluster.key",
        "secrets/ticket.key",
    ] {
        let mode = std::fs::metadata(dir.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is mode {mode:o}");
    }
    let mut redis =
        RedisProcess::start(&dir.join("redis/redis.conf"), &tmp.path().join("redis.log"));
    redis.wait_ready().await;
    let serve_log = tmp.path().join("serve.log");
    let bootstrap_dir = dir.join("bootstrap");
    let _serve = Proc::spawn(
        &["cluster", "serve", "--dir", bootstrap_dir.to_str().unwrap()],
        &[],
        &serve_log,
    );

    let mut secrets = Vec::new();
    let mut issue = async |role: &str, name: &str, extra: &[&str]| -> String {
        let mut args = vec!["issue", "--dir", dir_s, "--role", role, "--name", name];
        args.extend_from_slice(extra);
        let (stdout, _) = cluster_cmd(&args, &[]).await;
        let url = stdout.lines().last().unwrap().to_string();
        assert!(
            url.starts_with("https://") && url.contains("#sha256="),
            "{url}"
        );
        secrets.push(token_of(&url));
        url
    };
    let url_a = issue("sfu", "sfu-a", &[]).await;
    // Bound to its node id and hostname: node b takes both from the bundle.
    let url_b = issue("sfu", "sfu-b", &["--hostname", "b.example.test"]).await;
    let url_ops = issue("admin", "ops", &[]).await;
    // Passwords, to check logs for them too.
    for name in ["sfu-a", "sfu-b", "ops"] {
        let zip = std::fs::read(dir.join("names").join(name).join("bundle.zip")).unwrap();
        secrets.push(
            deadsfu_cluster::Bundle::from_zip(&zip)
                .unwrap()
                .settings
                .password,
        );
    }
    let admin_bundle = eventually(Duration::from_secs(10), "bootstrap server answers", || {
        let url = url_ops.clone();
        async move { fetch_bundle(&JoinUrl::parse(&url).unwrap()).await.ok() }
    })
    .await;
    let admin = RedisConn::connect(&admin_bundle).await.unwrap();

    // Node b gets its URL through the secret-file form.
    let url_file = tmp.path().join("url-b");
    std::fs::write(&url_file, format!("{url_b}\n")).unwrap();
    let a_log = tmp.path().join("a.log");
    let b_log = tmp.path().join("b.log");
    let mut a = Proc::spawn(
        &["node", "--node-id", "sfu-a", "--room", "same"],
        &[("DEADSFU_CLUSTER_URL", &url_a)],
        &a_log,
    );
    let mut b = Proc::spawn(
        &["node", "--room", "same"],
        &[("DEADSFU_CLUSTER_URL_FILE", url_file.to_str().unwrap())],
        &b_log,
    );
    let (lines_a, lines_b) = tokio::join!(a.lines_until("ready"), b.lines_until("ready"));
    let won: Vec<&str> = [&lines_a, &lines_b]
        .iter()
        .filter(|l| l.iter().any(|x| x == "room same won"))
        .map(|l| {
            if std::ptr::eq(*l, &lines_a) {
                "sfu-a"
            } else {
                "sfu-b"
            }
        })
        .collect();
    assert_eq!(won.len(), 1, "exactly one winner: {lines_a:?} {lines_b:?}");
    let winner = won[0];
    let loser_line = format!("room same held-by {winner}");
    assert!(lines_a.contains(&loser_line) || lines_b.contains(&loser_line));

    // Both visible in `cluster status`, with the room's owner.
    let status = eventually(Duration::from_secs(5), "status lists both nodes", || {
        let url = url_ops.clone();
        async move {
            let (out, _) = cluster_cmd(&["status"], &[("DEADSFU_CLUSTER_URL", &url)]).await;
            (out.contains("sfu-a") && out.contains("sfu-b")).then_some(out)
        }
    })
    .await;
    assert!(status.contains("Nodes (2)"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("sfu-b ") && l.contains(" b.example.test ")),
        "{status}"
    );
    // Each sfu name logs in as its own Redis user.
    let mut m = admin.manager();
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut m)
        .await
        .unwrap();
    for user in ["sfu-sfu-a", "sfu-sfu-b"] {
        assert!(users.iter().any(|u| u == user), "{users:?}");
    }
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["same", winner]),
        "{status}"
    );

    // Stream keys through the admin command.
    cluster_cmd(
        &["ftl-key", "set", "chan1", "streamsecret123"],
        &[("DEADSFU_CLUSTER_URL", &url_ops)],
    )
    .await;
    assert_eq!(
        try_get(&admin, "deadsfu:ftlkey:chan1").await.as_deref(),
        Some("streamsecret123")
    );
    cluster_cmd(
        &["ftl-key", "rm", "chan1"],
        &[("DEADSFU_CLUSTER_URL", &url_ops)],
    )
    .await;
    assert_eq!(try_get(&admin, "deadsfu:ftlkey:chan1").await, None);

    // A certificate bought elsewhere: imported sealed, then listed.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["*.shop.example.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (tmp.path().join("shop.crt"), tmp.path().join("shop.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (out, _) = cluster_cmd(
        &[
            "cert",
            "import",
            "--domain",
            "www.shop.example.test",
            "--cert",
            cert_file.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ],
        &[("DEADSFU_CLUSTER_URL", &url_ops)],
    )
    .await;
    assert!(out.contains("www.shop.example.test"), "{out}");
    let raw = try_get(&admin, "deadsfu:cert:www.shop.example.test")
        .await
        .unwrap();
    assert!(!raw.contains("PRIVATE KEY"));
    let (out, _) = cluster_cmd(&["cert", "ls"], &[("DEADSFU_CLUSTER_URL", &url_ops)]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("www.shop.example.test"))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert!(cells[1].ends_with('Z'), "{line}");
    assert_eq!(cells[cells.len() - 2..], ["-", "-"], "{line}");

    // SIGKILL the winner: its record and lease are gone within 5 s.
    let (dead, survivor) = if winner == "sfu-a" { (a, b) } else { (b, a) };
    dead.signal("KILL");
    let killed_at = std::time::Instant::now();
    eventually(Duration::from_secs(5), "killed node's keys expire", || {
        let admin = admin.clone();
        let node_key = format!("deadsfu:node:{winner}");
        async move {
            (try_get(&admin, &node_key).await.is_none()
                && try_get(&admin, "deadsfu:room:same").await.is_none())
            .then_some(())
        }
    })
    .await;
    assert!(killed_at.elapsed() < Duration::from_secs(5));

    // SIGTERM the survivor: it drains and deregisters.
    let survivor_id = if winner == "sfu-a" { "sfu-b" } else { "sfu-a" };
    survivor.signal("TERM");
    eventually(Duration::from_secs(5), "survivor deregisters", || {
        let admin = admin.clone();
        let node_key = format!("deadsfu:node:{survivor_id}");
        async move { try_get(&admin, &node_key).await.is_none().then_some(()) }
    })
    .await;

    // Revoked tokens stop working for new fetches.
    cluster_cmd(&["revoke", "--dir", dir_s, "--name", "sfu-a"], &[]).await;
    assert!(
        fetch_bundle(&JoinUrl::parse(&url_a).unwrap())
            .await
            .is_err()
    );

    // No process logged a token or password.
    drop(dead);
    drop(survivor);
    for log in [&serve_log, &a_log, &b_log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!text.is_empty(), "{} is empty", log.display());
        assert_no_secrets(&text, &secrets, &log.display().to_string());
    }
}
