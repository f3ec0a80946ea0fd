//! Thin tokio shells around the sans-IO sessions: the ingest server and the push client.

pub mod client;
pub mod demux;
pub mod listener;
pub mod server;

pub use client::{PushArgs, PushConfig, PushError, PushReport, push};
pub use server::{
    BoxFuture, ChannelDirectory, ClaimError, DirectoryError, FtlPublisher, FtlRefusal, FtlServer,
    FtlServerConfig, FtlServerHandle,
};
