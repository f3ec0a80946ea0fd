//! DTLS certificates for the client. Browsers use ECDSA; some older stacks use RSA. The server
//! must accept both, so the test peer can present either.

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};
use str0m::config::DtlsCert;

use crate::ClientError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ecdsa,
    Rsa,
}

/// A self-signed certificate with a fresh key of `kind`.
pub fn self_signed(kind: KeyType) -> Result<DtlsCert, ClientError> {
    build(kind).map_err(|e| ClientError::Cert(e.to_string()))
}

fn build(kind: KeyType) -> Result<DtlsCert, openssl::error::ErrorStack> {
    let pkey: PKey<Private> = match kind {
        KeyType::Ecdsa => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            PKey::from_ec_key(EcKey::generate(&group)?)?
        }
        KeyType::Rsa => PKey::from_rsa(Rsa::generate(2048)?)?,
    };
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
    builder.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
    builder.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    builder.set_not_after(Asn1Time::days_from_now(30)?.as_ref())?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "deadsfu-client")?;
    let name = name.build();
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&pkey)?;
    builder.sign(&pkey, MessageDigest::sha256())?;
    Ok(DtlsCert {
        certificate: builder.build().to_der()?,
        private_key: pkey.private_key_to_der()?,
    })
}
