//! A WHIP/WHEP client built on str0m, used as deadsfu's own WebRTC test peer.
//!
//! - [`signaling`]: the HTTP side (POST offer, PATCH candidates, DELETE).
//! - [`peer`]: one str0m peer connection driven on a UDP socket, publishing a
//!   [`synthetic`] H264/VP8 + Opus stream or recording what it receives.
//! - [`cert`]: DTLS certificates of either key type, to test both.

pub mod cert;
pub mod peer;
pub mod signaling;
pub mod synthetic;

pub use peer::{CandidateMode, Peer, PeerOptions, PeerStats, Role, TrackStats, send_payload_type};
pub use synthetic::{StreamSpec, VideoCodec};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("WebRTC: {0}")]
    Rtc(#[from] str0m::RtcError),
    #[error("SDP: {0}")]
    Sdp(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("certificate: {0}")]
    Cert(String),
}
