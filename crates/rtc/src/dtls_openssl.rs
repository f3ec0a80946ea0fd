//! DTLS 1.2 for str0m on OpenSSL, every connection made from one shared `SSL_CTX`.
//!
//! str0m's OpenSSL provider builds a new context for every connection, decoding our certificate
//! and key from DER each time: about 190 µs with OpenSSL 3.6 (650 with 3.0), a tenth of a join,
//! where a connection made from a built context costs 1-2 µs. All sessions of an engine use its
//! one certificate (`shared.rs`), so contexts are kept per certificate, a few at most.
//!
//! A connection keeps str0m's `DtlsInstance` contract as its OpenSSL provider does: an empty
//! packet starts an active connection's handshake; once the handshake is done it reports, once
//! each, that it is connected, the peer's certificate and the SRTP keying material; application
//! data (SCTP) given before that waits for it; a peer's close_notify is answered with ours.
//! Unlike it, a handshake under way sends its last flight again at str0m's tick once OpenSSL's
//! retransmission timer has run out, rather than only when the peer repeats its own.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dimpl::{CryptoError as DtlsCryptoError, CryptoOperation};
use openssl::pkey::PKey;
use openssl::srtp::SrtpProfileId;
use openssl::ssl::{
    HandshakeError, MidHandshakeSslStream, ShutdownState, Ssl, SslContext, SslContextBuilder,
    SslMethod, SslOptions, SslSessionCacheMode, SslStream, SslVerifyMode,
};
use openssl::x509::X509;
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, KeyingMaterial,
    ProtocolVersion, SrtpProfile,
};

/// The record size when str0m gives none (its own default).
const DEFAULT_MTU: usize = 1150;
/// The ciphers str0m's OpenSSL provider offers, kept so that peers negotiate as before.
const CIPHERS: &str = "ECDHE+AESGCM:DHE+AESGCM:ECDHE+AES256:DHE+AES256";
/// RFC 5764 section 4.2.
const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";
/// How often a handshake under way asks for the time.
const HANDSHAKE_TICK: Duration = Duration::from_millis(500);
/// Contexts kept (one per certificate in use; a process normally has one).
const MAX_CONTEXTS: usize = 4;
/// Datagrams waiting for OpenSSL at most (it reads each as soon as it is given).
const MAX_INCOMING: usize = 16;
/// The largest application record read back.
const MAX_RECORD: usize = 16 * 1024;

/// Makes DTLS connections from contexts built once per certificate.
#[derive(Debug)]
pub(crate) struct SharedContextDtls {
    /// Makes certificates (str0m's OpenSSL provider does it well enough).
    certificates: &'static dyn DtlsProvider,
    contexts: Mutex<Vec<(DtlsCert, SslContext)>>,
}

impl SharedContextDtls {
    pub(crate) fn new(certificates: &'static dyn DtlsProvider) -> Self {
        Self {
            certificates,
            contexts: Mutex::new(Vec::new()),
        }
    }

    fn context(&self, cert: &DtlsCert) -> Result<SslContext, CryptoError> {
        let mut contexts = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
        let same =
            |c: &DtlsCert| c.certificate == cert.certificate && c.private_key == cert.private_key;
        if let Some((_, ctx)) = contexts.iter().find(|(c, _)| same(c)) {
            return Ok(ctx.clone());
        }
        let ctx = build_context(cert)?;
        if contexts.len() == MAX_CONTEXTS {
            contexts.remove(0);
        }
        contexts.push((cert.clone(), ctx.clone()));
        Ok(ctx)
    }
}

fn build_context(cert: &DtlsCert) -> Result<SslContext, CryptoError> {
    let mut ctx = SslContextBuilder::new(SslMethod::dtls())?;
    ctx.set_cipher_list(CIPHERS)?;
    let profiles: Vec<&str> = SrtpProfile::ALL
        .iter()
        .filter_map(|p| srtp_profile_name(*p))
        .collect();
    ctx.set_tlsext_use_srtp(&profiles.join(":"))?;
    // WebRTC checks the peer's certificate against the fingerprint in its SDP (str0m does,
    // with the certificate we report), not against any authority: any certificate is taken
    // here, but one is required.
    ctx.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |_, _| true,
    );
    let key = PKey::private_key_from_der(&cert.private_key)?;
    ctx.set_private_key(&key)?;
    let certificate = X509::from_der(&cert.certificate)?;
    ctx.set_certificate(&certificate)?;
    // WebRTC never resumes a DTLS session: a shared context must neither cache every
    // session it completes (OpenSSL's default, up to 20,480 of them) nor issue tickets. The
    // MTU is ours to set (per connection), not the socket's to report.
    ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
    ctx.set_options(
        SslOptions::SINGLE_ECDH_USE
            | SslOptions::NO_DTLSV1
            | SslOptions::NO_QUERY_MTU
            | SslOptions::NO_TICKET,
    );
    Ok(ctx.build())
}

fn srtp_profile_name(profile: SrtpProfile) -> Option<&'static str> {
    match profile {
        SrtpProfile::AES128_CM_SHA1_80 => Some("SRTP_AES128_CM_SHA1_80"),
        SrtpProfile::AEAD_AES_128_GCM => Some("SRTP_AEAD_AES_128_GCM"),
        SrtpProfile::AEAD_AES_256_GCM => Some("SRTP_AEAD_AES_256_GCM"),
        _ => None,
    }
}

fn srtp_profile_of(id: SrtpProfileId) -> Option<SrtpProfile> {
    match id {
        SrtpProfileId::SRTP_AES128_CM_SHA1_80 => Some(SrtpProfile::AES128_CM_SHA1_80),
        SrtpProfileId::SRTP_AEAD_AES_128_GCM => Some(SrtpProfile::AEAD_AES_128_GCM),
        SrtpProfileId::SRTP_AEAD_AES_256_GCM => Some(SrtpProfile::AEAD_AES_256_GCM),
        _ => None,
    }
}

impl DtlsProvider for SharedContextDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.certificates.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        _now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        if !matches!(dtls_version, DtlsVersion::Dtls12) {
            return Err(CryptoError::Other(format!(
                "OpenSSL DTLS here is DTLS 1.2 only, not {dtls_version:?}"
            )));
        }
        let ctx = self.context(cert)?;
        let mut ssl = Ssl::new(&ctx)?;
        ssl.set_mtu(mtu.unwrap_or(DEFAULT_MTU) as u32)?;
        Ok(Box::new(Connection {
            state: State::New(ssl),
            active: None,
            keys_exported: false,
            events: VecDeque::new(),
            waiting_app_data: VecDeque::new(),
            next_timeout: None,
            close_sent: false,
            close_received: false,
        }))
    }

    fn is_test(&self) -> bool {
        self.certificates.is_test()
    }
}

/// The connection's datagrams as OpenSSL's stream: each read gives one received datagram,
/// each write is one datagram to send.
#[derive(Default)]
struct Datagrams {
    incoming: VecDeque<Vec<u8>>,
    outgoing: VecDeque<Vec<u8>>,
}

impl io::Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(datagram) = self.incoming.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok(n)
    }
}

impl io::Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum State {
    /// Not started: waits for its role and its first packet (or, active, its start).
    New(Ssl),
    Handshaking(MidHandshakeSslStream<Datagrams>),
    Established(SslStream<Datagrams>),
    /// The handshake failed; nothing more is read or written.
    Failed,
}

/// What the connection has to report, in the order str0m reads it.
enum Event {
    Connected,
    PeerCert(Vec<u8>),
    Keys(Vec<u8>, SrtpProfile),
    CloseNotify,
    AppData(Vec<u8>),
}

struct Connection {
    state: State,
    active: Option<bool>,
    keys_exported: bool,
    events: VecDeque<Event>,
    waiting_app_data: VecDeque<Vec<u8>>,
    next_timeout: Option<Instant>,
    close_sent: bool,
    close_received: bool,
}

/// Copies `bytes` to the front of `buf` (which the caller checked is large enough).
fn fill<'a>(buf: &'a mut [u8], bytes: &[u8]) -> &'a [u8] {
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

fn failed(op: CryptoOperation) -> DtlsImplError {
    DtlsImplError::CryptoError(DtlsCryptoError::OperationFailed(op))
}

impl Connection {
    fn datagrams(&mut self) -> Option<&mut Datagrams> {
        match &mut self.state {
            State::New(_) | State::Failed => None,
            State::Handshaking(mid) => Some(mid.get_mut()),
            State::Established(stream) => Some(stream.get_mut()),
        }
    }

    /// Takes the handshake as far as the datagrams given allow.
    fn drive_handshake(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        let Some(active) = self.active else {
            return Ok(());
        };
        let result = match std::mem::replace(&mut self.state, State::Failed) {
            State::New(ssl) => {
                if packet.is_empty() && !active {
                    // A passive connection starts with the peer's first record.
                    self.state = State::New(ssl);
                    return Ok(());
                }
                let mut datagrams = Datagrams::default();
                if !packet.is_empty() {
                    datagrams.incoming.push_back(packet.to_vec());
                }
                if active {
                    ssl.connect(datagrams)
                } else {
                    ssl.accept(datagrams)
                }
            }
            State::Handshaking(mut mid) => {
                if !packet.is_empty() && mid.get_ref().incoming.len() < MAX_INCOMING {
                    mid.get_mut().incoming.push_back(packet.to_vec());
                }
                mid.handshake()
            }
            other => {
                self.state = other;
                return Ok(());
            }
        };
        match result {
            Ok(stream) => {
                self.state = State::Established(stream);
                self.established()
            }
            Err(HandshakeError::WouldBlock(mid)) => {
                self.state = State::Handshaking(mid);
                Ok(())
            }
            Err(HandshakeError::SetupFailure(e)) => {
                tracing::debug!(error = %e, "DTLS set-up failed");
                Err(failed(CryptoOperation::CreateCipher))
            }
            Err(HandshakeError::Failure(mid)) => {
                tracing::debug!(error = ?mid.error(), "DTLS handshake failed");
                Err(failed(CryptoOperation::VerifySignature))
            }
        }
    }

    /// The handshake is done: what it established is reported, waiting data goes out.
    fn established(&mut self) -> Result<(), DtlsImplError> {
        let State::Established(stream) = &mut self.state else {
            return Ok(());
        };
        if !self.keys_exported {
            let ssl = stream.ssl();
            let peer_cert = ssl
                .peer_certificate()
                .and_then(|c| c.to_der().ok())
                .ok_or(failed(CryptoOperation::VerifySignature))?;
            let profile = ssl
                .selected_srtp_profile()
                .and_then(|p| srtp_profile_of(p.id()))
                .ok_or(failed(CryptoOperation::CreateCipher))?;
            let mut material = vec![0; profile.keying_material_len()];
            ssl.export_keying_material(&mut material, SRTP_EXPORTER_LABEL, None)
                .map_err(|_| failed(CryptoOperation::CreateCipher))?;
            self.keys_exported = true;
            self.events.push_back(Event::Connected);
            self.events.push_back(Event::PeerCert(peer_cert));
            self.events.push_back(Event::Keys(material, profile));
        }
        self.write_waiting()
    }

    /// Writes the application data that waited for the handshake (and what was just given).
    fn write_waiting(&mut self) -> Result<(), DtlsImplError> {
        let State::Established(stream) = &mut self.state else {
            return Ok(());
        };
        while let Some(data) = self.waiting_app_data.pop_front() {
            stream
                .ssl_write(&data)
                .map_err(|_| failed(CryptoOperation::Encrypt))?;
        }
        Ok(())
    }

    /// Reads the application records (and a close_notify) the datagrams given carry.
    fn read_records(&mut self) -> Result<(), DtlsImplError> {
        let State::Established(stream) = &mut self.state else {
            return Ok(());
        };
        // On the stack: a data channel's every packet comes through here.
        let mut buf = [0u8; MAX_RECORD];
        loop {
            match stream.ssl_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.events.push_back(Event::AppData(buf[..n].to_vec())),
                Err(e) if e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => break,
                Err(e)
                    if e.code() == openssl::ssl::ErrorCode::WANT_READ
                        || e.code() == openssl::ssl::ErrorCode::WANT_WRITE =>
                {
                    break;
                }
                Err(_) => return Err(failed(CryptoOperation::Decrypt)),
            }
        }
        if !self.close_received && stream.get_shutdown().contains(ShutdownState::RECEIVED) {
            self.close_received = true;
            self.events.push_back(Event::CloseNotify);
            if !self.close_sent {
                let _ = stream.shutdown();
                self.close_sent = true;
            }
        }
        Ok(())
    }

    fn is_handshaking(&self) -> bool {
        matches!(self.state, State::New(_) | State::Handshaking(_))
    }
}

impl DtlsInstance for Connection {
    fn set_active(&mut self, active: bool) {
        self.active.get_or_insert(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        if self.is_handshaking() {
            return self.drive_handshake(packet);
        }
        if packet.is_empty() {
            return Ok(());
        }
        let Some(datagrams) = self.datagrams() else {
            return Ok(());
        };
        if datagrams.incoming.len() < MAX_INCOMING {
            datagrams.incoming.push_back(packet.to_vec());
        }
        self.read_records()
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        if let Some(datagrams) = self.datagrams()
            && let Some(datagram) = datagrams.outgoing.pop_front()
        {
            if datagram.len() <= buf.len() {
                return DtlsOutput::Packet(fill(buf, &datagram));
            }
            tracing::warn!(
                len = datagram.len(),
                "DTLS datagram larger than str0m's buffer, dropped"
            );
        }
        if let Some(at) = self.next_timeout.take() {
            return DtlsOutput::Timeout(at);
        }
        while let Some(event) = self.events.pop_front() {
            let len = match &event {
                Event::PeerCert(bytes) | Event::Keys(bytes, _) | Event::AppData(bytes) => {
                    bytes.len()
                }
                Event::Connected | Event::CloseNotify => 0,
            };
            if len > buf.len() {
                tracing::warn!(len, "DTLS output larger than str0m's buffer, dropped");
                continue;
            }
            return match event {
                Event::Connected => DtlsOutput::Connected,
                Event::CloseNotify => DtlsOutput::CloseNotify,
                Event::PeerCert(der) => DtlsOutput::PeerCert(fill(buf, &der)),
                Event::Keys(material, profile) => {
                    DtlsOutput::KeyingMaterial(KeyingMaterial::new(&material), profile)
                }
                Event::AppData(data) => DtlsOutput::ApplicationData(fill(buf, &data)),
            };
        }
        DtlsOutput::Timeout(Instant::now() + Duration::from_secs(3600))
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        if !self.is_handshaking() {
            return Ok(());
        }
        self.next_timeout = Some(now + HANDSHAKE_TICK);
        // OpenSSL sends its last flight again when its own timer has run out and it is asked
        // to go on without a new datagram.
        if matches!(self.state, State::Handshaking(_)) {
            self.drive_handshake(&[])?;
        }
        Ok(())
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<(), DtlsImplError> {
        if matches!(self.state, State::Failed) {
            return Err(failed(CryptoOperation::Encrypt));
        }
        self.waiting_app_data.push_back(data.to_vec());
        self.write_waiting()
    }

    fn is_active(&self) -> bool {
        self.active.unwrap_or(false)
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        Some(ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        self.close_sent || self.close_received
    }

    fn is_closed(&self) -> bool {
        let drained = match &self.state {
            State::Established(stream) => stream.get_ref().outgoing.is_empty(),
            _ => true,
        };
        self.close_sent && drained
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        if let State::Established(stream) = &mut self.state {
            let _ = stream.shutdown();
        }
        self.close_sent = true;
        Ok(())
    }
}

#[cfg(test)]
#[path = "dtls_openssl_tests.rs"]
mod tests;
