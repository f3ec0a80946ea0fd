//! Media files the push client streams: H264 Annex-B elementary streams and Ogg Opus.

pub mod h264;
pub mod ogg;
