//! Layout of the operator's cluster directory made by `cluster init`, and file writing with
//! the right permissions (secrets 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cert_crypto::ClusterKey;
use crate::secret::Secret;

/// The cluster-wide secrets, in their hex file form.
#[derive(Clone)]
pub struct ClusterSecrets {
    pub cluster_key: String,
    pub ticket_secret: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecrets(<redacted>)")
    }
}

/// Settings chosen at `init`, kept in `DIR/cluster.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterSettings {
    pub redis_addr: String,
    pub bootstrap_addr: String,
    pub key_prefix: String,
}

/// Paths inside the cluster directory. All absolute, because `redis.conf` names them.
#[derive(Debug, Clone)]
pub struct ClusterDir {
    root: PathBuf,
}

impl ClusterDir {
    /// `root` is made absolute against the current directory.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()?.join(root)
        };
        // `components` drops `.` segments, so printed paths read cleanly.
        Ok(Self {
            root: root.components().collect(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn settings(&self) -> PathBuf {
        self.root.join("cluster.toml")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca/ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca/ca.key")
    }
    /// The bootstrap server's directory ([`crate::bootstrap_dir`]): `cluster serve --dir`
    /// takes it, never the cluster directory, which holds the CA key.
    pub fn bootstrap_dir(&self) -> PathBuf {
        self.root.join("bootstrap")
    }
    pub fn bootstrap_cert(&self) -> PathBuf {
        self.root.join("bootstrap/server.crt")
    }
    pub fn bootstrap_key(&self) -> PathBuf {
        self.root.join("bootstrap/server.key")
    }
    pub fn redis_dir(&self) -> PathBuf {
        self.root.join("redis")
    }
    pub fn redis_conf(&self) -> PathBuf {
        self.root.join("redis/redis.conf")
    }
    pub fn redis_cert(&self) -> PathBuf {
        self.root.join("redis/redis.crt")
    }
    pub fn redis_key(&self) -> PathBuf {
        self.root.join("redis/redis.key")
    }
    pub fn redis_acl(&self) -> PathBuf {
        self.root.join("redis/users.acl")
    }
    pub fn redis_data(&self) -> PathBuf {
        self.root.join("redis/data")
    }
    /// Credentials the tooling itself uses to reach Redis (to reload the ACL file).
    pub fn operator_dir(&self) -> PathBuf {
        self.root.join("operator")
    }
    pub fn names_dir(&self) -> PathBuf {
        self.root.join("names")
    }
    pub fn name_dir(&self, name: &str) -> PathBuf {
        self.names_dir().join(name)
    }
    /// Secrets the sfu and admin bundles carry (never the proxy's).
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    /// The cluster key: encrypts private keys stored in Redis (hex, 32 bytes).
    pub fn cluster_key(&self) -> PathBuf {
        self.root.join("secrets/cluster.key")
    }
    /// The ticket secret: signs redirect tickets between SFUs (hex, 32 bytes).
    pub fn ticket_key(&self) -> PathBuf {
        self.root.join("secrets/ticket.key")
    }

    /// The cluster key and ticket secret, creating whichever is missing (directories made
    /// before they existed get them at the next `issue`). Safe against a concurrent `issue`:
    /// a file is only ever created whole and never replaced, and both callers read back the
    /// winner's value.
    pub fn cluster_secrets(&self) -> std::io::Result<ClusterSecrets> {
        create_private_dir(&self.secrets_dir())?;
        let mut values = [String::new(), String::new()];
        for (slot, path) in [self.cluster_key(), self.ticket_key()].iter().enumerate() {
            write_private_if_absent(path, Secret::random().expose().as_bytes())?;
            let text = fs::read_to_string(path)?;
            let text = text.trim();
            if ClusterKey::from_hex(text).is_err() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not 64 hex digits", path.display()),
                ));
            }
            values[slot] = text.to_string();
        }
        let [cluster_key, ticket_secret] = values;
        Ok(ClusterSecrets {
            cluster_key,
            ticket_secret,
        })
    }

    pub fn read_settings(&self) -> std::io::Result<ClusterSettings> {
        let text = fs::read_to_string(self.settings())?;
        toml::from_str(&text).map_err(std::io::Error::other)
    }
}

/// Creates a directory (and parents) readable by the owner only.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Writes a file with mode 0600, replacing it atomically so a reader never sees half of it.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, contents, 0o600)
}

/// Writes a non-secret file (certificates) with mode 0644.
pub fn write_public(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, contents, 0o644)
}

/// Creates `path` (mode 0600) holding `contents` unless it exists; false if it did. The data
/// goes to a uniquely named temporary file first and is hard-linked into place, which fails
/// when the name is taken, so a reader never sees half a file and nobody's file is replaced.
pub fn write_private_if_absent(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let tmp = path.with_extension(format!("tmp-{}", &Secret::random().expose()[..16]));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_once_private_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ClusterDir::new(tmp.path()).unwrap();
        let first = dir.cluster_secrets().unwrap();
        assert_eq!(first.cluster_key.len(), 64);
        assert_ne!(first.cluster_key, first.ticket_secret);
        for path in [dir.cluster_key(), dir.ticket_key()] {
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let again = dir.cluster_secrets().unwrap();
        assert_eq!(again.cluster_key, first.cluster_key);
        assert_eq!(again.ticket_secret, first.ticket_secret);
        assert!(!format!("{again:?}").contains(&first.cluster_key[..8]));
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.secrets_dir()).unwrap().count(), 2);
    }

    #[test]
    fn a_damaged_secret_file_is_an_error_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ClusterDir::new(tmp.path()).unwrap();
        create_private_dir(&dir.secrets_dir()).unwrap();
        write_private(&dir.cluster_key(), b"not hex").unwrap();
        let err = dir.cluster_secrets().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(fs::read(dir.cluster_key()).unwrap(), b"not hex");
    }
}
