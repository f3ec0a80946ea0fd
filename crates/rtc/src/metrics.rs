//! Counters for `/metrics`. Each worker owns one [`Counters`] and is its only writer, so the
//! per-packet increments never contend; a scrape sums them.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// One worker's counters (cache-line aligned so workers do not share lines).
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// The sum of all workers' counters at one moment.
        #[derive(Debug, Default, Clone, Copy)]
        pub struct MetricsSnapshot {
            $(pub $name: u64,)*
        }

        impl MetricsSnapshot {
            pub(crate) fn add(&mut self, c: &Counters) {
                $(self.$name += c.$name.load(Ordering::Relaxed);)*
            }

            /// (name, help, value) of every counter, for the Prometheus text format.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name),)*]
            }
        }
    };
}

counters! {
    packets_in: "RTP packets received from publishers",
    bytes_in: "RTP payload bytes received from publishers",
    packets_out: "UDP datagrams sent to peers",
    bytes_out: "UDP bytes sent to peers",
    send_drops: "datagrams dropped because the socket was full",
    fanout_drops: "packets dropped because a worker's inbox was full",
    nacks_received: "packets viewers reported lost (NACK)",
    retransmissions: "packets sent again after a NACK",
    keyframe_requests_received: "PLI/FIR received from viewers",
    keyframe_requests_sent: "keyframe requests sent to publishers",
    sessions_started: "sessions created",
    sessions_ended: "sessions ended",
    unknown_datagrams: "datagrams from unknown sources that were not a check for a session here",
    stun_rate_limited: "STUN checks from unknown sources refused by rate limits before any integrity check",
    stun_integrity_failures: "checks for a session not yet contacted whose integrity did not hold",
    peer_builds: "peers built for sessions whose first check held",
    peer_builds_refused: "first checks set aside because the handshake threads were busy (the client sends again)",
    handshake_datagrams_dropped: "datagrams of connecting sessions not passed to their handshake thread (over the session's rate or the thread's queue)",
    gop_replays: "GOP replays sent to viewers that joined or switched rooms",
    replays_refused: "GOP replays refused because the viewer's replay budget was spent",
    peer_drops: "messages to other workers dropped because their inbox was full",
    sessions_refused_total: "new sessions refused: the server's session limit (503)",
    sessions_refused_pending: "new sessions refused: too many not yet connected, in all (503) or from one client (429)",
    sessions_refused_rate: "new sessions refused: a client's new-session rate (429)",
    seal_failures: "packets dropped because SRTP/SRTCP sealing failed (never sent in clear)",
    offers_cut: "offers of a known shape parsed cut to the formats that shape was answered with",
    answers_from_template: "viewers of a known offer shape answered from its template, without str0m",
}

impl Counters {
    #[inline]
    pub(crate) fn add(field: &AtomicU64, n: u64) {
        // Only the owning worker writes: a load and a store are enough and cheaper than an
        // atomic read-modify-write.
        field.store(field.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}
