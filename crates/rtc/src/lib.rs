//! deadsfu's WebRTC side: str0m peer connections (in RTP mode) on a fixed set of media workers.
//!
//! - [`MediaEngine`] (`engine.rs`): starts the workers; creates, patches and closes sessions.
//! - `session_setup.rs`: a new session's SDP answer, and its peer once the client's first check
//!   holds (`answered_formats.rs`: offers cut to what their answers keep, parsed for less;
//!   `answer_template.rs`: viewers of a known offer shape answered without str0m); `handshakes.rs`: those peers built and connected (ICE, DTLS) without I/O, then
//!   handed to their worker; `handshake_thread.rs`: the threads that run them, off the workers
//!   and behind them in priority.
//! - `worker_core/`: a worker's sessions, rooms, demultiplexing, fan-out (to the workers with
//!   viewers of a room only, `gop_handover.rs`) and timers, without I/O (fed datagrams,
//!   packets, commands and time; tested with fake time).
//! - `messages.rs`: what these threads send each other; `panic_policy.rs`: a panic on any of
//!   them ends the process.
//! - `worker_shell.rs`, `turn.rs`, `udp_sink.rs`: the worker's thread, socket and channels; one
//!   fair turn of its loop; its datagrams out with `sendmmsg` and GSO.
//! - `session.rs`: one peer connection as publisher or viewer; `egress/`: a viewer's media
//!   out (SRTP sealing, NACK history, sender reports; `recent_video.rs`: a room's recent video,
//!   held once per worker for its viewers' NACKs); `budget.rs`: per-second allowances.
//! - `srtp.rs`, `dtls_tap.rs`: viewers' SRTP, sent by deadsfu itself with the keys of str0m's
//!   DTLS handshake; `dtls_openssl.rs`: that DTLS, on OpenSSL, from one context per certificate
//!   (`dtls_cost.rs`: its handshake's CPU measured in memory, for the benchmarks).
//! - `send_batch.rs`: a turn's datagrams, grouped for the sink.
//! - [`Ingest`] (`ingest.rs`): non-WebRTC publishers (FTL) feeding a room's fan-out.
//! - [`sdp`]: checks on offers and trickle fragments that str0m leaves to us.

mod admission;
mod answer_template;
mod answered_formats;
mod budget;
mod codec;
pub mod config;
#[doc(hidden)]
pub mod dtls_cost;
mod dtls_openssl;
mod dtls_tap;
mod egress;
mod engine;
mod engine_stats;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
mod handshake_thread;
mod handshakes;
mod hashes;
mod ingest;
mod messages;
pub mod metrics;
mod panic_policy;
pub mod sdp;
mod send_batch;
mod session;
mod session_setup;
mod shared;
mod srtp;
mod stun;
mod turn;
mod udp_sink;
mod udp_socket;
mod worker_core;
mod worker_shell;

pub use config::{AdmissionConfig, EngineConfig};
pub use engine::{MediaEngine, SessionCreated, TrickleOutcome};
pub use engine_stats::RoomSummary;
pub use error::EngineError;
pub use error::SessionError;
pub use ingest::{Ingest, IngestPacket};
pub use metrics::MetricsSnapshot;
pub use session::SessionKind;
