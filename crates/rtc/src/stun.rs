//! Just enough STUN parsing to route a datagram from an unknown address to its session.

/// True when `buf` looks like a STUN message (RFC 7983 demultiplexing: first byte 0..=3, and the
/// magic cookie in place).
pub(crate) fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 4 && buf[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// True when `buf` is a STUN Binding success response (type 0x0101).
pub(crate) fn is_binding_success(buf: &[u8]) -> bool {
    is_stun(buf) && buf[0] == 0x01 && buf[1] == 0x01
}

/// The local (our) ufrag from a Binding request's USERNAME attribute (`ours:theirs`).
pub(crate) fn local_ufrag(buf: &[u8]) -> Option<&str> {
    if !is_stun(buf) {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let attrs = buf.get(20..20 + len)?;
    let mut rest = attrs;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let alen = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + alen)?;
        if kind == 0x0006 {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        let padded = (alen + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// True when `buf` is a Binding request whose MESSAGE-INTEGRITY holds for `password`: what
/// str0m would check before answering, done for a session that has no str0m peer yet.
pub(crate) fn is_check_signed_with(buf: &[u8], password: &str) -> bool {
    let Ok(msg) = str0m::ice::StunMessage::parse(buf) else {
        return false;
    };
    let hmac = crate::dtls_tap::crypto_provider().sha1_hmac_provider;
    msg.is_binding_request()
        && msg.verify(password.as_bytes(), |key, parts| hmac.sha1_hmac(key, parts))
}

/// Appends MESSAGE-INTEGRITY for `password` to a STUN message `msg` (for tests and fuzzing,
/// which play clients).
pub(crate) fn sign(msg: &mut Vec<u8>, password: &str) {
    let body = msg.len().saturating_sub(20) + 24;
    msg[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    let hmac = crate::dtls_tap::crypto_provider().sha1_hmac_provider;
    let mac = hmac.sha1_hmac(password.as_bytes(), &[msg]);
    msg.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
    msg.extend_from_slice(&mac);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &[u8]) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06, 0x00, username.len() as u8];
        attr.extend_from_slice(username);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // A PRIORITY attribute first, to check we skip attributes.
        let mut attrs = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
        attrs.extend(attr);
        let mut msg = vec![0x00, 0x01];
        msg.extend((attrs.len() as u16).to_be_bytes());
        msg.extend([0x21, 0x12, 0xa4, 0x42]);
        msg.extend([7u8; 12]);
        msg.extend(attrs);
        msg
    }

    #[test]
    fn finds_local_ufrag() {
        assert_eq!(local_ufrag(&binding(b"abcd:wxyz")), Some("abcd"));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(local_ufrag(&[0x80; 40]), None);
        let mut truncated = binding(b"abcd:wxyz");
        truncated.truncate(30);
        assert_eq!(local_ufrag(&truncated), None);
        assert!(!is_stun(&[0, 1, 0, 0]));
    }

    #[test]
    fn a_check_is_verified_against_the_sessions_password() {
        let mut check = binding(b"abcd:wxyz");
        sign(&mut check, "the-password-of-22-chars");
        assert!(is_check_signed_with(&check, "the-password-of-22-chars"));
        assert!(!is_check_signed_with(&check, "another-password-22-chr"));
        assert!(!is_check_signed_with(
            &binding(b"abcd:wxyz"),
            "the-password-of-22-chars"
        ));
        let mut tampered = check.clone();
        tampered[24] ^= 1;
        assert!(!is_check_signed_with(&tampered, "the-password-of-22-chars"));
    }
}
