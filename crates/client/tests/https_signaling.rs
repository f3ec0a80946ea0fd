//! Signaling over HTTPS with a caller's reqwest client: a test root CA and a host override,
//! against a tiny TLS server on 127.0.0.2 that answers like a WHIP endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use deadsfu_client::signaling::Signaling;
use deadsfu_client::{ClientError, Peer, PeerOptions, Role, StreamSpec};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    request_line: String,
    authorization: Option<String>,
}

/// A TLS server for `sfu.test` (certificate signed by a fresh test CA) answering every
/// request with `status` and a `Location` header. Returns its address, the CA's PEM and what
/// it saw.
async fn server(status: &'static str) -> (SocketAddr, String, Arc<Mutex<Vec<Seen>>>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "deadsfu-client test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["sfu.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let mut reader = BufReader::new(tls);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut length, mut authorization) = (0usize, None);
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).await.unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let (name, value) = line.split_once(':').unwrap();
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "authorization" => authorization = Some(value.trim().to_owned()),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    log.lock().unwrap().push(Seen {
                        sni: sni.clone(),
                        request_line: request_line.trim_end().to_owned(),
                        authorization,
                    });
                    let answer = "v=0\r\n";
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/sdp\r\n\
                         Location: /whip/room/session1\r\nETag: \"e1\"\r\n\
                         Content-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    reader
                        .get_mut()
                        .write_all(response.as_bytes())
                        .await
                        .unwrap();
                }
            });
        }
    });
    (addr, ca_pem, seen)
}

fn client(addr: SocketAddr, ca_pem: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().resolve("sfu.test", addr);
    if let Some(pem) = ca_pem {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn post_offer_over_https_with_test_root_and_host_override() {
    let (addr, ca_pem, seen) = server("201 Created").await;
    let signaling = Signaling::with_client(client(addr, Some(&ca_pem)), Some("tok".into()));
    let url = format!("https://sfu.test:{}/whip/room", addr.port());
    let session = signaling.post_offer(&url, "offer".into()).await.unwrap();
    assert_eq!(session.answer, "v=0\r\n");
    assert_eq!(
        session.url,
        format!("https://sfu.test:{}/whip/room/session1", addr.port())
    );
    assert_eq!(session.etag.as_deref(), Some("\"e1\""));
    assert_eq!(signaling.delete(&session.url).await.unwrap(), 201);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].request_line, "POST /whip/room HTTP/1.1");
    assert_eq!(seen[0].sni.as_deref(), Some("sfu.test"));
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer tok"));
    assert_eq!(seen[1].request_line, "DELETE /whip/room/session1 HTTP/1.1");
}

#[tokio::test]
async fn https_without_the_test_root_is_refused() {
    let (addr, _, seen) = server("201 Created").await;
    let signaling = Signaling::with_client(client(addr, None), None);
    let url = format!("https://sfu.test:{}/whip/room", addr.port());
    match signaling.post_offer(&url, "offer".into()).await {
        Err(ClientError::Http(e)) => assert!(e.is_connect(), "{e:?}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn peer_uses_the_http_client_from_its_options() {
    let (addr, ca_pem, seen) = server("503 Service Unavailable").await;
    let opts = PeerOptions {
        http_client: Some(client(addr, Some(&ca_pem))),
        ..PeerOptions::default()
    };
    let url = format!("https://sfu.test:{}/whip/room", addr.port());
    match Peer::connect(&url, Role::Publish(StreamSpec::default()), opts).await {
        Err(ClientError::Status { status: 503, .. }) => {}
        Err(e) => panic!("expected the server's 503, got {e:?}"),
        Ok(_) => panic!("expected the server's 503, got a peer"),
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].request_line, "POST /whip/room HTTP/1.1");
}
