//! The handshake threads: the shells of [`Handshakes`], each a thread with a bounded queue of
//! jobs from the workers, the workers' sockets to answer from, and the clock. A session stays
//! on one of them (chosen by its serial) from its first check until it connects.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::WeakSender;

use crate::handshakes::Handshakes;
use crate::messages::{Control, HandshakeJob, ToWorker};
use crate::metrics::Counters;
use crate::panic_policy::exit_on_panic;
use crate::shared::Shared;

/// Jobs waiting for one handshake thread; beyond, a worker parks a new session again (its
/// client's next check tries anew) and drops a connecting session's datagram (the client
/// sends it again).
const QUEUE: usize = 4096;
/// Jobs taken per wake-up before the timers and outputs are seen to.
const JOBS_PER_ROUND: usize = 64;
/// Peers built per round while jobs of sessions under way keep coming, and when none wait:
/// handshakes under way go first, and new ones still start.
const STARTS_PER_BUSY_ROUND: usize = 1;
const STARTS_PER_IDLE_ROUND: usize = 4;

/// Where the workers hand their handshake jobs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HandshakeThreads {
    queues: Arc<[SyncSender<(usize, HandshakeJob)>]>,
}

/// What one thread needs besides its queue.
struct Thread {
    core: Handshakes,
    sockets: Vec<UdpSocket>,
    workers: Vec<WeakSender<ToWorker>>,
}

/// How much nicer the handshake threads are than the process: on a core they share with a
/// media worker, forwarding to viewers already watching goes first (a thread 10 nicer weighs
/// a tenth), and joins take what is left. Where cores are spare they run at full speed.
const HANDSHAKE_NICER_BY: libc::c_int = 10;

/// Lowers the calling thread's priority by [`HANDSHAKE_NICER_BY`] (Linux keeps a nice value
/// per thread). Best effort: without it handshakes compete with forwarding as equals.
fn yield_to_forwarding() {
    // SAFETY: getpriority and setpriority with who = 0 read and change only the calling
    // thread; no memory is passed.
    let r = unsafe {
        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (now + HANDSHAKE_NICER_BY).min(19))
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "handshake thread priority unchanged");
    }
}

impl HandshakeThreads {
    /// Starts `count` threads for workers whose sockets are `sockets` (clones, to answer
    /// from) and whose commands go to `workers` (held weakly: a stopping worker's channel must
    /// not be kept open). Each thread gets its own counters, added to `counters`.
    pub fn start(
        count: usize,
        shared: Arc<Shared>,
        sockets: &[UdpSocket],
        workers: Vec<WeakSender<ToWorker>>,
        counters: &mut Vec<Arc<Counters>>,
    ) -> std::io::Result<(HandshakeThreads, Vec<JoinHandle<()>>)> {
        let ports = sockets
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<Vec<u16>>>()?;
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for n in 0..count.max(1) {
            let (tx, rx) = sync_channel(QUEUE);
            let own = Arc::new(Counters::default());
            counters.push(own.clone());
            let thread = Thread {
                core: Handshakes::new(shared.clone(), ports.clone(), own),
                sockets: sockets
                    .iter()
                    .map(UdpSocket::try_clone)
                    .collect::<std::io::Result<_>>()?,
                workers: workers.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("handshake-{n}"))
                .spawn(move || {
                    yield_to_forwarding();
                    // Without it no session would connect again: the workers' policy.
                    exit_on_panic("handshake thread", || thread.run(rx));
                })?;
            queues.push(tx);
            threads.push(handle);
        }
        Ok((
            HandshakeThreads {
                queues: queues.into(),
            },
            threads,
        ))
    }

    /// Queues a job of `worker`'s; gives it back when the thread's queue is full.
    pub fn submit(&self, worker: usize, job: HandshakeJob) -> Result<(), HandshakeJob> {
        let queue = &self.queues[(job.serial() % self.queues.len() as u64) as usize];
        match queue.try_send((worker, job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, j)) | TrySendError::Disconnected((_, j))) => Err(j),
        }
    }
}

impl Thread {
    /// Runs until every worker has stopped (their senders dropped).
    fn run(mut self, queue: Receiver<(usize, HandshakeJob)>) {
        loop {
            let waiting = self.core.has_waiting();
            let first = match self.core.poll_timeout() {
                _ if waiting => match queue.try_recv() {
                    Ok(job) => Some(job),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                },
                Some(at) => {
                    match queue.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(job) => Some(job),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match queue.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                },
            };
            let more = std::iter::from_fn(|| queue.try_recv().ok()).take(JOBS_PER_ROUND - 1);
            let mut taken = 0;
            for (worker, job) in first.into_iter().chain(more) {
                taken += 1;
                self.core.handle_job(Instant::now(), worker, job);
                self.send();
            }
            let starts = if taken < JOBS_PER_ROUND {
                STARTS_PER_IDLE_ROUND
            } else {
                STARTS_PER_BUSY_ROUND
            };
            self.core.start_waiting(Instant::now(), starts);
            self.send();
            self.core.handle_timeout(Instant::now());
            self.send();
        }
    }

    /// Sends the core's datagrams and hands its commands to the workers.
    fn send(&mut self) {
        for t in self.core.drain_transmits() {
            if let Some(socket) = self.sockets.get(t.worker) {
                // Non-blocking: a full socket drops it, and ICE and DTLS send again.
                let _ = socket.send_to(&t.contents, t.to);
            }
        }
        for (worker, command) in self.core.drain_commands() {
            let control = ToWorker::Control(Control {
                command,
                reply: None,
            });
            // The worker's command queue is bounded; waiting here for room only delays this
            // thread, never a worker. A worker that is gone takes no more sessions.
            if let Some(to) = self.workers.get(worker).and_then(WeakSender::upgrade) {
                let _ = to.blocking_send(control);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> libc::c_int {
        // SAFETY: no memory is passed. (-1 is also a valid nice value; none here is.)
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    /// Only the handshake thread yields: the media workers (here, the test's thread) keep
    /// their priority.
    #[test]
    fn a_handshake_thread_yields_to_forwarding_and_only_it() {
        let before = own_nice();
        let theirs = std::thread::spawn(|| {
            yield_to_forwarding();
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!(theirs, (before + HANDSHAKE_NICER_BY).min(19));
        assert_eq!(own_nice(), before);
    }
}
