//! Tests of `dtls_openssl.rs`: connections made from the shared contexts shake hands with each
//! other as str0m drives them.

use std::sync::OnceLock;

use super::*;

fn provider() -> &'static SharedContextDtls {
    static PROVIDER: OnceLock<SharedContextDtls> = OnceLock::new();
    PROVIDER
        .get_or_init(|| SharedContextDtls::new(str0m::crypto::from_feature_flags().dtls_provider))
}

fn certificate() -> DtlsCert {
    provider().generate_certificate().expect("a certificate")
}

/// What a connection said, owned.
#[derive(Debug, PartialEq)]
enum Said {
    Packet(Vec<u8>),
    Connected,
    PeerCert(Vec<u8>),
    Keys(Vec<u8>, SrtpProfile),
    CloseNotify,
    AppData(Vec<u8>),
}

/// Everything `conn` has to say until it only has its idle timeout.
fn drain(conn: &mut dyn DtlsInstance) -> Vec<Said> {
    let mut buf = vec![0u8; 2048];
    let mut said = Vec::new();
    let idle = Instant::now() + Duration::from_secs(1000);
    loop {
        match conn.poll_output(&mut buf) {
            DtlsOutput::Packet(p) => said.push(Said::Packet(p.to_vec())),
            DtlsOutput::Connected => said.push(Said::Connected),
            DtlsOutput::PeerCert(c) => said.push(Said::PeerCert(c.to_vec())),
            DtlsOutput::KeyingMaterial(k, p) => said.push(Said::Keys(k.to_vec(), p)),
            DtlsOutput::CloseNotify => said.push(Said::CloseNotify),
            DtlsOutput::ApplicationData(d) => said.push(Said::AppData(d.to_vec())),
            DtlsOutput::Timeout(at) if at > idle => return said,
            DtlsOutput::Timeout(_) => {}
            other => panic!("unexpected output {other:?}"),
        }
    }
}

/// What one side of an exchange said: its packets, and everything else.
#[derive(Default)]
struct Heard {
    packets: Vec<Vec<u8>>,
    said: Vec<Said>,
}

/// Carries what `from` has to say to `to`, noting it in `heard`; whether it said a packet.
fn deliver(from: &mut dyn DtlsInstance, to: &mut dyn DtlsInstance, heard: &mut Heard) -> bool {
    let mut any = false;
    for said in drain(from) {
        match said {
            Said::Packet(p) => {
                any = true;
                to.handle_packet(&p)
                    .expect("the other side takes the packet");
                heard.packets.push(p);
            }
            other => heard.said.push(other),
        }
    }
    any
}

/// Carries the packets each side says to the other until both are quiet; returns what each
/// said (client's, server's).
fn exchange_heard(client: &mut dyn DtlsInstance, server: &mut dyn DtlsInstance) -> (Heard, Heard) {
    let (mut from_client, mut from_server) = (Heard::default(), Heard::default());
    for _ in 0..20 {
        let client_spoke = deliver(client, server, &mut from_client);
        let server_spoke = deliver(server, client, &mut from_server);
        if !client_spoke && !server_spoke {
            return (from_client, from_server);
        }
    }
    panic!("the exchange does not end");
}

/// [`exchange_heard`], without the packets.
fn exchange(
    client: &mut dyn DtlsInstance,
    server: &mut dyn DtlsInstance,
) -> (Vec<Said>, Vec<Said>) {
    let (client, server) = exchange_heard(client, server);
    (client.said, server.said)
}

fn pair(
    client_cert: &DtlsCert,
    server_cert: &DtlsCert,
) -> (Box<dyn DtlsInstance>, Box<dyn DtlsInstance>) {
    let now = Instant::now();
    let mut client = provider()
        .new_dtls(client_cert, now, DtlsVersion::Dtls12, None)
        .unwrap();
    let mut server = provider()
        .new_dtls(server_cert, now, DtlsVersion::Dtls12, None)
        .unwrap();
    server.set_active(false);
    client.set_active(true);
    // As str0m starts an active connection.
    client.handle_packet(&[]).unwrap();
    (client, server)
}

fn keys(said: &[Said]) -> Option<&Said> {
    said.iter().find(|s| matches!(s, Said::Keys(..)))
}

#[test]
fn two_connections_shake_hands_and_agree_on_the_srtp_keys() {
    let (client_cert, server_cert) = (certificate(), certificate());
    let (mut client, mut server) = pair(&client_cert, &server_cert);
    let (client_said, server_said) = exchange(client.as_mut(), server.as_mut());
    for said in [&client_said, &server_said] {
        assert_eq!(said.iter().filter(|s| **s == Said::Connected).count(), 1);
    }
    assert!(client_said.contains(&Said::PeerCert(server_cert.certificate.clone())));
    assert!(server_said.contains(&Said::PeerCert(client_cert.certificate.clone())));
    let key = keys(&client_said).expect("the client's keys");
    assert_eq!(
        Some(key),
        keys(&server_said),
        "both sides export the same keys"
    );
    assert!(client.is_active() && !server.is_active());
}

#[test]
fn connections_of_one_certificate_share_one_context() {
    // Its own provider: the other tests, running beside it, fill the shared one's cache.
    let provider = SharedContextDtls::new(str0m::crypto::from_feature_flags().dtls_provider);
    let (a, b) = (certificate(), certificate());
    // A context handle derefs to OpenSSL's own object: equal addresses, one context.
    let address = |ctx: SslContext| &*ctx as *const openssl::ssl::SslContextRef;
    let first = address(provider.context(&a).unwrap());
    assert_eq!(first, address(provider.context(&a).unwrap()));
    assert_ne!(first, address(provider.context(&b).unwrap()));
}

#[test]
fn application_data_given_early_goes_out_after_the_handshake() {
    let (client_cert, server_cert) = (certificate(), certificate());
    let (mut client, mut server) = pair(&client_cert, &server_cert);
    client.send_application_data(b"early").unwrap();
    let (_, server_said) = exchange(client.as_mut(), server.as_mut());
    assert!(server_said.contains(&Said::AppData(b"early".to_vec())));
    server.send_application_data(b"reply").unwrap();
    let (client_said, _) = exchange(client.as_mut(), server.as_mut());
    assert_eq!(client_said, vec![Said::AppData(b"reply".to_vec())]);
}

#[test]
fn a_close_notify_is_answered_with_ours() {
    let (client_cert, server_cert) = (certificate(), certificate());
    let (mut client, mut server) = pair(&client_cert, &server_cert);
    exchange(client.as_mut(), server.as_mut());
    client.close().unwrap();
    assert!(client.is_closing());
    let (client_said, server_said) = exchange(client.as_mut(), server.as_mut());
    assert!(server_said.contains(&Said::CloseNotify));
    assert!(server.is_closing() && server.is_closed());
    assert!(
        client_said.contains(&Said::CloseNotify),
        "the client hears the answer"
    );
    assert!(client.is_closed());
}

#[test]
fn garbage_fails_a_passive_connection_without_a_panic_or_a_connection() {
    let cert = certificate();
    let mut server = provider()
        .new_dtls(&cert, Instant::now(), DtlsVersion::Dtls12, None)
        .unwrap();
    server.set_active(false);
    // A DTLS handshake record header with a body that is not a ClientHello.
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40];
    record.extend_from_slice(&[0xab; 40]);
    let _ = server.handle_packet(&record);
    let _ = server.handle_packet(&[0xff; 3]);
    assert!(!drain(server.as_mut()).contains(&Said::Connected));
}

#[test]
fn only_dtls_1_2_is_made() {
    let made = provider().new_dtls(&certificate(), Instant::now(), DtlsVersion::Dtls13, None);
    assert!(made.is_err());
}

/// Writes the fuzz target's seed (`fuzz/corpus/dtls_passive/client-flights`): a real client's
/// flights, framed as `fuzz::dtls_passive` reads them. Run by hand when the framing
/// changes: `cargo test -p deadsfu-rtc --lib write_dtls_fuzz_seed -- --ignored`.
#[test]
#[ignore]
fn write_dtls_fuzz_seed() {
    let (client_cert, server_cert) = (certificate(), certificate());
    let (mut client, mut server) = pair(&client_cert, &server_cert);
    let (from_client, _) = exchange_heard(client.as_mut(), server.as_mut());
    let mut seed = Vec::new();
    for p in from_client.packets {
        seed.extend_from_slice(&(p.len() as u16).to_be_bytes());
        seed.extend_from_slice(&p);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dtls_passive");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("client-flights"), seed).unwrap();
}

#[test]
fn a_lost_flight_is_sent_again_when_openssls_timer_has_run_out() {
    let (client_cert, server_cert) = (certificate(), certificate());
    let (mut client, _server) = pair(&client_cert, &server_cert);
    let first = drain(client.as_mut());
    assert!(
        matches!(first.as_slice(), [Said::Packet(_)]),
        "the ClientHello: {first:?}"
    );
    // The ClientHello is lost. Before OpenSSL's timer (1 s, on the real clock: nothing to
    // await) a tick sends nothing; after it, the same flight goes again.
    client.handle_timeout(Instant::now()).unwrap();
    assert!(drain(client.as_mut()).is_empty());
    std::thread::sleep(Duration::from_millis(1100));
    client.handle_timeout(Instant::now()).unwrap();
    // The same handshake message in a new record (the record header's sequence number moves
    // on: its first 13 bytes differ).
    let again = drain(client.as_mut());
    let body = |said: &[Said]| match said {
        [Said::Packet(p)] => p.get(13..).map(<[u8]>::to_vec),
        _ => None,
    };
    assert!(
        body(&again).is_some() && body(&again) == body(&first),
        "{again:?}"
    );
}

#[test]
fn the_server_issues_no_session_ticket() {
    // The ClientHello of OpenSSL's client offers tickets (extension 35); WebRTC never resumes.
    let (client_cert, server_cert) = (certificate(), certificate());
    let (mut client, mut server) = pair(&client_cert, &server_cert);
    let (_, from_server) = exchange_heard(client.as_mut(), server.as_mut());
    let mut server_records = Vec::new();
    for p in &from_server.packets {
        // Each datagram's records: type, version (2), epoch (2), sequence (6), length (2).
        let mut rest = &p[..];
        while rest.len() >= 13 {
            let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
            let body = &rest[13..(13 + len).min(rest.len())];
            server_records.push((
                rest[0],
                u16::from_be_bytes([rest[3], rest[4]]),
                body.first().copied(),
            ));
            rest = &rest[(13 + len).min(rest.len())..];
        }
    }
    assert!(
        server_records.contains(&(22, 0, Some(2))),
        "a ServerHello was seen"
    );
    // A NewSessionTicket (handshake type 4) goes in the clear, before ChangeCipherSpec.
    assert!(
        !server_records.contains(&(22, 0, Some(4))),
        "{server_records:?}"
    );
}
