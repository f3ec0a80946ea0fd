//! The bootstrap server's own directory: everything `cluster serve` reads, and no key it
//! must not hold. The server faces the internet; if it is compromised, the cluster CA's
//! private key, Redis's key, the operator's credentials and the ACL file must not be there.
//!
//! ```text
//! bootstrap.toml            listen address (the bootstrap address given to `init`)
//! ca.crt                    the cluster CA's certificate (public)
//! server.crt, server.key    the bootstrap server's TLS certificate and key
//! bundles/NAME/bundle.zip   the bundle issued to NAME
//! bundles/NAME/token.sha256 hash of NAME's access token
//! ```
//!
//! `init`, `issue` and `revoke` keep `DIR/bootstrap/` in this form; `cluster export-bootstrap`
//! writes (or brings up to date) a copy anywhere else, for a server on another host or user.
//! [`refuse_if_holds_ca_key`] is what `cluster serve` checks before it starts.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::cluster_dir::{
    ClusterDir, ClusterSettings, create_private_dir, write_private, write_public,
};
use crate::issue::{NameMeta, valid_name};

/// Files larger than this are not read when looking for the CA key (a PEM key is ~250 bytes).
const MAX_SCANNED_FILE_BYTES: u64 = 1024 * 1024;
/// A bootstrap directory has three entries per name; past this many it is something else.
const MAX_SCANNED_ENTRIES: usize = 200_000;
const MAX_SCAN_DEPTH: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapDirError {
    #[error(
        "{dir} holds the cluster CA's private key ({key}); the bootstrap server must not run \
         with it. Serve the bootstrap directory instead (DIR/bootstrap, kept up to date by \
         init/issue/revoke), or a copy made with `deadsfu cluster export-bootstrap --dir DIR \
         --to OUT`"
    )]
    HoldsCaKey { dir: String, key: String },
    #[error(
        "{0} is not a bootstrap directory (no bootstrap.toml or ca.crt); make one with \
         `deadsfu cluster export-bootstrap --dir DIR --to {0}`"
    )]
    NotBootstrapDir(String),
    #[error("{dir} has more than {MAX_SCANNED_ENTRIES} entries; it is not a bootstrap directory")]
    TooLarge { dir: String },
    #[error("cannot read the CA certificate {0}")]
    BadCaCert(String),
    #[error("bad {path}: {reason}")]
    BadSettings { path: String, reason: String },
    #[error("cannot read or write the bootstrap directory: {0}")]
    Io(#[from] std::io::Error),
}

/// `bootstrap.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// Where the server listens unless `--listen` says otherwise.
    pub listen: String,
}

/// Paths inside a bootstrap directory.
#[derive(Debug, Clone)]
pub struct BootstrapDir {
    root: PathBuf,
}

impl BootstrapDir {
    /// `root` is made absolute against the current directory.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()?.join(root)
        };
        Ok(Self {
            root: root.components().collect(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn settings(&self) -> PathBuf {
        self.root.join("bootstrap.toml")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn bundles_dir(&self) -> PathBuf {
        self.root.join("bundles")
    }
    pub fn bundle(&self, name: &str) -> PathBuf {
        self.bundles_dir().join(name).join("bundle.zip")
    }
    pub fn token_hash(&self, name: &str) -> PathBuf {
        self.bundles_dir().join(name).join("token.sha256")
    }

    pub fn read_settings(&self) -> Result<BootstrapSettings, BootstrapDirError> {
        let path = self.settings();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BootstrapDirError::NotBootstrapDir(
                    self.root.display().to_string(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        toml::from_str(&text).map_err(|e| BootstrapDirError::BadSettings {
            path: path.display().to_string(),
            reason: e.message().to_string(),
        })
    }

    /// Every name with a bundle here, and its token hash. Entries being written or removed
    /// (no token hash) are left out.
    pub fn list_token_hashes(&self) -> std::io::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(self.bundles_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !valid_name(&name) {
                continue;
            }
            match fs::read_to_string(self.token_hash(&name)) {
                Ok(hash) => out.push((name, hash.trim().to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Refuses a directory holding the cluster CA's private key: a cluster directory
/// (`ca/ca.key`), or any file in the tree, up to [`MAX_SCANNED_FILE_BYTES`] long, with a PEM
/// private key whose public key is the one in `ca.crt`.
///
/// The comparison needs no certificate parser: a certificate's DER holds its
/// SubjectPublicKeyInfo verbatim, and DER has one encoding per value, so a key is the CA's
/// exactly when its SubjectPublicKeyInfo occurs in the CA certificate. Keys rcgen cannot read
/// are not the CA's (rcgen made it), and are passed over.
pub fn refuse_if_holds_ca_key(root: &Path) -> Result<(), BootstrapDirError> {
    let dir = BootstrapDir::new(root)?;
    let holds = |key: &Path| BootstrapDirError::HoldsCaKey {
        dir: dir.root().display().to_string(),
        key: key.display().to_string(),
    };
    let cluster_layout_key = dir.root().join("ca/ca.key");
    if cluster_layout_key.exists() {
        return Err(holds(&cluster_layout_key));
    }
    let ca_cert_pem = match fs::read(dir.ca_cert()) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BootstrapDirError::NotBootstrapDir(
                dir.root().display().to_string(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let ca_cert_der = CertificateDer::pem_slice_iter(&ca_cert_pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| BootstrapDirError::BadCaCert(dir.ca_cert().display().to_string()))?;
    let mut files = Vec::new();
    collect_files(dir.root(), 0, &mut files).map_err(|e| match e {
        ScanError::TooLarge => BootstrapDirError::TooLarge {
            dir: dir.root().display().to_string(),
        },
        ScanError::Io(e) => BootstrapDirError::Io(e),
    })?;
    for file in files {
        if file_holds_key_of(&file, &ca_cert_der)? {
            return Err(holds(&file));
        }
    }
    Ok(())
}

enum ScanError {
    TooLarge,
    Io(std::io::Error),
}

/// Regular files under `dir`, following symbolic links (to a bounded depth).
fn collect_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), ScanError> {
    if depth > MAX_SCAN_DEPTH {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(ScanError::Io)? {
        let path = entry.map_err(ScanError::Io)?.path();
        if out.len() >= MAX_SCANNED_ENTRIES {
            return Err(ScanError::TooLarge);
        }
        // Follows links; a dangling one holds nothing.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_files(&path, depth + 1, out)?;
        } else if meta.is_file() && meta.len() <= MAX_SCANNED_FILE_BYTES {
            out.push(path);
        }
    }
    Ok(())
}

fn file_holds_key_of(path: &Path, cert_der: &[u8]) -> std::io::Result<bool> {
    let contents = fs::read(path)?;
    if !contains(&contents, b"PRIVATE KEY-----") {
        return Ok(false);
    }
    Ok(PrivateKeyDer::pem_slice_iter(&contents)
        .filter_map(Result::ok)
        .filter_map(|key| KeyPair::try_from(&key).ok())
        .any(|key| contains(cert_der, &key.subject_public_key_info())))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Brings the bootstrap directory `to` up to date with the cluster directory: its settings,
/// the CA and server certificates, the server key, and one bundle and token hash per name in
/// `issued` (the names currently issued). Bundles of names no longer issued are removed, and
/// unchanged files are not rewritten, so a server reading the directory meanwhile sees each
/// file whole. Never writes the CA key; `to` is checked like `serve` checks it.
pub(crate) fn sync_bootstrap_dir(
    cluster: &ClusterDir,
    settings: &ClusterSettings,
    issued: &[(String, NameMeta)],
    to: &Path,
) -> Result<BootstrapDir, BootstrapDirError> {
    let out = BootstrapDir::new(to)?;
    if out.root().join("ca/ca.key").exists() || out.root() == cluster.root() {
        return Err(BootstrapDirError::HoldsCaKey {
            dir: out.root().display().to_string(),
            key: out.root().join("ca/ca.key").display().to_string(),
        });
    }
    create_private_dir(out.root())?;
    create_private_dir(&out.bundles_dir())?;
    let bootstrap_settings = BootstrapSettings {
        listen: settings.bootstrap_addr.clone(),
    };
    write_if_changed(
        &out.settings(),
        toml::to_string(&bootstrap_settings)
            .expect("settings serialise")
            .as_bytes(),
        Visibility::Public,
    )?;
    write_if_changed(
        &out.ca_cert(),
        &fs::read(cluster.ca_cert())?,
        Visibility::Public,
    )?;
    write_if_changed(
        &out.server_cert(),
        &fs::read(cluster.bootstrap_cert())?,
        Visibility::Public,
    )?;
    write_if_changed(
        &out.server_key(),
        &fs::read(cluster.bootstrap_key())?,
        Visibility::Private,
    )?;

    for (name, meta) in issued {
        create_private_dir(&out.bundles_dir().join(name))?;
        let token_hash_path = out.token_hash(name);
        let old_hash = fs::read_to_string(&token_hash_path).ok();
        if old_hash.as_deref().map(str::trim) != Some(meta.token_sha256.as_str()) {
            // A new token: the old one stops working before the new bundle is in place.
            remove_if_present(&token_hash_path)?;
        }
        write_if_changed(
            &out.bundle(name),
            &fs::read(cluster.name_dir(name).join("bundle.zip"))?,
            Visibility::Private,
        )?;
        write_if_changed(
            &token_hash_path,
            meta.token_sha256.as_bytes(),
            Visibility::Private,
        )?;
    }

    for entry in fs::read_dir(out.bundles_dir())? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // Checked on disk again: a concurrent `issue` may have added the name since
        // `issued` was listed.
        let still_issued = issued.iter().any(|(n, _)| *n == name)
            || cluster.name_dir(&name).join("meta.toml").exists();
        if valid_name(&name) && !still_issued {
            remove_if_present(&out.token_hash(&name))?;
            fs::remove_dir_all(out.bundles_dir().join(&name))?;
        }
    }
    refuse_if_holds_ca_key(out.root())?;
    Ok(out)
}

#[derive(Clone, Copy)]
enum Visibility {
    Public,
    Private,
}

fn write_if_changed(path: &Path, contents: &[u8], visibility: Visibility) -> std::io::Result<()> {
    if fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    match visibility {
        Visibility::Public => write_public(path, contents),
        Visibility::Private => write_private(path, contents),
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap_dir_with(ca: &crate::pki::CertAndKey) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("ca.crt"), &ca.cert_pem).unwrap();
        fs::write(
            tmp.path().join("bootstrap.toml"),
            "listen = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        tmp
    }

    #[test]
    fn the_ca_key_is_found_under_any_name_and_other_keys_are_not_mistaken_for_it() {
        let ca = crate::pki::new_ca().unwrap();
        let signer = crate::pki::CaSigner::from_key_pem(&ca.key_pem).unwrap();
        let server = signer.server_cert("127.0.0.1").unwrap();
        let tmp = bootstrap_dir_with(&ca);
        fs::write(tmp.path().join("server.key"), &server.key_pem).unwrap();
        fs::write(tmp.path().join("server.crt"), &server.cert_pem).unwrap();
        refuse_if_holds_ca_key(tmp.path()).unwrap();

        let hidden = tmp.path().join("bundles/x");
        fs::create_dir_all(&hidden).unwrap();
        // Among other PEM blocks, under an innocent name.
        fs::write(
            hidden.join("notes.txt"),
            format!("{}\n{}", server.cert_pem, ca.key_pem),
        )
        .unwrap();
        let err = refuse_if_holds_ca_key(tmp.path()).unwrap_err();
        assert!(
            matches!(&err, BootstrapDirError::HoldsCaKey { key, .. } if key.ends_with("notes.txt")),
            "{err}"
        );
        // The message names the file, never the key.
        assert!(!err.to_string().contains("PRIVATE KEY"));
    }

    #[test]
    fn a_cluster_directory_or_a_dir_without_a_ca_cert_is_refused() {
        let ca = crate::pki::new_ca().unwrap();
        let tmp = bootstrap_dir_with(&ca);
        fs::create_dir(tmp.path().join("ca")).unwrap();
        fs::write(tmp.path().join("ca/ca.key"), "unreadable").unwrap();
        assert!(matches!(
            refuse_if_holds_ca_key(tmp.path()),
            Err(BootstrapDirError::HoldsCaKey { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            refuse_if_holds_ca_key(empty.path()),
            Err(BootstrapDirError::NotBootstrapDir(_))
        ));
    }
}
