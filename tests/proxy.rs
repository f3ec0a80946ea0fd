//! `deadsfu proxy` end to end, with the real binary: a TLS redis-server, three `deadsfu serve`
//! nodes (sfu-a, sfu-b, sfu-c on 127.0.0.2-4, a fourth, sfu-d on 127.0.0.5, started late) and
//! three proxies (px1 on 127.0.0.10 with FTL, px2 on 127.0.0.11, px3 on 127.0.0.12 with tight
//! limits for the floods) sharing one HTTPS port number. Nodes trust PROXY v2 headers from
//! 127.0.0.1 (where the proxies' connections to them come from on loopback) and name
//! themselves `https://sfu-x.test:{proxy port}`, so that every redirect leads back through a
//! proxy; clients resolve every name to the proxy they use and connect from 127.0.0.20. The
//! test's own direct connections to the nodes come from 127.0.0.9.
//!
//! `proxy_end_to_end` starts it all once and runs the scenarios in order (each on its own
//! task, so one failing does not hide the others):
//! 1. WHIP and WHEP through each of px1 and px2: a waiting viewer, a publisher and a second
//!    viewer reach the room's SFU through a 307 from the service name (followed back through
//!    the proxy), media flows, and the SFUs log the client's own address (127.0.0.20, from
//!    the PROXY v2 header), never the proxy's.
//! 2. SNI: an unknown name and a ClientHello without SNI get the `unrecognized_name` alert;
//!    node names and the service name complete the handshake; not-TLS is closed; counted.
//! 3. FTL through px1 (the proxy answers the handshake with the key from Redis, set with
//!    `deadsfu cluster ftl-key set`) into sfu-c: a WHEP viewer of the channel's room on sfu-c
//!    gets the stream with 5 % of first transmissions dropped and every gap repaired (NACKs
//!    through the relay); a wrong key (405), an unknown channel (401) and a second publisher
//!    (406) are refused without disturbing the stream.
//! 4. sfu-c SIGKILLed mid-stream: the FTL push ends, and the proxy stops routing to sfu-c
//!    (its name gets the alert, the service name no longer leads to it) within 3 s (measured).
//! 5. sfu-b drained (SIGTERM, --drain-timeout): no new service-name connections reach it once
//!    its record says so, its live viewer keeps getting media through its own name, and once
//!    its sessions end it leaves and its name is refused.
//! 6. px1 SIGKILLed: px2 keeps routing.
//! 7. Redis killed under running proxies: px2 keeps routing (node names and the service name)
//!    through an outage longer than a record's freshness; Redis started again (empty, as a
//!    Redis without persistence comes back): px2 and px3 resync without a moment of not
//!    routing the live node, and a node started afterwards (sfu-d) becomes routable by name
//!    and service name.
//! 8. Floods at px3 (`--max-connections-per-ip 100`, 50 new connections per second per IP,
//!    3 s hello timeout): 2000 connections from 127.0.0.30-.33, half idle and half sending a
//!    ClientHello a byte per second, and 300 opened and closed at once from 127.0.0.34, while
//!    a client from 127.0.0.20 keeps completing requests quickly; the proxy holds at most 100
//!    per address, closes the rest at the hello timeout, its memory stays bounded and the
//!    refusals (per address, rate) and hello timeouts are counted.
//! 9. A node listening for FTL on an ephemeral port (`--ftl-listen IP:0`, sfu-d) records the
//!    port it got (the FTL proxy connects to the recorded address).

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, Deadline, Node, NodeSpec, Nodes, NodesOptions, SERVICE};
use deadsfu_client::{Peer, PeerOptions, Role, StreamSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const C_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const D_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// The test's direct connections to nodes (not a trusted PROXY source).
const DIRECT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const PX1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
const PX2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const PX3_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
/// Legitimate clients.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);
/// Flooders.
const FLOOD_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 30),
    Ipv4Addr::new(127, 0, 0, 31),
    Ipv4Addr::new(127, 0, 0, 32),
    Ipv4Addr::new(127, 0, 0, 33),
];
/// Where the proxies' own connections to the SFUs come from on loopback.
const PROXY_SOURCE: &str = "127.0.0.1/32";
const FTL_CHANNEL: &str = "4242";
const FTL_SECRET: &str = "proxysecret";
/// Every wait for media or connection state ends within this.
const WAIT: Duration = Duration::from_secs(20);

fn names() -> Vec<String> {
    [
        SERVICE,
        "sfu-a.test",
        "sfu-b.test",
        "sfu-c.test",
        "sfu-d.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Proxies

struct Proxy {
    name: &'static str,
    https: SocketAddr,
    admin: SocketAddr,
    ftl: Option<SocketAddr>,
    log: PathBuf,
    stdout: PathBuf,
    child: Mutex<Child>,
}

impl Proxy {
    /// `deadsfu proxy` with its own proxy bundle; `extra`: limits.
    fn start(
        cluster: &Cluster,
        name: &'static str,
        bundle_url: &str,
        ip: Ipv4Addr,
        port: u16,
        ftl: bool,
        extra: &[&str],
    ) -> Proxy {
        let https = SocketAddr::from((ip, port));
        let admin = SocketAddr::from((ip, deadsfu_testkit::free_tcp_port(ip)));
        let ftl = ftl.then(|| SocketAddr::from((ip, deadsfu_testkit::free_tcp_port(ip))));
        let log = cluster.path(&format!("{name}.log"));
        let stdout = cluster.path(&format!("{name}.stdout"));
        let https_s = https.to_string();
        let admin_s = admin.to_string();
        let ftl_s = ftl.map(|a| a.to_string()).unwrap_or_default();
        let mut args = vec![
            "proxy",
            "--https-listen",
            &https_s,
            "--http-listen",
            "",
            "--ftl-listen",
            &ftl_s,
            "--ftl-udp-port",
            "0",
            "--service-domain",
            SERVICE,
            "--region",
            "default",
            "--admin-listen",
            &admin_s,
        ];
        args.extend_from_slice(extra);
        let child = cluster::deadsfu(&args, &[("DEADSFU_CLUSTER_URL", bundle_url)], &log)
            .env("RUST_LOG", "info,deadsfu_proxy=debug")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .spawn()
            .expect("start deadsfu proxy");
        Proxy {
            name,
            https,
            admin,
            ftl,
            log,
            stdout,
            child: Mutex::new(child),
        }
    }

    fn tail(&self) -> String {
        format!(
            "--- {} log, last {} lines ---\n{}",
            self.name,
            cluster::LOG_TAIL,
            cluster::tail(&self.log, cluster::LOG_TAIL)
        )
    }

    fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// SIGKILL; waits for the process to be gone.
    fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for the "listening on" line and `/readyz` 200 (a live node in its table).
    async fn wait_ready(&self) {
        let deadline = Deadline::new(
            format!("{} to listen and be ready", self.name),
            Duration::from_secs(20),
        );
        loop {
            if let Some(status) = self.exited() {
                panic!("{} exited ({status})\n{}", self.name, self.tail());
            }
            let listening = std::fs::read_to_string(&self.stdout)
                .unwrap_or_default()
                .contains("listening on");
            let ready = admin_get(self.admin, "/readyz").await;
            if listening && matches!(ready, Ok((200, _))) {
                return;
            }
            deadline
                .tick(|| format!("last /readyz: {ready:?}\n{}", self.tail()))
                .await;
        }
    }

    async fn metrics(&self) -> String {
        match admin_get(self.admin, "/metrics").await {
            Ok((200, body)) => body,
            other => panic!("{} /metrics: {other:?}\n{}", self.name, self.tail()),
        }
    }

    /// One sample of `/metrics`, named with its labels (`name{label="x"}`); 0 when absent.
    async fn metric(&self, name: &str) -> u64 {
        metric(&self.metrics().await, name)
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        deadsfu_procstat::rss_kib(deadsfu_procstat::Process::Pid(self.pid())).expect("VmRSS")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// GET on a proxy's admin listener: (status, body).
async fn admin_get(admin: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let res = client
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    Ok((status, res.text().await.map_err(|e| e.to_string())?))
}

// ---------------------------------------------------------------------------------------------
// The fixture

struct Fixture {
    // Dropped first: proxies, the late node and the FTL stream, then the nodes, then the
    // cluster (whose directory holds every log).
    proxies: Vec<Proxy>,
    late: Mutex<Option<Arc<Node>>>,
    ftl_live: Mutex<Option<(FtlPush, Peer)>>,
    nodes: Nodes,
    cluster: Cluster,
    /// The sfu-d bundle, issued before anything connected to Redis.
    d_bundle: String,
    /// The node flags every node gets.
    common: Vec<String>,
    /// The proxies' HTTPS port number (every node's public URL has it).
    port: u16,
}

impl Fixture {
    fn px(&self, name: &str) -> &Proxy {
        self.proxies
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no proxy {name}"))
    }

    /// The node started late (sfu-d), once started.
    fn late_node(&self) -> Arc<Node> {
        self.late.lock().unwrap().clone().expect("sfu-d started")
    }

    fn service_url(&self, path: &str) -> String {
        format!("https://{SERVICE}:{}{path}", self.port)
    }

    /// `https://{name}.test:{proxy port}{path}` (a node's public URL).
    fn url_of(&self, node: &str, path: &str) -> String {
        format!("https://{node}.test:{}{path}", self.port)
    }

    /// The node whose public URL `url` is under.
    fn node_of(&self, url: &str) -> Option<&'static str> {
        ["sfu-a", "sfu-b", "sfu-c", "sfu-d"]
            .into_iter()
            .find(|n| url.starts_with(&self.url_of(n, "/")))
    }

    /// A client from 127.0.0.20 that resolves the service name and every node name to
    /// `proxy`, with the given redirect policy.
    fn via(&self, proxy: &Proxy, policy: reqwest::redirect::Policy) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.nodes.ca_pem.as_bytes()).unwrap(),
            )
            .timeout(Duration::from_secs(15))
            .redirect(policy)
            // Every request on a new connection: each one is routed by the proxy anew.
            .pool_max_idle_per_host(0)
            .local_address(Some(IpAddr::V4(CLIENT_IP)));
        for host in names() {
            b = b.resolve(&host, proxy.https);
        }
        b.build().unwrap()
    }

    /// [`Fixture::via`] with redirects returned, not followed.
    fn via_no_redirect(&self, proxy: &Proxy) -> reqwest::Client {
        self.via(proxy, reqwest::redirect::Policy::none())
    }

    /// [`Fixture::via`] following redirects (at most 5) and recording each.
    fn via_recording(&self, proxy: &Proxy) -> (reqwest::Client, Hops) {
        let hops: Hops = Arc::default();
        let record = hops.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let from = attempt
                .previous()
                .last()
                .map(|u| u.to_string())
                .unwrap_or_default();
            record.lock().unwrap().push(Hop {
                status: attempt.status().as_u16(),
                from,
                to: attempt.url().to_string(),
            });
            if attempt.previous().len() > 5 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        });
        (self.via(proxy, policy), hops)
    }

    fn tails(&self) -> String {
        let mut out = self.nodes.tails();
        if let Some(late) = self.late.lock().unwrap().as_ref() {
            out.push('\n');
            out.push_str(&late.tail());
        }
        for p in &self.proxies {
            out.push('\n');
            out.push_str(&p.tail());
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Hop {
    status: u16,
    from: String,
    to: String,
}

type Hops = Arc<Mutex<Vec<Hop>>>;

/// Runs `scenario` on its own task; a panic is reported (with the log tails at that moment)
/// and recorded, and the next scenario runs.
async fn run_scenario(
    fx: &Arc<Fixture>,
    failed: &mut Vec<&'static str>,
    name: &'static str,
    scenario: impl Future<Output = ()> + Send + 'static,
) {
    let started = Instant::now();
    let result = tokio::spawn(scenario).await;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => println!("scenario {name}: ok ({secs:.1} s)"),
        Err(e) => {
            println!("scenario {name}: FAILED ({secs:.1} s): {e}");
            eprintln!("=== logs after scenario {name} ===\n{}", fx.tails());
            failed.push(name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_end_to_end() {
    let started = Instant::now();
    let cluster = Cluster::start("deadsfu-proxy-", &names()).await;
    // Every bundle is issued before anything but the test connects to Redis: issuing reloads
    // its ACL, which drops every connection.
    let px_bundles: Vec<String> = ["px1", "px2", "px3"]
        .iter()
        .map(|n| cluster.issue("proxy", n, &[]))
        .collect();
    let d_bundle = cluster::issue_sfu(&cluster, "sfu-d");
    let port = deadsfu_testkit::tcp_port_free_on_all(&[PX1_IP, PX2_IP, PX3_IP]);
    let public = |name: &str| strings(&["--public-url", &format!("https://{name}.test:{port}")]);
    let c_ftl = SocketAddr::from((C_IP, deadsfu_testkit::free_tcp_port(C_IP)));
    let common = strings(&["--proxy-protocol-from", PROXY_SOURCE]);
    let nodes = Nodes::start_with(
        &cluster,
        vec![
            NodeSpec {
                name: "sfu-a",
                ip: A_IP,
                extra: public("sfu-a"),
            },
            NodeSpec {
                name: "sfu-b",
                ip: B_IP,
                extra: [public("sfu-b"), strings(&["--drain-timeout", "30"])].concat(),
            },
            NodeSpec {
                name: "sfu-c",
                ip: C_IP,
                extra: [
                    public("sfu-c"),
                    strings(&["--ftl-listen", &c_ftl.to_string(), "--ftl-udp-port", "0"]),
                ]
                .concat(),
            },
        ],
        &common,
        NodesOptions {
            client_source: Some(IpAddr::V4(DIRECT_IP)),
            later_ips: vec![D_IP],
        },
    )
    .await;
    // The functional proxies allow many new connections per second (the tests poll); px3
    // has the tight limits the floods run into.
    let relaxed = [
        "--new-connections-per-ip",
        "1000",
        "--hello-timeout",
        "5",
        "--idle-timeout",
        "60",
    ];
    let proxies = vec![
        Proxy::start(
            &cluster,
            "px1",
            &px_bundles[0],
            PX1_IP,
            port,
            true,
            &relaxed,
        ),
        Proxy::start(
            &cluster,
            "px2",
            &px_bundles[1],
            PX2_IP,
            port,
            false,
            &relaxed,
        ),
        Proxy::start(
            &cluster,
            "px3",
            &px_bundles[2],
            PX3_IP,
            port,
            false,
            &[
                "--max-connections",
                "1000",
                "--max-connections-per-ip",
                "100",
                "--new-connections-per-ip",
                "50",
                "--hello-timeout",
                "3",
                "--idle-timeout",
                "30",
            ],
        ),
    ];
    for p in &proxies {
        p.wait_ready().await;
    }
    // What the node records say (the proxies route by them).
    let c_record = cluster.get(&cluster.node_key("sfu-c")).await.unwrap();
    assert!(
        c_record.contains(&format!("\"ftl_addr\":\"{c_ftl}\"")),
        "sfu-c's record names its FTL address {c_ftl}: {c_record}"
    );
    println!(
        "cluster of three nodes and three proxies up in {:.1} s (proxies on port {port})",
        started.elapsed().as_secs_f64()
    );
    let fx = Arc::new(Fixture {
        proxies,
        late: Mutex::new(None),
        ftl_live: Mutex::new(None),
        nodes,
        cluster,
        d_bundle,
        common,
        port,
    });
    let mut failed = Vec::new();
    run_scenario(
        &fx,
        &mut failed,
        "1 WHIP/WHEP through both proxies",
        whip_whep_through_proxies(fx.clone()),
    )
    .await;
    run_scenario(&fx, &mut failed, "2 SNI", sni(fx.clone())).await;
    run_scenario(&fx, &mut failed, "3 FTL through px1", ftl(fx.clone())).await;
    run_scenario(
        &fx,
        &mut failed,
        "4 SFU killed mid-stream",
        sfu_killed(fx.clone()),
    )
    .await;
    run_scenario(&fx, &mut failed, "5 draining SFU", draining(fx.clone())).await;
    run_scenario(&fx, &mut failed, "6 proxy killed", proxy_killed(fx.clone())).await;
    run_scenario(
        &fx,
        &mut failed,
        "7 Redis restarted",
        redis_restart(fx.clone()),
    )
    .await;
    run_scenario(&fx, &mut failed, "8 floods", floods(fx.clone())).await;
    run_scenario(
        &fx,
        &mut failed,
        "9 an ephemeral FTL port in the node record",
        ephemeral_ftl_port(fx.clone()),
    )
    .await;
    println!("proxy_end_to_end: {:.1} s", started.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers: peers, raw requests, TLS

fn peer_opts(client: reqwest::Client) -> PeerOptions {
    PeerOptions {
        http_client: Some(client),
        ..PeerOptions::default()
    }
}

fn publish() -> Role {
    Role::Publish(StreamSpec::default())
}

async fn connect(fx: &Fixture, url: &str, role: Role, client: reqwest::Client) -> Peer {
    match Peer::connect(url, role, peer_opts(client)).await {
        Ok(p) => p,
        Err(e) => panic!("connecting to {url}: {e}\n{}", fx.tails()),
    }
}

/// Connects to `url` (the service name) through `proxy` until the session request went
/// through a 307 to `owner` (a request the proxy happened to give `owner` itself is deleted
/// and tried again). Every session must end up on `owner`.
async fn connect_via_307(
    fx: &Fixture,
    proxy: &Proxy,
    url: &str,
    role: impl Fn() -> Role,
    owner: &str,
) -> (Peer, Vec<Hop>) {
    for _ in 0..8 {
        let (client, hops) = fx.via_recording(proxy);
        let peer = connect(fx, url, role(), client).await;
        let hops = hops.lock().unwrap().clone();
        assert_eq!(
            fx.node_of(&peer.session.url),
            Some(owner),
            "{url} through {}: the session {} is not on {owner} (redirects {hops:?})",
            proxy.name,
            peer.session.url
        );
        let redirected = hops
            .iter()
            .any(|h| h.status == 307 && fx.node_of(&h.to) == Some(owner));
        if redirected {
            return (peer, hops);
        }
        assert_eq!(peer.delete().await.unwrap(), 200);
    }
    panic!(
        "{url} through {}: eight tries, never a 307 to {owner}",
        proxy.name
    );
}

async fn wait_media(fx: &Fixture, peer: &mut Peer, what: &'static str, packets: u64) {
    if let Err(e) = peer
        .wait_until(what, WAIT, |s| s.video.packets >= packets)
        .await
    {
        panic!("{e}: {:?}\n{}", peer.stats(), fx.tails());
    }
}

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtcp-mux\r\na=recvonly\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n";

#[derive(Debug)]
struct Reply {
    status: u16,
    location: Option<String>,
    /// Shown in failure messages (Debug).
    #[allow(dead_code)]
    body: String,
}

/// POSTs a viewer's offer (never connects: enough for routing) to `url`.
async fn post_whep(client: &reqwest::Client, url: &str) -> Result<Reply, String> {
    let res = client
        .post(url)
        .header("content-type", "application/sdp")
        .body(OFFER)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e:?}"))?;
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(Reply {
        status: res.status().as_u16(),
        location,
        body: res.text().await.unwrap_or_default(),
    })
}

async fn delete(client: &reqwest::Client, url: &str) -> u16 {
    client
        .delete(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE {url}: {e:?}"))
        .status()
        .as_u16()
}

async fn get_status(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("GET {url}: {e}"))
}

/// The node that logged the redirect of a request for `room` (a room name used once): the
/// node the proxy gave that service-name connection to.
async fn answerer(fx: &Fixture, room: &str) -> &'static str {
    let needle = format!("room=\"{room}\"");
    let deadline = Deadline::new(
        format!("a node to log the redirect of {room}"),
        Duration::from_secs(3),
    );
    loop {
        let mut nodes: Vec<(&'static str, String)> = fx
            .nodes
            .list
            .iter()
            .map(|n| (n.name, n.log_text()))
            .collect();
        if let Some(late) = fx.late.lock().unwrap().as_ref() {
            nodes.push((late.name, late.log_text()));
        }
        let found: Vec<&'static str> = nodes
            .iter()
            .filter(|(_, log)| {
                log.lines()
                    .any(|l| l.contains("redirected") && l.contains(&needle))
            })
            .map(|(n, _)| *n)
            .collect();
        match found[..] {
            [one] => return one,
            [] => {}
            _ => panic!("several nodes logged a redirect of {room}: {found:?}"),
        }
        deadline.tick(|| fx.tails()).await;
    }
}

/// A viewer's offer to the service name for `room` (unused so far) through `client` (not
/// following redirects): the 307's target, then the session there. Returns the node that
/// answered the service-name request, the node redirected to and the session's URL.
async fn whep_via_service(
    fx: &Fixture,
    client: &reqwest::Client,
    room: &str,
) -> (&'static str, &'static str, String) {
    let url = fx.service_url(&format!("/whep/{room}"));
    let r = post_whep(client, &url).await.unwrap();
    let target = r.location.as_deref().and_then(|l| fx.node_of(l));
    let (307, Some(target)) = (r.status, target) else {
        panic!("{url}: a 307 to a node expected: {r:?}\n{}", fx.tails());
    };
    let location = r.location.unwrap();
    let created = post_whep(client, &location).await.unwrap();
    let session = match (created.status, &created.location) {
        (201, Some(s)) => s.clone(),
        _ => panic!("{location}: {created:?}"),
    };
    assert_eq!(fx.node_of(&session), Some(target), "{session}");
    (answerer(fx, room).await, target, session)
}

/// A TCP connection to `to` from `from`.
async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    match tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// How a TLS handshake through a proxy ended.
#[derive(Debug, Clone, PartialEq)]
enum Handshake {
    /// Completed (a node answered).
    Done,
    /// The server sent this alert.
    Alert(rustls::AlertDescription),
    /// Closed (or failed) without an alert.
    Closed(String),
}

/// A TLS handshake with `to` from 127.0.0.20 naming `sni` (`None`: no SNI at all).
async fn handshake(ca_pem: &str, to: SocketAddr, sni: Option<&str>) -> Handshake {
    use rustls::pki_types::ServerName;
    let tcp = match tcp_from(CLIENT_IP, to).await {
        Ok(t) => t,
        Err(e) => return Handshake::Closed(format!("connect: {e}")),
    };
    // rustls sends no SNI for an IP address.
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        None => ServerName::IpAddress(to.ip().into()),
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        tls_connector(ca_pem).connect(name, tcp),
    )
    .await
    {
        Err(_) => Handshake::Closed("handshake timed out".into()),
        Ok(Ok(_)) => Handshake::Done,
        Ok(Err(e)) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(a)) => Handshake::Alert(*a),
            _ => Handshake::Closed(e.to_string()),
        },
    }
}

/// Waits for a line with every one of `needles` in `node`'s log.
async fn wait_log_line(fx: &Fixture, node: &Node, needles: &[&str]) {
    let deadline = Deadline::new(
        format!("a line with {needles:?} in {}'s log", node.name),
        Duration::from_secs(5),
    );
    while !node
        .log_text()
        .lines()
        .any(|l| needles.iter().all(|s| l.contains(s)))
    {
        deadline.tick(|| fx.tails()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1.

async fn whip_whep_through_proxies(fx: Arc<Fixture>) {
    let mut rooms = Vec::new();
    for px in ["px1", "px2"] {
        let proxy = fx.px(px);
        let routed_before = proxy.metric("deadsfu_proxy_https_routed_total").await;
        let room = format!("through-{px}");
        let whep = fx.service_url(&format!("/whep/{room}"));
        let whip = fx.service_url(&format!("/whip/{room}"));
        // A viewer waits on whichever node the proxy picked (a weak hold on the room)...
        let (client, _) = fx.via_recording(proxy);
        let mut waiting = connect(&fx, &whep, Role::View, client).await;
        let owner = fx.node_of(&waiting.session.url).unwrap_or_else(|| {
            panic!(
                "{px}: the waiting viewer's session {} is not on a node's public URL",
                waiting.session.url
            )
        });
        // ...the publisher is sent there with a 307 (followed back through the proxy)...
        let (publisher, p_hops) = connect_via_307(&fx, proxy, &whip, publish, owner).await;
        // ...and so is a second viewer.
        let (mut viewer, v_hops) = connect_via_307(&fx, proxy, &whep, || Role::View, owner).await;
        wait_media(&fx, &mut waiting, "60 video packets (waiting viewer)", 60).await;
        wait_media(&fx, &mut viewer, "60 video packets (redirected viewer)", 60).await;
        println!(
            "{px}: room {room} on {owner}; publisher redirects {:?}; viewer redirects {:?}",
            p_hops
                .iter()
                .map(|h| (h.status, &h.from, &h.to))
                .collect::<Vec<_>>(),
            v_hops
                .iter()
                .map(|h| (h.status, &h.from, &h.to))
                .collect::<Vec<_>>()
        );
        for h in p_hops.iter().chain(&v_hops) {
            assert!(
                h.from.starts_with(&fx.service_url("/")),
                "{px}: a redirect from elsewhere than the service name: {h:?}"
            );
        }
        // The sessions' own requests go through the proxy to their node too.
        for peer in [publisher, waiting, viewer] {
            assert_eq!(peer.delete().await.unwrap(), 200, "{px}: DELETE");
        }
        let routed = proxy.metric("deadsfu_proxy_https_routed_total").await - routed_before;
        assert!(
            routed >= 5,
            "{px} routed {routed} connections for three sessions with redirects"
        );
        rooms.push((room, owner));
    }
    // PROXY v2: the owner logs the client's own address for each session; whoever redirected
    // logged it too; nobody logs the proxy's address (127.0.0.1) for these rooms.
    for (room, owner) in &rooms {
        let node = fx.nodes.get(owner);
        wait_log_line(
            &fx,
            node,
            &["session created", room.as_str(), "client=Some(127.0.0.20)"],
        )
        .await;
        let redirect_logged = fx.nodes.list.iter().any(|n| {
            n.log_text().lines().any(|l| {
                l.contains("redirected")
                    && l.contains(room)
                    && l.contains("client=Some(127.0.0.20)")
            })
        });
        assert!(
            redirect_logged,
            "no node logged the redirect of {room} with client=Some(127.0.0.20)\n{}",
            fx.tails()
        );
        for n in &fx.nodes.list {
            let wrong: Vec<String> = n
                .log_text()
                .lines()
                .filter(|l| l.contains(room.as_str()) && l.contains("client="))
                .filter(|l| !l.contains("client=Some(127.0.0.20)"))
                .map(str::to_owned)
                .collect();
            assert!(
                wrong.is_empty(),
                "{} logged another client address for {room}: {wrong:#?}",
                n.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2.

async fn sni(fx: Arc<Fixture>) {
    let px1 = fx.px("px1");
    let ca = &fx.nodes.ca_pem;
    let unknown_before = px1.metric("deadsfu_proxy_https_unknown_name_total").await;
    let rejected_before = px1.metric("deadsfu_proxy_https_hello_rejected_total").await;
    let unrecognized = Handshake::Alert(rustls::AlertDescription::UnrecognisedName);
    for (sni, expected) in [
        (Some("unknown.test"), unrecognized.clone()),
        (Some("sfu-zz.test"), unrecognized.clone()),
        (None, unrecognized.clone()),
        (Some("sfu-a.test"), Handshake::Done),
        (Some(SERVICE), Handshake::Done),
    ] {
        let got = handshake(ca, px1.https, sni).await;
        assert_eq!(got, expected, "SNI {sni:?} through px1\n{}", px1.tail());
    }
    let unknown = px1.metric("deadsfu_proxy_https_unknown_name_total").await - unknown_before;
    assert_eq!(
        unknown, 3,
        "unknown_name counted for two unknown names and no SNI"
    );
    // Not TLS at all: closed without an answer, counted.
    let mut tcp = tcp_from(CLIENT_IP, px1.https).await.unwrap();
    let _ = tcp
        .write_all(b"GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got))
        .await
        .expect("px1 neither answered nor closed a plain-HTTP connection");
    assert!(
        got.is_empty(),
        "px1 answered plain HTTP: {:?} ({read:?})",
        String::from_utf8_lossy(&got)
    );
    let rejected = px1.metric("deadsfu_proxy_https_hello_rejected_total").await - rejected_before;
    assert_eq!(rejected, 1, "hello_rejected for the plain-HTTP connection");
}

// ---------------------------------------------------------------------------------------------
// 3. and 4.

/// A `deadsfu ftl-push` process logging to a file, stopped (SIGINT, then kill) when dropped.
struct FtlPush {
    child: Child,
    log: PathBuf,
}

static PUSHES: AtomicU64 = AtomicU64::new(0);

impl FtlPush {
    fn start(fx: &Fixture, server: SocketAddr, key: &str, extra: &[&str]) -> FtlPush {
        let (video, audio) = common::ftl_media();
        let n = PUSHES.fetch_add(1, Ordering::Relaxed);
        let log = fx.cluster.path(&format!("ftl-push-{n}.log"));
        let server = server.to_string();
        let mut args = vec![
            "ftl-push",
            "--server",
            &server,
            "--key",
            key,
            "--video",
            video.to_str().unwrap(),
            "--audio",
            audio.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let child = cluster::deadsfu(&args, &[], &log)
            .stdout(Stdio::null())
            .spawn()
            .expect("start deadsfu ftl-push");
        FtlPush { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (polling) for the push to exit: its status and log.
    async fn wait(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Deadline::new("ftl-push to exit", timeout);
        loop {
            if let Some(status) = self.exited() {
                return (status, self.log_text());
            }
            let log = self.log_text();
            deadline.tick(|| log).await;
        }
    }

    /// A number of the final report (`FTL push finished`), e.g. `nacks`.
    fn report(&self, field: &str) -> Option<u64> {
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains("FTL push finished"))?;
        let rest = &line[line.find(&format!("{field}: "))? + field.len() + 2..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

impl Drop for FtlPush {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        for _ in 0..40 {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ftl(fx: Arc<Fixture>) {
    let px1 = fx.px("px1");
    let ftl = px1.ftl.expect("px1 has FTL");
    let log = fx.cluster.path("ftl-key.log");
    let out = cluster::deadsfu(
        &["cluster", "ftl-key", "set", FTL_CHANNEL, FTL_SECRET],
        &[("DEADSFU_CLUSTER_URL", &fx.cluster.admin_url)],
        &log,
    )
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(
        out.success(),
        "cluster ftl-key set: {}",
        cluster::tail(&log, 20)
    );
    let key = format!("{FTL_CHANNEL}-{FTL_SECRET}");
    let mut push = FtlPush::start(&fx, ftl, &key, &["--loop", "--drop-percent", "5"]);
    // sfu-c (the only node with FTL) takes the channel's room.
    let room_key = fx.cluster.room_key(FTL_CHANNEL);
    let deadline = Deadline::new(
        "the FTL channel's room to be owned by sfu-c",
        Duration::from_secs(15),
    );
    loop {
        if let Some(status) = push.exited() {
            panic!(
                "ftl-push exited ({status}): {}\n{}",
                push.log_text(),
                fx.tails()
            );
        }
        if fx.cluster.get(&room_key).await.as_deref() == Some("sfu-c") {
            break;
        }
        deadline
            .tick(|| format!("{}\n{}", push.log_text(), fx.tails()))
            .await;
    }
    // A viewer through the service name lands on sfu-c and gets the stream, every video gap
    // repaired (NACKs through the relay). Audio has no retransmission anywhere on the path, so
    // a datagram lost on a loaded machine stays lost: a stray gap or two is allowed there.
    let (client, hops) = fx.via_recording(px1);
    let mut v = connect(
        &fx,
        &fx.service_url(&format!("/whep/{FTL_CHANNEL}")),
        Role::View,
        client,
    )
    .await;
    assert_eq!(
        fx.node_of(&v.session.url),
        Some("sfu-c"),
        "the viewer's session {} (redirects {:?})",
        v.session.url,
        hops.lock().unwrap()
    );
    let s = v
        .wait_until(
            "300 video packets with every gap repaired",
            Duration::from_secs(30),
            |s| {
                s.video.packets >= 300
                    && s.video.gaps() == 0
                    && s.audio.gaps() <= 2 + s.audio.packets / 100
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", v.stats(), fx.tails()));
    assert!(s.video.distinct_seqs() >= 300, "{s:?}");
    assert!(s.video.keyframes >= 1, "{s:?}");
    assert!(s.audio.packets > 0, "{s:?}");
    let m = px1.metrics().await;
    for (name, at_least) in [
        ("deadsfu_proxy_ftl_streams_started_total", 1),
        ("deadsfu_proxy_ftl_streaming_sessions", 1),
        (
            "deadsfu_proxy_ftl_datagrams_total{direction=\"to_sfu\"}",
            300,
        ),
        (
            "deadsfu_proxy_ftl_datagrams_total{direction=\"to_client\"}",
            1,
        ),
    ] {
        assert!(metric(&m, name) >= at_least, "{name} < {at_least}:\n{m}");
    }

    // Refusals at the proxy: wrong key, unknown channel; and the SFU's 406 for a second
    // publisher passed on.
    for (key, code, reason) in [
        (format!("{FTL_CHANNEL}-wrongsecret"), "405", "wrong_key"),
        ("4243-whatever".to_owned(), "401", "unknown_channel"),
        (key.clone(), "406", "channel_in_use"),
    ] {
        let label = format!("deadsfu_proxy_ftl_rejected_total{{reason=\"{reason}\"}}");
        let before = px1.metric(&label).await;
        let mut refused = FtlPush::start(&fx, ftl, &key, &[]);
        let (status, log) = refused.wait(WAIT).await;
        assert!(
            !status.success() && log.contains(code),
            "ftl-push with {key} through px1: expected {code}, got {status}: {log}"
        );
        assert_eq!(px1.metric(&label).await, before + 1, "{label}");
    }
    // The live stream was not disturbed: every video gap repaired and audio no worse than
    // above (its gaps are counted from the viewer's start, so a stray one from before stays).
    let before = v.stats().video.packets;
    v.wait_until("the stream still flowing, every gap repaired", WAIT, |s| {
        s.video.packets >= before + 60
            && s.video.gaps() == 0
            && s.audio.gaps() <= 2 + s.audio.packets / 100
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", v.stats(), fx.tails()));
    assert!(push.exited().is_none(), "{}", push.log_text());
    *fx.ftl_live.lock().unwrap() = Some((push, v));
}

async fn sfu_killed(fx: Arc<Fixture>) {
    let px1 = fx.px("px1");
    let ca = fx.nodes.ca_pem.clone();
    let c = fx.nodes.get("sfu-c");
    let failures_before = px1
        .metric("deadsfu_proxy_https_backend_failures_total")
        .await;
    let live = fx.ftl_live.lock().unwrap().take();
    c.kill();
    let killed = Instant::now();
    // Poll px1 with handshakes for sfu-c's name and for the service name: a handshake the
    // proxy routed to the dead node ends without an alert (connection refused behind the
    // proxy); once out of routing, its name gets unrecognized_name and the service name
    // leads to a live node only.
    let mut last_to_dead: Option<Duration> = None;
    let mut first_refused: Option<Duration> = None;
    let mut service_to_dead = 0;
    let mut last_service_to_dead: Option<Duration> = None;
    let mut clean_after = 0;
    let deadline = Deadline::new("sfu-c to be out of px1's routing", Duration::from_secs(10));
    loop {
        let t = killed.elapsed();
        match handshake(&ca, px1.https, Some("sfu-c.test")).await {
            Handshake::Alert(rustls::AlertDescription::UnrecognisedName) => {
                first_refused.get_or_insert(t);
            }
            Handshake::Closed(_) => {
                last_to_dead = Some(t);
                clean_after = 0;
            }
            other => panic!("sfu-c.test through px1 after the kill: {other:?}"),
        }
        match handshake(&ca, px1.https, Some(SERVICE)).await {
            Handshake::Done => {
                if first_refused.is_some() {
                    clean_after += 1;
                }
            }
            Handshake::Closed(_) => {
                service_to_dead += 1;
                last_service_to_dead = Some(t);
                clean_after = 0;
            }
            other => panic!("{SERVICE} through px1 after the kill: {other:?}"),
        }
        if clean_after >= 30 {
            break;
        }
        deadline
            .tick(|| format!("first refused {first_refused:?}\n{}", px1.tail()))
            .await;
    }
    let failures = px1
        .metric("deadsfu_proxy_https_backend_failures_total")
        .await
        - failures_before;
    let secs =
        |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "sfu-c SIGKILLed: px1 last routed its name to it {} after the kill, refused the name \
         from {}; the service name led to it {service_to_dead} times, last {}; px1 counted \
         {failures} backend failures",
        secs(last_to_dead),
        secs(first_refused),
        secs(last_service_to_dead),
    );
    let limit = Duration::from_secs(3);
    assert!(
        last_to_dead.is_none_or(|t| t < limit) && last_service_to_dead.is_none_or(|t| t < limit),
        "px1 still routed to the killed sfu-c 3 s after the kill"
    );

    // The FTL stream through px1 into sfu-c ends: the push exits and says how NACKs went.
    let Some((mut push, viewer)) = live else {
        panic!("no FTL stream was live (scenario 3 failed)");
    };
    viewer.vanish().await;
    let (status, log) = push.wait(Duration::from_secs(15)).await;
    println!(
        "FTL push after the kill: {status}; nacks {:?}, retransmitted {:?}",
        push.report("nacks"),
        push.report("retransmitted")
    );
    assert!(
        !status.success(),
        "the push ended by a dead SFU exits with an error: {log}"
    );
    assert!(
        push.report("nacks").unwrap_or(0) > 0 && push.report("retransmitted").unwrap_or(0) > 0,
        "NACKs from sfu-c reached the push through px1 (--drop-percent 5): {log}"
    );
    let deadline = Deadline::new("px1's FTL session to end", Duration::from_secs(5));
    while px1.metric("deadsfu_proxy_ftl_streaming_sessions").await != 0 {
        deadline.tick(|| px1.tail()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 5.

async fn draining(fx: Arc<Fixture>) {
    let px2 = fx.px("px2");
    let b = fx.nodes.get("sfu-b");
    let client = fx.via_no_redirect(px2);
    // A publisher and a viewer on sfu-b by its name, through px2.
    let room = "drain-live";
    let p = connect(
        &fx,
        &fx.url_of("sfu-b", &format!("/whip/{room}")),
        publish(),
        client.clone(),
    )
    .await;
    let mut v = connect(
        &fx,
        &fx.url_of("sfu-b", &format!("/whep/{room}")),
        Role::View,
        client.clone(),
    )
    .await;
    wait_media(&fx, &mut v, "60 video packets on sfu-b", 60).await;

    b.sigterm();
    // sfu-b says it drains: its record, and its /readyz through px2 (by name).
    let deadline = Deadline::new("sfu-b's record to say draining", Duration::from_secs(10));
    loop {
        let record = fx.cluster.get(&fx.cluster.node_key("sfu-b")).await;
        if record
            .as_deref()
            .is_some_and(|r| r.contains("\"draining\""))
        {
            break;
        }
        deadline
            .tick(|| format!("record: {record:?}\n{}", b.tail()))
            .await;
    }
    let draining_seen = Instant::now();
    let ready = get_status(&client, &fx.url_of("sfu-b", "/readyz")).await;
    assert_eq!(ready, Ok(503), "sfu-b's /readyz through px2 while draining");

    // New service-name connections (one per request) must not reach sfu-b once px2 has read
    // its record (events, or the 500 ms resync). A fresh room's request gets a 307 from the
    // node that answered it, to itself (sfu-a) or, from draining sfu-b, to sfu-a; the node
    // that answered logged the redirect.
    let grace = Duration::from_millis(1500);
    let mut to_b = Vec::new();
    let mut in_a_row = 0;
    let mut n = 0;
    let deadline = Deadline::new(
        "20 service-name connections in a row to reach sfu-a",
        Duration::from_secs(10),
    );
    while in_a_row < 20 {
        n += 1;
        let sent = draining_seen.elapsed();
        let room = format!("drain-new-{n}");
        let url = fx.service_url(&format!("/whep/{room}"));
        let r = post_whep(&client, &url).await.unwrap();
        assert!(
            r.status == 307 && r.location.as_deref().and_then(|l| fx.node_of(l)) == Some("sfu-a"),
            "{url} while sfu-b drains: {r:?}"
        );
        match answerer(&fx, &room).await {
            "sfu-a" => in_a_row += 1,
            "sfu-b" => {
                to_b.push(sent);
                in_a_row = 0;
            }
            other => panic!("{url} answered by {other}"),
        }
        deadline.tick(|| format!("{to_b:?}\n{}", fx.tails())).await;
    }
    println!(
        "draining: {} of {n} service-name requests reached sfu-b after its record said \
         draining (sent at {:?})",
        to_b.len(),
        to_b
    );
    assert!(
        to_b.iter().all(|t| *t < grace),
        "px2 sent service-name connections to draining sfu-b more than {grace:?} after its \
         record said draining: {to_b:?}"
    );
    // The live session goes on (its media is direct; its requests go by name through px2).
    let before = v.stats().video.packets;
    wait_media(
        &fx,
        &mut v,
        "60 more video packets while sfu-b drains",
        before + 60,
    )
    .await;
    assert!(b.exited().is_none(), "sfu-b stopped with live sessions");
    assert_eq!(
        v.delete().await.unwrap(),
        200,
        "DELETE by name on draining sfu-b"
    );
    assert_eq!(
        p.delete().await.unwrap(),
        200,
        "DELETE by name on draining sfu-b"
    );
    let deadline = Deadline::new("sfu-b to exit once drained", Duration::from_secs(15));
    let status = loop {
        if let Some(s) = b.exited() {
            break s;
        }
        deadline.tick(|| b.tail()).await;
    };
    assert!(status.success(), "sfu-b exited with {status}\n{}", b.tail());
    // It left: its name is refused by px2.
    let deadline = Deadline::new("px2 to refuse sfu-b's name", Duration::from_secs(5));
    loop {
        let h = handshake(&fx.nodes.ca_pem, px2.https, Some("sfu-b.test")).await;
        if h == Handshake::Alert(rustls::AlertDescription::UnrecognisedName) {
            break;
        }
        deadline
            .tick(|| format!("last {h:?}\n{}", px2.tail()))
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6.

async fn proxy_killed(fx: Arc<Fixture>) {
    let (px1, px2) = (fx.px("px1"), fx.px("px2"));
    px1.kill();
    // px1 is gone...
    let h = handshake(&fx.nodes.ca_pem, px1.https, Some(SERVICE)).await;
    assert!(
        matches!(h, Handshake::Closed(_)),
        "px1 after SIGKILL: {h:?}"
    );
    // ...px2 routes as before: the service name, a node by name, a whole session.
    assert_eq!(
        admin_get(px2.admin, "/readyz").await,
        Ok((200, "ready\n".into()))
    );
    let client = fx.via_no_redirect(px2);
    let (_, _, session) = whep_via_service(&fx, &client, "after-px1").await;
    assert_eq!(delete(&client, &session).await, 200);
    assert_eq!(
        get_status(&client, &fx.url_of("sfu-a", "/readyz")).await,
        Ok(200)
    );
    let (client, _) = fx.via_recording(px2);
    let p = connect(
        &fx,
        &fx.service_url("/whip/after-px1-live"),
        publish(),
        client.clone(),
    )
    .await;
    let mut v = connect(
        &fx,
        &fx.service_url("/whep/after-px1-live"),
        Role::View,
        client,
    )
    .await;
    wait_media(&fx, &mut v, "60 video packets through px2", 60).await;
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
}

// ---------------------------------------------------------------------------------------------
// 7.

async fn redis_restart(fx: Arc<Fixture>) {
    let px2 = fx.px("px2");
    let ca = fx.nodes.ca_pem.clone();
    let client = fx.via_no_redirect(px2);
    fx.cluster.kill_redis();
    let killed = Instant::now();
    let deadline = Deadline::new("px2 to notice Redis is away", Duration::from_secs(10));
    while px2.metric("deadsfu_proxy_redis_reachable").await != 0 {
        deadline.tick(|| px2.tail()).await;
    }
    println!(
        "Redis killed: px2 reports it unreachable after {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    // Routing goes on from the cached table through an outage longer than a record's
    // freshness (3 s): sfu-a by name (a request) and the service name (a handshake).
    let outage = Duration::from_secs(5);
    let mut checks = 0;
    while killed.elapsed() < outage {
        let status = get_status(&client, &fx.url_of("sfu-a", "/healthz")).await;
        assert_eq!(
            status,
            Ok(200),
            "sfu-a by name through px2, {:.1} s into the Redis outage\n{}",
            killed.elapsed().as_secs_f64(),
            px2.tail()
        );
        let h = handshake(&ca, px2.https, Some(SERVICE)).await;
        assert_eq!(
            h,
            Handshake::Done,
            "the service name through px2, {:.1} s into the Redis outage\n{}",
            killed.elapsed().as_secs_f64(),
            px2.tail()
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("Redis outage: {checks} checks through px2 over {outage:?}, all routed");

    // From the restart until well after the nodes are back, px2 and px3 keep routing: sfu-a
    // by name and the service name, checked every 50 ms. Times count from the start of
    // redis-server.
    let restarted = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (stop, checks, ca) = (stop.clone(), checks.clone(), ca.clone());
        let targets = [("px2", px2.https), ("px3", fx.px("px3").https)];
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) && restarted.elapsed() < Duration::from_secs(30) {
                for (px, to) in targets {
                    for sni in ["sfu-a.test", SERVICE] {
                        let h = handshake(&ca, to, Some(sni)).await;
                        if h != Handshake::Done {
                            failures.push((restarted.elapsed(), px, sni, h));
                        }
                    }
                }
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failures
        })
    };
    fx.cluster.restart_redis().await;
    let deadline = Deadline::new("px2 to reach Redis again", Duration::from_secs(15));
    while px2.metric("deadsfu_proxy_redis_reachable").await != 1 {
        deadline.tick(|| px2.tail()).await;
    }
    let px2_back = restarted.elapsed();
    // sfu-a registers again (its record was lost with Redis's memory).
    let deadline = Deadline::new("sfu-a's record back in Redis", Duration::from_secs(15));
    while fx
        .cluster
        .get(&fx.cluster.node_key("sfu-a"))
        .await
        .is_none()
    {
        deadline.tick(|| fx.nodes.get("sfu-a").tail()).await;
    }
    let a_back = restarted.elapsed();
    let seen = checks.load(Ordering::Relaxed);
    let deadline = Deadline::new("ten more routing checks", Duration::from_secs(10));
    while checks.load(Ordering::Relaxed) < seen + 10 {
        deadline.tick(String::new).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = monitor.await.unwrap();
    println!(
        "Redis restarted: px2 reconnected after {:.1} s, sfu-a re-registered after {:.1} s; \
         {} of {} routing checks through px2 and px3 failed meanwhile{}",
        px2_back.as_secs_f64(),
        a_back.as_secs_f64(),
        failures.len(),
        4 * checks.load(Ordering::Relaxed),
        match (failures.first(), failures.last()) {
            (Some(first), Some(last)) => format!(
                " (from {:.2} s to {:.2} s after the restart; first {:?}, last {:?})",
                first.0.as_secs_f64(),
                last.0.as_secs_f64(),
                first,
                last
            ),
            _ => String::new(),
        }
    );
    assert_eq!(
        get_status(&client, &fx.url_of("sfu-a", "/healthz")).await,
        Ok(200),
        "sfu-a by name through px2 after Redis came back"
    );
    // A node started now becomes routable: by its name, and for the service name.
    let d = fx
        .nodes
        .spawn_more(
            &fx.cluster,
            NodeSpec {
                name: "sfu-d",
                ip: D_IP,
                // FTL on an ephemeral port (see scenario 9).
                extra: strings(&[
                    "--public-url",
                    &fx.url_of("sfu-d", ""),
                    "--ftl-listen",
                    &format!("{D_IP}:0"),
                    "--ftl-udp-port",
                    "0",
                ]),
            },
            fx.d_bundle.clone(),
            &fx.common,
        )
        .await;
    *fx.late.lock().unwrap() = Some(Arc::new(d));
    let d = fx.late_node();
    let d_ready = restarted.elapsed();
    let deadline = Deadline::new("sfu-d by name through px2", Duration::from_secs(5));
    loop {
        let status = get_status(&client, &fx.url_of("sfu-d", "/readyz")).await;
        if status == Ok(200) {
            break;
        }
        deadline
            .tick(|| format!("last {status:?}\n{}\n{}", px2.tail(), d.tail()))
            .await;
    }
    let d_by_name = restarted.elapsed();
    let deadline = Deadline::new(
        "a service-name request through px2 to land on sfu-d",
        Duration::from_secs(10),
    );
    let mut n = 0;
    loop {
        n += 1;
        let url = fx.service_url(&format!("/whep/after-redis-{n}"));
        let r = post_whep(&client, &url).await.unwrap();
        assert_eq!(r.status, 307, "{url}: {r:?}");
        if r.location.as_deref().and_then(|l| fx.node_of(l)) == Some("sfu-d") {
            break;
        }
        deadline.tick(|| fx.tails()).await;
    }
    println!(
        "after the Redis restart: sfu-d started and ready at {:.1} s, routable by name through \
         px2 at {:.1} s, by the service name after {n} requests",
        d_ready.as_secs_f64(),
        d_by_name.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "the proxies stopped routing after Redis came back (empty) until the nodes \
         re-registered: \
         {failures:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8.

/// How one flood connection ended.
#[derive(Debug, Clone, Copy)]
enum FloodEnd {
    /// The connect itself failed.
    NoConnect,
    /// The proxy closed it after this long.
    Closed(Duration),
    /// Still open when the flood ended.
    Open,
}

const FLOOD_PER_IP: usize = 500;
/// Connections opened and closed at once from [`CHURN_IP`].
const CHURN: usize = 300;
const CHURN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 34);
/// Each flooder spreads its connections over this long...
const FLOOD_SPREAD: Duration = Duration::from_secs(4);
/// ...and the whole flood ends by this (every connection is closed by the test then).
const FLOOD_LIMIT: Duration = Duration::from_secs(12);

/// One flood connection from `from`: idle, or a ClientHello a byte per second.
async fn flood_conn(from: Ipv4Addr, to: SocketAddr, slow: bool, end: Instant) -> FloodEnd {
    let Ok(mut tcp) = tcp_from(from, to).await else {
        return FloodEnd::NoConnect;
    };
    let opened = Instant::now();
    // A handshake record announcing 512 bytes of ClientHello, never finished.
    let hello = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 64];
    let until = tokio::time::Instant::from_std(end);
    loop {
        tokio::select! {
            r = tcp.read(&mut buf) => match r {
                Ok(0) | Err(_) => return FloodEnd::Closed(opened.elapsed()),
                Ok(_) => {}
            },
            _ = tick.tick(), if slow && sent < hello.len() => {
                if tcp.write_all(&hello[sent..sent + 1]).await.is_err() {
                    return FloodEnd::Closed(opened.elapsed());
                }
                sent += 1;
            }
            () = tokio::time::sleep_until(until) => return FloodEnd::Open,
        }
    }
}

/// The soft and hard RLIMIT_NOFILE of this process.
fn nofile_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// Raises the soft RLIMIT_NOFILE of this process (not of processes already started) to
/// `wanted`, within the hard limit, with util-linux's `prlimit`; returns the soft limit.
fn raise_nofile(wanted: u64) -> u64 {
    let (soft, hard) = nofile_limits();
    if soft >= wanted || hard <= soft {
        return soft;
    }
    let to = wanted.min(hard);
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={to}:{hard}"))
        .status();
    nofile_limits().0
}

async fn floods(fx: Arc<Fixture>) {
    let px3 = fx.px("px3");
    let total = (FLOOD_IPS.len() * FLOOD_PER_IP + CHURN) as u64;
    let nofile = raise_nofile(total + 1024);
    assert!(
        nofile >= total + 1024,
        "RLIMIT_NOFILE {nofile} is too low for {total} flood connections (raise it: ulimit -n)"
    );
    let client_for = || fx.via_no_redirect(px3);
    // px3 routes the service name (after the Redis restart its table may be catching up).
    let deadline = Deadline::new("px3 to route the service name", Duration::from_secs(10));
    loop {
        let h = handshake(&fx.nodes.ca_pem, px3.https, Some(SERVICE)).await;
        if h == Handshake::Done {
            break;
        }
        deadline
            .tick(|| format!("last {h:?}\n{}", px3.tail()))
            .await;
    }
    assert_eq!(
        get_status(&client_for(), &fx.service_url("/healthz")).await,
        Ok(200)
    );
    let rss_before = px3.rss_kib();
    let m_before = px3.metrics().await;

    let start = Instant::now();
    let end = start + FLOOD_LIMIT;
    // One more address opens and closes connections as fast as it can: the rate limit.
    let churn = {
        let to = px3.https;
        tokio::spawn(async move {
            let mut connected = 0;
            for _ in 0..CHURN {
                if tcp_from(CHURN_IP, to).await.is_ok() {
                    connected += 1;
                }
            }
            connected
        })
    };
    let mut flooders = Vec::new();
    for (i, ip) in FLOOD_IPS.into_iter().enumerate() {
        let to = px3.https;
        flooders.push(tokio::spawn(async move {
            let mut conns = Vec::with_capacity(FLOOD_PER_IP);
            let batch = 25;
            let mut tick = tokio::time::interval(FLOOD_SPREAD / (FLOOD_PER_IP / batch) as u32);
            for n in 0..FLOOD_PER_IP {
                if n % batch == 0 {
                    tick.tick().await;
                }
                let slow = (n + i) % 2 == 1;
                conns.push(tokio::spawn(flood_conn(ip, to, slow, end)));
            }
            let mut ends = Vec::with_capacity(FLOOD_PER_IP);
            for c in conns {
                ends.push(c.await.unwrap());
            }
            ends
        }));
    }
    // A legitimate client keeps asking while the flood goes on (a new connection each time).
    let mut legit = Vec::new();
    let mut peak_open = 0;
    let mut rss_peak = rss_before;
    while flooders.iter().any(|f| !f.is_finished()) && start.elapsed() < FLOOD_LIMIT {
        let t = Instant::now();
        let status = get_status(&client_for(), &fx.service_url("/healthz")).await;
        legit.push((start.elapsed(), t.elapsed(), status));
        let m = px3.metrics().await;
        peak_open = peak_open.max(metric(&m, "deadsfu_proxy_connections"));
        rss_peak = rss_peak.max(px3.rss_kib());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut ends = Vec::new();
    for f in flooders {
        ends.extend(f.await.unwrap());
    }
    let churned = churn.await.unwrap();
    let flood_secs = start.elapsed().as_secs_f64();
    let deadline = Deadline::new("px3's connections to drop to zero", Duration::from_secs(10));
    loop {
        let open = px3.metric("deadsfu_proxy_connections").await;
        if open == 0 {
            break;
        }
        deadline
            .tick(|| format!("{open} open\n{}", px3.tail()))
            .await;
    }
    let rss_after = px3.rss_kib();
    let m = px3.metrics().await;
    let delta = |name: &str| metric(&m, name) - metric(&m_before, name);
    let per_ip = delta("deadsfu_proxy_https_refused_total{limit=\"per_ip\"}");
    let rate = delta("deadsfu_proxy_https_refused_total{limit=\"rate\"}");
    let total_cap = delta("deadsfu_proxy_https_refused_total{limit=\"total\"}");
    let timeouts = delta("deadsfu_proxy_https_hello_timeouts_total");
    let accepted = delta("deadsfu_proxy_https_accepted_total");
    let no_connect = ends
        .iter()
        .filter(|e| matches!(e, FloodEnd::NoConnect))
        .count();
    let still_open = ends.iter().filter(|e| matches!(e, FloodEnd::Open)).count();
    let mut held: Vec<Duration> = ends
        .iter()
        .filter_map(|e| match e {
            FloodEnd::Closed(d) if *d >= Duration::from_millis(500) => Some(*d),
            _ => None,
        })
        .collect();
    held.sort();
    let quick = ends.len() - no_connect - still_open - held.len();
    let worst = legit.iter().map(|(_, d, _)| *d).max().unwrap_or_default();
    println!(
        "flood: {} connections from {} addresses in {flood_secs:.1} s: {quick} closed at once, \
         {} held until the hello timeout (median {:.1} s), {still_open} still open at the end, \
         {no_connect} failed to connect; px3: accepted {accepted}, refused per_ip {per_ip}, \
         rate {rate}, total {total_cap}, hello timeouts {timeouts}, at most {peak_open} open; \
         RSS {rss_before} KiB before, {rss_peak} KiB at most during, {rss_after} KiB after; \
         legitimate requests: {} (worst {:.0} ms); {churned} more opened and closed at once \
         from {CHURN_IP}",
        ends.len(),
        FLOOD_IPS.len(),
        held.len(),
        held.get(held.len() / 2).map_or(0.0, |d| d.as_secs_f64()),
        legit.len(),
        worst.as_secs_f64() * 1000.0
    );
    for (at, took, status) in &legit {
        assert!(
            *status == Ok(200) && *took < Duration::from_secs(2),
            "a legitimate request {:.1} s into the flood: {status:?} after {took:?}\n{}",
            at.as_secs_f64(),
            px3.tail()
        );
    }
    assert!(
        legit.len() >= 5,
        "only {} legitimate requests during the flood",
        legit.len()
    );
    assert_eq!(still_open, 0, "flood connections the proxy never closed");
    assert!(
        peak_open <= (FLOOD_IPS.len() * 100 + 2) as u64,
        "px3 held {peak_open} connections with 100 per IP allowed"
    );
    assert!(per_ip > 0, "no per-IP refusals counted:\n{m}");
    assert!(
        rate > 0,
        "no rate refusals counted for {CHURN} connections at once from one address:\n{m}"
    );
    assert_eq!(
        churned, CHURN,
        "the churning connections were accepted by the kernel"
    );
    assert!(timeouts > 0, "no hello timeouts counted:\n{m}");
    assert!(
        held.iter().all(|d| *d < Duration::from_secs(5)),
        "a flood connection was held longer than the 3 s hello timeout allows: {:?}",
        held.last()
    );
    assert!(
        rss_peak < rss_before + 64 * 1024 && rss_after < rss_before + 32 * 1024,
        "px3's memory grew from {rss_before} KiB to {rss_peak} KiB (after: {rss_after} KiB)"
    );
}

// ---------------------------------------------------------------------------------------------
// 9.

/// sfu-d listens for FTL on an ephemeral port (`--ftl-listen 127.0.0.5:0`): its record must
/// name the port it got, or the FTL proxy cannot reach it.
async fn ephemeral_ftl_port(fx: Arc<Fixture>) {
    let d = fx.late_node();
    let bound = d
        .log_text()
        .lines()
        .find_map(|l| {
            let rest = &l[l.find("FTL ingest listening control=")? + 29..];
            rest.split_whitespace().next().map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("sfu-d logged no FTL listener\n{}", d.tail()));
    let record = fx
        .cluster
        .get(&fx.cluster.node_key("sfu-d"))
        .await
        .expect("sfu-d's record");
    let recorded: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(
        recorded["ftl_addr"].as_str(),
        Some(bound.as_str()),
        "sfu-d's record names another FTL address than the one it listens on: {record}"
    );
}
