//! deadsfu's WebRTC side: str0m peer connections (in RTP mode) on a fixed set of media workers.
//!
//! - [`MediaEngine`] (`engine.rs`): starts the workers; creates, patches and closes sessions.
//! - `worker.rs`: one thread per worker owning a UDP socket and its sessions; fan-out.
//! - `session.rs`: one peer connection as publisher or viewer; viewers' media egress.
//! - `srtp.rs`, `dtls_tap.rs`: viewers' SRTP, sent by deadsfu itself with the keys of str0m's
//!   DTLS handshake.
//! - `send_batch.rs`: a turn's datagrams, sent with `sendmmsg` and UDP GSO.
//! - [`Ingest`] (`ingest.rs`): non-WebRTC publishers (FTL) feeding a room's fan-out.
//! - [`sdp`]: checks on offers and trickle fragments that str0m leaves to us.

mod codec;
pub mod config;
mod dtls_tap;
mod engine;
pub mod error;
mod ingest;
pub mod metrics;
pub mod sdp;
mod send_batch;
mod session;
mod srtp;
mod stun;
mod worker;

pub use config::EngineConfig;
pub use engine::{EngineError, MediaEngine, RoomSummary, SessionCreated, TrickleOutcome};
pub use error::SessionError;
pub use ingest::{Ingest, IngestPacket};
pub use metrics::MetricsSnapshot;
pub use session::SessionKind;
