//! HMAC-SHA1 (STUN's MESSAGE-INTEGRITY) and SHA-256 (DTLS certificate fingerprints) for str0m,
//! from ring.
//!
//! str0m's OpenSSL provider builds an HMAC key object and a signer for every STUN message,
//! which in OpenSSL 3 means a provider lookup and several allocations: a join's STUN checks
//! spent about 7% of its CPU there (BENCHMARKS.md, issue 13). ring's HMAC runs on the stack.

use ring::{digest, hmac};
use str0m::crypto::{Sha1HmacProvider, Sha256Provider};

/// HMAC-SHA1 over the concatenation of the payloads.
#[derive(Debug)]
pub(crate) struct RingSha1Hmac;

impl Sha1HmacProvider for RingSha1Hmac {
    fn sha1_hmac(&self, key: &[u8], payloads: &[&[u8]]) -> [u8; 20] {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        let mut ctx = hmac::Context::with_key(&key);
        for payload in payloads {
            ctx.update(payload);
        }
        let mut out = [0u8; 20];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// SHA-256 of `data`.
#[derive(Debug)]
pub(crate) struct RingSha256;

impl Sha256Provider for RingSha256 {
    fn sha256(&self, data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        hex::encode(bytes)
    }

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        // Test cases 1, 2 and 6 (a key longer than the block, which is hashed first).
        let cases: [(&[u8], &[u8], &str); 3] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b617318655057264e28bc0b6fb378c8ef146be00",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
            ),
            (
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "aa4ae5e15272d00e95705637ce8a3b55ed402112",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hex(&RingSha1Hmac.sha1_hmac(key, &[data])), expected);
        }
    }

    #[test]
    fn hmac_sha1_of_parts_is_that_of_their_concatenation_and_matches_openssl() {
        let openssl = str0m::crypto::from_feature_flags().sha1_hmac_provider;
        let key = b"a STUN password of 24 ch";
        let parts: [&[u8]; 3] = [b"\x00\x01\x00\x4c\x21\x12\xa4\x42", b"", &[0x5a; 77]];
        let whole = parts.concat();
        let ours = RingSha1Hmac.sha1_hmac(key, &parts);
        assert_eq!(ours, RingSha1Hmac.sha1_hmac(key, &[&whole]));
        assert_eq!(ours, openssl.sha1_hmac(key, &parts));
    }

    #[test]
    fn hmac_sha1_takes_an_empty_key() {
        // str0m's OpenSSL provider panics on one (a peer's ICE password is its key for our
        // checks' integrity).
        assert_eq!(
            hex(&RingSha1Hmac.sha1_hmac(b"", &[])),
            "fbdb1d1b18aa6c08324b7d64b71fb76370690e1d"
        );
    }

    #[test]
    fn sha256_matches_the_standard_vector_and_openssl() {
        assert_eq!(
            hex(&RingSha256.sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let openssl = str0m::crypto::from_feature_flags().sha256_provider;
        let data = [7u8; 1000];
        assert_eq!(RingSha256.sha256(&data), openssl.sha256(&data));
    }
}
