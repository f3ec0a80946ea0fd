//! The TLS handshake of the HTTPS listener.
//!
//! The ClientHello is read first (rustls's `Acceptor`): a hello offering only ALPN
//! `acme-tls/1` is a CA validating a TLS-ALPN-01 challenge, answered with the challenge
//! certificate from the store, whichever node placed the order; every other hello gets the
//! normal configuration (SNI resolver, `h2` and `http/1.1`).

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::pem_pair::certified_key_unchecked;
use crate::resolver::CertResolver;
use crate::store::CertStore;

pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Why an accepted TCP connection does not become an HTTPS connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake took longer than {0:?}")]
    Timeout(Duration),
    /// A TLS-ALPN-01 validation was answered (or refused); there is no HTTP to serve.
    #[error("ACME TLS-ALPN-01 validation connection")]
    AcmeValidation,
}

/// Shared by every connection of the HTTPS listener.
#[derive(Clone)]
pub struct HttpsAcceptor {
    config: Arc<ServerConfig>,
    store: Option<Arc<dyn CertStore>>,
    handshake_timeout: Duration,
}

/// The normal server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, SNI.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl HttpsAcceptor {
    /// `store` answers TLS-ALPN-01 challenges; `None` refuses them.
    pub fn new(
        resolver: Arc<CertResolver>,
        store: Option<Arc<dyn CertStore>>,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            config: server_config(resolver),
            store,
            handshake_timeout,
        }
    }

    /// Runs the handshake, bounded by the handshake timeout.
    pub async fn accept(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, AcceptError> {
        match tokio::time::timeout(self.handshake_timeout, self.handshake(tcp)).await {
            Ok(result) => result,
            Err(_) => Err(AcceptError::Timeout(self.handshake_timeout)),
        }
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, AcceptError> {
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp)
            .await
            .map_err(AcceptError::Handshake)?;
        let hello = start.client_hello();
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if !acme {
            return start
                .into_stream(self.config.clone())
                .await
                .map_err(AcceptError::Handshake);
        }
        let sni = hello.server_name().map(str::to_owned);
        let answer = match (&self.store, sni) {
            (Some(store), Some(sni)) => match store.alpn_challenge(&sni).await {
                Ok(Some(answer)) => Some((sni, answer)),
                Ok(None) => {
                    tracing::debug!(domain = %sni, "TLS-ALPN-01 validation for a domain with no pending challenge");
                    None
                }
                Err(e) => {
                    tracing::warn!(domain = %sni, error = %e, "cannot read the TLS-ALPN-01 answer");
                    None
                }
            },
            _ => None,
        };
        let Some((sni, answer)) = answer else {
            // Dropping `start` closes the connection without a certificate.
            return Err(AcceptError::AcmeValidation);
        };
        let cert = match certified_key_unchecked(&answer.cert_pem, answer.key_pem.expose()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(domain = %sni, error = %e, "stored TLS-ALPN-01 answer is unusable");
                return Err(AcceptError::AcmeValidation);
            }
        };
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("ring supports TLS 1.2 and 1.3")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(OneCert(cert)));
        // RFC 8737: the server must negotiate acme-tls/1 and nothing else.
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        tracing::debug!(domain = %sni, "answering a TLS-ALPN-01 validation");
        let _ = start.into_stream(Arc::new(config)).await;
        Err(AcceptError::AcmeValidation)
    }
}

/// Serves one certificate whatever the hello says (the challenge certificate).
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}
