//! Layout of the operator's cluster directory made by `cluster init`, and file writing with
//! the right permissions (secrets 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
