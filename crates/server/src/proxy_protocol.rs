//! PROXY protocol v2 on the HTTP(S) listeners: front-line proxies (`deadsfu proxy`, HAProxy with
//! `send-proxy-v2`) pass TLS through untouched, so the only way the SFU learns the real client
//! is a PROXY v2 header that the proxy writes first on each TCP connection, before TLS.
//!
//! Only sources named by the operator ([`ProxyPolicy`]) may send that header, and they must:
//! a header from anyone else would let any client claim any address, and a trusted source that
//! sends none is misconfigured (its clients would all look like the proxy).
//!
//! The codec is sans-IO: [`decode`] takes the bytes seen so far and answers
//! [`Decoded::NeedMore`], [`Decoded::Header`] or [`Decoded::Invalid`]; [`sniff`] does the same for
//! the cheap check on untrusted connections. [`read_header`] and [`peek_for_header`] are the thin
//! tokio shells, each bounded in bytes and time. Parsing of the header proper is done by the
//! `ppp` crate.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use ppp::v2::{Addresses, Command};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// The 12 bytes every PROXY v2 header starts with.
pub const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What a PROXY v1 (text) header starts with.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Signature, version/command, family/protocol and the 2-byte length.
const FIXED_LEN: usize = 16;
/// Largest header accepted, fixed part included. The addresses take at most 36 bytes (IPv6;
/// a Unix-socket pair takes 216); HAProxy's optional TLVs (ALPN, authority, unique id of at most
/// 128 bytes, the TLS sub-TLVs, CRC32C) and AWS's VPC endpoint id add a few hundred at most.
pub const MAX_HEADER_LEN: usize = 1024;

/// Sources allowed, and required, to start their connections with a PROXY v2 header.
///
/// The default trusts no one: every connection is served with its own address, and one that
/// starts with a PROXY header is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPolicy {
    trusted: Vec<Cidr>,
}

impl ProxyPolicy {
    pub fn new(trusted: impl IntoIterator<Item = Cidr>) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
        }
    }

    /// Whether connections from `ip` must carry a PROXY v2 header. An IPv4 peer seen through a
    /// dual-stack socket (`::ffff:a.b.c.d`) matches the IPv4 CIDRs too.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.trusted
            .iter()
            .any(|c| c.contains(ip) || c.contains(canonical))
    }

    pub fn trusted(&self) -> &[Cidr] {
        &self.trusted
    }

    pub fn is_empty(&self) -> bool {
        self.trusted.is_empty()
    }
}

/// A comma-separated list of [`Cidr`]s (for an environment variable); empty trusts no one.
impl FromStr for ProxyPolicy {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::parse)
            .collect()
    }
}

/// Comma-separated, as parsed; `none` when empty (for the start-up log).
impl fmt::Display for ProxyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.trusted.is_empty() {
            return f.write_str("none");
        }
        for (i, c) in self.trusted.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            c.fmt(f)?;
        }
        Ok(())
    }
}

impl FromIterator<Cidr> for ProxyPolicy {
    fn from_iter<T: IntoIterator<Item = Cidr>>(iter: T) -> Self {
        Self::new(iter)
    }
}

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `2001:db8::/32`, or a bare address (`/32` or `/128`).
/// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`), as HAProxy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains('/') {
            s.parse::<IpNet>()
                .map(|net| Cidr(net.trunc()))
                .map_err(|_| CidrError(s.to_string()))
        } else {
            s.parse::<IpAddr>()
                .map(|ip| Cidr(IpNet::from(ip)))
                .map_err(|_| CidrError(s.to_string()))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A `--proxy-protocol-from` value that is not a CIDR or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an IP network: expected an address with a prefix length (10.0.0.0/8, \
     2001:db8::/32) or a single address (192.0.2.7, ::1)"
)]
pub struct CidrError(String);

/// A complete PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes the header takes at the start of the stream.
    pub len: usize,
    /// The client the proxy speaks for. `None` for the LOCAL command (the proxy's own health
    /// checks), for an unspecified family and for Unix sockets: the connection then stands for
    /// itself.
    pub source: Option<SocketAddr>,
}

/// What [`decode`] makes of the bytes at the start of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// At least this many more bytes are needed; the header is not shorter than that, so
    /// reading exactly this many never reads past it.
    NeedMore(usize),
    Header(ProxyHeader),
    Invalid(InvalidHeader),
}

/// Why the start of a connection is not an acceptable PROXY v2 header.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum InvalidHeader {
    #[error("no PROXY v2 signature")]
    Signature,
    #[error("PROXY v1 (text) header; only v2 is accepted (HAProxy: send-proxy-v2)")]
    V1,
    #[error("PROXY header version {0}; only 2 is accepted")]
    Version(u8),
    #[error("PROXY v2 header of {0} bytes; at most {MAX_HEADER_LEN} are accepted")]
    TooLong(usize),
    #[error("malformed PROXY v2 header: {0}")]
    Malformed(ppp::v2::ParseError),
}

impl Eq for InvalidHeader {}

/// Decodes a PROXY v2 header from the first bytes of a connection (`buf` may hold more than the
/// header; [`ProxyHeader::len`] says where it ends). Wrong bytes are refused as soon as they are
/// seen, and the declared length is checked against [`MAX_HEADER_LEN`] before any of it is asked
/// for.
pub fn decode(buf: &[u8]) -> Decoded {
    let seen = buf.len().min(SIGNATURE.len());
    if buf[..seen] != SIGNATURE[..seen] {
        let v1 = buf.len().min(V1_PREFIX.len());
        return Decoded::Invalid(if buf[..v1] == V1_PREFIX[..v1] {
            InvalidHeader::V1
        } else {
            InvalidHeader::Signature
        });
    }
    if let Some(&version_command) = buf.get(SIGNATURE.len()) {
        let version = version_command >> 4;
        if version != 2 {
            return Decoded::Invalid(InvalidHeader::Version(version));
        }
    }
    if buf.len() < FIXED_LEN {
        return Decoded::NeedMore(FIXED_LEN - buf.len());
    }
    let total = FIXED_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > MAX_HEADER_LEN {
        return Decoded::Invalid(InvalidHeader::TooLong(total));
    }
    if buf.len() < total {
        return Decoded::NeedMore(total - buf.len());
    }
    let header = match ppp::v2::Header::try_from(&buf[..total]) {
        Ok(h) => h,
        Err(e) => return Decoded::Invalid(InvalidHeader::Malformed(e)),
    };
    let source = match (header.command, header.addresses) {
        (Command::Local, _) => None,
        (Command::Proxy, Addresses::IPv4(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (Command::Proxy, Addresses::IPv6(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (Command::Proxy, Addresses::Unspecified | Addresses::Unix(_)) => None,
    };
    Decoded::Header(ProxyHeader { len: total, source })
}

/// Which PROXY header an untrusted connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    V1,
    V2,
}

impl HeaderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderKind::V1 => "v1",
            HeaderKind::V2 => "v2",
        }
    }
}

/// What [`sniff`] makes of the first bytes of an untrusted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// The bytes so far could still be the start of a PROXY header.
    NeedMore,
    Proxy(HeaderKind),
    /// Not a PROXY header: HTTP, TLS, or anything else for the next layer to judge.
    Other,
}

/// Whether `buf`, the first bytes of a connection, is a PROXY header (v2 signature or the v1
/// text prefix). Only the full signature counts: an HTTP request may start with an empty line.
pub fn sniff(buf: &[u8]) -> Sniffed {
    for (prefix, kind) in [
        (&SIGNATURE[..], HeaderKind::V2),
        (&V1_PREFIX[..], HeaderKind::V1),
    ] {
        let n = buf.len().min(prefix.len());
        if buf[..n] == prefix[..n] {
            return if n == prefix.len() {
                Sniffed::Proxy(kind)
            } else {
                Sniffed::NeedMore
            };
        }
    }
    Sniffed::Other
}

/// Why no PROXY v2 header could be read from a trusted source.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error(transparent)]
    Invalid(#[from] InvalidHeader),
    #[error("connection closed after {0} bytes of the PROXY v2 header")]
    Closed(usize),
    #[error("no complete PROXY v2 header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY v2 header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyHeaderError {
    /// A short label for logs and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyHeaderError::Invalid(InvalidHeader::Signature) => "no_header",
            ProxyHeaderError::Invalid(InvalidHeader::V1) => "v1_header",
            ProxyHeaderError::Invalid(InvalidHeader::Version(_)) => "bad_version",
            ProxyHeaderError::Invalid(InvalidHeader::TooLong(_)) => "too_long",
            ProxyHeaderError::Invalid(InvalidHeader::Malformed(_)) => "malformed",
            ProxyHeaderError::Closed(_) => "closed",
            ProxyHeaderError::Timeout(_) => "timeout",
            ProxyHeaderError::Io(_) => "io",
        }
    }
}

/// Reads a PROXY v2 header, and not one byte more, from the start of `stream`: what follows
/// (a TLS ClientHello, an HTTP request) is left for the next layer. At most [`MAX_HEADER_LEN`]
/// bytes are read, all within `timeout`. Returns the client's address, or `None` when the header
/// names none (LOCAL command, unspecified family).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let read = async {
        // On the heap: this future lives inside the connection's task for as long as it runs.
        let mut buf = vec![0u8; MAX_HEADER_LEN];
        let mut filled = 0;
        loop {
            match decode(&buf[..filled]) {
                Decoded::NeedMore(n) => {
                    // `decode` never asks for more than MAX_HEADER_LEN in all.
                    let end = (filled + n).min(buf.len());
                    let got = stream.read(&mut buf[filled..end]).await?;
                    if got == 0 {
                        return Err(ProxyHeaderError::Closed(filled));
                    }
                    filled += got;
                }
                Decoded::Header(h) => return Ok(h.source),
                Decoded::Invalid(e) => return Err(e.into()),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ProxyHeaderError::Timeout(timeout)))
}

/// How long to wait before looking again when the first bytes could still be a PROXY header.
const PEEK_RETRY: Duration = Duration::from_millis(20);

/// Looks, without consuming anything, whether an untrusted connection starts with a PROXY header.
/// HTTP and TLS clients send their first bytes at once, so this usually costs one `peek`. Gives
/// up after `timeout` (a client that has sent nothing yet is for the next layer's deadlines to
/// judge), on end of stream and on errors: `None` means "serve as usual".
pub async fn peek_for_header(stream: &TcpStream, timeout: Duration) -> Option<HeaderKind> {
    let look = async {
        let mut buf = [0u8; SIGNATURE.len()];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            match sniff(&buf[..n]) {
                Sniffed::Proxy(kind) => return Some(kind),
                Sniffed::Other => return None,
                // `peek` returns at once while the same bytes are waiting: do not spin.
                Sniffed::NeedMore => tokio::time::sleep(PEEK_RETRY).await,
            }
        }
    };
    tokio::time::timeout(timeout, look).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};
    use std::net::Ipv4Addr;
    use tokio::io::AsyncWriteExt;

    fn v2(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
        Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (source, dest),
        )
        .build()
        .unwrap()
    }

    fn client4() -> SocketAddr {
        "203.0.113.7:4711".parse().unwrap()
    }

    fn dest4() -> SocketAddr {
        "192.0.2.1:443".parse().unwrap()
    }

    fn expect_header(d: Decoded) -> ProxyHeader {
        match d {
            Decoded::Header(h) => h,
            other => panic!("expected a header, got {other:?}"),
        }
    }

    #[test]
    fn whole_ipv4_header() {
        let mut bytes = v2(client4(), dest4());
        assert_eq!(bytes.len(), 16 + 12);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let h = expect_header(decode(&bytes));
        assert_eq!(h.len, 28);
        assert_eq!(h.source, Some(client4()));
    }

    #[test]
    fn whole_ipv6_header() {
        let src: SocketAddr = "[2001:db8::7]:4711".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let bytes = v2(src, dst);
        let h = expect_header(decode(&bytes));
        assert_eq!(h.len, 16 + 36);
        assert_eq!(h.source, Some(src));
    }

    #[test]
    fn split_byte_by_byte_never_asks_past_the_header() {
        // TLVs after the addresses (authority, unique id) count towards the length.
        let bytes = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (client4(), dest4()),
        )
        .write_tlv(0x02, b"deadsfu.com")
        .unwrap()
        .write_tlv(0x05, &[7u8; 128])
        .unwrap()
        .build()
        .unwrap();
        let total = bytes.len();
        for i in 0..total {
            match decode(&bytes[..i]) {
                Decoded::NeedMore(n) => assert!(n >= 1 && i + n <= total, "at {i}: {n}"),
                other => panic!("at {i}: {other:?}"),
            }
        }
        let h = expect_header(decode(&bytes));
        assert_eq!((h.len, h.source), (total, Some(client4())));
    }

    #[test]
    fn local_command_and_unspecified_family_name_no_client() {
        let local = Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Unspecified,
            Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            decode(&local),
            Decoded::Header(ProxyHeader {
                len: 16,
                source: None
            })
        );
        // LOCAL with addresses: they are the proxy's own and must be ignored.
        let local4 = Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Stream,
            (client4(), dest4()),
        )
        .build()
        .unwrap();
        assert_eq!(expect_header(decode(&local4)).source, None);
        let unspec = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Unspecified,
            Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(expect_header(decode(&unspec)).source, None);
    }

    #[test]
    fn bad_signature_is_refused_at_the_first_wrong_byte() {
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n"),
            Decoded::Invalid(InvalidHeader::Signature)
        );
        assert_eq!(decode(b"\x16"), Decoded::Invalid(InvalidHeader::Signature));
        assert_eq!(
            decode(b"\r\n\r\nX"),
            Decoded::Invalid(InvalidHeader::Signature)
        );
        assert_eq!(
            decode(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Decoded::Invalid(InvalidHeader::V1)
        );
        assert_eq!(decode(b""), Decoded::NeedMore(16));
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut bytes = v2(client4(), dest4());
        bytes[12] = 0x11;
        assert_eq!(
            decode(&bytes[..13]),
            Decoded::Invalid(InvalidHeader::Version(1))
        );
        assert_eq!(decode(&bytes), Decoded::Invalid(InvalidHeader::Version(1)));
    }

    #[test]
    fn bad_command_family_or_short_addresses_are_malformed() {
        let mut bytes = v2(client4(), dest4());
        bytes[12] = 0x2f;
        assert!(matches!(
            decode(&bytes),
            Decoded::Invalid(InvalidHeader::Malformed(_))
        ));
        let mut bytes = v2(client4(), dest4());
        bytes[13] = 0x21; // claims IPv6, carries 12 bytes
        assert!(matches!(
            decode(&bytes),
            Decoded::Invalid(InvalidHeader::Malformed(_))
        ));
    }

    #[test]
    fn oversize_length_is_refused_before_reading_it() {
        let mut bytes = v2(client4(), dest4())[..16].to_vec();
        bytes[14..16].copy_from_slice(&(MAX_HEADER_LEN as u16 - 16 + 1).to_be_bytes());
        assert_eq!(
            decode(&bytes),
            Decoded::Invalid(InvalidHeader::TooLong(MAX_HEADER_LEN + 1))
        );
        bytes[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            decode(&bytes),
            Decoded::Invalid(InvalidHeader::TooLong(16 + 65535))
        );
        // Exactly at the bound is fine.
        bytes[14..16].copy_from_slice(&(MAX_HEADER_LEN as u16 - 16).to_be_bytes());
        assert_eq!(decode(&bytes), Decoded::NeedMore(MAX_HEADER_LEN - 16));
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b""), Sniffed::NeedMore);
        assert_eq!(sniff(b"\r\n"), Sniffed::NeedMore);
        assert_eq!(sniff(b"P"), Sniffed::NeedMore);
        assert_eq!(sniff(b"POST /whip"), Sniffed::Other);
        assert_eq!(sniff(b"\r\nGET /"), Sniffed::Other);
        assert_eq!(sniff(b"\x16\x03\x01"), Sniffed::Other);
        assert_eq!(
            sniff(&v2(client4(), dest4())[..12]),
            Sniffed::Proxy(HeaderKind::V2)
        );
        assert_eq!(sniff(b"PROXY TCP4 "), Sniffed::Proxy(HeaderKind::V1));
    }

    #[tokio::test]
    async fn read_header_leaves_what_follows() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut bytes = v2(client4(), dest4());
        bytes.extend_from_slice(b"\x16\x03\x01rest");
        client.write_all(&bytes).await.unwrap();
        let got = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, Some(client4()));
        let mut rest = [0u8; 7];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16\x03\x01rest");
    }

    /// Hands out at most one byte per read, as a slow network might.
    struct OneByteAtATime<'a>(&'a [u8]);

    impl AsyncRead for OneByteAtATime<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first()
                && buf.remaining() > 0
            {
                buf.put_slice(&[*first]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_header_byte_by_byte() {
        let src: SocketAddr = "[2001:db8::7]:4711".parse().unwrap();
        let mut bytes = v2(src, "[2001:db8::1]:443".parse().unwrap());
        bytes.extend_from_slice(b"after");
        let mut reader = OneByteAtATime(&bytes);
        let got = read_header(&mut reader, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, Some(src));
        assert_eq!(reader.0, b"after");
    }

    #[tokio::test]
    async fn read_header_truncated_then_timeout() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client
            .write_all(&v2(client4(), dest4())[..20])
            .await
            .unwrap();
        let err = read_header(&mut server, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Timeout(_)), "{err}");
        assert_eq!(err.reason(), "timeout");
        drop(client);
    }

    #[tokio::test]
    async fn read_header_truncated_then_closed() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client
            .write_all(&v2(client4(), dest4())[..20])
            .await
            .unwrap();
        drop(client);
        let err = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Closed(20)), "{err}");
    }

    #[tokio::test]
    async fn read_header_refuses_http_and_oversize() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let err = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "no_header");

        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut bytes = v2(client4(), dest4());
        bytes[14..16].copy_from_slice(&2000u16.to_be_bytes());
        client.write_all(&bytes).await.unwrap();
        let err = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProxyHeaderError::Invalid(InvalidHeader::TooLong(2016))),
            "{err}"
        );
    }

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "127.0.0.10/32".parse().unwrap();
        assert_eq!(c.to_string(), "127.0.0.10/32");
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            " 192.0.2.7 ".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert_eq!(
            "2001:db8::/32".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::/32"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "example.com",
            "10.0.0.0/",
            "/8",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(
                err.to_string().contains("is not an IP network"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn cidr_matching() {
        let policy: ProxyPolicy = ["127.0.0.10/32", "10.0.0.0/8", "2001:db8::/32", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(policy.trusts(ip("127.0.0.10")));
        assert!(!policy.trusts(ip("127.0.0.11")));
        assert!(policy.trusts(ip("10.255.0.1")));
        assert!(!policy.trusts(ip("11.0.0.1")));
        assert!(policy.trusts(ip("2001:db8:1::5")));
        assert!(!policy.trusts(ip("2001:db9::5")));
        assert!(policy.trusts(ip("::1")));
        // An IPv4 peer on a dual-stack socket.
        assert!(policy.trusts(ip("::ffff:10.1.2.3")));
        assert!(!policy.trusts(ip("::ffff:11.1.2.3")));
        assert!(!ProxyPolicy::default().trusts(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn policy_from_a_list() {
        let policy: ProxyPolicy = "127.0.0.10, 10.0.0.0/8,,::1".parse().unwrap();
        assert_eq!(policy.to_string(), "127.0.0.10/32,10.0.0.0/8,::1/128");
        assert_eq!("".parse::<ProxyPolicy>().unwrap(), ProxyPolicy::default());
        assert_eq!(ProxyPolicy::default().to_string(), "none");
        let err = "10.0.0.0/8,nope".parse::<ProxyPolicy>().unwrap_err();
        assert!(
            err.to_string().starts_with("\"nope\" is not an IP network"),
            "{err}"
        );
    }
}
