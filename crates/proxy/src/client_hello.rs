//! Reading a TLS ClientHello whole before deciding where a connection goes (sans-IO).
//!
//! A hello may span several TCP segments and several TLS records (post-quantum key shares
//! make Chrome's about 1.8 KB; ECH makes it larger). [`HelloReader`] buffers bytes until the
//! handshake message is complete, bounded by [`MAX_HELLO`], then parses SNI and ALPN on the
//! buffer with rustls's `Acceptor`. The buffered bytes are replayed to the SFU unchanged.

use rustls::server::Acceptor;

/// Largest ClientHello accepted, records included.
pub const MAX_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;

/// What the hello says about where the connection should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// Server Name Indication, lower case (rustls checks it is a DNS name).
    pub sni: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

impl HelloInfo {
    pub fn offers_alpn(&self, protocol: &[u8]) -> bool {
        self.alpn.iter().any(|p| p == protocol)
    }
}

/// Why a connection is refused before routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloReject {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloProgress {
    NeedMore,
    Hello(HelloInfo),
    Reject(HelloReject),
}

/// Buffers a connection's first bytes until its ClientHello is complete.
#[derive(Debug, Default)]
pub struct HelloReader {
    buf: Vec<u8>,
}

impl HelloReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything received so far, to replay to the backend.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_buffered(self) -> Vec<u8> {
        self.buf
    }

    /// Adds received bytes and says whether the hello is complete.
    pub fn push(&mut self, data: &[u8]) -> HelloProgress {
        if self.buf.len() + data.len() > MAX_HELLO {
            // Keep what fits: the verdict is final anyway.
            return HelloProgress::Reject(HelloReject::TooLarge);
        }
        self.buf.extend_from_slice(data);
        match handshake_complete(&self.buf) {
            Err(r) => HelloProgress::Reject(r),
            Ok(false) => HelloProgress::NeedMore,
            Ok(true) => parse(&self.buf),
        }
    }
}

/// Whether the records in `buf` carry the whole first handshake message.
fn handshake_complete(buf: &[u8]) -> Result<bool, HelloReject> {
    let mut handshake: Vec<u8> = Vec::new();
    let mut at = 0;
    while buf.len() >= at + RECORD_HEADER {
        let header = &buf[at..at + RECORD_HEADER];
        if header[0] != CONTENT_HANDSHAKE {
            return Err(if at == 0 {
                HelloReject::NotTls
            } else {
                HelloReject::Malformed("a non-handshake record inside the hello".into())
            });
        }
        if header[1] != 3 {
            return Err(HelloReject::NotTls);
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 || len > 16 * 1024 + 2048 {
            return Err(HelloReject::Malformed(format!("record length {len}")));
        }
        let body_end = at + RECORD_HEADER + len;
        let available = &buf[at + RECORD_HEADER..buf.len().min(body_end)];
        handshake.extend_from_slice(available);
        if handshake.len() >= 4 {
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(HelloReject::Malformed(
                    "first message is not a ClientHello".into(),
                ));
            }
            let need =
                4 + u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if need > MAX_HELLO {
                return Err(HelloReject::TooLarge);
            }
            if handshake.len() >= need {
                return Ok(true);
            }
        }
        if body_end > buf.len() {
            return Ok(false);
        }
        at = body_end;
    }
    // A first byte that cannot start a TLS record is refused at once.
    if !buf.is_empty() && buf[0] != CONTENT_HANDSHAKE {
        return Err(HelloReject::NotTls);
    }
    Ok(false)
}

fn parse(buf: &[u8]) -> HelloProgress {
    let mut acceptor = Acceptor::default();
    let mut rd = buf;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return HelloProgress::Reject(HelloReject::Malformed(e.to_string())),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            HelloProgress::Hello(HelloInfo {
                sni: hello.server_name().map(|s| s.to_ascii_lowercase()),
                alpn: hello
                    .alpn()
                    .map(|it| it.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            })
        }
        Ok(None) => HelloProgress::Reject(HelloReject::Malformed(
            "rustls wants more than the complete message".into(),
        )),
        Err((e, _alert)) => HelloProgress::Reject(HelloReject::Malformed(e.to_string())),
    }
}

/// Entry point of the `client_hello` fuzz target (and of the corpus test): the first byte
/// chooses the size of the pieces the rest is fed in. Checks the reader's promises: it never
/// buffers more than [`MAX_HELLO`], and once it has decided it stays decided.
pub fn fuzz(data: &[u8]) {
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut reader = HelloReader::new();
    let mut decided: Option<HelloProgress> = None;
    for chunk in rest.chunks(piece) {
        let progress = reader.push(chunk);
        assert!(reader.buffered().len() <= MAX_HELLO);
        if progress != HelloProgress::NeedMore {
            decided = Some(progress);
            break;
        }
    }
    if let Some(HelloProgress::Hello(info)) = decided {
        assert!(info.sni.iter().all(|s| !s.is_empty() && s.len() <= 253));
    }
}

/// A fatal TLS alert record `unrecognized_name` (RFC 6066), sent before closing a connection
/// whose SNI no node serves.
pub const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello from rustls's client for `sni` offering `alpn`.
    fn rustls_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        roots.add(ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    /// `DEADSFU_WRITE_FIXTURES=1 cargo test -p deadsfu-proxy write_rustls_fixture` records
    /// the rustls fixture of `tests/client_hello_fixtures.rs`.
    #[test]
    fn write_rustls_fixture() {
        if std::env::var_os("DEADSFU_WRITE_FIXTURES").is_none() {
            return;
        }
        let hello = rustls_hello("sfu-a.test", &[b"h2", b"http/1.1"]);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::write(dir.join("rustls_hello.bin"), hello).unwrap();
    }

    #[test]
    fn whole_hello_gives_sni_and_alpn() {
        let hello = rustls_hello("Sfu-A.test", &[b"h2", b"http/1.1"]);
        let mut r = HelloReader::new();
        match r.push(&hello) {
            HelloProgress::Hello(info) => {
                assert_eq!(info.sni.as_deref(), Some("sfu-a.test"));
                assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.buffered(), &hello[..]);
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let hello = rustls_hello("svc.test", &[b"acme-tls/1"]);
        for cut in 1..hello.len() {
            let mut r = HelloReader::new();
            assert_eq!(r.push(&hello[..cut]), HelloProgress::NeedMore, "cut {cut}");
            match r.push(&hello[cut..]) {
                HelloProgress::Hello(info) => assert!(info.offers_alpn(b"acme-tls/1")),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        // One byte at a time.
        let mut r = HelloReader::new();
        for (i, b) in hello.iter().enumerate() {
            let p = r.push(std::slice::from_ref(b));
            if i + 1 < hello.len() {
                assert_eq!(p, HelloProgress::NeedMore);
            } else {
                assert!(matches!(p, HelloProgress::Hello(_)));
            }
        }
    }

    /// The same handshake message cut into records of `size` bytes each.
    fn rerecord(hello: &[u8], size: usize) -> Vec<u8> {
        let body = &hello[RECORD_HEADER..];
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn split_across_records() {
        let hello = rustls_hello("sfu-b.test", &[b"h2"]);
        for size in [1, 7, 100, 512] {
            let split = rerecord(&hello, size);
            let mut r = HelloReader::new();
            match r.push(&split) {
                HelloProgress::Hello(info) => assert_eq!(info.sni.as_deref(), Some("sfu-b.test")),
                other => panic!("records of {size}: {other:?}"),
            }
        }
    }

    #[test]
    fn large_post_quantum_sized_hello() {
        // rustls with ring sends X25519 only; pad the hello with a large unknown extension
        // to the size of Chrome's post-quantum hello (about 1.8 KB) and beyond.
        let hello = rustls_hello("svc.test", &[b"h2"]);
        for extra in [1800usize, 8000] {
            let big = grow_hello(&hello, extra);
            let mut r = HelloReader::new();
            let mut progress = HelloProgress::NeedMore;
            for chunk in big.chunks(1400) {
                progress = r.push(chunk);
            }
            match progress {
                HelloProgress::Hello(info) => assert_eq!(info.sni.as_deref(), Some("svc.test")),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }

    /// Adds an unknown extension of `extra` bytes to a single-record hello.
    pub(super) fn grow_hello(hello: &[u8], extra: usize) -> Vec<u8> {
        let mut hs = hello[RECORD_HEADER..].to_vec();
        // Walk to the extensions block: type(1) len(3) version(2) random(32) sid.
        let mut at = 4 + 2 + 32;
        at += 1 + hs[at] as usize;
        let cs = u16::from_be_bytes([hs[at], hs[at + 1]]) as usize;
        at += 2 + cs;
        at += 1 + hs[at] as usize;
        let ext_len_at = at;
        let ext_len = u16::from_be_bytes([hs[at], hs[at + 1]]) as usize;
        let mut ext = vec![0xfa, 0xfa];
        ext.extend_from_slice(&(extra as u16).to_be_bytes());
        ext.extend(std::iter::repeat_n(0u8, extra));
        hs.splice(0..0, []);
        hs.extend_from_slice(&ext);
        let new_ext_len = (ext_len + ext.len()) as u16;
        hs[ext_len_at..ext_len_at + 2].copy_from_slice(&new_ext_len.to_be_bytes());
        let body_len = (hs.len() - 4) as u32;
        hs[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
        // Several records of at most 16 KiB.
        let mut out = Vec::new();
        for chunk in hs.chunks(16 * 1024) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn missing_sni_is_a_hello_without_name() {
        let hello = rustls_hello("127.0.0.1", &[]);
        match HelloReader::new().push(&hello) {
            HelloProgress::Hello(info) => assert_eq!(info.sni, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_oversize_are_refused() {
        assert_eq!(
            HelloReader::new().push(b"GET / HTTP/1.1\r\n"),
            HelloProgress::Reject(HelloReject::NotTls)
        );
        assert_eq!(
            HelloReader::new().push(&[0x16, 0x02, 0x01, 0, 5]),
            HelloProgress::Reject(HelloReject::NotTls)
        );
        // A declared handshake larger than the bound.
        let mut r = HelloReader::new();
        let p = r.push(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x00, 0x00]);
        assert_eq!(p, HelloProgress::Reject(HelloReject::TooLarge));
        // Feeding past the bound.
        let mut r = HelloReader::new();
        let mut hdr = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfb];
        hdr.resize(MAX_HELLO, 0);
        assert_eq!(r.push(&hdr), HelloProgress::NeedMore);
        assert_eq!(
            r.push(&[0; 10]),
            HelloProgress::Reject(HelloReject::TooLarge)
        );
        // A complete message that is not a valid hello.
        let junk = [
            0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 1, 2, 3, 4,
        ];
        assert!(matches!(
            HelloReader::new().push(&junk),
            HelloProgress::Reject(HelloReject::Malformed(_))
        ));
    }

    #[test]
    fn random_input_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut r = HelloReader::new();
            let len = (seed % 600) as usize;
            let mut data = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                data.push(seed as u8);
            }
            if seed.is_multiple_of(3) && !data.is_empty() {
                data[0] = 0x16;
            }
            let _ = r.push(&data);
        }
    }
}
