//! A PEM certificate chain and private key, checked and turned into what rustls serves.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::key_pem::KeyPem;
use crate::store::StoredCert;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CertError {
    #[error("no certificate in the PEM chain")]
    NoCertificate,
    #[error("the PEM chain does not parse: {0}")]
    BadChain(String),
    #[error("no private key in the PEM key (want PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("the private key is not usable: {0}")]
    BadKey(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the leaf certificate does not parse: {0}")]
    BadLeaf(String),
}

/// A certificate ready to serve, with the facts `/healthz` and the renewal logic need.
#[derive(Clone)]
pub struct ServedCert {
    pub certified: Arc<CertifiedKey>,
    /// DNS names of the leaf (subjectAltName; the subject CN when there is none).
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub issuer: String,
    /// SHA-256 of the leaf's DER, hex.
    pub fingerprint: String,
    /// The PEM it came from, for storing.
    pub stored: StoredCert,
}

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCert")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("issuer", &self.issuer)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Facts read from a leaf certificate.
struct LeafFacts {
    names: Vec<String>,
    not_before: i64,
    not_after: i64,
    issuer: String,
}

fn leaf_facts(der: &[u8]) -> Result<LeafFacts, CertError> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::BadLeaf(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = cert.subject().iter_common_name().next()
        && let Ok(cn) = cn.as_str()
    {
        names.push(cn.to_ascii_lowercase());
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok().map(str::to_owned))
        .unwrap_or_else(|| cert.issuer().to_string());
    Ok(LeafFacts {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        issuer,
    })
}

/// A chain and key as rustls serves them, without checking that they belong together (the
/// TLS-ALPN-01 answer carries a critical extension that certificate parsers refuse).
pub fn certified_key_unchecked(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadChain(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CertError::BadKey(e.to_string()))?;
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::BadKey(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

impl StoredCert {
    /// Checks a PEM chain and key (the key must belong to the leaf) and records the leaf's
    /// validity and issuer.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<StoredCert, CertError> {
        let served = ServedCert::from_pem(chain_pem, key_pem)?;
        Ok(served.stored)
    }
}

impl ServedCert {
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<ServedCert, CertError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| CertError::BadChain(e.to_string()))?;
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey,
            other => CertError::BadKey(other.to_string()),
        })?;
        let facts = leaf_facts(leaf)?;
        let fingerprint = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(leaf.as_ref()))
        };
        let provider = rustls::crypto::ring::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertError::BadKey(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            // The key type cannot report its public key: nothing to compare, accept it.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(CertError::KeyMismatch),
            Err(e) => return Err(CertError::BadLeaf(e.to_string())),
        }
        Ok(ServedCert {
            certified: Arc::new(certified),
            names: facts.names,
            not_before: facts.not_before,
            not_after: facts.not_after,
            issuer: facts.issuer.clone(),
            fingerprint,
            stored: StoredCert {
                chain_pem: chain_pem.to_owned(),
                key_pem: KeyPem::new(key_pem),
                not_after: facts.not_after,
                not_before: facts.not_before,
                issuer: facts.issuer,
            },
        })
    }

    pub fn from_stored(stored: &StoredCert) -> Result<ServedCert, CertError> {
        ServedCert::from_pem(&stored.chain_pem, stored.key_pem.expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn reads_names_and_validity() {
        let (chain, key) = self_signed("a.test");
        let served = ServedCert::from_pem(&chain, &key).unwrap();
        assert_eq!(served.names, vec!["a.test".to_string()]);
        assert!(served.not_after > served.not_before);
        assert_eq!(served.fingerprint.len(), 64);
    }

    #[test]
    fn mismatched_key_is_refused() {
        let (chain, _) = self_signed("a.test");
        let (_, other_key) = self_signed("b.test");
        assert_eq!(
            ServedCert::from_pem(&chain, &other_key).unwrap_err(),
            CertError::KeyMismatch
        );
    }

    #[test]
    fn garbage_is_refused() {
        let (chain, key) = self_signed("a.test");
        assert_eq!(
            ServedCert::from_pem("", &key).unwrap_err(),
            CertError::NoCertificate
        );
        assert_eq!(
            ServedCert::from_pem(&chain, "not a key").unwrap_err(),
            CertError::NoKey
        );
        assert!(
            ServedCert::from_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &key
            )
            .is_err()
        );
    }
}
