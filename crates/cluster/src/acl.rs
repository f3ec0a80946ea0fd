//! Redis ACL rules per role, written to `DIR/redis/users.acl`.
//!
//! Every name issued gets its own password on its role's user (Redis users can hold several
//! passwords), so `revoke` can drop one name's password without touching the others.

use crate::keys::Keys;
use crate::role::Role;

/// Connection set-up commands every role needs (redis-rs sends HELLO with AUTH for RESP3).
const CONNECTION_COMMANDS: &str =
    "+hello +auth +ping +echo +client|setname +client|getname +client|id +select";

/// Rules (after the passwords) for one role.
pub fn role_rules(role: Role, keys: &Keys) -> String {
    let p = keys.prefix();
    let events = keys.events_channel();
    match role {
        Role::Admin => "~* &* +@all".to_string(),
        // The certificate store (cert_store.rs) uses GET, MGET, SET (NX, PX, EX), DEL, SCAN,
        // PUBLISH and its lock scripts (EVALSHA, EVAL on NOSCRIPT) on `cert:*` and `acme:*`.
        Role::Sfu => format!(
            "resetkeys ~{p}node:* ~{p}host:* ~{p}room:* ~{p}ftl:* ~{p}cert:* ~{p}acme:* \
             %R~{p}ftlkey:* resetchannels &{events} -@all {CONNECTION_COMMANDS} \
             +get +mget +set +del +exists +pexpire +pttl +scan \
             +eval +evalsha +script|load +script|exists \
             +publish +subscribe +unsubscribe"
        ),
        // Read-only: `%R~` keys and no write command, so even a wrong command gets NOPERM.
        // Of the ACME keys only HTTP-01 answers, which are public; never certificates,
        // accounts or TLS-ALPN answers (they hold sealed private keys).
        Role::Proxy => format!(
            "resetkeys %R~{p}node:* %R~{p}host:* %R~{p}room:* %R~{p}ftl:* %R~{p}ftlkey:* \
             %R~{p}acme:challenge:* \
             resetchannels &{events} -@all {CONNECTION_COMMANDS} \
             +get +mget +exists +pttl +scan +subscribe +unsubscribe"
        ),
    }
}

/// The whole ACL file: the `default` user switched off, then one user per role carrying the
/// SHA-256 hashes of the passwords issued for it.
pub fn acl_file(keys: &Keys, password_hashes: &[(Role, String)]) -> String {
    // Redis ACL files allow no comments: every line is a user.
    let mut out = String::from("user default off resetpass resetkeys resetchannels -@all\n");
    for role in Role::ALL {
        let hashes: Vec<String> = password_hashes
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, h)| format!("#{h}"))
            .collect();
        out.push_str(&format!(
            "user {} on resetpass {} {}\n",
            role.acl_user(),
            hashes.join(" "),
            role_rules(role, keys)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_granted_explicitly() {
        let keys = Keys::default();
        for role in [Role::Sfu, Role::Proxy] {
            assert!(role_rules(role, &keys).contains("resetchannels &deadsfu:events"));
        }
    }

    #[test]
    fn sfu_owns_the_certificate_store() {
        let rules = role_rules(Role::Sfu, &Keys::default());
        for grant in [
            " ~deadsfu:cert:* ",
            " ~deadsfu:acme:* ",
            "+get ",
            "+mget ",
            "+set ",
            "+del ",
            "+pexpire ",
            "+scan",
            "+eval ",
            "+evalsha ",
            "+publish ",
        ] {
            assert!(rules.contains(grant), "{grant:?} missing from {rules}");
        }
    }

    #[test]
    fn proxy_reads_http_challenges_only() {
        let rules = role_rules(Role::Proxy, &Keys::default());
        assert!(rules.contains(" %R~deadsfu:acme:challenge:* "), "{rules}");
        for family in ["cert:", "acme:*", "acme:alpn", "acme:account", "acme:lock"] {
            assert!(!rules.contains(&format!("deadsfu:{family}")), "{family}");
        }
    }

    #[test]
    fn proxy_has_no_write_command() {
        let rules = role_rules(Role::Proxy, &Keys::default());
        for cmd in ["+set", "+del", "+eval", "+publish", "+pexpire"] {
            assert!(!rules.contains(cmd), "{cmd}");
        }
    }
}
