//! The peer builder: a thread that builds the str0m peers of parked sessions whose first check
//! held (`session_setup::build_peer`), so that this work, most of a session's set-up, never
//! runs on a media worker. Each built peer goes back to its worker as a command.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::WeakSender;

use crate::session_setup::build_peer;
use crate::shared::Shared;
use crate::worker_core::{Command, Control, PeerBuild};
use crate::worker_shell::{ToWorker, exit_on_panic};

/// Builds waiting for the builder; beyond, a worker parks the session again and its client's
/// next check tries anew.
const QUEUE: usize = 256;

/// Where the workers hand their peer builds. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PeerBuilder {
    jobs: SyncSender<(usize, PeerBuild)>,
}

impl PeerBuilder {
    /// Starts the builder for workers whose sockets have `ports` and whose commands go to
    /// `workers` (held weakly: the builder must not keep a stopping worker's channel open).
    pub fn start(
        shared: Arc<Shared>,
        ports: Vec<u16>,
        workers: Vec<WeakSender<ToWorker>>,
    ) -> std::io::Result<(PeerBuilder, JoinHandle<()>)> {
        let (jobs, queue) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("peer-builder".into())
            .spawn(move || {
                // Without a builder no session would ever connect again: the workers' policy.
                exit_on_panic("peer builder", || run(&shared, &ports, &workers, queue));
            })?;
        Ok((PeerBuilder { jobs }, thread))
    }

    /// Queues a build for `worker`; gives it back when the queue is full.
    pub fn submit(&self, worker: usize, build: PeerBuild) -> Result<(), PeerBuild> {
        match self.jobs.try_send((worker, build)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, b)) | TrySendError::Disconnected((_, b))) => Err(b),
        }
    }
}

/// Builds until every worker has stopped (their senders dropped).
fn run(
    shared: &Shared,
    ports: &[u16],
    workers: &[WeakSender<ToWorker>],
    queue: Receiver<(usize, PeerBuild)>,
) {
    while let Ok((worker, build)) = queue.recv() {
        let (Some(port), Some(to)) = (ports.get(worker), workers.get(worker)) else {
            continue;
        };
        let PeerBuild {
            serial,
            recipe,
            check,
        } = build;
        let peer = build_peer(shared, *port, *recipe, Instant::now()).map(Box::new);
        let command = Command::PeerBuilt {
            serial,
            peer,
            check,
        };
        let control = ToWorker::Control(Control {
            command,
            reply: None,
        });
        // The worker's command queue is bounded; waiting here for room only delays this
        // builder, never a worker. A worker that is gone takes no more sessions.
        if let Some(to) = to.upgrade() {
            let _ = to.blocking_send(control);
        }
    }
}
