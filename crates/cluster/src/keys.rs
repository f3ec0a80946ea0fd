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

    pub fn events_channel(&self) -> String {
        format!("{}events", self.prefix)
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
