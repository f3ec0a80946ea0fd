//! The media engine: starts the workers and is the control side's door to them.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use deadsfu_media::room::MAX_WORKERS;
use str0m::{Candidate, IceCreds};
use tokio::sync::{mpsc, oneshot};

use crate::config::EngineConfig;
use crate::error::{EngineError, SessionError};
use crate::handshake_thread::HandshakeThreads;
use crate::ingest::Ingest;
use crate::messages::{Command, Control, Reply, ToWorker};
use crate::metrics::Counters;
use crate::sdp::{OfferSummary, TrickleFragment, VideoFamily};
use crate::session::SessionKind;
use crate::session_setup::{SessionRequest, prepare_session};
pub(crate) use crate::shared::Shared;
use crate::shared::{SessionEntry, new_etag};
use crate::udp_socket::{bind_udp, spawn_heap_trimmer};
use crate::worker_shell::{CONTROL_CAPACITY, INBOX_CAPACITY, WorkerHandle, WorkerShell};

/// A created session: what the HTTP side returns to the client.
#[derive(Debug, Clone)]
pub struct SessionCreated {
    /// Unguessable id, used in the session's resource URL.
    pub id: String,
    pub answer: String,
    pub etag: String,
}

/// Result of a trickle PATCH.
#[derive(Debug)]
pub enum TrickleOutcome {
    /// Candidates added (HTTP 204).
    Added,
    /// ICE restarted: the fragment to return (HTTP 200) and the new ETag.
    Restarted { fragment: String, etag: String },
}

/// Handle to the media workers. Cheap to clone.
#[derive(Clone)]
pub struct MediaEngine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    workers: Arc<[WorkerHandle]>,
    ports: Vec<u16>,
    pub(crate) counters: Vec<Arc<Counters>>,
    next_serial: AtomicU64,
    next_worker: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl MediaEngine {
    /// Binds the workers' UDP sockets and starts their threads.
    pub fn start(config: EngineConfig) -> Result<MediaEngine, EngineError> {
        if config.workers == 0 || config.workers > MAX_WORKERS {
            return Err(EngineError::Workers(config.workers));
        }
        let mut sockets = Vec::with_capacity(config.workers);
        for n in 0..config.workers {
            let port = if config.udp_port == 0 {
                0
            } else {
                config.udp_port.saturating_add(n as u16)
            };
            let addr = SocketAddr::new(config.bind_ip, port);
            sockets.push(bind_udp(addr).map_err(|source| EngineError::Bind { addr, source })?);
        }
        let ports: Vec<u16> = sockets
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()).unwrap_or(0))
            .collect();

        let shared = Arc::new(Shared::new(config));
        // A session's peer is built twice (to answer, then at its first check): both must
        // present the certificate whose fingerprint the answer gave.
        if shared.dtls_cert.is_none() {
            return Err(EngineError::DtlsCertificate);
        }
        let mut handles = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..sockets.len() {
            let (ctx, crx) = mpsc::channel(CONTROL_CAPACITY);
            let (itx, irx) = mpsc::channel(INBOX_CAPACITY);
            handles.push(WorkerHandle {
                control: ctx,
                inbox: itx,
            });
            receivers.push((crx, irx));
        }
        let workers: Arc<[WorkerHandle]> = handles.into();
        let mut counters = Vec::new();
        let mut threads = Vec::new();
        // As many handshake threads as workers: a join storm uses the cores the forwarding
        // does not.
        let (handshakes, handshake_threads) = HandshakeThreads::start(
            sockets.len(),
            shared.clone(),
            &sockets,
            workers.iter().map(|w| w.control.downgrade()).collect(),
            &mut counters,
        )
        .map_err(EngineError::Thread)?;
        for (index, (socket, (crx, irx))) in sockets.into_iter().zip(receivers).enumerate() {
            let c = Arc::new(Counters::default());
            counters.push(c.clone());
            let addr = socket.local_addr().map_err(|source| EngineError::Bind {
                addr: SocketAddr::new(shared.config.bind_ip, ports[index]),
                source,
            })?;
            let send_socket = socket
                .try_clone()
                .map_err(|source| EngineError::Bind { addr, source })?;
            let shell = WorkerShell {
                index,
                local_port: ports[index],
                shared: shared.clone(),
                peers: workers.clone(),
                counters: c,
                handshakes: handshakes.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || {
                    crate::worker_shell::run_or_exit(shell, socket, send_socket, crx, irx)
                })
                .map_err(EngineError::Thread)?;
            threads.push(thread);
        }
        // Joined last: they stop once every worker has (the workers hold their queues open).
        drop(handshakes);
        threads.extend(handshake_threads);
        spawn_heap_trimmer(Arc::downgrade(&shared));
        Ok(MediaEngine {
            inner: Arc::new(Inner {
                shared,
                workers,
                ports,
                counters,
                next_serial: AtomicU64::new(1),
                next_worker: AtomicUsize::new(0),
                threads: Mutex::new(threads),
            }),
        })
    }

    /// Calls `observer` whenever a room opens or closes on this node.
    pub fn set_room_observer(&self, observer: deadsfu_media::RoomObserver) {
        self.inner.shared.rooms.set_observer(observer);
    }

    /// UDP ports the workers listen on, in worker order.
    pub fn udp_ports(&self) -> &[u16] {
        &self.inner.ports
    }

    /// Creates a session in `room` from an SDP offer; its peer is built here, off the workers.
    pub async fn create_session(
        &self,
        kind: SessionKind,
        room: &str,
        offer: &str,
        client: Option<IpAddr>,
    ) -> Result<SessionCreated, SessionError> {
        let shared = &self.inner.shared;
        let live = shared.lock_sessions().len();
        let permit = shared
            .admission
            .admit(client, live, std::time::Instant::now())?;
        let summary = OfferSummary::parse(offer)?;
        let video_family = match kind {
            SessionKind::Publisher => summary.check_publish()?,
            SessionKind::Viewer => {
                summary.check_view()?;
                self.check_viewer_codecs(room, &summary)?;
                None
            }
        };
        let parsed = shared.offer_shapes.parse(kind, video_family, offer)?;

        let inner = &self.inner;
        let serial = inner.next_serial.fetch_add(1, Ordering::Relaxed);
        let worker = inner.next_worker.fetch_add(1, Ordering::Relaxed) % inner.workers.len();
        let room_arc = inner.shared.rooms.get_or_create(room);
        if kind == SessionKind::Publisher {
            if !room_arc.try_claim_publisher(serial, Some(worker)) {
                inner.shared.rooms.release(room_arc);
                return Err(SessionError::RoomBusy(room.to_owned()));
            }
            // Viewers joining before the first packet must already be held to this codec.
            if let Some(codec) = video_family.map(VideoFamily::codec) {
                room_arc.announce_video_codec(codec);
            }
        }
        let id: Arc<str> = Arc::from(hex::encode(rand::random::<[u8; 16]>()));
        let etag = new_etag();
        // Register first so that a worker ending the session early finds the entry to remove.
        inner.shared.lock_sessions().insert(
            id.clone(),
            SessionEntry {
                worker,
                serial,
                kind,
                room: room.to_owned(),
                etag: etag.clone(),
                remote_ufrag: summary.ice_ufrag.clone(),
                receivable: (kind == SessionKind::Viewer).then(|| summary.receivable_codecs()),
            },
        );
        let req = SessionRequest {
            id: id.clone(),
            serial,
            kind,
            room: room_arc.clone(),
            offer: parsed,
            offer_sdp: offer.into(),
            summary,
            video_family,
        };
        let result = match prepare_session(
            &inner.shared,
            inner.ports[worker],
            req,
            std::time::Instant::now(),
        ) {
            Ok((mut session, answer)) => {
                session.pending = permit;
                self.call(worker, Command::Adopt(Box::new(session)))
                    .await
                    .and_then(done)
                    .map(|()| answer)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(answer) => {
                inner.shared.rooms.release(room_arc);
                Ok(SessionCreated {
                    id: id.to_string(),
                    answer,
                    etag,
                })
            }
            Err(e) => {
                inner.shared.forget_session(&id);
                if kind == SessionKind::Publisher {
                    room_arc.release_publisher(serial);
                }
                inner.shared.rooms.release(room_arc);
                Err(e)
            }
        }
    }

    /// Makes a non-WebRTC publisher (FTL) the live publisher of `room`.
    pub fn open_ingest(&self, room: &str) -> Result<Ingest, SessionError> {
        let inner = &self.inner;
        let serial = inner.next_serial.fetch_add(1, Ordering::Relaxed);
        let room_arc = inner.shared.rooms.get_or_create(room);
        if !room_arc.try_claim_publisher(serial, None) {
            inner.shared.rooms.release(room_arc);
            return Err(SessionError::RoomBusy(room.to_owned()));
        }
        inner.shared.ingests.fetch_add(1, Ordering::Relaxed);
        tracing::info!(room, "ingest started");
        Ok(Ingest {
            shared: inner.shared.clone(),
            workers: inner.workers.clone(),
            room: Some(room_arc),
            serial,
            video_seq: Default::default(),
            audio_seq: Default::default(),
        })
    }

    /// A viewer must be able to receive what the room's live publisher sends.
    fn check_viewer_codecs(&self, room: &str, summary: &OfferSummary) -> Result<(), SessionError> {
        let Some(name) = self.live_video_codec(room) else {
            return Ok(());
        };
        if summary.receivable_codecs().iter().any(|c| c == name) {
            Ok(())
        } else {
            Err(SessionError::Unsupported(format!(
                "room {room:?} is live in {name}, which this offer cannot receive"
            )))
        }
    }

    /// The video codec of the room's live publisher (WHIP or FTL), if any.
    fn live_video_codec(&self, room: &str) -> Option<&'static str> {
        self.inner.shared.rooms.get(room)?.live_video_codec()
    }

    fn entry(&self, id: &str) -> Result<SessionEntry, SessionError> {
        self.inner
            .shared
            .lock_sessions()
            .get(id)
            .cloned()
            .ok_or(SessionError::NotFound)
    }

    /// The session's kind, if it exists.
    pub fn session_kind(&self, id: &str) -> Option<SessionKind> {
        self.entry(id).ok().map(|e| e.kind)
    }

    /// Applies a trickle-ice-sdpfrag PATCH (RFC 9725 §4.3): new candidates, or an ICE restart
    /// when the fragment carries new credentials.
    pub async fn patch_session(
        &self,
        id: &str,
        fragment: &str,
        if_match: Option<&str>,
    ) -> Result<TrickleOutcome, SessionError> {
        let entry = self.entry(id)?;
        let frag = TrickleFragment::parse(fragment)?;
        let restart = match (&frag.ice_ufrag, &frag.ice_pwd) {
            (Some(u), Some(_)) => entry.remote_ufrag.as_deref() != Some(u.as_str()),
            _ => false,
        };
        if restart {
            match if_match.map(str::trim) {
                None => return Err(SessionError::RestartNeedsIfMatch),
                // RFC 9725 §4.4.1: an ICE restart carries `If-Match: "*"`; any other
                // entity tag that does not match is a failed precondition.
                Some("*" | "\"*\"") => {}
                Some(m) if m == entry.etag => {}
                Some(_) => return Err(SessionError::EtagMismatch),
            }
            // RFC 8839 §5.4: ufrag 4 to 256 characters, password 22 to 256.
            let ufrag_len = frag.ice_ufrag.as_deref().map_or(0, str::len);
            let pwd_len = frag.ice_pwd.as_deref().map_or(0, str::len);
            if !(4..=256).contains(&ufrag_len) || !(22..=256).contains(&pwd_len) {
                return Err(SessionError::BadSdp(
                    "ice-ufrag must be 4 to 256 characters and ice-pwd 22 to 256".into(),
                ));
            }
            let remote = IceCreds {
                ufrag: frag.ice_ufrag.clone().unwrap_or_default(),
                pass: frag.ice_pwd.clone().unwrap_or_default(),
            };
            let reply = self
                .call(
                    entry.worker,
                    Command::RestartIce {
                        serial: entry.serial,
                        remote,
                    },
                )
                .await?;
            let Reply::IceRestarted(local) = reply else {
                return Err(SessionError::Unavailable);
            };
            let local = local?;
            let etag = new_etag();
            if let Some(e) = self.inner.shared.lock_sessions().get_mut(id) {
                e.etag = etag.clone();
                e.remote_ufrag = frag.ice_ufrag.clone();
            }
            let mut fragment = format!(
                "a=ice-lite\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
                local.ufrag, local.pass
            );
            let port = self.inner.ports[entry.worker];
            for ip in &self.inner.shared.config.ice_hosts {
                if let Ok(c) = Candidate::host(SocketAddr::new(*ip, port), "udp") {
                    fragment.push_str(&format!("a={}\r\n", c.to_sdp_string()));
                }
            }
            fragment.push_str("a=end-of-candidates\r\n");
            return Ok(TrickleOutcome::Restarted { fragment, etag });
        }
        if let Some(m) = if_match.map(str::trim)
            && m != "*"
            && m != "\"*\""
            && m != entry.etag
        {
            return Err(SessionError::EtagMismatch);
        }
        let mut candidates = Vec::new();
        for line in &frag.candidates {
            let c = Candidate::from_sdp_string(line)
                .map_err(|e| SessionError::BadSdp(format!("bad candidate: {e}")))?;
            candidates.push(c);
        }
        if !candidates.is_empty() {
            let command = Command::AddCandidates {
                serial: entry.serial,
                candidates,
            };
            self.call(entry.worker, command).await.and_then(done)?;
        }
        Ok(TrickleOutcome::Added)
    }

    /// Moves a viewer to another room without renegotiation.
    pub async fn switch_room(&self, id: &str, room: &str) -> Result<(), SessionError> {
        let entry = self.entry(id)?;
        if entry.kind != SessionKind::Viewer {
            return Err(SessionError::Unsupported(
                "only viewers can switch rooms".into(),
            ));
        }
        if let (Some(name), Some(codecs)) = (self.live_video_codec(room), entry.receivable.as_ref())
            && !codecs.iter().any(|c| c == name)
        {
            return Err(SessionError::Unsupported(format!(
                "room {room:?} is live in {name}, which this viewer cannot receive"
            )));
        }
        let room_arc = self.inner.shared.rooms.get_or_create(room);
        let command = Command::SwitchRoom {
            serial: entry.serial,
            room: room_arc,
        };
        self.call(entry.worker, command).await.and_then(done)?;
        if let Some(e) = self.inner.shared.lock_sessions().get_mut(id) {
            e.room = room.to_owned();
        }
        Ok(())
    }

    /// Ends a session (DELETE).
    pub async fn close_session(&self, id: &str) -> Result<(), SessionError> {
        let entry = self.entry(id)?;
        let command = Command::Close {
            serial: entry.serial,
        };
        self.call(entry.worker, command).await.and_then(done)
    }

    /// Sends `command` to a worker and waits for its answer. A worker whose command queue is
    /// full makes the caller wait (the queue is bounded; the caller is an HTTP request).
    async fn call(&self, worker: usize, command: Command) -> Result<Reply, SessionError> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |r: Reply| tx.send(r).is_ok());
        let control = Control {
            command,
            reply: Some(reply),
        };
        self.inner.workers[worker]
            .control
            .send(ToWorker::Control(control))
            .await
            .map_err(|_| SessionError::Unavailable)?;
        rx.await.map_err(|_| SessionError::Unavailable)
    }

    /// Closes every session (sending DTLS close_notify) and stops the workers.
    pub fn shutdown(&self) {
        for w in self.inner.workers.iter() {
            // A full command queue drains within moments; waiting for room beats a worker
            // that never hears it should stop (and a join that never returns).
            let mut msg = ToWorker::Shutdown;
            for _ in 0..2000 {
                match w.control.try_send(msg) {
                    Err(mpsc::error::TrySendError::Full(m)) => msg = m,
                    _ => break,
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let threads =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The outcome of a command answered with [`Reply::Done`].
fn done(reply: Reply) -> Result<(), SessionError> {
    match reply {
        Reply::Done(result) => result,
        Reply::IceRestarted(_) => Err(SessionError::Unavailable),
    }
}
