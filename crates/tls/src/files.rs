//! `--tls-cert FILE --tls-key FILE`: a certificate the operator manages. Re-read when either
//! file changes (checked every [`POLL_INTERVAL`]) or on SIGHUP; a new pair that does not load
//! leaves the old one serving and says why. Connections are never dropped: new handshakes
//! simply get the new certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::pem_pair::{CertError, ServedCert};
use crate::resolver::{CertResolver, CertSource};

pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// PEM files larger than this are refused (a chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FileCertError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{cert} and {key}: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: CertError,
    },
}

/// The operator's certificate files.
#[derive(Debug, Clone)]
pub struct FileCerts {
    cert: PathBuf,
    key: PathBuf,
}

fn read_bounded(path: &Path) -> Result<String, FileCertError> {
    let err = |reason: String| FileCertError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(err(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

/// What identifies a version of the files: modification time and size of both.
type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

impl FileCerts {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
        }
    }

    pub fn load(&self) -> Result<ServedCert, FileCertError> {
        let chain = read_bounded(&self.cert)?;
        let key = read_bounded(&self.key)?;
        ServedCert::from_pem(&chain, &key).map_err(|source| FileCertError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }

    fn stamp(&self) -> Stamp {
        let c = std::fs::metadata(&self.cert).ok()?;
        let k = std::fs::metadata(&self.key).ok()?;
        Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
    }

    /// Loads the pair into `resolver` (for every name the certificate carries), failing if it
    /// does not load: at start there is nothing older to keep serving.
    pub fn install(&self, resolver: &CertResolver) -> Result<ServedCert, FileCertError> {
        let served = self.load()?;
        install(resolver, &served);
        Ok(served)
    }

    /// Re-reads the files when they change or on SIGHUP, until the task is dropped.
    pub fn spawn_reloader(self, resolver: Arc<CertResolver>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut last = self.stamp();
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = {
                    let hup_recv = async {
                        match hup.as_mut() {
                            Some(h) => {
                                h.recv().await;
                            }
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = tick.tick() => false,
                        _ = hup_recv => true,
                    }
                };
                #[cfg(not(unix))]
                let forced = {
                    tick.tick().await;
                    false
                };
                let now = self.stamp();
                if !forced && now == last {
                    continue;
                }
                last = now;
                match self.load() {
                    Ok(served) => {
                        tracing::info!(names = ?served.names, not_after = %crate::resolver::rfc3339(served.not_after), fingerprint = %served.fingerprint, "certificate files reloaded");
                        install(&resolver, &served);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate files not reloaded; the previous certificate keeps serving")
                    }
                }
            }
        })
    }
}

fn install(resolver: &CertResolver, served: &ServedCert) {
    let entries = served
        .names
        .iter()
        .map(|n| (n.clone(), served.clone()))
        .collect();
    resolver.replace(CertSource::Files, entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn unreadable_and_mismatched_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = FileCerts::new(dir.path().join("nope.pem"), dir.path().join("nope.key"));
        let err = missing.load().unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");

        let (c, _) = write_pair(dir.path(), "a.test");
        let other = tempfile::tempdir().unwrap();
        let (_, k2) = write_pair(other.path(), "b.test");
        let err = FileCerts::new(&c, &k2).load().unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn install_serves_every_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into(), "b.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let r = CertResolver::default();
        FileCerts::new(&c, &k).install(&r).unwrap();
        assert!(r.lookup("a.test").is_some() && r.lookup("b.test").is_some());
    }
}
