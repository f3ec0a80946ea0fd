//! Encryption at rest of the private keys kept in Redis (DESIGN.md §6 `cert:{domain}`).
//!
//! `cluster init` creates one random 256-bit cluster key; every sfu and admin bundle carries
//! it, Redis never sees it. A copy of Redis's data (a dump file, a replica, a backup) therefore
//! holds certificates but no usable private key.
//!
//! Sealed text form: `v1.<nonce>.<ciphertext and tag>`, both parts base64url without padding.
//! AES-256-GCM with a fresh random 96-bit nonce per seal; the additional data names where the
//! value lives (e.g. `cert:example.com`), so a value copied under another key does not open.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Version tag of the sealed text form.
const VERSION: &str = "v1";
/// Length of the key in bytes.
pub const CLUSTER_KEY_BYTES: usize = 32;
/// Largest sealed text accepted, so a huge value cannot make us allocate much.
const MAX_SEALED_CHARS: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The hex text of a key is malformed. Never quotes the text (it may be a near-key).
    #[error("the cluster key is not {} hex digits", CLUSTER_KEY_BYTES * 2)]
    BadKey,
    /// Not a `v1.<nonce>.<ciphertext>` text.
    #[error("not a sealed value (want v1.<nonce>.<ciphertext>)")]
    Malformed,
    /// Authentication failed: another cluster key, another place, or a tampered value.
    #[error("does not decrypt with this cluster key (another cluster's key, or tampered)")]
    Undecryptable,
}

/// The cluster's symmetric key. `Debug` prints a placeholder; it never reaches a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; CLUSTER_KEY_BYTES]);

impl ClusterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; CLUSTER_KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses the hex form kept in `DIR/secrets/cluster.key` and in bundles (surrounding
    /// whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let mut bytes = [0u8; CLUSTER_KEY_BYTES];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Self(bytes))
    }

    /// The hex form, for files and bundles only.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn aead_key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("AES-256 key length"))
    }

    /// Encrypts `plaintext`, bound to `aad` (where the value will be stored).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut in_out = plaintext.to_vec();
        self.aead_key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .expect("AES-GCM seals any plaintext under its size limit");
        format!(
            "{VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(&in_out)
        )
    }

    /// Decrypts a value made by [`ClusterKey::seal`] with the same key and `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() > MAX_SEALED_CHARS {
            return Err(CryptoError::Malformed);
        }
        let mut parts = sealed.split('.');
        let (Some(VERSION), Some(nonce), Some(body), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed);
        };
        let nonce: [u8; NONCE_LEN] = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(CryptoError::Malformed)?;
        let mut in_out = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CryptoError::Malformed)?;
        let plaintext = self
            .aead_key()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| CryptoError::Undecryptable)?;
        Ok(plaintext.to_vec())
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n";

    #[test]
    fn round_trip() {
        let key = ClusterKey::generate();
        let sealed = key.seal(PEM.as_bytes(), b"cert:a.test");
        assert!(sealed.starts_with("v1."));
        assert_eq!(key.open(&sealed, b"cert:a.test").unwrap(), PEM.as_bytes());
        // A fresh nonce each time.
        assert_ne!(sealed, key.seal(PEM.as_bytes(), b"cert:a.test"));
        // Empty plaintext too.
        assert_eq!(key.open(&key.seal(b"", b"x"), b"x").unwrap(), b"");
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let key = ClusterKey::generate();
        let sealed = key.seal(PEM.as_bytes(), b"cert:a.test");
        let (head, body) = sealed.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        bytes[3] ^= 1;
        let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(
            key.open(&tampered, b"cert:a.test"),
            Err(CryptoError::Undecryptable)
        );
        // Truncated (tag cut off) and reshaped values fail too.
        let short = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes[..8]));
        assert!(key.open(&short, b"cert:a.test").is_err());
        for bad in [
            "",
            "v1",
            "v1.a.b.c",
            "v2.AAAAAAAAAAAAAAAA.AAAA",
            "v1.!!.AAAA",
        ] {
            assert!(key.open(bad, b"cert:a.test").is_err(), "{bad}");
        }
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = ClusterKey::generate().seal(PEM.as_bytes(), b"cert:a.test");
        assert_eq!(
            ClusterKey::generate().open(&sealed, b"cert:a.test"),
            Err(CryptoError::Undecryptable)
        );
    }

    #[test]
    fn wrong_aad_fails() {
        let key = ClusterKey::generate();
        let sealed = key.seal(PEM.as_bytes(), b"cert:a.test");
        assert_eq!(
            key.open(&sealed, b"cert:b.test"),
            Err(CryptoError::Undecryptable)
        );
    }

    #[test]
    fn sealed_text_is_not_pem() {
        let key = ClusterKey::generate();
        let sealed = key.seal(PEM.as_bytes(), b"cert:a.test");
        assert!(!sealed.contains("BEGIN"));
        assert!(!sealed.contains("PRIVATE KEY"));
        assert!(!sealed.contains("MIGHAgEA"));
        assert!(
            sealed
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn hex_form_and_debug() {
        let key = ClusterKey::generate();
        let hex = key.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(ClusterKey::from_hex(&format!("{hex}\n")).unwrap(), key);
        assert!(!format!("{key:?}").contains(&hex[..8]));
        assert_eq!(ClusterKey::from_hex("abc"), Err(CryptoError::BadKey));
        assert_eq!(
            ClusterKey::from_hex(&"zz".repeat(32)),
            Err(CryptoError::BadKey)
        );
    }
}
