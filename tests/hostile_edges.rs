//! Hostile traffic at the edges of an SFU (HTTP and FTL control), each attack on loopback,
//! bounded in size and time, with a legitimate client beside it that must keep working:
//!
//! - slowloris: connections that send a header byte now and then are closed by the header
//!   deadline; a normal request is served while they are open;
//! - a connection flood from one IP beyond its limit is refused and counted; a client from
//!   another loopback IP is served;
//! - event streams held open: the per-IP (429) and total (503) caps answer problem+json with
//!   Retry-After; a subscriber from another IP gets its events;
//! - `Transfer-Encoding` with `Content-Length` is refused with 400 (problem+json);
//! - FTL control floods (idle connections from many IPs filling every slot, fast reconnects from
//!   one IP): a real FTL client still streams, refusals are counted in `/metrics`, and the log
//!   has a few aggregate lines, not one per connection.
//!
//! Attackers bind distinct loopback addresses (127.0.0.0/8 is all local on Linux).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{FtlPush, Sfu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Every wait in these tests ends within this, or the test fails.
const WAIT: Duration = Duration::from_secs(20);

fn addr_of(sfu: &Sfu) -> SocketAddr {
    sfu.base
        .trim_start_matches("http://")
        .parse()
        .expect("base is http://ip:port")
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// Waits until the server closes `stream` (end of input or reset); returns how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

async fn metric(sfu: &Sfu, line_start: &str) -> u64 {
    let text = reqwest::get(sfu.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in\n{text}"))
}

async fn healthz_from(sfu: &Sfu, ip: Ipv4Addr) -> u16 {
    client_from(ip)
        .get(sfu.url("/healthz"))
        .send()
        .await
        .expect("legitimate request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_by_the_header_deadline() {
    const SLOW: usize = 200;
    let sfu = Sfu::start(&["--header-timeout", "3"]);
    let addr = addr_of(&sfu);
    let started = Instant::now();
    let mut attackers = Vec::new();
    for n in 0..SLOW {
        // Spread over a few addresses so the per-IP connection limit is not what stops them.
        let ip = Ipv4Addr::new(127, 0, 2, 1 + (n % 4) as u8);
        let mut stream = connect_from(ip, addr).await.expect("slowloris connects");
        stream.write_all(b"GET / HTTP/1.1\r\nX-A: ").await.unwrap();
        attackers.push(tokio::spawn(async move {
            // One more header byte every 500 ms, until the server closes the connection.
            let start = Instant::now();
            let mut buf = [0u8; 256];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return Some(start.elapsed()),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if stream.write_all(b"a").await.is_err() {
                            return Some(start.elapsed());
                        }
                    }
                }
                if start.elapsed() > WAIT {
                    return None;
                }
            }
        }));
    }
    let opened_in = started.elapsed();
    // A legitimate client is served while they are all open.
    assert_eq!(healthz_from(&sfu, Ipv4Addr::new(127, 0, 0, 1)).await, 200);
    let open_at_legit = attackers.iter().filter(|a| !a.is_finished()).count();
    let mut held = Vec::new();
    for attacker in attackers {
        held.push(
            attacker
                .await
                .unwrap()
                .expect("slowloris connection closed by the server"),
        );
    }
    let longest = held.iter().max().unwrap();
    eprintln!(
        "slowloris: {SLOW} connections opened in {opened_in:?}, {open_at_legit} open while the \
         legitimate request was served; all closed, the longest held {longest:?}"
    );
    assert!(open_at_legit >= SLOW * 9 / 10, "{open_at_legit}");
    assert!(*longest < Duration::from_secs(6), "{longest:?}");
    // And after: still served.
    assert_eq!(healthz_from(&sfu, Ipv4Addr::new(127, 0, 0, 1)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_beyond_the_per_ip_limit_is_refused_and_counted() {
    const LIMIT: usize = 20;
    const FLOOD: usize = 100;
    let sfu = Sfu::start(&[
        "--max-connections-per-ip",
        &LIMIT.to_string(),
        "--header-timeout",
        "30",
    ]);
    let addr = addr_of(&sfu);
    let attacker = Ipv4Addr::new(127, 0, 3, 1);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..FLOOD {
        let Ok(mut stream) = connect_from(attacker, addr).await else {
            refused += 1;
            continue;
        };
        // Refused connections are closed at once; admitted ones stay open, sending nothing.
        if closed_within(&mut stream, Duration::from_millis(300))
            .await
            .is_some()
        {
            refused += 1;
        } else {
            held.push(stream);
        }
    }
    eprintln!(
        "connection flood: {FLOOD} from one IP, {} held, {refused} closed at once",
        held.len()
    );
    assert_eq!(held.len(), LIMIT);
    assert_eq!(refused, FLOOD - LIMIT);
    // Another client is served while the attacker holds its limit.
    assert_eq!(healthz_from(&sfu, Ipv4Addr::new(127, 0, 0, 2)).await, 200);
    let counted = metric(
        &sfu,
        "deadsfu_http_refused_total{reason=\"connections_per_ip\"}",
    )
    .await;
    assert_eq!(counted, (FLOOD - LIMIT) as u64);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_caps_answer_problem_json_and_others_are_served() {
    let sfu = Sfu::start(&[
        "--max-event-streams-per-ip",
        "3",
        "--max-event-streams",
        "6",
    ]);
    let events = sfu.url("/api/rooms/events");
    let holder = client_from(Ipv4Addr::new(127, 0, 4, 1));
    let mut held = Vec::new();
    for _ in 0..3 {
        let res = holder.get(&events).send().await.unwrap();
        assert_eq!(res.status(), 200);
        held.push(res);
    }
    let check_problem = |res: reqwest::Response, status: u16| async move {
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        assert!(res.headers().contains_key("retry-after"));
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["status"], status);
    };
    // Over the per-IP cap: 429.
    check_problem(holder.get(&events).send().await.unwrap(), 429).await;
    // A subscriber from another IP is served and gets the room list at once.
    let legit = client_from(Ipv4Addr::new(127, 0, 4, 2));
    let mut res = legit.get(&events).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let first = tokio::time::timeout(WAIT, res.chunk())
        .await
        .expect("first event in time")
        .unwrap()
        .expect("an event");
    assert!(
        String::from_utf8_lossy(&first).contains("event: rooms"),
        "{first:?}"
    );
    held.push(res);
    // Fill the total cap from two more IPs; the next subscriber gets 503.
    for ip in [Ipv4Addr::new(127, 0, 4, 3), Ipv4Addr::new(127, 0, 4, 3)] {
        let res = client_from(ip).get(&events).send().await.unwrap();
        assert_eq!(res.status(), 200);
        held.push(res);
    }
    check_problem(
        client_from(Ipv4Addr::new(127, 0, 4, 4))
            .get(&events)
            .send()
            .await
            .unwrap(),
        503,
    )
    .await;
    assert_eq!(
        metric(
            &sfu,
            "deadsfu_http_refused_total{reason=\"event_streams_per_ip\"}"
        )
        .await,
        1
    );
    assert_eq!(
        metric(&sfu, "deadsfu_http_refused_total{reason=\"event_streams\"}").await,
        1
    );
    assert_eq!(metric(&sfu, "deadsfu_event_streams ").await, 6);
    // Other routes are not affected.
    assert_eq!(healthz_from(&sfu, Ipv4Addr::new(127, 0, 4, 1)).await, 200);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_with_content_length_is_refused_with_400() {
    let sfu = Sfu::start(&[]);
    let addr = addr_of(&sfu);
    // A well-framed request first (pipelined), then the ambiguous one, then one it would hide.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: sfu\r\n\r\n\
              POST /whip/room HTTP/1.1\r\nHost: sfu\r\nContent-Length: 5\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
              GET /healthz?smuggled HTTP/1.1\r\nHost: sfu\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let responses: Vec<&str> = answer.matches("HTTP/1.1 ").collect();
    assert_eq!(responses.len(), 2, "{answer}");
    let second = &answer[answer.rfind("HTTP/1.1 ").unwrap()..];
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(second.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(second.contains("application/problem+json"), "{answer}");
    assert!(
        second.contains("Transfer-Encoding and Content-Length"),
        "{answer}"
    );
    assert_eq!(
        metric(
            &sfu,
            "deadsfu_http_refused_total{reason=\"ambiguous_framing\"}"
        )
        .await,
        1
    );
    // Either header alone is fine.
    let res = reqwest::Client::new()
        .post(sfu.url("/whip/room"))
        .header("content-type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert!(!res.text().await.unwrap().contains("Ambiguous"));
}

/// Aggregate refusal lines in the SFU's log.
fn refusal_lines(sfu: &Sfu) -> Vec<String> {
    sfu.logs()
        .into_iter()
        .filter(|l| l.contains("refused (counts since"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_control_floods_do_not_keep_a_streamer_out() {
    const SLOTS: usize = 64;
    const IDLE_IPS: u8 = 40;
    const IDLE_PER_IP: usize = 10;
    const RECONNECTS: usize = 500;
    let key = "4242-floodproofsecret";
    let sfu = Sfu::start(&[
        "--ftl-key",
        key,
        "--ftl-max-connections",
        &SLOTS.to_string(),
        "--ftl-handshake-timeout",
        "4",
    ]);
    let ftl: SocketAddr = format!("127.0.0.1:{}", sfu.ftl_port).parse().unwrap();
    // Idle connections from many IPs: more than every slot, 2 over the per-IP limit (8) each.
    let mut idle = Vec::new();
    for ip in 0..IDLE_IPS {
        for _ in 0..IDLE_PER_IP {
            if let Ok(stream) = connect_from(Ipv4Addr::new(127, 0, 5, 1 + ip), ftl).await {
                idle.push(stream);
            }
        }
    }
    // Fast reconnects from one IP: connect, close, again.
    let reconnector = Ipv4Addr::new(127, 0, 6, 1);
    for _ in 0..RECONNECTS {
        if let Ok(stream) = connect_from(reconnector, ftl).await {
            drop(stream);
        }
    }
    // Every slot is taken by an idle connection now; a real streamer still gets in (the
    // oldest unauthenticated connection makes room) and streams its 4 s of media.
    let (ok, log) = FtlPush::start(sfu.ftl_port, key, &[]).wait(WAIT);
    assert!(ok, "ftl-push failed during the flood:\n{log}");
    let per_ip = metric(
        &sfu,
        "deadsfu_ftl_refused_total{reason=\"per_ip_connections\"}",
    )
    .await;
    let rate = metric(&sfu, "deadsfu_ftl_refused_total{reason=\"connect_rate\"}").await;
    let evicted = metric(&sfu, "deadsfu_ftl_refused_total{reason=\"evicted\"}").await;
    // Every idle connection is closed: refused, evicted, or by the handshake deadline.
    let mut closed = 0;
    for stream in &mut idle {
        if closed_within(stream, WAIT).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, idle.len());
    let timeouts = metric(
        &sfu,
        "deadsfu_ftl_refused_total{reason=\"handshake_timeout\"}",
    )
    .await;
    let lines = refusal_lines(&sfu);
    eprintln!(
        "FTL flood: {} idle connections held, {RECONNECTS} reconnects; refused per_ip={per_ip} \
         connect_rate={rate} evicted={evicted} handshake_timeout={timeouts}; {} aggregate log \
         lines:\n{}",
        idle.len(),
        lines.len(),
        lines.join("\n")
    );
    let idle_over_limit = IDLE_IPS as usize * (IDLE_PER_IP - 8);
    assert!(per_ip as usize >= idle_over_limit, "{per_ip}");
    // 10 of burst, then 2 a second: nearly all reconnects are refused (by rate, or by the
    // per-IP cap while the server has not yet seen the previous ones close).
    assert!(
        (rate + per_ip) as usize >= idle_over_limit + RECONNECTS - 40,
        "{rate} {per_ip}"
    );
    assert!(
        evicted as usize >= IDLE_IPS as usize * 8 - SLOTS,
        "{evicted}"
    );
    assert!(timeouts > 0);
    assert!(
        !lines.is_empty() && lines.len() <= 6,
        "refusals must be logged in aggregate: {lines:#?}"
    );
    assert!(
        sfu.logs().len() < 200,
        "log grew with the flood: {} lines",
        sfu.logs().len()
    );
}
