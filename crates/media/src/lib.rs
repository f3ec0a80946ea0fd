//! The SFU's media logic, free of sockets and clocks (time is passed in).
//!
//! - [`packet`]: the shared, immutable form of a received RTP packet.
//! - [`gop`]: the packets since the last keyframe, for instant start.
//! - [`idle`]: the looped "no signal" clip of rooms nobody publishes to.
//! - [`h264_packetize`]: cutting H264 NAL units into RTP payloads (single NAL unit, FU-A).
//! - [`keyframe`]: spotting the start of a keyframe in H264, VP8 and VP9 payloads.
//! - [`rewrite`]: per-viewer rewriting of sequence numbers and timestamps so that a change of
//!   source (publisher leaves, another arrives) is seamless to the receiver.
//! - [`keyframe_request`]: merging and rate-limiting viewers' PLI/FIR toward a publisher.
//! - [`sender_clock`]: a publisher's media clock from its RTCP sender reports (A/V sync).
//! - [`seq`]: extending 16-bit sequence numbers of sources that give us only those.
//! - [`room`]: the room directory shared by workers: who publishes, which workers have viewers.

pub mod gop;
pub mod h264_packetize;
pub mod idle;
pub mod keyframe;
pub mod keyframe_request;
pub mod packet;
pub mod rewrite;
pub mod room;
pub mod sender_clock;
pub mod seq;

pub use gop::GopCache;
pub use idle::{IdleClip, IdlePlayer};
pub use packet::{Codec, MediaKind, MediaPacket, SourceId};
pub use rewrite::ViewerTrack;
pub use room::{Room, RoomChange, RoomId, RoomObserver, Rooms};
