//! Admission limits shared by every listener of deadsfu (SFU HTTP, SFU FTL, proxy HTTPS and
//! FTL) and by session admission.
//!
//! Everything here is plain data behind a mutex: no sockets, no timers, no clock of its own.
//! Time is passed in as an [`Instant`](std::time::Instant), so the limits are tested with fake
//! time. Refusal is meant to be a cheap decision taken before reading anything from a client.
//!
//! - [`TokenBucket`]: a rate with a burst.
//! - [`PerIpRate`]: one token bucket per client (IPv4 address, IPv6 /64; see [`client_key`]),
//!   e.g. new connections or new sessions per second per IP.
//! - [`ConcurrencyLimit`]: how many of something are open, in total and per client, with RAII
//!   [`Permit`]s that give their place back when dropped, e.g. open connections, event-stream
//!   subscribers, sessions not yet connected.
//! - [`Admission`]: the usual connection policy, a [`ConcurrencyLimit`] and a [`PerIpRate`].
//! - [`Slots`]: a fixed number of connections where the oldest unauthenticated one makes room.
//! - [`Refusals`]: counts refusals by reason (for `/metrics`) and logs them in aggregate, one
//!   line per interval at most, never one per refusal.

mod admission;
mod bucket;
mod concurrency;
mod per_ip;
mod refusals;
mod slots;

pub use admission::{Admission, AdmissionLimits, AdmissionRefusal, ConnectionPermit};
pub use bucket::TokenBucket;
pub use concurrency::{ConcurrencyLimit, ConcurrencyRefusal, Permit};
pub use per_ip::{PerIpRate, client_key};
pub use refusals::{RefusalLine, RefusalReason, Refusals};
pub use slots::{ConnId, Slot, Slots};
