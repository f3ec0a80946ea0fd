//! What can go wrong with a session request, in terms the HTTP layer maps to statuses.

/// Why a session request failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The SDP could not be parsed (HTTP 400).
    #[error("malformed SDP: {0}")]
    BadSdp(String),
    /// Well-formed, but not something this server can serve (HTTP 422).
    #[error("unsupported offer: {0}")]
    Unsupported(String),
    /// The room already has a live publisher (HTTP 409).
    #[error("room {0:?} already has a live publisher")]
    RoomBusy(String),
    /// No session with that id (HTTP 404).
    #[error("no such session")]
    NotFound,
    /// ICE restart without `If-Match: "*"` (HTTP 428).
    #[error("an ICE restart needs If-Match: \"*\"")]
    RestartNeedsIfMatch,
    /// `If-Match` names another version of the session (HTTP 412).
    #[error("If-Match does not match the session's ETag")]
    EtagMismatch,
    /// Over a per-session or per-client rate (HTTP 429).
    #[error("too many requests; try again in a second")]
    TooManyRequests,
    /// The media workers are gone or saturated (HTTP 503).
    #[error("media workers unavailable")]
    Unavailable,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("workers must be between 1 and {max}, not {0}", max = deadsfu_media::room::MAX_WORKERS)]
    Workers(usize),
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot make the DTLS certificate that every session shares")]
    DtlsCertificate,
}
