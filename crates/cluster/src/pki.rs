//! The cluster's private CA (rcgen): the CA itself, server certificates (Redis, bootstrap
//! server) and client certificates (one per issued name).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct PkiError(#[from] rcgen::Error);

/// A certificate and its private key, both PEM.
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA's parameters. They are rebuilt identically whenever the CA signs, so only the CA's
/// key has to be kept (rcgen needs the issuer's name and key, not its certificate).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "deadsfu cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

pub fn new_ca() -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Signs with the CA whose key is `ca_key_pem`.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
}

impl CaSigner {
    pub fn from_key_pem(ca_key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(ca_key_pem)?;
        Ok(Self {
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// A server certificate for `host` (an IP address or a DNS name).
    pub fn server_cert(&self, host: &str) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, host.to_string());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        self.sign(params)
    }

    /// A client certificate naming the holder (for Redis's `tls-auth-clients`), valid until
    /// `not_after` (seconds since the Unix epoch) when set. Redis checks the validity period at
    /// every TLS handshake, so an expired certificate cannot open a connection.
    pub fn client_cert(&self, name: &str, not_after: Option<u64>) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_string());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_after = match not_after {
            Some(unix) => rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(unix),
            None => rcgen::date_time_ymd(2124, 1, 1),
        };
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<CertAndKey, PkiError> {
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Hex SHA-256 of the first certificate in a PEM file: the `#sha256=` pin of the bootstrap URL.
pub fn cert_fingerprint_hex(cert_pem: &str) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()?
        .ok()?;
    Some(crate::secret::sha256_hex(&der))
}
