//! The credential bundle: a zip holding `ca.crt`, `client.crt`, `client.key` and
//! `cluster.toml`. Written by `cluster issue`, unpacked in memory by a joining node.

use std::io::{Cursor, Read, Write};

use serde::{Deserialize, Serialize};

use crate::cert_crypto::ClusterKey;
use crate::role::Role;
use crate::secret::Secret;

/// Largest bundle accepted over the network, and largest single entry inside it.
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;
pub const MAX_ENTRY_BYTES: u64 = 64 * 1024;

const CA_CERT: &str = "ca.crt";
const CLIENT_CERT: &str = "client.crt";
const CLIENT_KEY: &str = "client.key";
const CLUSTER_TOML: &str = "cluster.toml";
const ENTRY_NAMES: [&str; 4] = [CA_CERT, CLIENT_CERT, CLIENT_KEY, CLUSTER_TOML];

/// `cluster.toml` inside a bundle.
#[derive(Clone, Serialize, Deserialize)]
pub struct BundleSettings {
    /// The name the bundle was issued to.
    pub name: String,
    pub role: Role,
    /// `host:port` of Redis (TLS). The first that answers is used.
    pub redis_addrs: Vec<String>,
    /// Redis ACL user: the name's own for sfu bundles issued since per-node users exist,
    /// otherwise the role's shared user.
    pub user: String,
    /// Redis ACL password, this name's own.
    pub password: String,
    pub key_prefix: String,
    /// The cluster key (hex): encrypts private keys kept in Redis. Sfu and admin bundles
    /// only; absent in bundles issued before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<String>,
    /// The ticket secret (hex): signs redirect tickets between SFUs. Sfu and admin bundles
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_secret: Option<String>,
    /// The public hostname the node must serve. Present in sfu bundles issued since per-node
    /// ACL users exist: such a bundle may register only the node id `name` and lease only this
    /// hostname. Absent in older sfu bundles (which may register any) and in proxy and admin
    /// bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `Some` values shown as a placeholder.
fn redacted(value: &Option<String>) -> Option<&'static str> {
    value.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for BundleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSettings")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("redis_addrs", &self.redis_addrs)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("cluster_key", &redacted(&self.cluster_key))
            .field("ticket_secret", &redacted(&self.ticket_secret))
            .field("hostname", &self.hostname)
            .finish()
    }
}

/// An unpacked bundle: everything a node needs to reach Redis.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca_cert_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: Secret,
    pub settings: BundleSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("bundle is not a valid zip archive: {0}")]
    NotZip(String),
    #[error("bundle holds an unexpected entry {0:?}")]
    UnexpectedEntry(String),
    #[error("bundle entry {0:?} appears twice")]
    DuplicateEntry(String),
    #[error("bundle entry {0:?} is larger than {MAX_ENTRY_BYTES} bytes")]
    EntryTooLarge(String),
    #[error("bundle lacks entry {0:?}")]
    MissingEntry(&'static str),
    #[error("bundle entry {0:?} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("bundle cluster.toml is invalid: {0}")]
    BadSettings(String),
    #[error("bundle cluster.toml holds a malformed {0} (want 64 hex digits)")]
    BadSecret(&'static str),
    #[error("bundle holds no Redis address")]
    NoRedisAddress,
    #[error("cannot write bundle: {0}")]
    Write(String),
}

impl Bundle {
    /// Packs the bundle as a zip (entries stored uncompressed: they are small).
    pub fn to_zip(&self) -> Result<Vec<u8>, BundleError> {
        let settings =
            toml::to_string(&self.settings).map_err(|e| BundleError::Write(e.to_string()))?;
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(0o600);
        let entries: [(&str, &[u8]); 4] = [
            (CA_CERT, self.ca_cert_pem.as_bytes()),
            (CLIENT_CERT, self.client_cert_pem.as_bytes()),
            (CLIENT_KEY, self.client_key_pem.expose().as_bytes()),
            (CLUSTER_TOML, settings.as_bytes()),
        ];
        for (name, data) in entries {
            writer
                .start_file(name, options)
                .map_err(|e| BundleError::Write(e.to_string()))?;
            writer
                .write_all(data)
                .map_err(|e| BundleError::Write(e.to_string()))?;
        }
        let cursor = writer
            .finish()
            .map_err(|e| BundleError::Write(e.to_string()))?;
        Ok(cursor.into_inner())
    }

    /// Unpacks a bundle in memory, accepting only the four expected entry names, each once
    /// and each at most [`MAX_ENTRY_BYTES`].
    pub fn from_zip(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge);
        }
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| BundleError::NotZip(e.to_string()))?;
        let mut contents: [Option<String>; 4] = Default::default();
        for index in 0..archive.len() {
            let entry = archive
                .by_index(index)
                .map_err(|e| BundleError::NotZip(e.to_string()))?;
            let name = entry
                .name()
                .map_err(|e| BundleError::NotZip(e.to_string()))?
                .to_string();
            let Some(slot) = ENTRY_NAMES.iter().position(|n| *n == name) else {
                return Err(BundleError::UnexpectedEntry(name));
            };
            if contents[slot].is_some() {
                return Err(BundleError::DuplicateEntry(name));
            }
            if entry.size() > MAX_ENTRY_BYTES {
                return Err(BundleError::EntryTooLarge(name));
            }
            // The declared size may lie: read at most one byte past the limit.
            let mut data = Vec::new();
            entry
                .take(MAX_ENTRY_BYTES + 1)
                .read_to_end(&mut data)
                .map_err(|e| BundleError::NotZip(e.to_string()))?;
            if data.len() as u64 > MAX_ENTRY_BYTES {
                return Err(BundleError::EntryTooLarge(name));
            }
            contents[slot] =
                Some(String::from_utf8(data).map_err(|_| BundleError::NotUtf8(ENTRY_NAMES[slot]))?);
        }
        let mut take = |slot: usize| {
            contents[slot]
                .take()
                .ok_or(BundleError::MissingEntry(ENTRY_NAMES[slot]))
        };
        let ca_cert_pem = take(0)?;
        let client_cert_pem = take(1)?;
        let client_key_pem = Secret::new(take(2)?);
        // toml's error text quotes the offending line, which may be the password: keep only
        // its position-free message.
        let settings: BundleSettings = toml::from_str(&take(3)?)
            .map_err(|e| BundleError::BadSettings(e.message().to_string()))?;
        if settings.redis_addrs.is_empty() {
            return Err(BundleError::NoRedisAddress);
        }
        for (what, value) in [
            ("cluster_key", &settings.cluster_key),
            ("ticket_secret", &settings.ticket_secret),
        ] {
            if value
                .as_deref()
                .is_some_and(|v| ClusterKey::from_hex(v).is_err())
            {
                return Err(BundleError::BadSecret(what));
            }
        }
        Ok(Self {
            ca_cert_pem,
            client_cert_pem,
            client_key_pem,
            settings,
        })
    }
}

impl Bundle {
    /// The cluster key this bundle carries: `None` for proxy bundles and for bundles issued
    /// before the key existed (those cannot read or write private keys in Redis).
    pub fn cluster_key(&self) -> Option<ClusterKey> {
        // Checked when the bundle was unpacked; a hand-built bundle with a bad value has none.
        self.settings
            .cluster_key
            .as_deref()
            .and_then(|hex| ClusterKey::from_hex(hex).ok())
    }

    /// The ticket secret this bundle carries (hex), if any.
    pub fn ticket_secret(&self) -> Option<Secret> {
        self.settings.ticket_secret.clone().map(Secret::new)
    }

    /// The node id a node joining with this bundle must use: the bundle's name, for sfu
    /// bundles bound to one node (see [`BundleSettings::hostname`]); `None` when any id will do.
    pub fn node_id(&self) -> Option<&str> {
        self.hostname().map(|_| self.settings.name.as_str())
    }

    /// The hostname a node joining with this bundle must serve, for sfu bundles bound to one
    /// node; `None` when any hostname will do.
    pub fn hostname(&self) -> Option<&str> {
        match self.settings.role {
            Role::Sfu => self.settings.hostname.as_deref(),
            Role::Proxy | Role::Admin => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            ca_cert_pem: "CA".into(),
            client_cert_pem: "CERT".into(),
            client_key_pem: Secret::new("KEY"),
            settings: BundleSettings {
                name: "sfu-1".into(),
                role: Role::Sfu,
                redis_addrs: vec!["127.0.0.1:6379".into()],
                user: "sfu".into(),
                password: "pw".into(),
                key_prefix: "deadsfu:".into(),
                cluster_key: Some("ab".repeat(32)),
                ticket_secret: Some("cd".repeat(32)),
                hostname: Some("sfu-1.example.test".into()),
            },
        }
    }

    fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            writer.start_file(*name, options).unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn round_trip() {
        let zip = sample().to_zip().unwrap();
        let back = Bundle::from_zip(&zip).unwrap();
        assert_eq!(back.client_key_pem.expose(), "KEY");
        assert_eq!(back.settings.password, "pw");
        assert_eq!(back.settings.role, Role::Sfu);
        assert_eq!(back.cluster_key().unwrap().to_hex(), "ab".repeat(32));
        assert_eq!(back.ticket_secret().unwrap().expose(), "cd".repeat(32));
        assert_eq!(back.node_id(), Some("sfu-1"));
        assert_eq!(back.hostname(), Some("sfu-1.example.test"));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let text = format!("{:?}", sample());
        assert!(!text.contains("abab"), "{text}");
        assert!(!text.contains("cdcd"), "{text}");
        assert!(!text.contains("pw\""), "{text}");
    }

    /// A bundle's cluster.toml from before the cluster key existed.
    const OLD_SETTINGS: &str = "name = \"sfu-1\"\nrole = \"sfu\"\nredis_addrs = [\"127.0.0.1:6379\"]\n\
                                user = \"sfu\"\npassword = \"pw\"\nkey_prefix = \"deadsfu:\"\n";

    fn zip_with_settings(settings: &str) -> Vec<u8> {
        zip_of(&[
            ("ca.crt", b"x".to_vec()),
            ("client.crt", b"x".to_vec()),
            ("client.key", b"x".to_vec()),
            ("cluster.toml", settings.as_bytes().to_vec()),
        ])
    }

    #[test]
    fn old_bundles_without_secrets_still_parse() {
        let bundle = Bundle::from_zip(&zip_with_settings(OLD_SETTINGS)).unwrap();
        assert!(bundle.settings.cluster_key.is_none());
        assert!(bundle.cluster_key().is_none());
        assert!(bundle.ticket_secret().is_none());
        // Not bound to one node: any node id and hostname.
        assert!(bundle.settings.hostname.is_none());
        assert_eq!((bundle.node_id(), bundle.hostname()), (None, None));
        // And a bundle without them is written without the fields.
        let mut proxy = sample();
        proxy.settings.cluster_key = None;
        proxy.settings.ticket_secret = None;
        proxy.settings.hostname = None;
        let toml = toml::to_string(&proxy.settings).unwrap();
        assert!(!toml.contains("cluster_key") && !toml.contains("ticket_secret"));
        assert!(!toml.contains("hostname"));
    }

    #[test]
    fn malformed_secret_is_refused_without_quoting_it() {
        let settings = format!("{OLD_SETTINGS}cluster_key = \"s3cr3t-not-hex\"\n");
        let err = Bundle::from_zip(&zip_with_settings(&settings)).unwrap_err();
        assert!(
            matches!(err, BundleError::BadSecret("cluster_key")),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cr3t"));
    }

    #[test]
    fn unexpected_entry_is_refused() {
        let zip = zip_of(&[("ca.crt", b"x".to_vec()), ("../evil", b"x".to_vec())]);
        assert!(matches!(
            Bundle::from_zip(&zip),
            Err(BundleError::UnexpectedEntry(n)) if n == "../evil"
        ));
    }

    #[test]
    fn oversized_entry_is_refused() {
        // Compresses to almost nothing, so only the unpacked size can catch it.
        let zip = zip_of(&[("ca.crt", vec![b'a'; 10 * 1024 * 1024])]);
        assert!(zip.len() < MAX_BUNDLE_BYTES);
        assert!(matches!(
            Bundle::from_zip(&zip),
            Err(BundleError::EntryTooLarge(_))
        ));
    }

    #[test]
    fn oversized_archive_is_refused() {
        let big = vec![0u8; MAX_BUNDLE_BYTES + 1];
        assert!(matches!(Bundle::from_zip(&big), Err(BundleError::TooLarge)));
    }

    #[test]
    fn missing_entry_is_refused() {
        let zip = zip_of(&[("ca.crt", b"x".to_vec())]);
        assert!(matches!(
            Bundle::from_zip(&zip),
            Err(BundleError::MissingEntry(_))
        ));
    }

    #[test]
    fn errors_do_not_quote_the_password() {
        let zip = zip_of(&[
            ("ca.crt", b"x".to_vec()),
            ("client.crt", b"x".to_vec()),
            ("client.key", b"x".to_vec()),
            (
                "cluster.toml",
                b"password = \"s3cr3t-pw\"\nrole = 17\n".to_vec(),
            ),
        ]);
        let err = Bundle::from_zip(&zip).unwrap_err().to_string();
        assert!(!err.contains("s3cr3t-pw"), "{err}");
    }
}
