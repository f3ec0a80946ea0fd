//! FTL's stream authentication: HMAC-SHA512 keyed with the channel secret's ASCII bytes, over
//! the raw (hex-decoded) nonce bytes, sent as lowercase hex.

use hmac::{Hmac, Mac};
use sha2::Sha512;

/// Length in bytes of an HMAC-SHA512 tag.
pub const TAG_LEN: usize = 64;

type HmacSha512 = Hmac<Sha512>;

/// Computes the tag a client sends in `CONNECT`.
pub fn sign(secret: &[u8], nonce: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = HmacSha512::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is the tag of `nonce` under `secret`, compared in constant time (a tag of the
/// wrong length is simply wrong).
pub fn verify(secret: &[u8], nonce: &[u8], tag: &[u8]) -> bool {
    let mut mac = HmacSha512::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(nonce);
    mac.verify_slice(tag).is_ok()
}

/// Lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Why a string is not hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("odd number of hex digits")]
    OddLength,
    #[error("not a hex digit")]
    BadDigit,
}

/// Decodes hex digits of either case.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let pairs = text.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err(HexError::OddLength);
    }
    pairs
        .map(|pair| Ok((hex_value(pair[0])? << 4) | hex_value(pair[1])?))
        .collect()
}

fn hex_value(digit: u8) -> Result<u8, HexError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(HexError::BadDigit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected tags computed independently with Python:
    // hmac.new(secret, nonce, hashlib.sha512).hexdigest()
    const VECTORS: &[(&[u8], &str, &str)] = &[
        (
            b"aBcDeFgHiJkLmNoPqRsTuVwXyZ123456",
            // bytes(range(64))
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
             202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
            "a85ab02cdcf1c16931934e19e043e0cd84f1cce1326cb28f625b7586f8255808\
             bf3d88b1e65d98cc3a2dc4475ca74c308c69c0fb4fab9a2765704d879197efb3",
        ),
        (
            b"secret",
            "00ff10ab",
            "4c36dda751a7a9566aad887f2c921829cae32f7080dc2f16c794af5bcf7eca14\
             1a5bcf5a8917f4abeebd87529ed55346698eff99063a0c6a54732e2bfeaaea41",
        ),
        (
            b"",
            "",
            "b936cee86c9f87aa5d3c6f2e84cb5a4239a5fe50480a6ec66b70ab5b1f4ac673\
             0c6c515421b327ec1d69402e53dfb49ad7381eb067b338fd7b0cb22247225d47",
        ),
    ];

    #[test]
    fn matches_independent_vectors() {
        for (secret, nonce_hex, tag_hex) in VECTORS {
            let nonce = decode_hex(nonce_hex).unwrap();
            let tag = sign(secret, &nonce);
            assert_eq!(encode_hex(&tag), *tag_hex);
            assert!(verify(secret, &nonce, &tag));
            // Upper-case hex from a client decodes to the same tag.
            let upper = decode_hex(&tag_hex.to_ascii_uppercase()).unwrap();
            assert!(verify(secret, &nonce, &upper));
        }
    }

    #[test]
    fn rejects_wrong_tags() {
        let nonce = [7u8; 64];
        let mut tag = sign(b"right", &nonce);
        assert!(!verify(b"wrong", &nonce, &tag));
        assert!(!verify(b"right", &nonce, &tag[..63]));
        assert!(!verify(b"right", &nonce, &[]));
        tag[63] ^= 1;
        assert!(!verify(b"right", &nonce, &tag));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        assert_eq!(encode_hex(&[0x00, 0x9f, 0xff]), "009fff");
        assert_eq!(decode_hex("009FfF").unwrap(), [0x00, 0x9f, 0xff]);
        assert_eq!(decode_hex("abc"), Err(HexError::OddLength));
        assert_eq!(decode_hex("0g"), Err(HexError::BadDigit));
        assert_eq!(decode_hex("é"), Err(HexError::BadDigit));
    }
}
