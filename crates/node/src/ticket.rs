//! Redirect tickets: browsers drop `Authorization` when a redirect crosses origins, so the node
//! that redirects (after checking the token) adds a short-lived ticket to the `Location`, bound
//! to one room and one role, signed with the cluster's ticket secret (HMAC-SHA256). The target
//! accepts it in place of the token. Its presence also marks the request as redirected once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadsfu_server::{SessionRole, TicketError};
use ring::hmac;

/// How long a ticket is good for: one redirect, followed at once.
pub const TICKET_LIFETIME_SECS: u64 = 30;
/// Longest ticket accepted (room names are at most 64 characters).
const MAX_TICKET_LEN: usize = 256;
/// Domain separation of the signed bytes.
const CONTEXT: &[u8] = b"deadsfu redirect ticket v1\n";

/// Signs and checks tickets. The key is the cluster's ticket secret.
pub struct TicketKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(<redacted>)")
    }
}

fn role_code(role: SessionRole) -> &'static str {
    match role {
        SessionRole::Publish => "p",
        SessionRole::View => "v",
    }
}

fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    let mut out = CONTEXT.to_vec();
    out.extend_from_slice(payload);
    out
}

impl TicketKey {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A ticket for `role` in `room`, good until `now + TICKET_LIFETIME_SECS`.
    pub fn issue(&self, room: &str, role: SessionRole, now_unix: u64) -> String {
        let payload = format!(
            "{}.{}.{}",
            role_code(role),
            now_unix + TICKET_LIFETIME_SECS,
            room
        );
        let tag = hmac::sign(&self.key, &signed_bytes(payload.as_bytes()));
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    pub fn check(
        &self,
        ticket: &str,
        room: &str,
        role: SessionRole,
        now_unix: u64,
    ) -> Result<(), TicketError> {
        if ticket.len() > MAX_TICKET_LEN {
            return Err(TicketError::Invalid);
        }
        let (payload_b64, tag_b64) = ticket.split_once('.').ok_or(TicketError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TicketError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TicketError::Invalid)?;
        // Constant-time comparison of the tag.
        hmac::verify(&self.key, &signed_bytes(&payload), &tag).map_err(|_| TicketError::Invalid)?;
        let payload = std::str::from_utf8(&payload).map_err(|_| TicketError::Invalid)?;
        let mut parts = payload.splitn(3, '.');
        let (Some(code), Some(expires), Some(ticket_room)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TicketError::Invalid);
        };
        let expires: u64 = expires.parse().map_err(|_| TicketError::Invalid)?;
        if now_unix > expires {
            return Err(TicketError::Expired);
        }
        if code != role_code(role) || ticket_room != room {
            return Err(TicketError::WrongScope);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_ticket_opens_its_room_and_role_only_until_it_expires() {
        let key = TicketKey::new(b"cluster secret");
        let t = key.issue("lobby", SessionRole::Publish, NOW);
        assert_eq!(
            key.check(&t, "lobby", SessionRole::Publish, NOW + 5),
            Ok(())
        );
        assert_eq!(
            key.check(&t, "other", SessionRole::Publish, NOW),
            Err(TicketError::WrongScope)
        );
        assert_eq!(
            key.check(&t, "lobby", SessionRole::View, NOW),
            Err(TicketError::WrongScope)
        );
        assert_eq!(
            key.check(
                &t,
                "lobby",
                SessionRole::Publish,
                NOW + TICKET_LIFETIME_SECS + 1
            ),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn altered_or_foreign_tickets_are_invalid() {
        let key = TicketKey::new(b"cluster secret");
        let t = key.issue("lobby", SessionRole::View, NOW);
        // Another room spliced into the payload, the signature kept.
        let (_, tag) = t.split_once('.').unwrap();
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(format!("v.{}.lobby2", NOW + 30))
        );
        assert_eq!(
            key.check(&forged, "lobby2", SessionRole::View, NOW),
            Err(TicketError::Invalid)
        );
        let other = TicketKey::new(b"another cluster");
        assert_eq!(
            other.check(&t, "lobby", SessionRole::View, NOW),
            Err(TicketError::Invalid)
        );
        for junk in ["", ".", "a.b", "!!.!!", &"x".repeat(1000)] {
            assert_eq!(
                key.check(junk, "lobby", SessionRole::View, NOW),
                Err(TicketError::Invalid)
            );
        }
    }
}
