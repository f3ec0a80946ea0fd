//! Connection to Redis: mutual TLS with the bundle's CA and client certificate, ACL user and
//! password, RESP3, and automatic reconnection with backoff (redis-rs `ConnectionManager`).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo,
    TlsCertificates,
};
use tokio::sync::mpsc;

use crate::bundle::Bundle;
use crate::keys::Keys;

/// How long one command may take before it counts as failed.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a TCP + TLS + HELLO handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RedisConnError {
    #[error("bad Redis address {0:?} in bundle (want host:port)")]
    BadAddress(String),
    #[error("cannot reach Redis at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
}

/// A shared, self-reconnecting connection. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RedisConn {
    manager: ConnectionManager,
    keys: Keys,
    addr: String,
}

impl RedisConn {
    /// Connects to the first of the bundle's Redis addresses that answers.
    pub async fn connect(bundle: &Bundle) -> Result<Self, RedisConnError> {
        Self::connect_inner(bundle, None).await
    }

    /// Like [`RedisConn::connect`], and RESP3 push messages (pub/sub) go to `pushes`.
    /// Subscriptions are renewed by the connection after a reconnect.
    pub async fn connect_with_pushes(
        bundle: &Bundle,
        pushes: mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<Self, RedisConnError> {
        Self::connect_inner(bundle, Some(pushes)).await
    }

    async fn connect_inner(
        bundle: &Bundle,
        pushes: Option<mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<Self, RedisConnError> {
        install_crypto_provider();
        let mut last_error = None;
        for addr in &bundle.settings.redis_addrs {
            let client = client_for(bundle, addr)?;
            let mut config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_min_delay(Duration::from_millis(100))
                .set_max_delay(Duration::from_secs(2))
                .set_number_of_retries(2);
            if let Some(pushes) = pushes.clone() {
                config = config
                    .set_push_sender(pushes)
                    .set_automatic_resubscription();
            }
            match client.get_connection_manager_with_config(config).await {
                Ok(manager) => {
                    tracing::debug!(redis = %addr, user = %bundle.settings.user, "connected to Redis");
                    return Ok(Self {
                        manager,
                        keys: Keys::new(bundle.settings.key_prefix.clone()),
                        addr: addr.clone(),
                    });
                }
                Err(err) => {
                    tracing::debug!(redis = %addr, error = %describe(&err), "Redis connection failed");
                    last_error = Some(RedisConnError::Unreachable {
                        addr: addr.clone(),
                        reason: describe(&err),
                    });
                }
            }
        }
        Err(last_error.expect("bundle has at least one Redis address"))
    }

    /// The connection for commands. redis-rs reconnects it in the background after errors.
    pub fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The `host:port` this connection reaches.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

fn client_for(bundle: &Bundle, addr: &str) -> Result<redis::Client, RedisConnError> {
    let (host, port) =
        split_host_port(addr).ok_or_else(|| RedisConnError::BadAddress(addr.into()))?;
    let redis_settings = RedisConnectionInfo::default()
        .set_username(&bundle.settings.user)
        .set_password(&bundle.settings.password)
        .set_protocol(ProtocolVersion::RESP3)
        // CLIENT SETINFO is not granted to the roles (and older servers lack it).
        .set_skip_set_lib_name();
    let info = ConnectionAddr::TcpTls {
        host,
        port,
        insecure: false,
        tls_params: None,
    }
    .into_connection_info()
    .map_err(|_| RedisConnError::BadAddress(addr.into()))?
    .set_redis_settings(redis_settings);
    let certificates = TlsCertificates {
        client_tls: Some(ClientTlsConfig {
            client_cert: bundle.client_cert_pem.as_bytes().to_vec(),
            client_key: bundle.client_key_pem.expose().as_bytes().to_vec(),
        }),
        root_cert: Some(bundle.ca_cert_pem.as_bytes().to_vec()),
    };
    redis::Client::build_with_tls(info, certificates).map_err(|err| RedisConnError::Unreachable {
        addr: addr.into(),
        reason: describe(&err),
    })
}

/// `host:port` or `[v6]:port`.
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// A Redis error as text. redis-rs errors carry server replies and I/O causes, never the
/// connection password (it is sent inside HELLO and not echoed), so they are safe to show.
pub fn describe(err: &redis::RedisError) -> String {
    err.to_string()
}

/// rustls needs a process-wide crypto provider when more than one is compiled in (other
/// crates of the binary may enable aws-lc-rs); pick ring unless one is already chosen.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
