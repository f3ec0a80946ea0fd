//! The standalone certificate store: a directory (`--data-dir`).
//!
//! ```text
//! DIR/acme/accounts/{sha256 of the directory URL}.json   0600
//! DIR/certs/{domain}/cert.pem                            0644  (`*.` becomes `_wildcard.`)
//! DIR/certs/{domain}/key.pem                             0600
//! ```
//!
//! Locks, challenge answers and backoff live in memory: one process serves one directory.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::Digest;

use crate::store::{AlpnChallenge, Backoff, CertStore, LockOutcome, StoreError, StoredCert};

#[derive(Default)]
struct Volatile {
    locks: HashMap<String, (String, Instant)>,
    http: HashMap<String, (String, Instant)>,
    alpn: HashMap<String, (AlpnChallenge, Instant)>,
    backoff: HashMap<String, Backoff>,
}

pub struct DirStore {
    root: PathBuf,
    volatile: Mutex<Volatile>,
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{}: {e}", path.display()))
}

/// Writes a file with `mode`, replacing it atomically so a reader never sees half of it.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    file.write_all(contents).map_err(|e| io_err(&tmp, e))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

fn private_dir(path: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(path).map_err(|e| io_err(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err(path, e))
}

/// A domain as a directory name; refuses anything that could leave the directory.
fn domain_dir_name(domain: &str) -> Result<String, StoreError> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*' | b'_'))
        && !domain.starts_with('.')
        && !domain.contains("..");
    if !ok {
        return Err(StoreError::Io(format!("refusing domain name {domain:?}")));
    }
    Ok(domain.to_ascii_lowercase().replace("*.", "_wildcard."))
}

fn dir_name_domain(name: &str) -> String {
    name.replace("_wildcard.", "*.")
}

impl DirStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        private_dir(&root)?;
        private_dir(&root.join("acme/accounts"))?;
        private_dir(&root.join("certs"))?;
        Ok(Self {
            root,
            volatile: Mutex::default(),
        })
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        let hash = hex::encode(sha2::Sha256::digest(directory.as_bytes()));
        self.root
            .join("acme/accounts")
            .join(format!("{}.json", &hash[..32]))
    }

    fn cert_dir(&self, domain: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("certs").join(domain_dir_name(domain)?))
    }

    fn read_cert(&self, dir: &Path, domain: &str) -> Result<Option<StoredCert>, StoreError> {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        let chain = match std::fs::read_to_string(&c) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&c, e)),
        };
        let key = std::fs::read_to_string(&k).map_err(|e| io_err(&k, e))?;
        StoredCert::from_pem(&chain, &key)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: "certificate",
                name: domain.to_string(),
                reason: e.to_string(),
            })
    }

    fn volatile(&self) -> std::sync::MutexGuard<'_, Volatile> {
        self.volatile.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl CertStore for DirStore {
    async fn load_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let path = self.account_path(directory);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    async fn store_account(
        &self,
        directory: &str,
        credentials_json: &str,
    ) -> Result<(), StoreError> {
        write_atomic(
            &self.account_path(directory),
            credentials_json.as_bytes(),
            0o600,
        )
    }

    async fn load_cert(&self, domain: &str) -> Result<Option<StoredCert>, StoreError> {
        let dir = self.cert_dir(domain)?;
        self.read_cert(&dir, domain)
    }

    async fn store_cert(&self, domain: &str, cert: &StoredCert) -> Result<(), StoreError> {
        let dir = self.cert_dir(domain)?;
        private_dir(&dir)?;
        // Key first: a reader that sees the new chain finds its key already there.
        write_atomic(
            &dir.join("key.pem"),
            cert.key_pem.expose().as_bytes(),
            0o600,
        )?;
        write_atomic(&dir.join("cert.pem"), cert.chain_pem.as_bytes(), 0o644)
    }

    async fn list_certs(&self) -> Result<Vec<(String, StoredCert)>, StoreError> {
        let certs = self.root.join("certs");
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&certs).map_err(|e| io_err(&certs, e))?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(dir_name_domain) else {
                continue;
            };
            match self.read_cert(&entry.path(), &name) {
                Ok(Some(c)) => out.push((name, c)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping a stored certificate"),
            }
        }
        Ok(out)
    }

    async fn try_lock(
        &self,
        domain: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockOutcome, StoreError> {
        let mut v = self.volatile();
        let now = Instant::now();
        match v.locks.get(domain) {
            Some((holder, until)) if *until > now && holder != owner => {
                Ok(LockOutcome::HeldBy(holder.clone()))
            }
            _ => {
                v.locks
                    .insert(domain.to_string(), (owner.to_string(), now + ttl));
                Ok(LockOutcome::Acquired)
            }
        }
    }

    async fn refresh_lock(
        &self,
        domain: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut v = self.volatile();
        let now = Instant::now();
        match v.locks.get_mut(domain) {
            Some((holder, until)) if holder == owner && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unlock(&self, domain: &str, owner: &str) -> Result<(), StoreError> {
        let mut v = self.volatile();
        if v.locks.get(domain).is_some_and(|(h, _)| h == owner) {
            v.locks.remove(domain);
        }
        Ok(())
    }

    async fn put_http_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.volatile().http.insert(
            token.to_string(),
            (key_authorization.to_string(), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn http_challenge(&self, token: &str) -> Result<Option<String>, StoreError> {
        let v = self.volatile();
        Ok(v.http
            .get(token)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(a, _)| a.clone()))
    }

    async fn delete_http_challenge(&self, token: &str) -> Result<(), StoreError> {
        self.volatile().http.remove(token);
        Ok(())
    }

    async fn put_alpn_challenge(
        &self,
        domain: &str,
        answer: &AlpnChallenge,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.volatile().alpn.insert(
            domain.to_ascii_lowercase(),
            (answer.clone(), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn alpn_challenge(&self, domain: &str) -> Result<Option<AlpnChallenge>, StoreError> {
        let v = self.volatile();
        Ok(v.alpn
            .get(&domain.to_ascii_lowercase())
            .filter(|(_, until)| *until > Instant::now())
            .map(|(a, _)| a.clone()))
    }

    async fn delete_alpn_challenge(&self, domain: &str) -> Result<(), StoreError> {
        self.volatile().alpn.remove(&domain.to_ascii_lowercase());
        Ok(())
    }

    async fn backoff(&self, domain: &str) -> Result<Option<Backoff>, StoreError> {
        Ok(self.volatile().backoff.get(domain).cloned())
    }

    async fn set_backoff(&self, domain: &str, backoff: &Backoff) -> Result<(), StoreError> {
        self.volatile()
            .backoff
            .insert(domain.to_string(), backoff.clone());
        Ok(())
    }

    async fn clear_backoff(&self, domain: &str) -> Result<(), StoreError> {
        self.volatile().backoff.remove(domain);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> StoredCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        StoredCert::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    #[tokio::test]
    async fn certificates_and_accounts_survive_reopening_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        store
            .store_cert("*.sfu.test", &pair("*.sfu.test"))
            .await
            .unwrap();
        store
            .store_account("https://ca/dir", "{\"id\":1}")
            .await
            .unwrap();
        drop(store);
        let store = DirStore::open(dir.path()).unwrap();
        let listed = store.list_certs().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, "*.sfu.test");
        assert!(store.load_cert("*.sfu.test").await.unwrap().is_some());
        assert_eq!(
            store
                .load_account("https://ca/dir")
                .await
                .unwrap()
                .as_deref(),
            Some("{\"id\":1}")
        );
        let key = dir.path().join("certs/_wildcard.sfu.test/key.pem");
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(store.load_cert("../etc").await.is_err());
    }

    #[tokio::test]
    async fn lock_belongs_to_one_owner_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let ttl = Duration::from_secs(60);
        assert_eq!(
            store.try_lock("d", "a", ttl).await.unwrap(),
            LockOutcome::Acquired
        );
        assert_eq!(
            store.try_lock("d", "b", ttl).await.unwrap(),
            LockOutcome::HeldBy("a".into())
        );
        assert!(!store.refresh_lock("d", "b", ttl).await.unwrap());
        store.unlock("d", "b").await.unwrap();
        assert!(store.refresh_lock("d", "a", ttl).await.unwrap());
        store.unlock("d", "a").await.unwrap();
        assert_eq!(
            store.try_lock("d", "b", Duration::ZERO).await.unwrap(),
            LockOutcome::Acquired
        );
        // A zero TTL has already expired: anyone may take it.
        assert_eq!(
            store.try_lock("d", "c", ttl).await.unwrap(),
            LockOutcome::Acquired
        );
    }
}
