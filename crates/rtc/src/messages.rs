//! What the threads of the media engine send each other: commands for a worker (from the
//! control side and the handshake threads), messages between workers, and jobs for the
//! handshake threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use deadsfu_media::{MediaPacket, Room, RoomId};
use str0m::{Candidate, Event, IceCreds, Rtc};

use crate::dtls_tap::SrtpKeys;
use crate::error::SessionError;
use crate::session::{PeerRecipe, Session};

/// A command from the control side or a handshake thread.
pub(crate) enum Command {
    /// Take in a session prepared off the worker (`session_setup.rs`).
    Adopt(Box<Session>),
    AddCandidates {
        serial: u64,
        candidates: Vec<Candidate>,
    },
    RestartIce {
        serial: u64,
        remote: IceCreds,
    },
    Close {
        serial: u64,
    },
    SwitchRoom {
        serial: u64,
        room: Arc<Room>,
    },
    /// A session connected on its handshake thread (`handshakes.rs`): its peer comes here.
    PeerConnected(Box<Handover>),
    /// A session could not connect (its peer not built, the handshake failed or timed out).
    PeerFailed {
        serial: u64,
        reason: &'static str,
    },
    /// A datagram of a session that reached its handshake thread after the hand-over.
    LateDatagram {
        serial: u64,
        datagram: HeldCheck,
    },
}

/// A datagram held for later: the check that woke a parked session, or one of a session
/// connecting on a handshake thread.
pub(crate) struct HeldCheck {
    pub at: Instant,
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

/// A parked session's peer to be built and connected off the worker (`handshakes.rs`).
pub(crate) struct PeerBuild {
    pub serial: u64,
    pub recipe: Box<PeerRecipe>,
    pub check: HeldCheck,
}

/// The answer to a command.
#[derive(Debug)]
pub(crate) enum Reply {
    Done(Result<(), SessionError>),
    IceRestarted(Result<IceCreds, SessionError>),
}

/// Delivers a reply; false when nobody waits for it any more.
pub(crate) type ReplyTo = Box<dyn FnOnce(Reply) -> bool + Send>;

/// A command and where its answer goes.
pub(crate) struct Control {
    pub command: Command,
    pub reply: Option<ReplyTo>,
}

/// What one worker sends another.
pub(crate) enum PeerMessage {
    /// A packet of `room` published elsewhere, for this worker's viewers (and GOP).
    Packet {
        room: RoomId,
        packet: Arc<MediaPacket>,
    },
    /// Viewers elsewhere need a keyframe of `room`, whose publisher is here.
    KeyframeRequest { room: RoomId },
    /// Worker `from` has its first viewer of `room`, whose GOP is kept here: send it.
    GopRequest { room: RoomId, from: usize },
    /// The GOP of `room` asked for, oldest packet first.
    Gop {
        room: RoomId,
        packets: Vec<Arc<MediaPacket>>,
    },
}

/// What the control side sends a worker.
pub(crate) enum ToWorker {
    Control(Control),
    Shutdown,
}

/// What a worker asks of the handshake thread.
pub(crate) enum HandshakeJob {
    /// Build the peer of a session whose first check held, and answer that check.
    Start(PeerBuild),
    /// A datagram for a session connecting here.
    Datagram { serial: u64, datagram: HeldCheck },
    /// The session ended on its worker.
    Cancel { serial: u64 },
}

impl HandshakeJob {
    pub fn serial(&self) -> u64 {
        match self {
            HandshakeJob::Start(build) => build.serial,
            HandshakeJob::Datagram { serial, .. } | HandshakeJob::Cancel { serial } => *serial,
        }
    }
}

/// A connected peer for its worker, with what it reported while connecting.
pub(crate) struct Handover {
    pub serial: u64,
    pub rtc: Box<Rtc>,
    pub events: Vec<Event>,
    /// The SRTP keys of its DTLS handshake (`dtls_tap`).
    pub keys: Option<SrtpKeys>,
    /// Where its DTLS datagrams went: a viewer's media follows.
    pub destination: Option<SocketAddr>,
}
