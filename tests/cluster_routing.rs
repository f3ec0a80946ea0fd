//! One service hostname, 307 to the SFU that serves the room: three real `deadsfu serve` nodes
//! (sfu-a, sfu-b, sfu-c on 127.0.0.2-4, one HTTPS port number, one test certificate covering
//! svc.test and every node's name) sharing a real TLS redis-server. Clients reach `svc.test`
//! at a node of the test's choosing (a reqwest DNS override per client), as a proxy would
//! send them there.
//!
//! `service_name_routing` starts one cluster and runs its scenarios one after another (each
//! on its own task, so one failing does not hide the others; the drain, which ends a node,
//! runs last):
//! 1. WHIP/WHEP through the service name go to the room's owner (307, absolute `Location`
//!    with a ticket; over HTTP/2 too; legacy routes too; a node's own name for another node's
//!    room too), a viewer through the service name lands on the owner and gets media, a new
//!    room's publisher lands on the entry node, which takes `room:{name}`.
//! 2. `/api/rooms` on every node lists the cluster's rooms with owner and owner URL; session
//!    `Location`s are absolute.
//! 3. Two publishers racing for one room on two nodes: one 201, the other 307 to the winner
//!    and then 409 there.
//! 4. No loops: a request with a (forged) ticket is served or refused where it lands, never
//!    redirected; while a room's lease flaps between nodes, no request sees more than one 307.
//! 5. PROXY v2 on a node trusting 127.0.0.10: the header's source is the logged client (plain
//!    HTTP, and TLS after the header); missing, untrusted or malformed headers close the
//!    connection.
//! 6. A publisher goes where viewers wait for its room (weak lease), and they get its stream.
//! 7. Draining (SIGTERM, --drain-timeout): new sessions go elsewhere, `/readyz` is 503, the
//!    live viewer keeps getting media; the node leaves the cluster once its sessions end.
//! 8. A killed node's room: served by a live node once the lease expires, with no 307 that
//!    leads to a refusal meanwhile.
//! 9. Redis outage: a node keeps serving sessions asked of it by name.
//!
//! `tickets_stand_in_for_the_token` starts a second cluster with `--bearer-token` on every
//! node: redirects that cross origins (reqwest drops `Authorization`, as browsers do) still
//! end in 201 thanks to the ticket; altered, misused and expired tickets get 401.

#[path = "common/cluster.rs"]
mod cluster;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster::{Cluster, Deadline, NodeSpec, Nodes, SERVICE};
use deadsfu_client::{Peer, PeerOptions, Role, StreamSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const C_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// The token cluster's nodes (a cluster of its own, running beside the first).
const TA_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const TB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Node A of the first cluster requires a PROXY v2 header from here...
const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
/// ...and refuses one from here.
const UNTRUSTED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const TOKEN: &str = "routing-test-token";
/// Every wait for media or connection state ends within this.
const WAIT: Duration = Duration::from_secs(20);

fn names() -> Vec<String> {
    [SERVICE, "sfu-a.test", "sfu-b.test", "sfu-c.test"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtcp-mux\r\na=DIR\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n";

/// A publisher's offer (H264 video, never connects: enough for status codes).
fn whip_offer() -> String {
    OFFER.replace("DIR", "sendonly")
}

/// A viewer's offer.
fn whep_offer() -> String {
    OFFER.replace("DIR", "recvonly")
}

#[derive(Debug)]
struct Reply {
    status: u16,
    location: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Reply {
    /// Panics unless this is `status` with an `application/problem+json` body saying so.
    fn assert_problem(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json"),
            "{what}: {self:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{what}: problem body is not JSON ({e}): {self:?}"));
        assert_eq!(json["status"], status, "{what}: {self:?}");
        assert!(
            json["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{what}: {self:?}"
        );
    }
}

async fn post_sdp(client: &reqwest::Client, url: &str, sdp: String, token: Option<&str>) -> Reply {
    let mut req = client
        .post(url)
        .header("content-type", "application/sdp")
        .body(sdp);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (location, content_type) = (header("location"), header("content-type"));
    Reply {
        status: res.status().as_u16(),
        location,
        content_type,
        body: res.text().await.unwrap_or_default(),
    }
}

async fn delete(client: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut req = client.delete(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("DELETE {url}: {e:?}"))
        .status()
        .as_u16()
}

/// Sessions to DELETE at the end of a scenario. If the scenario fails first, they are deleted
/// in the background when this is dropped, so that no session is left behind for the next
/// scenario (a node drains only once its sessions end).
struct Sessions {
    client: reqwest::Client,
    urls: Vec<String>,
}

impl Sessions {
    fn new(client: &reqwest::Client) -> Self {
        Sessions {
            client: client.clone(),
            urls: Vec::new(),
        }
    }

    /// Adds the `Location` of a 201 (nothing otherwise).
    fn add(&mut self, reply: &Reply) {
        if let (201, Some(l)) = (reply.status, &reply.location) {
            self.urls.push(l.clone());
        }
    }

    async fn delete_all(mut self) {
        for url in std::mem::take(&mut self.urls) {
            assert_eq!(delete(&self.client, &url, None).await, 200, "DELETE {url}");
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let urls = std::mem::take(&mut self.urls);
        if urls.is_empty() {
            return;
        }
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for url in urls {
                    let _ = client.delete(&url).send().await;
                }
            });
        }
    }
}

/// The value of query parameter `name` in `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `url` with its `ticket` parameter replaced by `ticket` (or removed).
fn with_ticket(url: &str, ticket: Option<&str>) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "ticket")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(t) = ticket {
            q.append_pair("ticket", t);
        }
    }
    if u.query() == Some("") {
        u.set_query(None);
    }
    u.to_string()
}

/// The rooms `/api/rooms` lists: (name, owner, owner_url).
async fn api_rooms(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<Vec<(String, Option<String>, Option<String>)>, String> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status} {text}"));
    }
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(json["rooms"]
        .as_array()
        .ok_or_else(|| format!("no rooms array: {text}"))?
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().map(str::to_owned);
            (s("name").unwrap_or_default(), s("owner"), s("owner_url"))
        })
        .collect())
}

/// Waits until `/api/rooms` at `url` lists `room` owned by `owner` at `owner_url` (which
/// shows that the answering node's routing snapshot knows the owner).
async fn wait_listed(
    nodes: &Nodes,
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    room: &str,
    owner: &str,
) {
    let owner_url = nodes.get(owner).public_url.clone();
    let deadline = Deadline::new(
        format!("{url} to list {room} owned by {owner} at {owner_url}"),
        Duration::from_secs(10),
    );
    loop {
        let rooms = api_rooms(client, url, token).await;
        let found = rooms.as_ref().is_ok_and(|rooms| {
            rooms.iter().any(|(n, o, u)| {
                n == room && o.as_deref() == Some(owner) && u.as_deref() == Some(&owner_url)
            })
        });
        if found {
            return;
        }
        deadline
            .tick(|| format!("last answer: {rooms:?}\n{}", nodes.tails()))
            .await;
    }
}

fn peer_opts(nodes: &Nodes, entry: Option<&str>, token: Option<&str>) -> PeerOptions {
    PeerOptions {
        http_client: Some(nodes.client(entry, true)),
        token: token.map(str::to_owned),
        ..PeerOptions::default()
    }
}

async fn connect(url: &str, role: Role, opts: PeerOptions, nodes: &Nodes) -> Peer {
    match Peer::connect(url, role, opts).await {
        Ok(p) => p,
        Err(e) => panic!("connecting to {url}: {e}\n{}", nodes.tails()),
    }
}

async fn wait_media(peer: &mut Peer, what: &'static str, packets: u64, nodes: &Nodes) {
    if let Err(e) = peer
        .wait_until(what, WAIT, |s| s.video.packets >= packets)
        .await
    {
        panic!("{e}: {:?}\n{}", peer.stats(), nodes.tails());
    }
}

async fn wait_connected(peer: &mut Peer, what: &'static str, nodes: &Nodes) {
    if let Err(e) = peer.wait_until(what, WAIT, |s| s.connected).await {
        panic!("{e}: {:?}\n{}", peer.stats(), nodes.tails());
    }
}

// ---------------------------------------------------------------------------------------------
// Running scenarios on one cluster

struct Fixture {
    // Dropped before the cluster (the logs live in the cluster's directory).
    nodes: Nodes,
    cluster: Cluster,
}

/// Runs `scenario` on its own task; a panic is reported (with the nodes' log tails at that
/// moment) and recorded, and the next scenario runs.
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
            eprintln!("=== logs after scenario {name} ===\n{}", fx.nodes.tails());
            failed.push(name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_name_routing() {
    let started = Instant::now();
    let cluster = Cluster::start("deadsfu-routing-", &names()).await;
    let nodes = Nodes::start(
        &cluster,
        vec![
            NodeSpec {
                name: "sfu-a",
                ip: A_IP,
                extra: strings(&["--proxy-protocol-from", &format!("{PROXY_IP}/32")]),
            },
            NodeSpec {
                name: "sfu-b",
                ip: B_IP,
                extra: vec![],
            },
            NodeSpec {
                name: "sfu-c",
                ip: C_IP,
                extra: strings(&["--drain-timeout", "30"]),
            },
        ],
        &[],
    )
    .await;
    println!(
        "cluster of three up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let fx = Arc::new(Fixture { nodes, cluster });
    let mut failed = Vec::new();
    run_scenario(
        &fx,
        &mut failed,
        "1 service name to owner",
        service_name_goes_to_the_owner(fx.clone()),
    )
    .await;
    run_scenario(
        &fx,
        &mut failed,
        "2 room list and absolute Locations",
        room_list_and_absolute_locations(fx.clone()),
    )
    .await;
    run_scenario(
        &fx,
        &mut failed,
        "3 racing publishers",
        racing_publishers(fx.clone()),
    )
    .await;
    run_scenario(
        &fx,
        &mut failed,
        "4 no redirect loops",
        no_redirect_loops(fx.clone()),
    )
    .await;
    run_scenario(&fx, &mut failed, "5 PROXY v2", proxy_v2(fx.clone())).await;
    run_scenario(
        &fx,
        &mut failed,
        "6 publisher joins waiting viewers",
        publisher_joins_waiting_viewers(fx.clone()),
    )
    .await;
    run_scenario(&fx, &mut failed, "7 draining", draining(fx.clone())).await;
    run_scenario(
        &fx,
        &mut failed,
        "8 a dead owner's room moves",
        dead_owners_room_moves(fx.clone()),
    )
    .await;
    run_scenario(&fx, &mut failed, "9 Redis outage", redis_outage(fx.clone())).await;
    println!(
        "service_name_routing: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
}

// ---------------------------------------------------------------------------------------------
// 1.

async fn service_name_goes_to_the_owner(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let (a, b) = (nodes.get("sfu-a"), nodes.get("sfu-b"));

    // Room r1 is A's: its publisher came to A's own name.
    let mut p1 = connect(
        &a.url("/whip/r1"),
        Role::Publish(StreamSpec::default()),
        peer_opts(nodes, None, None),
        nodes,
    )
    .await;
    assert!(
        p1.session.url.starts_with(&a.url("/session/")),
        "{}",
        p1.session.url
    );
    wait_connected(&mut p1, "P1 connected", nodes).await;
    assert_eq!(
        fx.cluster.get(&fx.cluster.room_key("r1")).await.as_deref(),
        Some("sfu-a")
    );
    // B and C know A (their routing snapshots list r1 with A's URL).
    for entry in ["sfu-b", "sfu-c"] {
        let url = nodes.get(entry).url("/api/rooms");
        wait_listed(nodes, &nodes.client(None, false), &url, None, "r1", "sfu-a").await;
    }

    // (a) WHIP through the service name entering at B: 307 to A, same path, a ticket.
    let via_b = nodes.client(Some("sfu-b"), false);
    let r = post_sdp(&via_b, &nodes.service_url("/whip/r1"), whip_offer(), None).await;
    assert_eq!(r.status, 307, "{r:?}");
    let loc = r.location.clone().unwrap_or_default();
    assert!(loc.starts_with(&a.url("/whip/r1?ticket=")), "{r:?}");
    assert!(query_param(&loc, "ticket").is_some_and(|t| !t.is_empty()));
    // The same over HTTP/2 (browsers' choice), where the name comes as :authority.
    let ca = fx.cluster.ca_file();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{SERVICE}:{}:{}", nodes.https_port, b.ip))
        .args(["-H", "content-type: application/sdp", "--data-binary"])
        .arg(whip_offer())
        .arg(nodes.service_url("/whip/r1"))
        .output()
        .await
        .expect("curl (apt-get install curl)");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/2 307")
            && head.contains(&format!("location: {}", a.url("/whip/r1?ticket="))),
        "HTTP/2 through the service name: {head}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The legacy routes keep their query and add the ticket.
    for (path, want) in [
        ("/whip?room=r1", "/whip?room=r1&ticket="),
        ("/whap?room=r1", "/whap?room=r1&ticket="),
    ] {
        let via_c = nodes.client(Some("sfu-c"), false);
        let sdp = if path.starts_with("/whip") {
            whip_offer()
        } else {
            whep_offer()
        };
        let r = post_sdp(&via_c, &nodes.service_url(path), sdp, None).await;
        assert_eq!(r.status, 307, "{path}: {r:?}");
        assert!(
            r.location
                .as_deref()
                .is_some_and(|l| l.starts_with(&a.url(want))),
            "{path}: {r:?}"
        );
    }
    // B's own name, room of A: 307 to A as well.
    let r = post_sdp(&via_b, &b.url("/whep/r1"), whep_offer(), None).await;
    assert_eq!(r.status, 307, "{r:?}");
    assert!(
        r.location
            .as_deref()
            .is_some_and(|l| l.starts_with(&a.url("/whep/r1?ticket="))),
        "{r:?}"
    );

    // (b) A viewer through the service name entering at C lands on A and gets media.
    let mut v = connect(
        &nodes.service_url("/whep/r1"),
        Role::View,
        peer_opts(nodes, Some("sfu-c"), None),
        nodes,
    )
    .await;
    assert!(
        v.session.url.starts_with(&a.url("/session/")),
        "viewer session {}",
        v.session.url
    );
    wait_media(
        &mut v,
        "60 video packets through the service name",
        60,
        nodes,
    )
    .await;
    assert_eq!(v.delete().await.unwrap(), 200);

    // (c) A publisher of a new room through the service name entering at B: B takes it.
    let mut p2 = connect(
        &nodes.service_url("/whip/r2"),
        Role::Publish(StreamSpec::default()),
        peer_opts(nodes, Some("sfu-b"), None),
        nodes,
    )
    .await;
    assert!(
        p2.session.url.starts_with(&b.url("/session/")),
        "publisher session {}",
        p2.session.url
    );
    wait_connected(&mut p2, "P2 connected", nodes).await;
    assert_eq!(
        fx.cluster.get(&fx.cluster.room_key("r2")).await.as_deref(),
        Some("sfu-b"),
        "room:r2 names B"
    );

    assert_eq!(p2.delete().await.unwrap(), 200);
    assert_eq!(p1.delete().await.unwrap(), 200);
}

// ---------------------------------------------------------------------------------------------
// 2.

async fn room_list_and_absolute_locations(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let direct = nodes.client(None, false);
    // A room on A and one on B (raw publishers: the lease is what the list shows).
    let mut sessions = Sessions::new(&direct);
    for (node, room) in [("sfu-a", "list-a"), ("sfu-b", "list-b")] {
        let n = nodes.get(node);
        let r = post_sdp(
            &direct,
            &n.url(&format!("/whip/{room}")),
            whip_offer(),
            None,
        )
        .await;
        sessions.add(&r);
        assert_eq!(r.status, 201, "{r:?}");
        let loc = r.location.clone().unwrap_or_default();
        assert!(
            loc.starts_with(&n.url("/session/")),
            "absolute Location on its own node: {r:?}"
        );
    }
    // Every node, asked through the service name, lists both with owner and owner URL.
    for entry in ["sfu-a", "sfu-b", "sfu-c"] {
        let client = nodes.client(Some(entry), false);
        let url = nodes.service_url("/api/rooms");
        wait_listed(nodes, &client, &url, None, "list-a", "sfu-a").await;
        wait_listed(nodes, &client, &url, None, "list-b", "sfu-b").await;
    }
    // A session created after a redirect has an absolute Location on the node that serves it.
    let follow = nodes.client(Some("sfu-c"), true);
    let r = post_sdp(
        &follow,
        &nodes.service_url("/whep/list-a"),
        whep_offer(),
        None,
    )
    .await;
    sessions.add(&r);
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        r.location
            .as_deref()
            .is_some_and(|l| l.starts_with(&nodes.get("sfu-a").url("/session/"))),
        "{r:?}"
    );
    sessions.delete_all().await;
}

// ---------------------------------------------------------------------------------------------
// 3.

async fn racing_publishers(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let client = nodes.client(None, false);
    let (a, c) = (nodes.get("sfu-a"), nodes.get("sfu-c"));
    for round in 0..3 {
        let mut sessions = Sessions::new(&client);
        let room = format!("race{round}");
        let path = format!("/whip/{room}");
        let (url_a, url_c) = (a.url(&path), c.url(&path));
        let (ra, rc) = tokio::join!(
            post_sdp(&client, &url_a, whip_offer(), None),
            post_sdp(&client, &url_c, whip_offer(), None),
        );
        sessions.add(&ra);
        sessions.add(&rc);
        let (winner, win, lose) = match (ra.status, rc.status) {
            (201, 201) => panic!("round {round}: both got 201: {ra:?} {rc:?}"),
            (201, _) => (a, ra, rc),
            (_, 201) => (c, rc, ra),
            _ => panic!("round {round}: nobody got 201: {ra:?} {rc:?}"),
        };
        assert_eq!(
            lose.status, 307,
            "round {round}: the loser is sent to {}: {lose:?} (winner {win:?})",
            winner.name
        );
        let loc = lose.location.clone().unwrap_or_default();
        assert!(
            loc.starts_with(&winner.url(&format!("{path}?ticket="))),
            "round {round}: {lose:?}"
        );
        assert_eq!(
            fx.cluster.get(&fx.cluster.room_key(&room)).await.as_deref(),
            Some(winner.name)
        );
        // Following it (with the ticket): the room has its publisher there.
        let r = post_sdp(&client, &loc, whip_offer(), None).await;
        sessions.add(&r);
        r.assert_problem(409, &format!("round {round}: following to the winner"));
        sessions.delete_all().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4.

/// Waits until the lease flapper has flipped past `seen`; returns the new count.
async fn next_flip(flips: &AtomicU32, seen: u32) -> u32 {
    let deadline = Deadline::new("the next lease flip", Duration::from_secs(5));
    loop {
        let now = flips.load(Ordering::SeqCst);
        if now > seen {
            return now;
        }
        deadline.tick(String::new).await;
    }
}

async fn no_redirect_loops(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let direct = nodes.client(None, false);
    let mut sessions = Sessions::new(&direct);

    // A forged ticket is not checked without tokens, but it still means "redirected once":
    // served (or refused) where it lands, never sent on.
    let via_c = nodes.client(Some("sfu-c"), false);
    for (path, sdp) in [
        ("/whep/loop1?ticket=garbage", whep_offer()),
        ("/whip/loop2?ticket=garbage", whip_offer()),
    ] {
        let r = post_sdp(&via_c, &nodes.service_url(path), sdp, None).await;
        sessions.add(&r);
        assert!(
            [201, 401, 409].contains(&r.status),
            "{path} with a forged ticket: {r:?}"
        );
    }
    // The same at a node that does not own the room: a publisher is refused (409), a viewer
    // is served there.
    let a = nodes.get("sfu-a");
    let owned = post_sdp(&direct, &a.url("/whip/loop3"), whip_offer(), None).await;
    sessions.add(&owned);
    assert_eq!(owned.status, 201, "{owned:?}");
    let r = post_sdp(
        &via_c,
        &nodes.service_url("/whip/loop3?ticket=garbage"),
        whip_offer(),
        None,
    )
    .await;
    sessions.add(&r);
    r.assert_problem(
        409,
        "a publisher with a ticket at a node that does not own the room",
    );
    let r = post_sdp(
        &via_c,
        &nodes.service_url("/whep/loop3?ticket=garbage"),
        whep_offer(),
        None,
    )
    .await;
    sessions.add(&r);
    assert_eq!(
        r.status, 201,
        "a viewer with a ticket is served where it lands: {r:?}"
    );
    assert!(
        r.location
            .as_deref()
            .is_some_and(|l| l.starts_with(&nodes.get("sfu-c").url("/session/"))),
        "{r:?}"
    );

    // The lease of room "flap" moves between A and B many times a second.
    let key = fx.cluster.room_key("flap");
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU32::new(0));
    let flapper = {
        let fx = fx.clone();
        let key = key.clone();
        let (stop, flips) = (stop.clone(), flips.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = flips.load(Ordering::SeqCst);
                let owner = if n.is_multiple_of(2) {
                    "sfu-a"
                } else {
                    "sfu-b"
                };
                fx.cluster
                    .set(&key, owner, Some(Duration::from_secs(3)))
                    .await;
                flips.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Every request starts after a flip; every other one is followed after another flip (the
    // lease moved between the redirect and its target).
    let entries = ["sfu-c", "sfu-a", "sfu-b"];
    let mut redirected = 0;
    let mut seen = 0;
    for i in 0..20 {
        seen = next_flip(&flips, seen).await;
        let entry = entries[i % entries.len()];
        let client = nodes.client(Some(entry), false);
        let first = post_sdp(
            &client,
            &nodes.service_url("/whep/flap"),
            whep_offer(),
            None,
        )
        .await;
        sessions.add(&first);
        let last = if first.status == 307 {
            redirected += 1;
            let loc = first.location.clone().unwrap_or_default();
            assert!(
                loc.contains("ticket="),
                "request {i} via {entry}: {first:?}"
            );
            if i % 2 == 1 {
                seen = next_flip(&flips, seen).await;
            }
            let second = post_sdp(&client, &loc, whep_offer(), None).await;
            sessions.add(&second);
            assert!(
                !(300..400).contains(&second.status),
                "request {i} via {entry} redirected twice: {first:?} then {second:?}"
            );
            second
        } else {
            first
        };
        assert_eq!(last.status, 201, "request {i} via {entry}: {last:?}");
    }
    stop.store(true, Ordering::SeqCst);
    flapper.await.unwrap();
    fx.cluster.del(&key).await;
    println!(
        "flapping: {} lease flips, {redirected} of 20 requests redirected once",
        flips.load(Ordering::SeqCst)
    );
    sessions.delete_all().await;
}

// ---------------------------------------------------------------------------------------------
// 5.

/// A TCP connection to `to` from `from` (a loopback address of the test's choosing).
async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
        .await
        .expect("connect timed out")
        .unwrap()
}

fn proxy_header(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, dest),
    )
    .build()
    .unwrap()
}

/// Sends `bytes`, then reads until the server closes: the response, or nothing when the
/// server closed without one (a write or read may then fail with a reset).
async fn exchange(mut stream: TcpStream, bytes: &[u8]) -> String {
    let _ = stream.write_all(bytes).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the server neither answered nor closed");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8_lossy(&got).into_owned()
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

/// Sends `bytes` over TLS and reads the response until the server closes (a missing
/// close_notify is not an error here).
async fn tls_exchange(
    mut stream: tokio_rustls::client::TlsStream<TcpStream>,
    bytes: &[u8],
) -> String {
    stream.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server neither answered nor closed");
    String::from_utf8_lossy(&got).into_owned()
}

fn http_post(host: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn response_location(response: &str) -> Option<String> {
    response.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_owned())
    })
}

async fn wait_log_line(nodes: &Nodes, node: &str, needles: &[&str]) {
    let n = nodes.get(node);
    let deadline = Deadline::new(
        format!("a line with {needles:?} in {node}'s log"),
        Duration::from_secs(5),
    );
    while !n
        .log_text()
        .lines()
        .any(|l| needles.iter().all(|s| l.contains(s)))
    {
        deadline.tick(|| n.tail()).await;
    }
}

async fn proxy_v2(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let a = nodes.get("sfu-a");
    let https = nodes.client(None, false);

    // From the trusted proxy: the header's source is the client of the session.
    let mut bytes = proxy_header("203.0.113.9:40000".parse().unwrap(), a.http);
    bytes.extend(http_post(&a.hostname, "/whep/px1", &whep_offer()));
    let got = exchange(tcp_from(PROXY_IP, a.http).await, &bytes).await;
    assert!(got.starts_with("HTTP/1.1 201"), "{got}\n{}", a.tail());
    wait_log_line(
        nodes,
        "sfu-a",
        &["session created", "px1", "client=Some(203.0.113.9)"],
    )
    .await;
    let session = response_location(&got).expect("Location");
    // Absolute, on the name the client used (plain HTTP here).
    assert!(
        session.starts_with(&format!("http://{}/session/", a.hostname)),
        "{session}"
    );
    assert_eq!(
        delete(
            &https,
            &session.replacen(&format!("http://{}", a.hostname), &a.url(""), 1),
            None
        )
        .await,
        200
    );

    // ...and of a redirect (through the service name).
    let mut bytes = proxy_header("203.0.113.10:40001".parse().unwrap(), a.http);
    bytes.extend(http_post(SERVICE, "/whep/px2", &whep_offer()));
    let got = exchange(tcp_from(PROXY_IP, a.http).await, &bytes).await;
    assert!(got.starts_with("HTTP/1.1 307"), "{got}\n{}", a.tail());
    wait_log_line(
        nodes,
        "sfu-a",
        &["redirected", "px2", "client=Some(203.0.113.10)"],
    )
    .await;

    // The path of a TLS-passthrough proxy: the header, then TLS on the HTTPS port.
    let mut tcp = tcp_from(PROXY_IP, a.https).await;
    tcp.write_all(&proxy_header(
        "203.0.113.13:40003".parse().unwrap(),
        a.https,
    ))
    .await
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from(SERVICE).unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tls_connector(&nodes.ca_pem).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .unwrap_or_else(|e| panic!("TLS after a PROXY header: {e}\n{}", a.tail()));
    let got = tls_exchange(tls, &http_post(SERVICE, "/whep/px6", &whep_offer())).await;
    assert!(got.starts_with("HTTP/1.1 307"), "{got}\n{}", a.tail());
    wait_log_line(
        nodes,
        "sfu-a",
        &["redirected", "px6", "client=Some(203.0.113.13)"],
    )
    .await;

    // From the trusted source without a header: closed, no answer.
    let plain = http_post(&a.hostname, "/whep/px3", &whep_offer());
    let got = exchange(tcp_from(PROXY_IP, a.http).await, &plain).await;
    assert!(got.is_empty(), "trusted source without a header: {got}");
    // From an untrusted source with a header: closed, no answer.
    let mut bytes = proxy_header("203.0.113.11:40002".parse().unwrap(), a.http);
    bytes.extend(http_post(&a.hostname, "/whep/px4", &whep_offer()));
    let got = exchange(tcp_from(UNTRUSTED_IP, a.http).await, &bytes).await;
    assert!(got.is_empty(), "untrusted source with a header: {got}");
    // Malformed headers from the trusted source: version 1 in a v2 header; an unknown address
    // family.
    let signature = b"\r\n\r\n\0\r\nQUIT\n";
    for (what, fixed) in [
        ("version 1", [0x11u8, 0x11, 0x00, 0x0c]),
        ("address family 5", [0x21u8, 0x51, 0x00, 0x0c]),
    ] {
        let mut bytes = signature.to_vec();
        bytes.extend_from_slice(&fixed);
        bytes.extend_from_slice(&[203, 0, 113, 12, 127, 0, 0, 2, 0x9c, 0x42, 0, 80]);
        bytes.extend(http_post(&a.hostname, "/whep/px5", &whep_offer()));
        let got = exchange(tcp_from(PROXY_IP, a.http).await, &bytes).await;
        assert!(got.is_empty(), "malformed header ({what}): {got}");
    }
    // An untrusted source without a header is served as usual.
    let got = exchange(
        tcp_from(UNTRUSTED_IP, a.http).await,
        b"GET /healthz HTTP/1.1\r\nHost: sfu-a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        !a.log_text().contains("px3") && !a.log_text().contains("px4"),
        "a refused connection's request reached the handlers\n{}",
        a.tail()
    );
}

// ---------------------------------------------------------------------------------------------
// 6.

async fn publisher_joins_waiting_viewers(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let (a, b) = (nodes.get("sfu-a"), nodes.get("sfu-b"));
    let key = fx.cluster.room_key("wait");
    // A viewer waits on A for a room nobody publishes to: A holds it for viewers.
    let mut v = connect(
        &a.url("/whep/wait"),
        Role::View,
        peer_opts(nodes, None, None),
        nodes,
    )
    .await;
    assert_eq!(fx.cluster.get(&key).await.as_deref(), Some("sfu-a~viewers"));
    wait_listed(
        nodes,
        &nodes.client(None, false),
        &b.url("/api/rooms"),
        None,
        "wait",
        "sfu-a",
    )
    .await;
    // A publisher at B's own name is sent to the viewers.
    let r = post_sdp(
        &nodes.client(None, false),
        &b.url("/whip/wait"),
        whip_offer(),
        None,
    )
    .await;
    assert_eq!(r.status, 307, "{r:?}");
    assert!(
        r.location
            .as_deref()
            .is_some_and(|l| l.starts_with(&a.url("/whip/wait?ticket="))),
        "{r:?}"
    );
    // A viewer through the service name entering at C too.
    let r = post_sdp(
        &nodes.client(Some("sfu-c"), false),
        &nodes.service_url("/whep/wait"),
        whep_offer(),
        None,
    )
    .await;
    assert!(
        r.status == 307
            && r.location
                .as_deref()
                .is_some_and(|l| l.starts_with(&a.url("/whep/wait?ticket="))),
        "{r:?}"
    );
    // So is a publisher through the service name entering at B; the viewer gets its stream.
    let spec = StreamSpec {
        fill: 0x5c,
        ..StreamSpec::default()
    };
    let mut p = connect(
        &nodes.service_url("/whip/wait"),
        Role::Publish(spec),
        peer_opts(nodes, Some("sfu-b"), None),
        nodes,
    )
    .await;
    assert!(
        p.session.url.starts_with(&a.url("/session/")),
        "{}",
        p.session.url
    );
    wait_connected(&mut p, "publisher of the waiting room", nodes).await;
    if let Err(e) = v
        .wait_until("the publisher's video at the waiting viewer", WAIT, |s| {
            s.video.last_fill == 0x5c
        })
        .await
    {
        panic!("{e}: {:?}\n{}", v.stats(), nodes.tails());
    }
    assert_eq!(fx.cluster.get(&key).await.as_deref(), Some("sfu-a"));
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
}

// ---------------------------------------------------------------------------------------------
// 7.

async fn draining(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let c = nodes.get("sfu-c");
    let client = nodes.client(None, false);
    let p = connect(
        &c.url("/whip/r4"),
        Role::Publish(StreamSpec::default()),
        peer_opts(nodes, None, None),
        nodes,
    )
    .await;
    let mut v = connect(
        &c.url("/whep/r4"),
        Role::View,
        peer_opts(nodes, None, None),
        nodes,
    )
    .await;
    wait_media(&mut v, "60 video packets on C", 60, nodes).await;

    c.sigterm();
    // C says it is not ready...
    let deadline = Deadline::new("C's /readyz to answer 503", Duration::from_secs(10));
    loop {
        let status = client
            .get(c.url("/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if matches!(status, Ok(503)) {
            break;
        }
        deadline
            .tick(|| format!("last: {status:?}\n{}", c.tail()))
            .await;
    }
    // ...and sends new sessions to A or B: through the service name and through its own name.
    let others = [nodes.get("sfu-a"), nodes.get("sfu-b")];
    let via_c = nodes.client(Some("sfu-c"), false);
    for (url, room) in [
        (nodes.service_url("/whip/r4new"), "r4new"),
        (c.url("/whip/r4own"), "r4own"),
    ] {
        let r = post_sdp(&via_c, &url, whip_offer(), None).await;
        assert_eq!(r.status, 307, "{url} while C drains: {r:?}\n{}", c.tail());
        let loc = r.location.clone().unwrap_or_default();
        assert!(
            others
                .iter()
                .any(|n| loc.starts_with(&n.url(&format!("/whip/{room}?ticket=")))),
            "{url} while C drains goes to A or B: {r:?}"
        );
    }
    // The live viewer keeps getting media.
    let before = v.stats().video.packets;
    wait_media(
        &mut v,
        "60 more video packets while C drains",
        before + 60,
        nodes,
    )
    .await;
    assert!(
        c.exited().is_none(),
        "C stopped with live sessions\n{}",
        c.tail()
    );

    // Once its sessions end, C leaves the cluster and exits.
    assert_eq!(v.delete().await.unwrap(), 200);
    assert_eq!(p.delete().await.unwrap(), 200);
    let deadline = Deadline::new("C to exit once drained", Duration::from_secs(15));
    let status = loop {
        if let Some(s) = c.exited() {
            break s;
        }
        deadline.tick(|| c.tail()).await;
    };
    assert!(status.success(), "C exited with {status}\n{}", c.tail());
    // Leaving: C's record is deleted (not left to expire) and it says so.
    let record = fx.cluster.get(&fx.cluster.node_key("sfu-c")).await;
    assert!(
        record.is_none() && c.log_text().contains("left the cluster"),
        "C exited without leaving the cluster (record: {record:?})\n{}",
        c.tail()
    );
}

// ---------------------------------------------------------------------------------------------
// 8.

async fn dead_owners_room_moves(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let (a, b) = (nodes.get("sfu-a"), nodes.get("sfu-b"));
    let direct = nodes.client(None, false);
    let via_a = nodes.client(Some("sfu-a"), false);
    let mut sessions = Sessions::new(&direct);
    let r = post_sdp(&direct, &b.url("/whip/orphan"), whip_offer(), None).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = post_sdp(
        &via_a,
        &nodes.service_url("/whip/orphan"),
        whip_offer(),
        None,
    )
    .await;
    assert!(
        r.status == 307
            && r.location
                .as_deref()
                .is_some_and(|l| l.starts_with(&b.url("/whip/orphan?ticket="))),
        "{r:?}"
    );
    // B crashes. Its node record and its room lease expire on their own (3 s), each at its
    // own time: here the record goes first (as when the heartbeat wrote it before the lease),
    // made certain by deleting it, while the room lease lives on for up to 3 s.
    b.kill();
    let killed = Instant::now();
    fx.cluster.del(&fx.cluster.node_key("sfu-b")).await;
    // Until the lease expires a publisher may be sent to B, or refused; a 307 to a node that
    // then refuses the publisher (409) is a dead end for the client.
    let deadline = Deadline::new(
        "the room of a killed node to be served by a live one",
        Duration::from_secs(10),
    );
    let mut to_dead = 0;
    let mut dead_ends = Vec::new();
    loop {
        let r = post_sdp(
            &via_a,
            &nodes.service_url("/whip/orphan"),
            whip_offer(),
            None,
        )
        .await;
        let loc = r.location.clone().unwrap_or_default();
        if r.status == 307 && loc.starts_with(&a.url("/whip/orphan?ticket=")) {
            let followed = post_sdp(&direct, &loc, whip_offer(), None).await;
            sessions.add(&followed);
            if followed.status == 201 {
                break;
            }
            dead_ends.push(format!(
                "{:.1} s after the kill: 307 to {loc}, then {} {}",
                killed.elapsed().as_secs_f64(),
                followed.status,
                followed.body
            ));
        } else if r.status == 307 && loc.starts_with(&b.url("/")) {
            to_dead += 1;
        } else {
            assert!(
                [409, 503].contains(&r.status),
                "while the dead node's lease lives: {r:?}"
            );
        }
        deadline
            .tick(|| format!("dead ends: {dead_ends:#?}\n{}", a.tail()))
            .await;
    }
    println!(
        "dead owner: A serves its room {:.1} s after the kill ({to_dead} redirects to the dead \
         node, {} redirects to A refused there, before)",
        killed.elapsed().as_secs_f64(),
        dead_ends.len()
    );
    assert_eq!(
        fx.cluster
            .get(&fx.cluster.room_key("orphan"))
            .await
            .as_deref(),
        Some("sfu-a")
    );
    sessions.delete_all().await;
    assert!(
        dead_ends.is_empty(),
        "A redirected publishers to itself while the dead node's room lease still held the \
         room, and refused them there: {dead_ends:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9.

async fn redis_outage(fx: Arc<Fixture>) {
    let nodes = &fx.nodes;
    let a = nodes.get("sfu-a");
    let direct = nodes.client(None, false);
    fx.cluster.kill_redis();
    let killed = Instant::now();
    // A notices (its heartbeat fails) and says it is not ready...
    let deadline = Deadline::new(
        "A's /readyz to answer 503 without Redis",
        Duration::from_secs(15),
    );
    loop {
        let status = direct
            .get(a.url("/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if matches!(status, Ok(503)) {
            break;
        }
        deadline
            .tick(|| format!("last: {status:?}\n{}", a.tail()))
            .await;
    }
    println!(
        "Redis outage: A not ready {:.1} s after Redis died",
        killed.elapsed().as_secs_f64()
    );
    // ...but keeps serving sessions asked of it by name (leases are taken when Redis is back).
    let r = post_sdp(&direct, &a.url("/whep/outage"), whep_offer(), None).await;
    assert_eq!(
        r.status, 201,
        "a viewer at A's own name during a Redis outage: {r:?}"
    );
    assert_eq!(
        delete(&direct, r.location.as_deref().unwrap(), None).await,
        200
    );
    let r = post_sdp(&direct, &a.url("/whip/outage2"), whip_offer(), None).await;
    assert_eq!(
        r.status, 201,
        "a publisher at A's own name during a Redis outage: {r:?}"
    );
    assert_eq!(
        delete(&direct, r.location.as_deref().unwrap(), None).await,
        200
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens and tickets

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_stand_in_for_the_token() {
    use deadsfu_server::SessionRole;

    let started = Instant::now();
    let cluster = Cluster::start("deadsfu-routing-tokens-", &names()).await;
    let nodes = Nodes::start(
        &cluster,
        vec![
            NodeSpec {
                name: "sfu-a",
                ip: TA_IP,
                extra: vec![],
            },
            NodeSpec {
                name: "sfu-b",
                ip: TB_IP,
                extra: vec![],
            },
        ],
        &strings(&["--bearer-token", TOKEN]),
    )
    .await;
    let (a, b) = (nodes.get("sfu-a"), nodes.get("sfu-b"));
    let direct = nodes.client(None, false);
    let token = Some(TOKEN);

    // Room t1 is A's.
    let mut p = connect(
        &a.url("/whip/t1"),
        Role::Publish(StreamSpec::default()),
        peer_opts(&nodes, None, token),
        &nodes,
    )
    .await;
    wait_connected(&mut p, "publisher of t1 on A", &nodes).await;
    wait_listed(&nodes, &direct, &b.url("/api/rooms"), token, "t1", "sfu-a").await;

    // Without the token (and without a ticket) A refuses.
    post_sdp(&direct, &a.url("/whep/t1"), whep_offer(), None)
        .await
        .assert_problem(401, "no token, no ticket");

    // A viewer with the token through the service name entering at B: the redirect to A
    // crosses origins, reqwest drops Authorization, the ticket gets it in.
    let mut v = connect(
        &nodes.service_url("/whep/t1"),
        Role::View,
        peer_opts(&nodes, Some("sfu-b"), token),
        &nodes,
    )
    .await;
    assert!(
        v.session.url.starts_with(&a.url("/session/")),
        "{}",
        v.session.url
    );
    wait_media(
        &mut v,
        "60 video packets after a ticket redirect",
        60,
        &nodes,
    )
    .await;
    assert_eq!(v.delete().await.unwrap(), 200);
    // A publisher of a new room: B sends it to its own name, which is another origin too.
    let mut p2 = connect(
        &nodes.service_url("/whip/t2"),
        Role::Publish(StreamSpec::default()),
        peer_opts(&nodes, Some("sfu-b"), token),
        &nodes,
    )
    .await;
    assert!(
        p2.session.url.starts_with(&b.url("/session/")),
        "{}",
        p2.session.url
    );
    wait_connected(&mut p2, "publisher of t2 after a ticket redirect", &nodes).await;
    assert_eq!(p2.delete().await.unwrap(), 200);

    // The tickets themselves: a viewer's ticket for t1 (B sends the viewer to A)...
    let via_b = nodes.client(Some("sfu-b"), false);
    let r = post_sdp(&via_b, &nodes.service_url("/whep/t1"), whep_offer(), token).await;
    assert_eq!(r.status, 307, "{r:?}");
    let view_loc = r.location.clone().unwrap();
    let view_ticket = query_param(&view_loc, "ticket").expect("ticket");
    // ...opens t1 for a viewer without the token.
    let ok = post_sdp(&direct, &view_loc, whep_offer(), None).await;
    assert_eq!(ok.status, 201, "{ok:?}");
    assert_eq!(
        delete(&direct, ok.location.as_deref().unwrap(), token).await,
        200
    );
    // The same URL without the ticket does not.
    post_sdp(&direct, &with_ticket(&view_loc, None), whep_offer(), None)
        .await
        .assert_problem(401, "the ticket's URL without the ticket");
    // One character of the signature changed.
    let (payload, tag) = view_ticket.split_once('.').expect("payload.tag");
    let mut tag: Vec<char> = tag.chars().collect();
    tag[3] = if tag[3] == 'A' { 'B' } else { 'A' };
    let altered = format!("{payload}.{}", tag.iter().collect::<String>());
    post_sdp(
        &direct,
        &with_ticket(&view_loc, Some(&altered)),
        whep_offer(),
        None,
    )
    .await
    .assert_problem(401, "altered signature");
    // Another room.
    let other_room = format!("{}/whep/t9?ticket={view_ticket}", a.public_url);
    post_sdp(&direct, &other_room, whep_offer(), None)
        .await
        .assert_problem(401, "a ticket for t1 used for t9");
    // Another role: the viewer's ticket for publishing.
    let publish = format!("{}/whip/t1?ticket={view_ticket}", a.public_url);
    post_sdp(&direct, &publish, whip_offer(), None)
        .await
        .assert_problem(401, "a viewer's ticket used to publish");
    // A publisher's ticket (new room t3: B takes it and sends the publisher to itself)...
    let r = post_sdp(&via_b, &nodes.service_url("/whip/t3"), whip_offer(), token).await;
    assert_eq!(r.status, 307, "{r:?}");
    let pub_loc = r.location.clone().unwrap();
    assert!(pub_loc.starts_with(&b.url("/whip/t3?ticket=")), "{pub_loc}");
    let pub_ticket = query_param(&pub_loc, "ticket").unwrap();
    // ...used to view.
    let view = format!("{}/whep/t3?ticket={pub_ticket}", b.public_url);
    post_sdp(&direct, &view, whep_offer(), None)
        .await
        .assert_problem(401, "a publisher's ticket used to view");

    // Expired: signed with the cluster's ticket secret (from an sfu bundle) 31 s in the past.
    let url = deadsfu_cluster::JoinUrl::parse(&a.bundle_url).unwrap();
    let bundle = deadsfu_cluster::bundle_fetch::fetch_bundle(&url)
        .await
        .expect("sfu bundle");
    let secret = bundle
        .ticket_secret()
        .expect("the sfu bundle has a ticket secret");
    let key = deadsfu_node::ticket::TicketKey::new(secret.expose().as_bytes());
    let expired = key.issue(
        "t3",
        SessionRole::Publish,
        unix_now() - deadsfu_node::ticket::TICKET_LIFETIME_SECS - 2,
    );
    let r = post_sdp(
        &direct,
        &with_ticket(&pub_loc, Some(&expired)),
        whip_offer(),
        None,
    )
    .await;
    r.assert_problem(401, "an expired ticket");
    assert!(r.body.contains("expired"), "{r:?}");
    // The same key's fresh ticket is good (so the 401 above is the expiry's).
    let fresh = key.issue("t3", SessionRole::Publish, unix_now());
    let ok = post_sdp(
        &direct,
        &with_ticket(&pub_loc, Some(&fresh)),
        whip_offer(),
        None,
    )
    .await;
    assert_eq!(ok.status, 201, "{ok:?}");
    assert_eq!(
        delete(&direct, ok.location.as_deref().unwrap(), token).await,
        200
    );

    // A forged ticket through the service name: refused there, not redirected.
    let r = post_sdp(
        &via_b,
        &nodes.service_url("/whep/t1?ticket=garbage"),
        whep_offer(),
        None,
    )
    .await;
    r.assert_problem(401, "a forged ticket through the service name");

    assert_eq!(p.delete().await.unwrap(), 200);
    println!(
        "tickets_stand_in_for_the_token: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
