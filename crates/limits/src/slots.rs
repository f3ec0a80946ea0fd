//! Connection slots (no I/O): a fixed number of open connections. When all are taken, the
//! oldest connection that has not yet authenticated is closed to make room for the newcomer,
//! so idle or stalled connections cannot keep real clients out; if every slot holds an
//! authenticated connection, the newcomer is refused. Used by the FTL listeners of the SFU and
//! of the proxy.

use std::collections::BTreeMap;

/// Identifies a control connection; increasing in accept order.
pub type ConnId = u64;

/// The decision for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Take slot `id`, after closing `evict` if set.
    Open { id: ConnId, evict: Option<ConnId> },
    /// Every slot holds an authenticated session.
    Full,
}

#[derive(Debug)]
pub struct Slots {
    max: usize,
    next: ConnId,
    /// Open connections in accept order, and whether each is authenticated.
    open: BTreeMap<ConnId, bool>,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            next: 0,
            open: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn admit(&mut self) -> Slot {
        let evict = if self.open.len() >= self.max {
            let Some(oldest) = self
                .open
                .iter()
                .find(|(_, authenticated)| !**authenticated)
                .map(|(id, _)| *id)
            else {
                return Slot::Full;
            };
            self.open.remove(&oldest);
            Some(oldest)
        } else {
            None
        };
        self.next += 1;
        let id = self.next;
        self.open.insert(id, false);
        Slot::Open { id, evict }
    }

    /// The connection authenticated (e.g. proved its stream key): it is no longer evicted for newcomers.
    pub fn authenticated(&mut self, id: ConnId) {
        if let Some(authenticated) = self.open.get_mut(&id) {
            *authenticated = true;
        }
    }

    /// The connection closed (or was evicted: then this does nothing).
    pub fn remove(&mut self, id: ConnId) {
        self.open.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_unauthenticated_makes_room() {
        let mut slots = Slots::new(3);
        let ids: Vec<ConnId> = (0..3)
            .map(|_| match slots.admit() {
                Slot::Open { id, evict: None } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        slots.authenticated(ids[0]);
        // Full: the oldest that has not authenticated (the second) goes.
        let Slot::Open { id: fourth, evict } = slots.admit() else {
            panic!("refused")
        };
        assert_eq!(evict, Some(ids[1]));
        assert_eq!(slots.len(), 3);
        // Its task ending later is harmless.
        slots.remove(ids[1]);
        assert_eq!(slots.len(), 3);
        slots.authenticated(ids[2]);
        slots.authenticated(fourth);
        assert_eq!(slots.admit(), Slot::Full);
        slots.remove(ids[0]);
        assert!(matches!(slots.admit(), Slot::Open { evict: None, .. }));
    }
}
