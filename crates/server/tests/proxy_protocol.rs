//! PROXY protocol v2 on the real accept loop (`deadsfu_server::serve`, plain HTTP): a trusted
//! source's header names the client, a trusted source without a valid header is refused, an
//! untrusted source sending one is refused, and untrusted plain requests are served as before.
//! Clients bind to distinct loopback addresses (127.0.0.10 trusted, 127.0.0.11 not).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use deadsfu_server::{HttpAdmission, HttpLimits, ProxyPolicy, serve};
use ppp::v2::{Addresses, Builder, Command, Protocol, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const TRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
const UNTRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// Every step of a test finishes well within this, or the test fails.
const STEP: Duration = Duration::from_secs(10);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: sfu\r\nConnection: close\r\n\r\n";

struct Server {
    addr: SocketAddr,
    admission: Arc<HttpAdmission>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/",
            get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move { client.to_string() }),
        );
        let policy = Arc::new(ProxyPolicy::new(["127.0.0.10/32".parse().unwrap()]));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let admission = HttpAdmission::new(HttpLimits::default());
        let task = tokio::spawn(serve(
            listener,
            app,
            None,
            policy,
            admission.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            admission,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self, from: Ipv4Addr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
        tokio::time::timeout(STEP, socket.connect(self.addr))
            .await
            .expect("connect timed out")
            .unwrap()
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("serve did not stop")
            .unwrap();
    }
}

fn header(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, dest),
    )
    .build()
    .unwrap()
}

/// Sends `bytes`, then reads until the server closes. The write may fail when the server has
/// already refused, and the read may end in a reset (the server closed with our bytes unread).
async fn exchange(mut stream: TcpStream, bytes: &[u8]) -> Vec<u8> {
    let _ = stream.write_all(bytes).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(STEP, stream.read_to_end(&mut got))
        .await
        .expect("the server neither answered nor closed");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    got
}

/// The body of an HTTP/1.1 response, or `None` when there was no response at all.
fn body(response: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(response);
    if !text.starts_with("HTTP/1.1 200 OK\r\n") {
        assert!(response.is_empty(), "unexpected response: {text}");
        return None;
    }
    let (_, body) = text.split_once("\r\n\r\n").expect("no end of headers");
    Some(body.to_string())
}

#[tokio::test]
async fn trusted_source_header_names_the_client() {
    let server = Server::start().await;
    let mut bytes = header("203.0.113.7:4711".parse().unwrap(), server.addr);
    bytes.extend_from_slice(REQUEST);
    let got = exchange(server.connect(TRUSTED).await, &bytes).await;
    assert_eq!(body(&got).as_deref(), Some("203.0.113.7:4711"));

    // IPv6 client, header and request in separate writes (as a proxy that writes the header,
    // then pipes the client's bytes).
    let mut stream = server.connect(TRUSTED).await;
    let dest: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    stream
        .write_all(&header("[2001:db8::7]:4711".parse().unwrap(), dest))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    tokio::task::yield_now().await;
    let got = exchange(stream, REQUEST).await;
    assert_eq!(body(&got).as_deref(), Some("[2001:db8::7]:4711"));

    // LOCAL (the proxy's own health check): the connection stands for itself.
    let stream = server.connect(TRUSTED).await;
    let local = stream.local_addr().unwrap();
    let mut bytes = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Unspecified,
        Addresses::Unspecified,
    )
    .build()
    .unwrap();
    bytes.extend_from_slice(REQUEST);
    let got = exchange(stream, &bytes).await;
    assert_eq!(body(&got), Some(local.to_string()));
    server.shutdown().await;
}

#[tokio::test]
async fn trusted_source_without_valid_header_is_refused() {
    let server = Server::start().await;
    let before = server.admission.proxy_protocol_refusals().bad_header;

    // No header at all.
    let got = exchange(server.connect(TRUSTED).await, REQUEST).await;
    assert_eq!(body(&got), None);

    // Malformed: the right signature, then version 1.
    let mut bytes = header("203.0.113.7:4711".parse().unwrap(), server.addr);
    bytes[12] = 0x11;
    bytes.extend_from_slice(REQUEST);
    let got = exchange(server.connect(TRUSTED).await, &bytes).await;
    assert_eq!(body(&got), None);

    // Malformed: claims IPv6 addresses in the length of IPv4 ones.
    let mut bytes = header("203.0.113.7:4711".parse().unwrap(), server.addr);
    bytes[13] = 0x21;
    bytes.extend_from_slice(REQUEST);
    let got = exchange(server.connect(TRUSTED).await, &bytes).await;
    assert_eq!(body(&got), None);

    // Declares more than the size bound.
    let mut bytes = header("203.0.113.7:4711".parse().unwrap(), server.addr);
    bytes[14..16].copy_from_slice(&4000u16.to_be_bytes());
    bytes.extend_from_slice(REQUEST);
    let got = exchange(server.connect(TRUSTED).await, &bytes).await;
    assert_eq!(body(&got), None);

    // PROXY v1 (text) from a trusted source: only v2 is accepted.
    let got = exchange(
        server.connect(TRUSTED).await,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 80\r\nGET / HTTP/1.1\r\nHost: sfu\r\n\r\n",
    )
    .await;
    assert_eq!(body(&got), None);

    // Counters are process-wide and tests run in parallel: at least ours were counted.
    assert!(server.admission.proxy_protocol_refusals().bad_header >= before + 5);
    server.shutdown().await;
}

#[tokio::test]
async fn untrusted_source_with_header_is_refused_and_plain_requests_work() {
    let server = Server::start().await;
    let before = server.admission.proxy_protocol_refusals().untrusted_header;

    let mut bytes = header("203.0.113.7:4711".parse().unwrap(), server.addr);
    bytes.extend_from_slice(REQUEST);
    let got = exchange(server.connect(UNTRUSTED).await, &bytes).await;
    assert_eq!(body(&got), None);

    // The signature arriving in pieces is still seen.
    let mut stream = server.connect(UNTRUSTED).await;
    stream.write_all(&bytes[..4]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = exchange(stream, &bytes[4..]).await;
    assert_eq!(body(&got), None);

    // A v1 header from an untrusted source.
    let got = exchange(
        server.connect(UNTRUSTED).await,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 80\r\nGET / HTTP/1.1\r\nHost: sfu\r\n\r\n",
    )
    .await;
    assert_eq!(body(&got), None);

    assert!(server.admission.proxy_protocol_refusals().untrusted_header >= before + 3);

    // A plain request is served with the connection's own address.
    let stream = server.connect(UNTRUSTED).await;
    let local = stream.local_addr().unwrap();
    assert_eq!(local.ip(), IpAddr::V4(UNTRUSTED));
    let got = exchange(stream, REQUEST).await;
    assert_eq!(body(&got), Some(local.to_string()));

    // Also one that starts with an empty line (allowed before the request line).
    let stream = server.connect(UNTRUSTED).await;
    let local = stream.local_addr().unwrap();
    let mut bytes = b"\r\n".to_vec();
    bytes.extend_from_slice(REQUEST);
    let got = exchange(stream, &bytes).await;
    assert_eq!(body(&got), Some(local.to_string()));
    server.shutdown().await;
}

#[tokio::test]
async fn no_trusted_sources_serves_everyone_as_themselves() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/",
        get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move { client.to_string() }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        app,
        None,
        Arc::new(ProxyPolicy::default()),
        HttpAdmission::new(HttpLimits::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    let stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let got = exchange(stream, REQUEST).await;
    assert_eq!(body(&got), Some(local.to_string()));

    let mut bytes = header("203.0.113.7:4711".parse().unwrap(), addr);
    bytes.extend_from_slice(REQUEST);
    let got = exchange(TcpStream::connect(addr).await.unwrap(), &bytes).await;
    assert_eq!(body(&got), None);

    let _ = stop.send(());
    tokio::time::timeout(STEP, task).await.unwrap().unwrap();
}
