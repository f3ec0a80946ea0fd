//! What a panic on a thread the media path depends on does: it ends the process. A worker's
//! sessions, rooms and the claims other threads hold on them are one state that a panic leaves
//! half-changed (rooms claimed forever, viewers waiting on a dead thread); ending the process
//! lets a supervisor (systemd, Docker, Kubernetes) start a clean one, and clients reconnect.

/// Exit status of a process whose media worker (or handshake thread) panicked.
pub(crate) const WORKER_PANIC_EXIT: i32 = 70;

/// Runs `run`; if it panics, logs that `what` panicked and exits with [`WORKER_PANIC_EXIT`]
/// (the policy of every thread the media path depends on).
pub(crate) fn exit_on_panic(what: &str, run: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
        tracing::error!(
            exit_code = WORKER_PANIC_EXIT,
            "{what} panicked; exiting so that a supervisor restarts deadsfu"
        );
        std::process::exit(WORKER_PANIC_EXIT);
    }
}
