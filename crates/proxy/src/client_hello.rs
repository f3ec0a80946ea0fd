//! Reading a TLS ClientHello whole before deciding where a connection goes (sans-IO).
//!
//! A hello may span several TCP segments and several TLS records (post-quantum key shares
//! make Chrome's about 1.8 KB; ECH makes it larger). [`HelloReader`] buffers bytes until the
//! handshake message is complete, bounded by [`MAX_HELLO`], then reads SNI and ALPN straight
//! from the buffered bytes: the proxy needs nothing else, and decoding the whole hello into
//! owned types (rustls's `Acceptor` did) cost a few dozen allocations per connection. The
//! checks rustls's server made before a hello reached a certificate resolver are kept (framing
//! of every length, duplicate extensions, a usable server name, null compression, signature
//! algorithms present), so the same hellos are refused; the contents of the other extensions
//! are the SFU's to judge, as it terminates the TLS. The buffered bytes are replayed to the
//! SFU unchanged.

use rustls::pki_types::ServerName;

/// Largest ClientHello accepted, records included.
pub const MAX_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
/// Largest record body accepted (a TLS record's plaintext bound plus expansion).
const MAX_RECORD_BODY: usize = 16 * 1024 + 2048;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_HEADER: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;

const EXT_SERVER_NAME: u16 = 0;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ALPN: u16 = 16;
const EXT_PRE_SHARED_KEY: u16 = 41;
/// `server_name` entry type `host_name` (RFC 6066).
const NAME_TYPE_HOST_NAME: u8 = 0;
/// Session ids are at most 32 bytes (RFC 8446 4.1.2).
const MAX_SESSION_ID: usize = 32;

/// What the hello says about where the connection should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// Server Name Indication, lower case; a DNS name (an IP address sent as a name counts
    /// as no name, as in rustls).
    pub sni: Option<String>,
    /// The ALPN `protocol_name_list` as sent (each name after its length byte), checked.
    alpn_list: Vec<u8>,
}

impl HelloInfo {
    /// A hello naming `sni` and offering `alpn` (for tests and callers that build one).
    pub fn new(sni: Option<&str>, alpn: &[&[u8]]) -> Self {
        let mut alpn_list = Vec::new();
        for p in alpn {
            let len = u8::try_from(p.len()).unwrap_or(u8::MAX);
            alpn_list.push(len);
            alpn_list.extend_from_slice(&p[..usize::from(len)]);
        }
        Self {
            sni: sni.map(str::to_ascii_lowercase),
            alpn_list,
        }
    }

    /// ALPN protocols offered, in the client's order.
    pub fn alpn(&self) -> impl Iterator<Item = &[u8]> {
        AlpnNames(&self.alpn_list)
    }

    pub fn offers_alpn(&self, protocol: &[u8]) -> bool {
        self.alpn().any(|p| p == protocol)
    }
}

/// Iterates a checked `protocol_name_list` body.
struct AlpnNames<'a>(&'a [u8]);

impl<'a> Iterator for AlpnNames<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.0.split_first()?;
        let name = rest.get(..usize::from(len))?;
        self.0 = &rest[name.len()..];
        Some(name)
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
    Malformed(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloProgress {
    NeedMore,
    Hello(HelloInfo),
    Reject(HelloReject),
}

/// Bytes read into a fresh reader's buffer at first: a browser's hello (about 1.8 KB with a
/// post-quantum key share) in one read, without growing.
const FIRST_READ: usize = 4 * 1024;

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
        self.progress()
    }

    /// Receives once straight into the buffer (no copy): `read` appends at most the buffer's
    /// spare capacity, which this keeps within [`MAX_HELLO`] in all (tokio's
    /// `TcpStream::try_read_buf` does so). Returns what `read` returned with the verdict.
    pub fn receive<E>(
        &mut self,
        read: impl FnOnce(&mut Vec<u8>) -> Result<usize, E>,
    ) -> Result<(usize, HelloProgress), E> {
        let room = MAX_HELLO - self.buf.len();
        if room == 0 {
            return Ok((0, HelloProgress::Reject(HelloReject::TooLarge)));
        }
        if self.buf.capacity() == self.buf.len() {
            let more = if self.buf.is_empty() {
                FIRST_READ
            } else {
                self.buf.len()
            };
            self.buf.reserve_exact(more.min(room));
        }
        let n = read(&mut self.buf)?;
        if self.buf.len() > MAX_HELLO {
            // `read` went past the spare capacity it was given; the bound still holds.
            self.buf.truncate(MAX_HELLO);
            return Ok((n, HelloProgress::Reject(HelloReject::TooLarge)));
        }
        Ok((n, self.progress()))
    }

    fn progress(&self) -> HelloProgress {
        match find_hello(&self.buf) {
            Err(r) => HelloProgress::Reject(r),
            Ok(None) => HelloProgress::NeedMore,
            Ok(Some(place)) => match place.read(&self.buf) {
                Ok(info) => HelloProgress::Hello(info),
                Err(r) => HelloProgress::Reject(r),
            },
        }
    }
}

/// Where the complete ClientHello message lies in the buffered records.
struct HelloPlace {
    /// Its length, handshake header included.
    message_len: usize,
    /// All of it is in the first record (the usual case: read in place).
    in_first_record: bool,
}

/// Walks the records in `buf`: `Some` once they carry the whole first handshake message.
fn find_hello(buf: &[u8]) -> Result<Option<HelloPlace>, HelloReject> {
    // The handshake header may itself be split across records.
    let mut header = [0u8; HANDSHAKE_HEADER];
    let mut handshake_bytes = 0;
    let mut at = 0;
    while buf.len() >= at + RECORD_HEADER {
        let record = &buf[at..at + RECORD_HEADER];
        if record[0] != CONTENT_HANDSHAKE {
            return Err(if at == 0 {
                HelloReject::NotTls
            } else {
                HelloReject::Malformed("a non-handshake record inside the hello")
            });
        }
        if record[1] != 3 {
            return Err(HelloReject::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        if len == 0 || len > MAX_RECORD_BODY {
            return Err(HelloReject::Malformed("record length"));
        }
        let body_end = at + RECORD_HEADER + len;
        let body = &buf[at + RECORD_HEADER..buf.len().min(body_end)];
        let before = handshake_bytes;
        for (slot, &b) in header.iter_mut().skip(before).zip(body) {
            *slot = b;
        }
        handshake_bytes += body.len();
        if handshake_bytes >= HANDSHAKE_HEADER {
            if header[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(HelloReject::Malformed("first message is not a ClientHello"));
            }
            let message_len = HANDSHAKE_HEADER
                + u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
            if message_len > MAX_HELLO {
                return Err(HelloReject::TooLarge);
            }
            if handshake_bytes >= message_len {
                // No other handshake message may share the hello's flight (rustls refused
                // that too); this record must end where the hello does.
                if before + len != message_len {
                    return Err(HelloReject::Malformed(
                        "handshake data after the ClientHello",
                    ));
                }
                return Ok(Some(HelloPlace {
                    message_len,
                    in_first_record: at == 0,
                }));
            }
        }
        if body_end > buf.len() {
            return Ok(None);
        }
        at = body_end;
    }
    // A first byte that cannot start a TLS record is refused at once.
    if !buf.is_empty() && buf[0] != CONTENT_HANDSHAKE {
        return Err(HelloReject::NotTls);
    }
    Ok(None)
}

impl HelloPlace {
    fn read(&self, buf: &[u8]) -> Result<HelloInfo, HelloReject> {
        let body = HANDSHAKE_HEADER..self.message_len;
        if self.in_first_record {
            let message = &buf[RECORD_HEADER..RECORD_HEADER + self.message_len];
            return read_client_hello(&message[body]);
        }
        // Split across records (rare): joined once.
        let mut message = Vec::with_capacity(self.message_len);
        let mut at = 0;
        while message.len() < self.message_len {
            let len = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
            message.extend_from_slice(&buf[at + RECORD_HEADER..at + RECORD_HEADER + len]);
            at += RECORD_HEADER + len;
        }
        read_client_hello(&message[body])
    }
}

/// A cursor over TLS wire data; every read is bounded by what is left.
struct Wire<'a>(&'a [u8]);

const SHORT: HelloReject = HelloReject::Malformed("truncated");

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloReject> {
        if n > self.0.len() {
            return Err(SHORT);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, HelloReject> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HelloReject> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A `<0..2^8-1>` vector.
    fn u8_prefixed(&mut self) -> Result<&'a [u8], HelloReject> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    /// A `<0..2^16-1>` vector.
    fn u16_prefixed(&mut self) -> Result<&'a [u8], HelloReject> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads SNI and ALPN from a ClientHello body (after the handshake header), checking what
/// rustls's server checked before it would look at a certificate.
fn read_client_hello(body: &[u8]) -> Result<HelloInfo, HelloReject> {
    let mut hello = Wire(body);
    hello.take(2 + 32)?; // legacy_version, random
    if hello.u8_prefixed()?.len() > MAX_SESSION_ID {
        return Err(HelloReject::Malformed("session id longer than 32 bytes"));
    }
    let suites = hello.u16_prefixed()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloReject::Malformed("cipher suites"));
    }
    let compressions = hello.u8_prefixed()?;
    if compressions.is_empty() {
        return Err(HelloReject::Malformed("compression methods"));
    }
    let mut sni = None;
    let mut alpn_list: &[u8] = &[];
    let mut signature_algorithms = false;
    // The extensions block may be absent altogether.
    if !hello.is_empty() {
        let mut extensions = Wire(hello.u16_prefixed()?);
        if !hello.is_empty() {
            return Err(HelloReject::Malformed("data after the extensions"));
        }
        let mut seen = SeenExtensions::default();
        while !extensions.is_empty() {
            let kind = extensions.u16()?;
            let data = extensions.u16_prefixed()?;
            if !seen.insert(kind) {
                return Err(HelloReject::Malformed("duplicate extension"));
            }
            match kind {
                EXT_SERVER_NAME => sni = read_server_name(data)?,
                EXT_ALPN => alpn_list = read_alpn(data)?,
                EXT_SIGNATURE_ALGORITHMS => {
                    read_signature_algorithms(data)?;
                    signature_algorithms = true;
                }
                EXT_PRE_SHARED_KEY if !extensions.is_empty() => {
                    return Err(HelloReject::Malformed(
                        "pre_shared_key is not the last extension",
                    ));
                }
                _ => {}
            }
        }
    }
    if !compressions.contains(&0) {
        return Err(HelloReject::Malformed("no null compression"));
    }
    if !signature_algorithms {
        return Err(HelloReject::Malformed("no signature_algorithms extension"));
    }
    Ok(HelloInfo {
        sni: sni.map(str::to_ascii_lowercase),
        alpn_list: alpn_list.to_vec(),
    })
}

/// Extension types seen so far, to refuse duplicates: a handful on the stack, a bitmap of
/// all 2^16 types for a hello with many.
#[derive(Default)]
struct SeenExtensions {
    few: [u16; 32],
    count: usize,
    all: Option<Box<[u64; 1024]>>,
}

impl SeenExtensions {
    /// False if `kind` was seen before.
    fn insert(&mut self, kind: u16) -> bool {
        if let Some(all) = &mut self.all {
            let (word, bit) = (usize::from(kind / 64), kind % 64);
            let fresh = all[word] & (1 << bit) == 0;
            all[word] |= 1 << bit;
            return fresh;
        }
        if self.few[..self.count].contains(&kind) {
            return false;
        }
        if self.count < self.few.len() {
            self.few[self.count] = kind;
            self.count += 1;
            return true;
        }
        let mut all = Box::new([0u64; 1024]);
        for &k in self.few.iter().chain([&kind]) {
            all[usize::from(k / 64)] |= 1 << (k % 64);
        }
        self.all = Some(all);
        true
    }
}

/// `server_name` (RFC 6066): one `host_name`, a DNS name; an IP address there counts as no
/// name; anything else refuses the hello (as rustls did).
fn read_server_name(data: &[u8]) -> Result<Option<&str>, HelloReject> {
    let mut ext = Wire(data);
    let mut list = Wire(ext.u16_prefixed()?);
    if !ext.is_empty() {
        return Err(HelloReject::Malformed("server_name extension length"));
    }
    if list.is_empty() {
        return Err(HelloReject::Malformed("empty server_name list"));
    }
    let mut found: Option<Option<&str>> = None;
    while !list.is_empty() {
        if list.u8()? != NAME_TYPE_HOST_NAME {
            // An unknown name type has an unknown encoding: nothing after it can be read.
            break;
        }
        let name = list.u16_prefixed()?;
        if name.is_empty() {
            return Err(HelloReject::Malformed("empty host_name"));
        }
        if found.is_some() {
            return Err(HelloReject::Malformed("more than one host_name"));
        }
        found = Some(match ServerName::try_from(name) {
            Ok(ServerName::DnsName(_)) => {
                // Valid DNS names are ASCII. A fully qualified name's final dot is dropped
                // (`svc.test.` is `svc.test`), as rustls does.
                let name = std::str::from_utf8(name)
                    .map_err(|_| HelloReject::Malformed("invalid host_name"))?;
                Some(name.strip_suffix('.').unwrap_or(name))
            }
            Ok(ServerName::IpAddress(_)) => None,
            Ok(_) | Err(_) => return Err(HelloReject::Malformed("invalid host_name")),
        });
    }
    found.ok_or(HelloReject::Malformed("no host_name in server_name"))
}

/// `application_layer_protocol_negotiation` (RFC 7301): a non-empty list of non-empty names.
fn read_alpn(data: &[u8]) -> Result<&[u8], HelloReject> {
    let mut ext = Wire(data);
    let list = ext.u16_prefixed()?;
    if !ext.is_empty() || list.is_empty() {
        return Err(HelloReject::Malformed("ALPN list"));
    }
    let mut names = Wire(list);
    while !names.is_empty() {
        if names.u8_prefixed()?.is_empty() {
            return Err(HelloReject::Malformed("empty ALPN protocol"));
        }
    }
    Ok(list)
}

/// `signature_algorithms` (RFC 8446 4.2.3): a non-empty list of two-byte schemes.
fn read_signature_algorithms(data: &[u8]) -> Result<(), HelloReject> {
    let mut ext = Wire(data);
    let list = ext.u16_prefixed()?;
    if !ext.is_empty() || list.is_empty() || list.len() % 2 != 0 {
        return Err(HelloReject::Malformed("signature_algorithms list"));
    }
    Ok(())
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
                assert_eq!(
                    info.alpn().collect::<Vec<_>>(),
                    [b"h2".as_slice(), b"http/1.1"]
                );
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

    /// The reader before it parsed the hello itself: rustls's `Acceptor` over the buffered
    /// records. Kept as the oracle of [`same_verdicts_as_rustls`].
    mod rustls_oracle {
        use super::super::*;
        use rustls::server::Acceptor;

        /// `None`: needs more; `Some(Ok((sni, alpn)))`; `Some(Err(kind))`.
        pub type Verdict = Option<Result<(Option<String>, Vec<Vec<u8>>), &'static str>>;

        pub fn verdict(buf: &[u8]) -> Verdict {
            match complete(buf) {
                Err(kind) => Some(Err(kind)),
                Ok(false) => None,
                Ok(true) => Some(parse(buf)),
            }
        }

        fn complete(buf: &[u8]) -> Result<bool, &'static str> {
            let mut handshake: Vec<u8> = Vec::new();
            let mut at = 0;
            while buf.len() >= at + RECORD_HEADER {
                let header = &buf[at..at + RECORD_HEADER];
                if header[0] != CONTENT_HANDSHAKE {
                    return Err(if at == 0 { "not tls" } else { "malformed" });
                }
                if header[1] != 3 {
                    return Err("not tls");
                }
                let len = u16::from_be_bytes([header[3], header[4]]) as usize;
                if len == 0 || len > 16 * 1024 + 2048 {
                    return Err("malformed");
                }
                let body_end = at + RECORD_HEADER + len;
                handshake.extend_from_slice(&buf[at + RECORD_HEADER..buf.len().min(body_end)]);
                if handshake.len() >= 4 {
                    if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                        return Err("malformed");
                    }
                    let need = 4
                        + u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]])
                            as usize;
                    if need > MAX_HELLO {
                        return Err("too large");
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
            if !buf.is_empty() && buf[0] != CONTENT_HANDSHAKE {
                return Err("not tls");
            }
            Ok(false)
        }

        fn parse(buf: &[u8]) -> Result<(Option<String>, Vec<Vec<u8>>), &'static str> {
            let mut acceptor = Acceptor::default();
            let mut rd = buf;
            while !rd.is_empty() {
                match acceptor.read_tls(&mut rd) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return Err("malformed"),
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let hello = accepted.client_hello();
                    Ok((
                        hello.server_name().map(|s| s.to_ascii_lowercase()),
                        hello
                            .alpn()
                            .map(|it| it.map(<[u8]>::to_vec).collect())
                            .unwrap_or_default(),
                    ))
                }
                Ok(None) | Err(_) => Err("malformed"),
            }
        }
    }

    fn new_verdict(buf: &[u8]) -> rustls_oracle::Verdict {
        if buf.len() > MAX_HELLO {
            return Some(Err("too large"));
        }
        match HelloReader::new().push(buf) {
            HelloProgress::NeedMore => None,
            HelloProgress::Hello(info) => Some(Ok((
                info.sni.clone(),
                info.alpn().map(<[u8]>::to_vec).collect(),
            ))),
            HelloProgress::Reject(HelloReject::NotTls) => Some(Err("not tls")),
            HelloProgress::Reject(HelloReject::TooLarge) => Some(Err("too large")),
            HelloProgress::Reject(HelloReject::Malformed(_)) => Some(Err("malformed")),
        }
    }

    /// The hand parser gives the verdicts rustls gave, over real hellos, every truncation,
    /// byte flips everywhere, and edits of the fields it reads.
    #[test]
    fn same_verdicts_as_rustls() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut seeds = vec![
            (
                "rustls, h2".to_owned(),
                rustls_hello("Sfu-A.test", &[b"h2", b"http/1.1"]),
            ),
            ("rustls, IP".to_owned(), rustls_hello("127.0.0.1", &[])),
            (
                "rustls, acme".to_owned(),
                rustls_hello("x.test", &[b"acme-tls/1"]),
            ),
            (
                "chromium".to_owned(),
                std::fs::read(dir.join("tests/fixtures/chromium156_hello.bin")).unwrap(),
            ),
        ];
        for e in std::fs::read_dir(dir.join("fuzz/corpus/client_hello")).unwrap() {
            let path = e.unwrap().path();
            let seed = std::fs::read(&path).unwrap();
            // Corpus entries start with the fuzz target's piece-size byte.
            if seed.len() > 1 {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                seeds.push((name, seed[1..].to_vec()));
            }
        }
        let mut mismatches = Vec::new();
        let mut unread_extension_flips = 0;
        let mut checks = 0usize;
        for (i, seed) in seeds.iter().map(|(_, s)| s).enumerate() {
            let i = &seeds[i].0;
            // A fuzzed seed may itself carry a corrupt extension the proxy does not read.
            let seed_corrupt_unread = rustls_oracle::verdict(seed) == Some(Err("malformed"))
                && matches!(new_verdict(seed), Some(Ok(_)));
            let mut check = |case: &[u8], what: String, flipped: Option<usize>| {
                checks += 1;
                let (old, new) = (rustls_oracle::verdict(case), new_verdict(case));
                if old == new {
                    return;
                }
                // rustls also decoded the extensions the proxy does not read (key shares,
                // groups, versions, pre-shared keys...) and refused a hello whose were
                // corrupt; the SFU, which terminates the TLS, refuses those now.
                if old == Some(Err("malformed"))
                    && matches!(new, Some(Ok(_)))
                    && (seed_corrupt_unread
                        || flipped.is_some_and(|at| in_unread_extension(seed, case, at)))
                {
                    unread_extension_flips += 1;
                    return;
                }
                mismatches.push(format!("{what}: rustls {old:?}, now {new:?}"));
            };
            check(seed, format!("seed {i}"), None);
            for cut in 0..seed.len() {
                check(&seed[..cut], format!("seed {i} cut {cut}"), None);
            }
            for at in 0..seed.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut m = seed.clone();
                    m[at] ^= flip;
                    check(&m, format!("seed {i} byte {at} ^ {flip:#x}"), Some(at));
                }
            }
        }
        assert!(
            unread_extension_flips * 20 < checks,
            "{unread_extension_flips} of {checks}"
        );
        // Framing edge cases, whole and cut everywhere: records of every size, a hello
        // grown past one record, bytes after the hello in its record or in a record after it.
        let hello = &seeds[0].1;
        let mut framed = vec![grow_hello(hello, 17_000), grow_hello(hello, 9000)];
        for size in [1, 3, 4, 5, 100, 300] {
            framed.push(rerecord(hello, size));
        }
        let mut trailing = hello.clone();
        trailing.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb]);
        framed.push(trailing);
        let mut in_record = hello[RECORD_HEADER..].to_vec();
        in_record.extend_from_slice(&[0x02, 0x00, 0x00, 0x00]);
        framed.push(rerecord(
            &[&[0u8; RECORD_HEADER][..], &in_record].concat(),
            16_000,
        ));
        for (i, case) in framed.iter().enumerate() {
            for cut in 0..=case.len() {
                let (old, new) = (
                    rustls_oracle::verdict(&case[..cut]),
                    new_verdict(&case[..cut]),
                );
                if old != new {
                    mismatches.push(format!("framed {i} cut {cut}: rustls {old:?}, now {new:?}"));
                }
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} mismatches:\n{}",
            mismatches.len(),
            mismatches[..mismatches.len().min(40)].join("\n")
        );
    }

    /// Whether byte `at` of single-record hello `seed` lies in the type or the body (not the
    /// length) of an extension the proxy does not read, before and after the edit (`case`).
    fn in_unread_extension(seed: &[u8], case: &[u8], at: usize) -> bool {
        let read_here = [
            EXT_SERVER_NAME,
            EXT_SIGNATURE_ALGORITHMS,
            EXT_ALPN,
            EXT_PRE_SHARED_KEY,
        ];
        let u16_at = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let mut i = RECORD_HEADER + HANDSHAKE_HEADER + 2 + 32;
        i += 1 + usize::from(seed[i]);
        i += 2 + usize::from(u16_at(seed, i));
        i += 1 + usize::from(seed[i]);
        let end = i + 2 + usize::from(u16_at(seed, i));
        i += 2;
        while i + 4 <= end {
            let len = usize::from(u16_at(seed, i + 2));
            if (i..i + 4 + len).contains(&at) {
                let unread =
                    !read_here.contains(&u16_at(seed, i)) && !read_here.contains(&u16_at(case, i));
                return unread && !(i + 2..i + 4).contains(&at);
            }
            i += 4 + len;
        }
        false
    }
}
