//! The accept loop of an FTL control listener, shared by the SFU's ingest server and the
//! front-line proxy's relay: per-client limits (open connections and new connections per
//! second, [`Admission`]), a fixed number of connection [`Slots`] in which the oldest
//! connection that has not proved its key makes room for a newcomer, refusals handed to the
//! owner to count (and log in aggregate), and a graceful stop that gives sessions a few seconds
//! to say goodbye.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use deadsfu_limits::{
    Admission, AdmissionLimits, AdmissionRefusal, ConnId, ConnectionPermit, Slot, Slots,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::server::FtlRefusal;

/// How long sessions get to end cleanly once the listener stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The accept loop's limits.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Connections open at once (the oldest unauthenticated one makes room beyond).
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub connects_per_second_per_ip: f64,
    pub connect_burst_per_ip: f64,
    /// How often refusals are logged (one aggregate line).
    pub log_interval: Duration,
}

/// A connection the loop admitted, with what its session task needs to play its part.
pub struct Connection {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub stream: TcpStream,
    /// Its place in the per-client limits: hold it until the connection ends.
    pub permit: ConnectionPermit,
    /// Fires when the connection is closed to make room for a newcomer.
    pub evict: oneshot::Receiver<()>,
    /// Changes to `true` when the listener stops.
    pub stop: watch::Receiver<bool>,
    pub authenticated: Authenticated,
}

/// Tells the accept loop that a connection proved its key: it is never evicted after that.
#[derive(Clone)]
pub struct Authenticated {
    id: ConnId,
    tx: mpsc::UnboundedSender<ConnId>,
}

impl Authenticated {
    pub fn mark(&self) {
        let _ = self.tx.send(self.id);
    }
}

/// What the loop asks of its owner.
pub trait ListenerOwner {
    /// The session task for an admitted connection (instrumented as the owner likes).
    fn session(&self, connection: Connection) -> impl Future<Output = ()> + Send + 'static;
    /// A connection refused or evicted by the loop.
    fn refused(&self, why: FtlRefusal, now: Instant);
    /// Every connection accepted from the socket, admitted or not.
    fn accepted(&self) {}
    /// Connections open now.
    fn open(&self, _count: usize) {}
    /// Time to log the refusals of the last interval, if any.
    fn log_refusals(&self, now: Instant);
    /// The listener stops: log what is left.
    fn flush_refusals(&self);
}

/// Accepts on `listener` until `shutdown` completes, then tells every session to stop and waits
/// up to [`SHUTDOWN_GRACE`] for them. `what` names the listener in its log lines.
pub async fn serve(
    listener: &TcpListener,
    limits: &ListenerLimits,
    owner: &impl ListenerOwner,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
) {
    let admission = Admission::new(AdmissionLimits {
        // The total is the slots' business (they can evict).
        max_total: usize::MAX,
        max_per_ip: limits.max_per_ip,
        rate_per_ip: limits.connects_per_second_per_ip,
        burst_per_ip: limits.connect_burst_per_ip,
    });
    let mut slots = Slots::new(limits.max_connections);
    let mut evictors: HashMap<ConnId, oneshot::Sender<()>> = HashMap::new();
    let mut task_conns: HashMap<tokio::task::Id, ConnId> = HashMap::new();
    let mut sessions = JoinSet::new();
    // One message per connection at most (when it proves its key): bounded by the slots.
    let (auth_tx, mut auth_rx) = mpsc::unbounded_channel::<ConnId>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut log_timer = tokio::time::interval(limits.log_interval);
    log_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut accept_errors: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        owner.open(slots.len());
        tokio::select! {
            // Authentications first, so a connection that just proved its key is not evicted
            // for a newcomer accepted in the same turn.
            biased;
            () = &mut shutdown => break,
            Some(id) = auth_rx.recv() => slots.authenticated(id),
            Some(done) = sessions.join_next_with_id(), if !sessions.is_empty() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(error) => error.id(),
                };
                if let Some(id) = task_conns.remove(&task) {
                    slots.remove(id);
                    evictors.remove(&id);
                }
            }
            _ = log_timer.tick() => owner.log_refusals(Instant::now()),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors and the like: back off instead of spinning, and
                        // log at powers of two only.
                        accept_errors += 1;
                        if accept_errors.is_power_of_two() {
                            warn!(%error, accept_errors, listener = what, "FTL accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                owner.accepted();
                let now = Instant::now();
                let permit = match admission.try_admit(peer.ip(), now) {
                    Ok(permit) => permit,
                    Err(refusal) => {
                        owner.refused(match refusal {
                            AdmissionRefusal::PerIp => FtlRefusal::PerIpConnections,
                            AdmissionRefusal::Rate => FtlRefusal::ConnectRate,
                            AdmissionRefusal::Total => FtlRefusal::Full,
                        }, now);
                        continue;
                    }
                };
                let id = match slots.admit() {
                    Slot::Full => {
                        owner.refused(FtlRefusal::Full, now);
                        continue;
                    }
                    Slot::Open { id, evict } => {
                        if let Some(victim) = evict {
                            if let Some(evictor) = evictors.remove(&victim) {
                                let _ = evictor.send(());
                            }
                            owner.refused(FtlRefusal::Evicted, now);
                        }
                        id
                    }
                };
                let (evict_tx, evict) = oneshot::channel();
                evictors.insert(id, evict_tx);
                let connection = Connection {
                    id,
                    peer,
                    stream,
                    permit,
                    evict,
                    stop: stop_rx.clone(),
                    authenticated: Authenticated { id, tx: auth_tx.clone() },
                };
                let task = sessions.spawn(owner.session(connection));
                task_conns.insert(task.id(), id);
            }
        }
    }
    info!(
        sessions = sessions.len(),
        listener = what,
        "FTL listener shutting down"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        sessions.abort_all();
    }
    owner.flush_refusals();
}
