//! Redis ACL rules, written to `DIR/redis/users.acl`.
//!
//! Every sfu name issued gets its own ACL user ([`node_acl_user`]) that may write its own
//! `node:{name}` and `host:{hostname}` only, beside the keys all SFUs share. Proxy and admin
//! names get their own password on their role's user (Redis users can hold several
//! passwords). Sfu names issued before per-node users existed keep their password on the
//! shared `sfu` user, which is written only while such names remain. Either way `revoke`
//! drops one name's credentials without touching the others.

use crate::keys::Keys;
use crate::role::Role;

/// Connection set-up commands every role needs (redis-rs sends HELLO with AUTH for RESP3).
const CONNECTION_COMMANDS: &str =
    "+hello +auth +ping +echo +client|setname +client|getname +client|id +select";

/// What every SFU may run. The certificate store (cert_store.rs) uses GET, MGET, SET (NX, PX,
/// EX), DEL, SCAN, PUBLISH and its lock scripts (EVALSHA, EVAL on NOSCRIPT) on `cert:*` and
/// `acme:*`; the registry its lease and node-record scripts. Scripts run as the caller, so
/// every command inside them is checked against the same key rules.
const SFU_COMMANDS: &str = "+get +mget +set +del +exists +pexpire +pttl +scan \
                            +eval +evalsha +script|load +script|exists \
                            +publish +subscribe +unsubscribe";

/// The ACL user of an sfu name issued since per-node users exist.
pub fn node_acl_user(name: &str) -> String {
    format!("sfu-{name}")
}

/// True if `text` can stand inside an ACL key pattern as itself: no glob characters
/// (`*`, `?`, `[`, `]`, `\`), no spaces or other separators, nothing unprintable.
pub fn literal_in_pattern(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && !"*?[]\\".contains(c))
}

/// Rules (after the passwords) for one role's shared user.
pub fn role_rules(role: Role, keys: &Keys) -> String {
    let p = keys.prefix();
    let events = keys.events_channel();
    match role {
        Role::Admin => "~* &* +@all".to_string(),
        // The shared sfu user of names issued before per-node users: any node or host key.
        Role::Sfu => format!(
            "resetkeys ~{p}node:* ~{p}host:* ~{p}room:* ~{p}ftl:* ~{p}cert:* ~{p}acme:* \
             %R~{p}ftlkey:* resetchannels &{events} -@all {CONNECTION_COMMANDS} {SFU_COMMANDS}"
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

/// Rules (after the passwords) for one sfu name's own user: its node record and hostname
/// lease read/write, every other node record and hostname lease read-only (routing), and the
/// shared keys as the role has them. `node_id` and `hostname` must pass
/// [`literal_in_pattern`], or they would widen the grant.
pub fn node_rules(keys: &Keys, node_id: &str, hostname: &str) -> String {
    assert!(
        literal_in_pattern(node_id) && literal_in_pattern(hostname),
        "node id and hostname are checked before they reach the ACL"
    );
    let p = keys.prefix();
    let events = keys.events_channel();
    format!(
        "resetkeys ~{p}node:{node_id} ~{p}host:{hostname} %R~{p}node:* %R~{p}host:* \
         ~{p}room:* ~{p}ftl:* ~{p}cert:* ~{p}acme:* %R~{p}ftlkey:* \
         resetchannels &{events} -@all {CONNECTION_COMMANDS} {SFU_COMMANDS}"
    )
}

/// An sfu name with its own ACL user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUser {
    /// The issued name, which is also the node id it may register.
    pub name: String,
    pub hostname: String,
    pub password_sha256: String,
}

/// The whole ACL file: the `default` user switched off; the admin and proxy users carrying
/// the SHA-256 hashes of the passwords issued for them; the shared `sfu` user only if
/// `role_hashes` holds sfu passwords (names issued before per-node users); one user per
/// entry of `nodes`.
pub fn acl_file(keys: &Keys, role_hashes: &[(Role, String)], nodes: &[NodeUser]) -> String {
    // Redis ACL files allow no comments: every line is a user.
    let mut out = String::from("user default off resetpass resetkeys resetchannels -@all\n");
    for role in Role::ALL {
        let hashes: Vec<String> = role_hashes
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, h)| format!("#{h}"))
            .collect();
        if role == Role::Sfu && hashes.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "user {} on resetpass {} {}\n",
            role.acl_user(),
            hashes.join(" "),
            role_rules(role, keys)
        ));
    }
    for node in nodes {
        out.push_str(&format!(
            "user {} on resetpass #{} {}\n",
            node_acl_user(&node.name),
            node.password_sha256,
            node_rules(keys, &node.name, &node.hostname)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_a() -> NodeUser {
        NodeUser {
            name: "node-a".into(),
            hostname: "a.example.test".into(),
            password_sha256: "aa".repeat(32),
        }
    }

    #[test]
    fn channels_are_granted_explicitly() {
        let keys = Keys::default();
        for role in [Role::Sfu, Role::Proxy] {
            assert!(role_rules(role, &keys).contains("resetchannels &deadsfu:events"));
        }
        assert!(node_rules(&keys, "n", "h").contains("resetchannels &deadsfu:events"));
    }

    #[test]
    fn sfu_users_own_the_certificate_store() {
        let keys = Keys::default();
        for rules in [
            role_rules(Role::Sfu, &keys),
            node_rules(&keys, "node-a", "a.example.test"),
        ] {
            for grant in [
                " ~deadsfu:cert:* ",
                " ~deadsfu:acme:* ",
                " ~deadsfu:room:* ",
                " ~deadsfu:ftl:* ",
                " %R~deadsfu:ftlkey:* ",
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
    }

    #[test]
    fn a_node_user_writes_only_its_own_node_and_host_keys() {
        let rules = node_rules(&Keys::default(), "node-a", "a.example.test");
        for grant in [
            "resetkeys ",
            " ~deadsfu:node:node-a ",
            " ~deadsfu:host:a.example.test ",
            " %R~deadsfu:node:* ",
            " %R~deadsfu:host:* ",
        ] {
            assert!(rules.contains(grant), "{grant:?} missing from {rules}");
        }
        // No read-write grant on the node or host families as a whole.
        for wide in [" ~deadsfu:node:*", " ~deadsfu:host:*", "%W~", "%RW~", "~* "] {
            assert!(!rules.contains(wide), "{wide:?} in {rules}");
        }
        // Every read-write key pattern is either a shared family or one of its own keys.
        for pattern in rules.split(' ').filter_map(|t| t.strip_prefix('~')) {
            let shared = ["room:*", "ftl:*", "cert:*", "acme:*"]
                .iter()
                .any(|f| pattern == format!("deadsfu:{f}"));
            let own = pattern == "deadsfu:node:node-a" || pattern == "deadsfu:host:a.example.test";
            assert!(shared || own, "unexpected read-write pattern {pattern:?}");
        }
    }

    #[test]
    fn glob_characters_never_reach_a_pattern() {
        for bad in ["a*", "a?", "a[b]", "a\\b", "a b", "", "a\tb", "é"] {
            assert!(!literal_in_pattern(bad), "{bad:?}");
        }
        assert!(literal_in_pattern("sfu-1.example.test"));
        let result = std::panic::catch_unwind(|| node_rules(&Keys::default(), "*", "h"));
        assert!(result.is_err());
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

    #[test]
    fn file_has_one_user_per_node_and_the_shared_sfu_user_only_for_old_names() {
        let keys = Keys::default();
        let admin = (Role::Admin, "11".repeat(32));
        let file = acl_file(&keys, std::slice::from_ref(&admin), &[node_a()]);
        let lines: Vec<&str> = file.lines().collect();
        assert_eq!(lines.len(), 4, "{file}");
        assert!(lines[0].starts_with("user default off "));
        for start in [
            format!("user admin on resetpass #{} ", admin.1),
            "user proxy on resetpass ".to_string(),
            format!(
                "user sfu-node-a on resetpass #{} resetkeys ~deadsfu:node:node-a ",
                "aa".repeat(32)
            ),
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(&start)),
                "{start:?} in {file}"
            );
        }
        assert!(!file.contains("user sfu "), "{file}");

        // A name issued before per-node users keeps the shared user.
        let old = (Role::Sfu, "22".repeat(32));
        let file = acl_file(&keys, &[admin, old.clone()], &[node_a()]);
        let sfu = file
            .lines()
            .find(|l| l.starts_with("user sfu "))
            .expect("shared sfu user");
        assert!(sfu.contains(&format!(" #{} ", old.1)), "{sfu}");
        assert!(sfu.contains(" ~deadsfu:node:* "), "{sfu}");
        assert!(!sfu.contains(&"aa".repeat(32)), "{sfu}");
    }
}
