//! A DTLS provider that hands the negotiated SRTP keys to deadsfu as well as to str0m.
//!
//! Viewers' media does not go through str0m: the worker rewrites, encrypts and sends each
//! packet itself (see `egress.rs`), which is several times cheaper per packet than str0m's
//! write/poll cycle. str0m still runs ICE, DTLS and incoming RTCP, so deadsfu needs the SRTP
//! master keys that DTLS produced. str0m does not expose them; its DTLS is pluggable, though, so
//! this wrapper around the OpenSSL provider copies the keying material as str0m reads it.
//!
//! str0m drives DTLS synchronously inside `Rtc::handle_input`, on the worker's thread, so the
//! keys are left in a thread-local slot that the worker empties right after the call that
//! completed the handshake (see [`take_keys`]).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::config::CryptoProvider;
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};

/// SRTP master keys and salts from a DTLS handshake (RFC 5764 section 4.2).
#[derive(Clone)]
pub(crate) struct SrtpKeys {
    pub profile: SrtpProfile,
    /// client key, server key, client salt, server salt.
    pub material: Vec<u8>,
    /// Whether we were the DTLS client: our write keys are the client's.
    pub we_are_client: bool,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .field("we_are_client", &self.we_are_client)
            .finish_non_exhaustive()
    }
}

thread_local! {
    static LAST_KEYS: RefCell<Option<SrtpKeys>> = const { RefCell::new(None) };
}

/// The keys of the handshake that completed on this thread since the last call.
pub(crate) fn take_keys() -> Option<SrtpKeys> {
    LAST_KEYS.with(|k| k.borrow_mut().take())
}

/// str0m's OpenSSL crypto with DTLS wrapped by [`TapProvider`].
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static TAP: OnceLock<TapProvider> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = str0m::crypto::from_feature_flags();
            let tap = TAP.get_or_init(|| TapProvider {
                inner: provider.dtls_provider,
            });
            provider.dtls_provider = tap;
            Arc::new(provider)
        })
        .clone()
}

#[derive(Debug)]
struct TapProvider {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for TapProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
        Ok(Box::new(TapInstance { inner }))
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

#[derive(Debug)]
struct TapInstance {
    inner: Box<dyn DtlsInstance>,
}

impl DtlsInstance for TapInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(km, profile) = &out {
            let keys = SrtpKeys {
                profile: *profile,
                material: km.to_vec(),
                we_are_client: self.inner.is_active(),
            };
            LAST_KEYS.with(|k| *k.borrow_mut() = Some(keys));
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}
