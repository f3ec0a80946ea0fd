//! HTTPS of one node assembled from its parts: the resolver fed by certificate files, ACME
//! and the shared store; the acceptor; the background tasks that keep them current.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::acceptor::HttpsAcceptor;
use crate::acme::{AcmeConfig, AcmeError, AcmeManager};
use crate::files::{FileCertError, FileCerts};
use crate::pem_pair::ServedCert;
use crate::resolver::{CertResolver, CertSource};
use crate::store::CertStore;

/// How often the shared store is read again even without an event (missed events heal).
const STORE_RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct HttpsOptions {
    /// `--tls-cert`, `--tls-key`.
    pub files: Option<(PathBuf, PathBuf)>,
    /// `--acme-domain` and friends.
    pub acme: Option<AcmeConfig>,
    /// Serve every certificate of the store (cluster mode: names other nodes obtained).
    pub serve_store: bool,
    pub handshake_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error(transparent)]
    Files(#[from] FileCertError),
    #[error(transparent)]
    Acme(#[from] AcmeError),
}

/// A node's HTTPS: hand [`NodeHttps::acceptor`] to the listener.
pub struct NodeHttps {
    pub resolver: Arc<CertResolver>,
    pub acceptor: HttpsAcceptor,
    pub acme: Option<Arc<AcmeManager>>,
    store: Arc<dyn CertStore>,
    serve_store: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for NodeHttps {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl NodeHttps {
    /// Loads what is available at once (files, stored certificates) and starts the tasks
    /// that obtain and refresh the rest. Fails only on bad certificate files or ACME
    /// settings: at start there is nothing older to fall back on.
    pub async fn start(
        options: HttpsOptions,
        store: Arc<dyn CertStore>,
    ) -> Result<Arc<Self>, HttpsError> {
        let resolver = CertResolver::new();
        let mut tasks = Vec::new();
        if let Some((cert, key)) = &options.files {
            let files = FileCerts::new(cert, key);
            let served = files.install(&resolver)?;
            tracing::info!(names = ?served.names, not_after = %crate::resolver::rfc3339(served.not_after), "serving the certificate files");
            tasks.push(files.spawn_reloader(resolver.clone()));
        }
        let acme = match options.acme {
            Some(config) if !config.domains.is_empty() => {
                let manager = AcmeManager::new(config, store.clone(), resolver.clone())?;
                manager.load_stored().await;
                tasks.extend(manager.spawn());
                Some(manager)
            }
            _ => None,
        };
        let acceptor = HttpsAcceptor::new(
            resolver.clone(),
            Some(store.clone()),
            options.handshake_timeout,
        );
        let mut node = Self {
            resolver,
            acceptor,
            acme,
            store,
            serve_store: options.serve_store,
            tasks,
        };
        if node.serve_store {
            node.refresh_store().await;
            let resync = Arc::new(StoreSync {
                resolver: node.resolver.clone(),
                store: node.store.clone(),
            });
            node.tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(STORE_RESYNC);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    resync.run().await;
                }
            }));
        }
        Ok(Arc::new(node))
    }

    /// Reads every stored certificate into the store layer of the resolver.
    pub async fn refresh_store(&self) {
        if self.serve_store {
            StoreSync {
                resolver: self.resolver.clone(),
                store: self.store.clone(),
            }
            .run()
            .await;
        }
    }

    /// A certificate changed in the store (an event from another node): serve it now.
    pub async fn certificate_updated(&self, domain: &str) {
        tracing::debug!(domain, "certificate update announced");
        if let Some(acme) = &self.acme {
            acme.wake();
        }
        self.refresh_store().await;
    }
}

struct StoreSync {
    resolver: Arc<CertResolver>,
    store: Arc<dyn CertStore>,
}

impl StoreSync {
    async fn run(&self) {
        let list = match self.store.list_certs().await {
            Ok(list) => list,
            // Keep serving what is loaded; the next resync tries again.
            Err(e) => {
                tracing::debug!(error = %e, "certificate store not readable");
                return;
            }
        };
        let mut entries: Vec<(String, ServedCert)> = Vec::new();
        for (domain, stored) in list {
            match ServedCert::from_stored(&stored) {
                Ok(served) => entries.push((domain, served)),
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "stored certificate does not load")
                }
            }
        }
        // A name that was served but is no longer listed: removed, or unreadable (a key that
        // does not decrypt is skipped by the listing). Ask for it alone to know which; keep
        // serving what was loaded unless it is really gone.
        let previous = self.resolver.source_entries(CertSource::Store);
        for (domain, served) in previous {
            if entries.iter().any(|(d, _)| *d == domain) {
                continue;
            }
            match self.store.load_cert(&domain).await {
                Ok(None) => {}
                Ok(Some(stored)) => match ServedCert::from_stored(&stored) {
                    Ok(new) => entries.push((domain, new)),
                    Err(e) => {
                        tracing::warn!(%domain, error = %e, "stored certificate does not load; the one loaded before keeps serving");
                        entries.push((domain, served));
                    }
                },
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "stored certificate unusable; the one loaded before keeps serving");
                    entries.push((domain, served));
                }
            }
        }
        self.resolver.replace(CertSource::Store, entries);
    }
}
