//! The sending half of SRTP and SRTCP (RFC 3711, RFC 7714) for viewers' media.
//!
//! Packets are protected straight into the worker's send buffer: the header is written there,
//! the payload (shared by every viewer) is encrypted from where it lies, and the tag lands
//! behind it, so a packet costs one cipher call and no allocation. AES-GCM is ring's (sealing in
//! place, about twice as fast per packet here as OpenSSL's EVP interface, whose per-call set-up
//! dominated); AES-CM and the key derivation use str0m's OpenSSL provider. The key schedule
//! follows RFC 3711 section 4.3 with the AES-CM PRF.

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use str0m::config::CryptoProvider;
use str0m::crypto::dtls::SrtpProfile;
use str0m::crypto::{
    AeadAes128Gcm, AeadAes256Gcm, Aes128CmSha1_80, Aes128CmSha1_80Cipher, Sha1HmacProvider,
    SrtpProvider,
};

use crate::dtls_tap::SrtpKeys;

const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// Most bytes protection adds to an RTP packet (the GCM tag; AES-CM adds 10).
pub(crate) const RTP_OVERHEAD: usize = 16;
/// Most bytes protection adds to an RTCP compound packet (tag and SRTCP index).
pub(crate) const RTCP_OVERHEAD: usize = 16 + 4;
/// Spare room behind a packet that the counter-mode cipher may write into.
pub(crate) const SCRATCH: usize = 16;

// The GCM key schedule is held inline: it is used for nearly every session, AES-CM rarely.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    /// AEAD_AES_128_GCM or AEAD_AES_256_GCM (RFC 7714).
    Gcm { salt: [u8; 12], key: LessSafeKey },
    Cm128 {
        salt: [u8; 14],
        auth: [u8; 20],
        enc: Box<dyn Aes128CmSha1_80Cipher>,
    },
}

/// Outgoing SRTP and SRTCP state of one peer connection.
pub(crate) struct SrtpSender {
    rtp: Cipher,
    rtcp: Cipher,
    srtcp_index: u32,
    hmac: &'static dyn Sha1HmacProvider,
}

/// The master key and salt of one direction.
struct Master<'a> {
    key: &'a [u8],
    salt: &'a [u8],
}

impl Master<'_> {
    /// RFC 3711 4.3.1 with key_derivation_rate 0: AES-CM keyed with the master key over
    /// (salt XOR label << 48) || counter.
    fn derive(&self, srtp: &dyn SrtpProvider, label: u8, out: &mut [u8]) {
        let mut input = [0u8; 16];
        input[..self.salt.len()].copy_from_slice(self.salt);
        input[7] ^= label;
        let mut block = [0u8; 32];
        for (round, chunk) in out.chunks_mut(16).enumerate() {
            input[14..].copy_from_slice(&(round as u16).to_be_bytes());
            if self.key.len() == 32 {
                srtp.srtp_aes_256_ecb_round(self.key, &input, &mut block);
            } else {
                srtp.srtp_aes_128_ecb_round(self.key, &input, &mut block);
            }
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

impl SrtpSender {
    /// The sender for our side of a DTLS-SRTP association.
    pub fn new(crypto: &CryptoProvider, keys: &SrtpKeys) -> Option<Self> {
        let (key_len, salt_len) = match keys.profile {
            SrtpProfile::AES128_CM_SHA1_80 => (Aes128CmSha1_80::KEY_LEN, Aes128CmSha1_80::SALT_LEN),
            SrtpProfile::AEAD_AES_128_GCM => (AeadAes128Gcm::KEY_LEN, AeadAes128Gcm::SALT_LEN),
            SrtpProfile::AEAD_AES_256_GCM => (AeadAes256Gcm::KEY_LEN, AeadAes256Gcm::SALT_LEN),
            _ => return None,
        };
        let m = &keys.material;
        if m.len() != 2 * (key_len + salt_len) {
            return None;
        }
        // RFC 5764 4.2: client key, server key, client salt, server salt.
        let (k, s) = if keys.we_are_client {
            (0, 2 * key_len)
        } else {
            (key_len, 2 * key_len + salt_len)
        };
        let master = Master {
            key: &m[k..k + key_len],
            salt: &m[s..s + salt_len],
        };
        let srtp = crypto.srtp_provider;
        let make = |key_label: u8, auth_label: u8, salt_label: u8| -> Cipher {
            match keys.profile {
                SrtpProfile::AEAD_AES_128_GCM | SrtpProfile::AEAD_AES_256_GCM => {
                    let algorithm = if key_len == 16 {
                        &AES_128_GCM
                    } else {
                        &AES_256_GCM
                    };
                    let mut key = [0u8; 32];
                    let mut salt = [0u8; 12];
                    master.derive(srtp, key_label, &mut key[..key_len]);
                    master.derive(srtp, salt_label, &mut salt);
                    let key = UnboundKey::new(algorithm, &key[..key_len])
                        .expect("key length matches the algorithm");
                    Cipher::Gcm {
                        salt,
                        key: LessSafeKey::new(key),
                    }
                }
                // AES128_CM_SHA1_80, the only other profile (checked above).
                _ => {
                    let mut key = [0u8; 16];
                    let mut auth = [0u8; 20];
                    let mut salt = [0u8; 14];
                    master.derive(srtp, key_label, &mut key);
                    master.derive(srtp, auth_label, &mut auth);
                    master.derive(srtp, salt_label, &mut salt);
                    Cipher::Cm128 {
                        salt,
                        auth,
                        enc: srtp.aes_128_cm_sha1_80().create_cipher(key, true),
                    }
                }
            }
        };
        Some(SrtpSender {
            rtp: make(LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT),
            rtcp: make(LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT),
            srtcp_index: 0,
            hmac: crypto.sha1_hmac_provider,
        })
    }

    /// Writes the SRTP packet for `header` (with SSRC and sequence number in place) and
    /// `payload` into `out`, which must hold `header.len() + payload.len() + RTP_OVERHEAD +
    /// SCRATCH` bytes. `index` is the packet's extended sequence number. Returns its length,
    /// or `None` when sealing failed: the buffer may then hold plaintext and must not be sent
    /// (fail closed).
    pub fn protect_rtp(
        &mut self,
        header: &[u8],
        payload: &[u8],
        index: u64,
        out: &mut [u8],
    ) -> Option<usize> {
        let hlen = header.len();
        let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        out[..hlen].copy_from_slice(header);
        let body_end = hlen + payload.len();
        let roc = (index >> 16) as u32;
        let ok = match &mut self.rtp {
            Cipher::Gcm { salt, key } => {
                let iv = AeadAes128Gcm::rtp_iv(*salt, ssrc, roc, index as u16);
                out[hlen..body_end].copy_from_slice(payload);
                match key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(header),
                    &mut out[hlen..body_end],
                ) {
                    Ok(tag) => {
                        out[body_end..body_end + 16].copy_from_slice(tag.as_ref());
                        true
                    }
                    Err(_) => false,
                }
            }
            Cipher::Cm128 { salt, auth, enc } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index);
                let ok = enc
                    .encrypt(&iv, payload, &mut out[hlen..body_end + SCRATCH])
                    .is_ok();
                let hmac = self.hmac;
                Aes128CmSha1_80::rtp_hmac(
                    |k: &[u8], p: &[&[u8]]| hmac.sha1_hmac(k, p),
                    auth,
                    out,
                    index,
                    body_end,
                );
                ok
            }
        };
        ok.then(|| body_end + self.rtp_tag_len())
    }

    fn rtp_tag_len(&self) -> usize {
        match self.rtp {
            Cipher::Cm128 { .. } => Aes128CmSha1_80::HMAC_TAG_LEN,
            _ => AeadAes128Gcm::TAG_LEN,
        }
    }

    /// Writes the SRTCP packet for the compound RTCP packet `plain` into `out`, which must hold
    /// `plain.len() + RTCP_OVERHEAD + SCRATCH` bytes. Returns its length, or `None` when
    /// sealing failed (nothing may be sent).
    pub fn protect_rtcp(&mut self, plain: &[u8], out: &mut [u8]) -> Option<usize> {
        let index = self.srtcp_index;
        // RFC 3711 3.3.2: starts at zero, one more per packet, modulo 2^31.
        self.srtcp_index = (index + 1) & 0x7fff_ffff;
        let e_and_index = (0x8000_0000 | index).to_be_bytes();
        let ssrc = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]);
        out[..8].copy_from_slice(&plain[..8]);
        let body = &plain[8..];
        let end = plain.len();
        match &mut self.rtcp {
            Cipher::Gcm { salt, key } => {
                let iv = AeadAes128Gcm::rtcp_iv(*salt, ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&plain[..8]);
                aad[8..].copy_from_slice(&e_and_index);
                out[8..end].copy_from_slice(body);
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(iv),
                        Aad::from(aad),
                        &mut out[8..end],
                    )
                    .ok()?;
                out[end..end + 16].copy_from_slice(tag.as_ref());
                out[end + 16..end + 20].copy_from_slice(&e_and_index);
                Some(end + 20)
            }
            Cipher::Cm128 { salt, auth, enc } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index as u64);
                enc.encrypt(&iv, body, &mut out[8..end + SCRATCH]).ok()?;
                out[end..end + 4].copy_from_slice(&e_and_index);
                let hmac = self.hmac;
                Aes128CmSha1_80::rtcp_hmac(
                    |k: &[u8], p: &[&[u8]]| hmac.sha1_hmac(k, p),
                    auth,
                    out,
                    end + 4,
                );
                Some(end + 4 + Aes128CmSha1_80::HMAC_TAG_LEN)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn test_keys() -> SrtpKeys {
        keys(SrtpProfile::AEAD_AES_128_GCM)
    }

    fn keys(profile: SrtpProfile) -> SrtpKeys {
        let len = match profile {
            SrtpProfile::AES128_CM_SHA1_80 => 2 * (16 + 14),
            SrtpProfile::AEAD_AES_128_GCM => 2 * (16 + 12),
            _ => 2 * (32 + 12),
        };
        SrtpKeys {
            profile,
            material: (0..len as u8).collect(),
            we_are_client: false,
        }
    }

    /// RFC 3711 appendix B.3: the key derivation test vectors.
    #[test]
    fn key_derivation_matches_rfc3711() {
        let crypto = str0m::crypto::from_feature_flags();
        let master = Master {
            key: &hex::decode("E1F97A0D3E018BE0D64FA32C06DE4139").unwrap(),
            salt: &hex::decode("0EC675AD498AFEEBB6960B3AABE6").unwrap(),
        };
        let mut key = [0u8; 16];
        master.derive(crypto.srtp_provider, LABEL_RTP_KEY, &mut key);
        assert_eq!(hex::encode_upper(key), "C61E7A93744F39EE10734AFE3FF7A087");
        let mut salt = [0u8; 14];
        master.derive(crypto.srtp_provider, LABEL_RTP_SALT, &mut salt);
        assert_eq!(hex::encode_upper(salt), "30CBBC08863D8C85D49DB34A9AE1");
        let mut auth = [0u8; 20];
        master.derive(crypto.srtp_provider, LABEL_RTP_AUTH, &mut auth);
        assert_eq!(
            hex::encode_upper(auth),
            "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"
        );
    }

    #[test]
    fn output_sizes_per_profile() {
        let crypto = str0m::crypto::from_feature_flags();
        let header = [0x80, 96, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        let payload = [7u8; 100];
        let rtcp = [
            0x80, 200, 0, 6, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        for (profile, tag) in [
            (SrtpProfile::AES128_CM_SHA1_80, 10),
            (SrtpProfile::AEAD_AES_128_GCM, 16),
            (SrtpProfile::AEAD_AES_256_GCM, 16),
        ] {
            let mut s = SrtpSender::new(&crypto, &keys(profile)).unwrap();
            let mut out = [0u8; 200];
            let n = s.protect_rtp(&header, &payload, 1, &mut out).unwrap();
            assert_eq!(n, 12 + 100 + tag, "{profile:?}");
            assert_eq!(&out[..12], &header);
            assert_ne!(&out[12..112], &payload[..]);
            let n = s.protect_rtcp(&rtcp, &mut out).unwrap();
            assert_eq!(n, rtcp.len() + 4 + tag, "{profile:?}");
            assert_eq!(&out[..8], &rtcp[..8]);
        }
    }

    /// ring's AES-GCM seal gives the bytes OpenSSL's does (str0m's decryptor, and so the
    /// peers', agree with the latter).
    #[test]
    fn gcm_matches_openssl() {
        let crypto = str0m::crypto::from_feature_flags();
        let header = [
            0x90, 96, 0x12, 0x34, 0, 1, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0xbe, 0xde, 0, 1, 0x10, b'0',
            0, 0,
        ];
        let payload: Vec<u8> = (0..1100u32).map(|i| i as u8).collect();
        let index = (3u64 << 16) | 0x1234;
        for profile in [SrtpProfile::AEAD_AES_128_GCM, SrtpProfile::AEAD_AES_256_GCM] {
            let k = keys(profile);
            let key_len = if profile == SrtpProfile::AEAD_AES_128_GCM {
                16
            } else {
                32
            };
            // Server side: the second key and the second salt.
            let master = Master {
                key: &k.material[key_len..2 * key_len],
                salt: &k.material[2 * key_len + 12..2 * key_len + 24],
            };
            let mut key = [0u8; 32];
            let mut salt = [0u8; 12];
            master.derive(crypto.srtp_provider, LABEL_RTP_KEY, &mut key[..key_len]);
            master.derive(crypto.srtp_provider, LABEL_RTP_SALT, &mut salt);
            let iv = AeadAes128Gcm::rtp_iv(salt, 0xdeadbeef, 3, 0x1234);
            let mut expected = vec![0u8; payload.len() + 16];
            if key_len == 16 {
                let mut c = crypto
                    .srtp_provider
                    .aead_aes_128_gcm()
                    .create_cipher(key[..16].try_into().unwrap(), true);
                c.encrypt(&iv, &header, &payload, &mut expected).unwrap();
            } else {
                let mut c = crypto
                    .srtp_provider
                    .aead_aes_256_gcm()
                    .create_cipher(key, true);
                c.encrypt(&iv, &header, &payload, &mut expected).unwrap();
            }
            let mut s = SrtpSender::new(&crypto, &k).unwrap();
            let mut out = vec![0u8; 2048];
            let n = s.protect_rtp(&header, &payload, index, &mut out).unwrap();
            assert_eq!(&out[..header.len()], &header);
            assert_eq!(&out[header.len()..n], &expected[..], "{profile:?}");
        }
    }

    #[test]
    fn wrong_material_length_is_refused() {
        let crypto = str0m::crypto::from_feature_flags();
        let mut k = keys(SrtpProfile::AEAD_AES_128_GCM);
        k.material.pop();
        assert!(SrtpSender::new(&crypto, &k).is_none());
    }
}
