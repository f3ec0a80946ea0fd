//! Test ACME CA: Debian's `pebble` and `pebble-challtestsrv` (its DNS) on free loopback ports,
//! killed when dropped. Include it with `#[path = "common/pebble.rs"] mod pebble;`.
//!
//! Pebble's own HTTPS listener (directory and management API) uses a certificate signed by a
//! CA made here ([`Pebble::listener_ca_path`]); the certificates pebble issues chain to a root
//! that pebble makes anew at every start ([`Pebble::issuing_root_pem`]). challtestsrv answers
//! every A query with `default_ipv4` unless told otherwise ([`Pebble::add_a`]), and pebble
//! validates challenges on that address at `http_port` (HTTP-01) or `tls_port` (TLS-ALPN-01).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL: usize = 80;
/// What pebble 2.4 logs for each new order (`Added order "<id>" to the db`).
const ORDER_LINE: &str = "Added order \"";

#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// Port pebble connects to for HTTP-01 validation.
    pub http_port: u16,
    /// Port pebble connects to for TLS-ALPN-01 validation.
    pub tls_port: u16,
    /// challtestsrv's answer to A queries for names without an `add_a` record.
    pub default_ipv4: Ipv4Addr,
    /// Pebble environment, applied over the defaults PEBBLE_VA_NOSLEEP=1,
    /// PEBBLE_WFE_NONCEREJECT=0, PEBBLE_AUTHZREUSE=0; e.g. ("PEBBLE_VA_NOSLEEP", "0") with
    /// ("PEBBLE_VA_SLEEPTIME", "3") for slow validations.
    pub env: Vec<(String, String)>,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions {
            http_port: 5002,
            tls_port: 5001,
            default_ipv4: Ipv4Addr::LOCALHOST,
            env: Vec::new(),
        }
    }
}

pub struct Pebble {
    opts: PebbleOptions,
    dir: tempfile::TempDir,
    acme_port: u16,
    mgmt_port: u16,
    dns_port: u16,
    challtestsrv_port: u16,
    challtestsrv: Child,
    pebble: Option<Child>,
    /// Output of both processes ("pebble: " / "challtestsrv: " prefixes), all runs.
    log: Arc<Mutex<Vec<String>>>,
    /// Trusts the listener CA only.
    http: reqwest::Client,
}

impl Pebble {
    pub async fn start(opts: PebbleOptions) -> Pebble {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_pem = write_listener_cert(dir.path());
        // Hold every port until all are chosen, so no two are the same.
        let tcp: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let (dns_udp, dns_tcp) = deadsfu_testkit::free_udp_and_tcp_port(Ipv4Addr::LOCALHOST);
        let port = |l: &TcpListener| l.local_addr().unwrap().port();
        let (acme_port, mgmt_port, challtestsrv_port) =
            (port(&tcp[0]), port(&tcp[1]), port(&tcp[2]));
        let dns_port = dns_udp.local_addr().unwrap().port();
        drop((tcp, dns_udp, dns_tcp));

        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.path().join("listener.pem"),
            "privateKey": dir.path().join("listener.key"),
            "httpPort": opts.http_port,
            "tlsPort": opts.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();

        let log = Arc::new(Mutex::new(Vec::new()));
        let args = format!(
            "-management=127.0.0.1:{challtestsrv_port} -dns01=127.0.0.1:{dns_port} -http01= \
             -https01= -tlsalpn01= -defaultIPv4={} -defaultIPv6=",
            opts.default_ipv4
        );
        let mut cmd = Command::new("pebble-challtestsrv");
        let challtestsrv = spawn(cmd.args(args.split(' ')), "challtestsrv", &log);
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap();
        let mut p = Pebble {
            opts,
            dir,
            acme_port,
            mgmt_port,
            dns_port,
            challtestsrv_port,
            challtestsrv,
            pebble: None,
            log,
            http,
        };
        p.wait_for("challtestsrv", p.challtestsrv_base()).await;
        p.restart().await;
        p
    }

    /// The ACME directory, for `--acme-directory`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// PEM of the CA that signed pebble's own HTTPS listener, for `--acme-ca-root`.
    pub fn listener_ca_path(&self) -> PathBuf {
        self.dir.path().join("listener-ca.pem")
    }

    /// challtestsrv's DNS server (UDP and TCP), which pebble resolves names with.
    pub fn dns_server(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dns_port))
    }

    /// challtestsrv's management API base URL (e.g. for `tests/acme/dns-hook.sh`).
    pub fn challtestsrv_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.challtestsrv_port)
    }

    /// The root the certificates issued by the running pebble chain to (new at every start).
    pub async fn issuing_root_pem(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.mgmt_port);
        let res = self.http.get(&url).send().await;
        match res {
            Ok(r) if r.status().is_success() => r.text().await.unwrap(),
            other => panic!("GET {url}: {other:?}\n{}", self.log()),
        }
    }

    /// Answers A queries for `host` (no trailing dot) with `ip` (added to earlier ones).
    pub async fn add_a(&self, host: &str, ip: IpAddr) {
        self.manage(
            "/add-a",
            json!({"host": fqdn(host), "addresses": [ip.to_string()]}),
        )
        .await;
    }

    pub async fn clear_a(&self, host: &str) {
        self.manage("/clear-a", json!({"host": fqdn(host)})).await;
    }

    pub async fn set_default_ipv4(&self, ip: Ipv4Addr) {
        self.manage("/set-default-ipv4", json!({"ip": ip.to_string()}))
            .await;
    }

    /// Sets a TXT record, e.g. `set_txt("_acme-challenge.sfu.test", value)`.
    pub async fn set_txt(&self, name: &str, value: &str) {
        self.manage("/set-txt", json!({"host": fqdn(name), "value": value}))
            .await;
    }

    pub async fn clear_txt(&self, name: &str) {
        self.manage("/clear-txt", json!({"host": fqdn(name)})).await;
    }

    /// New orders pebble received since `start`, across restarts: its lines
    /// `Added order "<id>" to the db`. A line reaches the log a moment after pebble answers
    /// the newOrder request: poll with a deadline to see a just-placed order.
    pub fn orders(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.starts_with("pebble: ") && l.contains(ORDER_LINE))
            .count()
    }

    /// Stops pebble (challtestsrv and its records stay).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
            let mut log = self.log.lock().unwrap();
            log.push("pebble: --- stopped ---".into());
        }
    }

    /// (Re)starts pebble on the same ports with the same listener certificate; it makes a new
    /// issuing root and forgets all accounts, orders and authorizations.
    pub async fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .args([
                "-dnsserver",
                &self.dns_server().to_string(),
                "-strict=false",
            ])
            .envs([
                ("PEBBLE_VA_NOSLEEP", "1"),
                ("PEBBLE_WFE_NONCEREJECT", "0"),
                ("PEBBLE_AUTHZREUSE", "0"),
            ])
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        self.pebble = Some(spawn(&mut cmd, "pebble", &self.log));
        self.wait_for("pebble's directory", self.directory_url())
            .await;
    }

    /// The last lines of both processes' output, for failure messages.
    pub fn log(&self) -> String {
        let log = self.log.lock().unwrap();
        let tail = &log[log.len().saturating_sub(LOG_TAIL)..];
        let (n, lines) = (tail.len(), tail.join("\n"));
        format!("--- pebble / challtestsrv output (last {n} lines) ---\n{lines}")
    }

    async fn manage(&self, path: &str, body: serde_json::Value) {
        let url = format!("{}{path}", self.challtestsrv_base());
        let res = self.http.post(&url).body(body.to_string()).send().await;
        match res {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => panic!("POST {url} {body}: {}\n{}", r.status(), self.log()),
            Err(e) => panic!("POST {url} {body}: {e}\n{}", self.log()),
        }
    }

    /// Polls `url` until it gets any HTTP answer, failing if a process exits first.
    async fn wait_for(&mut self, what: &str, url: String) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let err = match self.http.get(&url).send().await {
                Ok(_) => return,
                Err(e) => e,
            };
            let exited = [Some(&mut self.challtestsrv), self.pebble.as_mut()]
                .into_iter()
                .flatten()
                .find_map(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "waiting for {what}: a process exited ({status})\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: no answer in {READY_TIMEOUT:?}: {err}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Writes listener-ca.pem, listener.pem (for 127.0.0.1 and localhost) and listener.key into
/// `dir`; returns the CA's PEM.
fn write_listener_cert(dir: &Path) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "deadsfu test pebble listener CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &Issuer::new(ca, ca_key))
        .unwrap();
    std::fs::write(dir.join("listener-ca.pem"), &ca_pem).unwrap();
    std::fs::write(dir.join("listener.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("listener.key"), key.serialize_pem()).unwrap();
    ca_pem
}

/// Spawns `cmd` with its stdout and stderr appended, line by line, to `log` as "`name`: ...".
fn spawn(cmd: &mut Command, name: &str, log: &Arc<Mutex<Vec<String>>>) -> Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name} (apt-get install pebble): {e}"));
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for stream in streams {
        let (log, name) = (log.clone(), name.to_owned());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                log.lock().unwrap().push(format!("{name}: {line}"));
            }
        });
    }
    child
}
