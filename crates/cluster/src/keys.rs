//! Names of the Redis keys and the events channel (DESIGN.md §6), all under one prefix.

/// The default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "deadsfu:";

/// Builds key names under a prefix. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node(&self, node_id: &str) -> String {
        format!("{}node:{node_id}", self.prefix)
    }

    pub fn host(&self, hostname: &str) -> String {
        format!("{}host:{hostname}", self.prefix)
    }

    pub fn room(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    pub fn ftl(&self, channel: &str) -> String {
        format!("{}ftl:{channel}", self.prefix)
    }

    pub fn ftl_key(&self, channel: &str) -> String {
        format!("{}ftlkey:{channel}", self.prefix)
    }

    /// A stored certificate (chain, sealed key, validity, issuer). Sfu read/write.
    pub fn cert(&self, domain: &str) -> String {
        format!("{}cert:{domain}", self.prefix)
    }

    /// An ACME account (sealed credentials) for one directory URL. Sfu read/write.
    pub fn acme_account(&self, directory: &str) -> String {
        format!("{}acme:account:{directory}", self.prefix)
    }

    /// The one-order-per-domain lock (owner token, with a TTL). Sfu read/write.
    pub fn acme_lock(&self, domain: &str) -> String {
        format!("{}acme:lock:{domain}", self.prefix)
    }

    /// An HTTP-01 key authorisation. The only `acme:` family proxies may read, since they
    /// answer `/.well-known/acme-challenge/` too; it holds nothing secret.
    pub fn acme_challenge(&self, token: &str) -> String {
        format!("{}acme:challenge:{token}", self.prefix)
    }

    /// A TLS-ALPN-01 answer (certificate and sealed key). Deliberately outside
    /// `acme:challenge:` so the proxies' read grant does not reach private keys.
    pub fn acme_alpn(&self, domain: &str) -> String {
        format!("{}acme:alpn:{domain}", self.prefix)
    }

    /// Shared failure backoff of one domain. Sfu read/write.
    pub fn acme_backoff(&self, domain: &str) -> String {
        format!("{}acme:backoff:{domain}", self.prefix)
    }

    pub fn events_channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The rest of `key` after `{prefix}{family}`, if it is in that family.
    pub fn strip<'a>(&self, family: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix(family)
    }

    /// `SCAN MATCH` pattern for one key family, e.g. `pattern("node:")`.
    pub fn pattern(&self, family: &str) -> String {
        format!("{}{family}*", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_KEY_PREFIX)
    }
}
