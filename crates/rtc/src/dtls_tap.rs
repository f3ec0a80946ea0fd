//! A DTLS provider that hands the negotiated SRTP keys to deadsfu as well as to str0m.
//!
//! Viewers' media does not go through str0m: the worker rewrites, encrypts and sends each
//! packet itself (see `egress.rs`), which is several times cheaper per packet than str0m's
//! write/poll cycle. str0m still runs ICE, DTLS and incoming RTCP, so deadsfu needs the SRTP
//! master keys that DTLS produced. str0m does not expose them; its DTLS is pluggable, though, so
//! this wrapper around our OpenSSL DTLS (`dtls_openssl.rs`, one context for all connections)
//! copies the keying material as str0m reads it.
//!
//! str0m drives DTLS synchronously inside `Rtc::poll_output`, on the worker's thread, so the
//! keys are left in a thread-local slot that the worker empties right after the call that
//! completed the handshake (see [`take_keys`]).
//!
//! The peer that writes a session's SDP answer never runs DTLS (see `session_setup.rs`): its
//! provider, [`answering_crypto_provider`], builds the OpenSSL connection only when DTLS starts
//! (a passive one at the peer's first record, an active one when first polled), so answering
//! costs no OpenSSL connection.
//!
//! The wrapper also retires the DTLS connection some time after the handshake: once SRTP is
//! keyed, DTLS has nothing left to do in a WebRTC session that carries no data channel (those
//! that do are left alone), yet OpenSSL keeps the connection's record and handshake buffers
//! (with a context of its own per connection, as str0m's provider made them, about 100 KiB per
//! session). Retiring it frees those; later DTLS records are ignored. The grace
//! period lets a peer that lost our last handshake flight retransmit its own and still get an
//! answer.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use str0m::config::CryptoProvider;

use crate::dtls_openssl::SharedContextDtls;
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

/// str0m's OpenSSL crypto with DTLS wrapped by [`TapProvider`], and ring's hashes
/// (`hashes.rs`).
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static TAP: OnceLock<TapProvider> = OnceLock::new();
    tapped(&PROVIDER, &TAP, false)
}

/// The same, building each DTLS connection only when it starts: for peers that only answer.
pub(crate) fn answering_crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static TAP: OnceLock<TapProvider> = OnceLock::new();
    tapped(&PROVIDER, &TAP, true)
}

fn tapped(
    provider: &'static OnceLock<Arc<CryptoProvider>>,
    tap: &'static OnceLock<TapProvider>,
    lazy: bool,
) -> Arc<CryptoProvider> {
    provider
        .get_or_init(|| {
            let mut provider = str0m::crypto::from_feature_flags();
            static SHARED_CONTEXT: OnceLock<SharedContextDtls> = OnceLock::new();
            let dtls =
                SHARED_CONTEXT.get_or_init(|| SharedContextDtls::new(provider.dtls_provider));
            let tap = tap.get_or_init(|| TapProvider { inner: dtls, lazy });
            provider.dtls_provider = tap;
            provider.sha1_hmac_provider = &crate::hashes::RingSha1Hmac;
            provider.sha256_provider = &crate::hashes::RingSha256;
            Arc::new(provider)
        })
        .clone()
}

#[derive(Debug)]
struct TapProvider {
    inner: &'static dyn DtlsProvider,
    /// Build connections when DTLS starts rather than with the peer.
    lazy: bool,
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
        let (inner, unbuilt) = if self.lazy {
            let unbuilt = UnbuiltDtls {
                provider: self.inner,
                cert: cert.clone(),
                version: dtls_version,
                mtu,
            };
            (None, Some(unbuilt))
        } else {
            let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
            (Some(inner), None)
        };
        Ok(Box::new(TapInstance {
            inner,
            unbuilt,
            active_set: false,
            active: false,
            version: None,
            now,
            connected: false,
            connected_at: None,
            carries_data: false,
        }))
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

/// How long a DTLS connection is kept after its handshake.
const RETIRE_AFTER: Duration = Duration::from_secs(10);

/// What it takes to build the connection when DTLS starts.
#[derive(Debug)]
struct UnbuiltDtls {
    provider: &'static dyn DtlsProvider,
    cert: DtlsCert,
    version: DtlsVersion,
    mtu: Option<usize>,
}

impl UnbuiltDtls {
    /// None when the provider fails (it took the same certificate at start, so it should
    /// not): the session then never gets keys and ends at its connect deadline.
    fn build(
        self,
        now: Instant,
        active: Option<bool>,
    ) -> Result<Option<Box<dyn DtlsInstance>>, DtlsImplError> {
        let mut inner = match self
            .provider
            .new_dtls(&self.cert, now, self.version, self.mtu)
        {
            Ok(inner) => inner,
            Err(e) => {
                tracing::warn!(error = %e, "DTLS connection not built");
                return Ok(None);
            }
        };
        if let Some(active) = active {
            inner.set_active(active);
            inner.handle_timeout(now)?;
        }
        Ok(Some(inner))
    }
}

#[derive(Debug)]
struct TapInstance {
    /// The connection: None before it is built and once retired.
    inner: Option<Box<dyn DtlsInstance>>,
    /// Present until the connection is built.
    unbuilt: Option<UnbuiltDtls>,
    /// Whether str0m has set the role yet.
    active_set: bool,
    active: bool,
    version: Option<ProtocolVersion>,
    /// The time str0m last gave us.
    now: Instant,
    connected: bool,
    /// When str0m first gave us the time after the handshake.
    connected_at: Option<Instant>,
    /// A data channel (SCTP) runs over this connection: it is never retired.
    carries_data: bool,
}

impl TapInstance {
    /// Builds the connection (once), in the role str0m set and at the time it last gave.
    fn build(&mut self) -> Result<(), DtlsImplError> {
        if let Some(unbuilt) = self.unbuilt.take() {
            let role = self.active_set.then_some(self.active);
            self.inner = unbuilt.build(self.now, role)?;
        }
        Ok(())
    }
}

impl DtlsInstance for TapInstance {
    fn set_active(&mut self, active: bool) {
        self.active = active;
        self.active_set = true;
        if let Some(inner) = &mut self.inner {
            inner.set_active(active)
        }
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        if self.unbuilt.is_some() {
            if packet.is_empty() {
                return Ok(());
            }
            self.build()?;
        }
        match &mut self.inner {
            Some(inner) => inner.handle_packet(packet),
            None => Ok(()),
        }
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        if self.unbuilt.is_some() && self.active_set && self.active {
            // A client speaks first: its ClientHello is due when str0m first asks for output
            // (str0m's nudge to start it came before there was a connection: given again).
            match self.build() {
                Ok(()) => {
                    if let Some(inner) = &mut self.inner
                        && let Err(e) = inner.handle_packet(&[])
                    {
                        tracing::debug!(error = %e, "DTLS client not started");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "DTLS client not started"),
            }
        }
        let Some(inner) = &mut self.inner else {
            // Not built (nothing to do before the peer's first record) or retired (nothing
            // more, ever).
            return DtlsOutput::Timeout(self.now + Duration::from_secs(86_400));
        };
        let out = inner.poll_output(buf);
        match out {
            DtlsOutput::KeyingMaterial(ref km, profile) => {
                let keys = SrtpKeys {
                    profile,
                    material: km.to_vec(),
                    we_are_client: inner.is_active(),
                };
                LAST_KEYS.with(|k| *k.borrow_mut() = Some(keys));
            }
            DtlsOutput::Connected => {
                self.connected = true;
                self.active = inner.is_active();
                self.version = inner.protocol_version();
            }
            DtlsOutput::ApplicationData(_) => self.carries_data = true,
            // Make str0m call `handle_timeout` when retirement is due: at once when the
            // handshake has just completed (to learn the time), then at the end of the grace.
            DtlsOutput::Timeout(t) if self.connected && !self.carries_data => {
                return DtlsOutput::Timeout(match self.connected_at {
                    None => self.now,
                    Some(at) => t.min(at + RETIRE_AFTER),
                });
            }
            _ => {}
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.now = now;
        if self.connected && self.connected_at.is_none() {
            self.connected_at = Some(now);
        }
        if !self.carries_data
            && self
                .connected_at
                .is_some_and(|at| now.saturating_duration_since(at) >= RETIRE_AFTER)
            && self.inner.take().is_some()
        {
            tracing::debug!("DTLS retired after the handshake");
        }
        match &mut self.inner {
            Some(inner) => inner.handle_timeout(now),
            None => Ok(()),
        }
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<(), DtlsImplError> {
        if self.unbuilt.is_some() {
            return Err(DtlsImplError::HandshakePending);
        }
        self.carries_data = true;
        match &mut self.inner {
            Some(inner) => inner.send_application_data(data),
            // No data channels: nothing is ever sent here once retired.
            None => Ok(()),
        }
    }

    fn is_active(&self) -> bool {
        self.inner.as_ref().map_or(self.active, |i| i.is_active())
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner
            .as_ref()
            .map_or(self.version, |i| i.protocol_version())
    }

    fn is_closing(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_closing())
    }

    fn is_closed(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_closed())
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        match &mut self.inner {
            Some(inner) => inner.close(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "dtls_tap_tests.rs"]
mod tests;
