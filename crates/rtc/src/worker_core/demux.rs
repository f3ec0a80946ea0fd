//! Which session a datagram belongs to: by its source address, or, for a source not seen
//! before, by the ufrag of the STUN check it carries. Unknown sources must cost nothing lasting:
//! a source is bound to a session only once that session has answered its check (str0m answers
//! only checks whose integrity it verified), each session binds a few addresses at most, and
//! checks from unknown sources are rate-limited per ufrag, per source and in all before any
//! integrity check is made.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::budget::PerSecond;

/// A session's place in the worker's session table.
pub(crate) type Slot = u32;

/// Addresses one session may have bound at once (candidates of a multi-homed peer, an ICE
/// restart's new path); a new one beyond it replaces the oldest.
pub(crate) const MAX_ADDRS_PER_SESSION: usize = 8;
/// Checks from unknown sources per second: per ufrag, per source, and for the whole worker.
pub(crate) const CHECKS_PER_UFRAG: u32 = 50;
pub(crate) const CHECKS_PER_SOURCE: u32 = 20;
pub(crate) const CHECKS_PER_WORKER: u32 = 5_000;
/// Sources whose checks are counted in one window; beyond, unknown sources are refused until
/// the window turns (a spoofed flood must not grow the table).
const MAX_COUNTED_SOURCES: usize = 8_192;
const WINDOW: Duration = Duration::from_secs(1);

/// Checks from unknown sources held back in one turn, at most; beyond, the held ones are
/// handled at once to make room.
pub(crate) const MAX_DEFERRED_CHECKS: usize = 64;

/// Checks from sources not bound yet (already within the rate limits), held until the end of
/// the turn so that the turn's media from known sources goes first: a burst of checks, each
/// costing an integrity check and perhaps an answer, cannot delay forwarding. Their bytes are
/// copied into one reused buffer (no allocation once warm).
#[derive(Default)]
pub(crate) struct DeferredChecks {
    entries: Vec<DeferredCheck>,
    bytes: Vec<u8>,
}

pub(crate) struct DeferredCheck {
    pub at: Instant,
    pub from: SocketAddr,
    pub slot: Slot,
    /// The session's serial, to notice a slot reused by another session meanwhile.
    pub serial: u64,
    range: std::ops::Range<usize>,
}

impl DeferredChecks {
    pub fn is_full(&self) -> bool {
        self.entries.len() >= MAX_DEFERRED_CHECKS
    }

    pub fn push(&mut self, at: Instant, from: SocketAddr, slot: Slot, serial: u64, buf: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(buf);
        self.entries.push(DeferredCheck {
            at,
            from,
            slot,
            serial,
            range: start..self.bytes.len(),
        });
    }

    /// Takes the held checks out, oldest first, with their bytes; `give_back` returns the
    /// buffers for reuse.
    pub fn take(&mut self) -> (Vec<DeferredCheck>, Vec<u8>) {
        (
            std::mem::take(&mut self.entries),
            std::mem::take(&mut self.bytes),
        )
    }

    pub fn give_back(&mut self, mut entries: Vec<DeferredCheck>, mut bytes: Vec<u8>) {
        if self.entries.is_empty() {
            entries.clear();
            bytes.clear();
            self.entries = entries;
            self.bytes = bytes;
        }
    }
}

impl DeferredCheck {
    pub fn bytes<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        &bytes[self.range.clone()]
    }
}

/// Why a datagram was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// From an unknown source and not a check for a ufrag we issued.
    Unknown,
    /// A check over its rate limit.
    RateLimited,
}

pub(crate) struct Demux {
    by_addr: HashMap<SocketAddr, Slot>,
    by_ufrag: HashMap<String, UfragEntry>,
    /// Checks from unknown sources in all, per second.
    worker_checks: PerSecond,
    /// Checks per unknown source in the current second of `source_window`.
    checks_by_source: HashMap<SocketAddr, u32>,
    source_window: Instant,
}

struct UfragEntry {
    slot: Slot,
    /// Checks naming this ufrag per second from sources not bound yet.
    checks: PerSecond,
    /// The same from the session's bound addresses: a budget of its own, so that a flood from
    /// elsewhere naming this ufrag cannot starve the session's own consent checks.
    bound_checks: PerSecond,
}

impl Demux {
    pub fn new(now: Instant) -> Self {
        Demux {
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            worker_checks: PerSecond::new(CHECKS_PER_WORKER.into(), now),
            checks_by_source: HashMap::new(),
            source_window: now,
        }
    }

    pub fn add_ufrag(&mut self, ufrag: String, slot: Slot, now: Instant) {
        let checks = PerSecond::new(CHECKS_PER_UFRAG.into(), now);
        let bound_checks = checks.clone();
        self.by_ufrag.insert(
            ufrag,
            UfragEntry {
                slot,
                checks,
                bound_checks,
            },
        );
    }

    pub fn remove_ufrag(&mut self, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
    }

    pub fn remove_addr(&mut self, addr: &SocketAddr) {
        self.by_addr.remove(addr);
    }

    /// The session of a datagram from `from` and whether `from` is bound to it; `local_ufrag`
    /// is the ufrag of its STUN check, if it is one. A bound source needs no check, but its
    /// checks still have a per-session budget: a client knows its own session's password and
    /// could otherwise have every check it sends from a bound address verified.
    pub fn route<'u>(
        &mut self,
        from: SocketAddr,
        local_ufrag: impl FnOnce() -> Option<&'u str>,
        now: Instant,
    ) -> Result<(Slot, bool), Refused> {
        if let Some(&slot) = self.by_addr.get(&from) {
            let Some(ufrag) = local_ufrag() else {
                return Ok((slot, true));
            };
            return match self.by_ufrag.get_mut(ufrag) {
                Some(entry) if entry.slot == slot => {
                    if entry.bound_checks.take(now) {
                        Ok((slot, true))
                    } else {
                        Err(Refused::RateLimited)
                    }
                }
                // A bound address checking for another session (or none): nothing of ours.
                _ => Err(Refused::Unknown),
            };
        }
        let ufrag = local_ufrag().ok_or(Refused::Unknown)?;
        let entry = self.by_ufrag.get_mut(ufrag).ok_or(Refused::Unknown)?;
        if now.saturating_duration_since(self.source_window) >= WINDOW {
            self.source_window = now;
            self.checks_by_source.clear();
        }
        let counted = self.checks_by_source.len();
        let per_source = match self.checks_by_source.get_mut(&from) {
            Some(n) => n,
            None if counted >= MAX_COUNTED_SOURCES => return Err(Refused::RateLimited),
            None => self.checks_by_source.entry(from).or_insert(0),
        };
        if *per_source >= CHECKS_PER_SOURCE
            || !entry.checks.take(now)
            || !self.worker_checks.take(now)
        {
            return Err(Refused::RateLimited);
        }
        *per_source += 1;
        Ok((entry.slot, false))
    }

    /// Binds `from` to `slot` (its check was answered); `addrs` are the session's bound
    /// addresses, of which the oldest goes when there are too many. Returns the address
    /// unbound, if any.
    pub fn bind(
        &mut self,
        from: SocketAddr,
        slot: Slot,
        addrs: &mut Vec<SocketAddr>,
    ) -> Option<SocketAddr> {
        if self.by_addr.contains_key(&from) {
            return None;
        }
        let evicted = (addrs.len() >= MAX_ADDRS_PER_SESSION).then(|| addrs.remove(0));
        if let Some(old) = evicted {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(from, slot);
        addrs.push(from);
        evicted
    }

    #[cfg(test)]
    pub fn bound(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn checks_are_limited_per_source_per_ufrag_and_per_second() {
        let t0 = Instant::now();
        let mut d = Demux::new(t0);
        d.add_ufrag("u1".into(), 7, t0);
        let check = || Some("u1");
        let routed = (0..100)
            .filter(|_| d.route(addr(1), check, t0).is_ok())
            .count();
        assert_eq!(routed, CHECKS_PER_SOURCE as usize);
        let routed = (0..200)
            .filter(|i| d.route(addr(100 + i), check, t0).is_ok())
            .count();
        assert_eq!(
            routed,
            (CHECKS_PER_UFRAG - CHECKS_PER_SOURCE) as usize,
            "the ufrag's budget is shared by all sources"
        );
        // A second later the budgets are new.
        let t1 = t0 + WINDOW;
        assert_eq!(d.route(addr(1), check, t1), Ok((7, false)));
        // Unknown ufrags and non-checks are refused outright and bind nothing.
        assert_eq!(d.route(addr(2), || Some("nope"), t1), Err(Refused::Unknown));
        assert_eq!(d.route(addr(2), || None, t1), Err(Refused::Unknown));
        assert_eq!(d.bound(), 0);
    }

    #[test]
    fn checks_from_a_bound_source_count_against_its_sessions_budget() {
        let t0 = Instant::now();
        let mut d = Demux::new(t0);
        d.add_ufrag("mine".into(), 1, t0);
        d.add_ufrag("theirs".into(), 2, t0);
        d.bind(addr(1), 1, &mut Vec::new());
        // Media from the bound source is never limited.
        assert!((0..1000).all(|_| d.route(addr(1), || None, t0) == Ok((1, true))));
        // Its checks are, per ufrag (a client knows its own session's password).
        let routed = (0..1000)
            .filter(|_| d.route(addr(1), || Some("mine"), t0).is_ok())
            .count();
        assert_eq!(routed, CHECKS_PER_UFRAG as usize);
        assert_eq!(
            d.route(addr(1), || Some("mine"), t0),
            Err(Refused::RateLimited)
        );
        // Checks naming the ufrag from elsewhere have their own budget: a flood of them
        // leaves the bound source's checks alone.
        let t1 = t0 + WINDOW;
        assert!(
            (0..1000).all(|i| d.route(addr(100 + i), || Some("mine"), t1).is_ok()
                || i >= CHECKS_PER_UFRAG as u16)
        );
        assert_eq!(d.route(addr(1), || Some("mine"), t1), Ok((1, true)));
        // A bound source checking for another session gets nothing.
        assert_eq!(
            d.route(addr(1), || Some("theirs"), t0),
            Err(Refused::Unknown)
        );
    }

    #[test]
    fn a_session_binds_a_bounded_number_of_addresses() {
        let mut d = Demux::new(Instant::now());
        let mut addrs = Vec::new();
        for p in 0..(MAX_ADDRS_PER_SESSION as u16 + 3) {
            d.bind(addr(p), 1, &mut addrs);
        }
        assert_eq!(addrs.len(), MAX_ADDRS_PER_SESSION);
        assert_eq!(d.bound(), MAX_ADDRS_PER_SESSION);
        // The oldest went; the newest routes without a check.
        assert_eq!(
            d.route(addr(0), || None, Instant::now()),
            Err(Refused::Unknown)
        );
        assert_eq!(
            d.route(
                addr(MAX_ADDRS_PER_SESSION as u16 + 2),
                || None,
                Instant::now()
            ),
            Ok((1, true))
        );
    }
}
