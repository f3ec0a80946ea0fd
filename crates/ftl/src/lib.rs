//! FTL ("Faster Than Light") ingest for deadsfu: the protocol OBS Studio (up to 29) and
//! ftl-sdk speak.
//!
//! The protocol logic is sans-IO: [`server::ServerSession`] and [`client::ClientSession`]
//! take bytes and `Instant`s and hand back bytes to send, events and timeouts. The
//! [`net`] module holds the thin tokio shells: the ingest server ([`net::FtlServer`]) and the
//! push client ([`net::push`]).

pub mod client;
pub mod control;
pub mod hmac;
pub mod media;
pub mod nack;
pub mod net;
pub mod retransmit;
pub mod server;
pub mod source;
pub mod stream_key;
pub mod udp;

#[doc(hidden)]
pub mod fuzz;

pub use media::{FtlMedia, MediaKind};
pub use stream_key::{ChannelSecret, StreamKey, StreamKeyError};
