//! The room directory, shared by the HTTP side and the media workers.
//!
//! A room has at most one publisher and any number of viewers, spread over the media workers.
//! The directory is touched when sessions come and go (behind a mutex, off the media path);
//! the per-packet questions "which workers have viewers of this room?" and "which worker hosts
//! the publisher?" are answered from atomics in [`Room`], without a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Most media workers a process may run.
pub const MAX_WORKERS: usize = 64;

const NO_PUBLISHER: u64 = 0;
const NO_WORKER: usize = usize::MAX;

/// Small number standing for a room inside the process (cheaper to pass around than its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub u64);

/// One room's shared state.
#[derive(Debug)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    /// Session serial of the live publisher, or 0.
    publisher: AtomicU64,
    publisher_worker: AtomicUsize,
    /// Workers with viewers of the room, one bit each: the only ones its packets go to.
    viewing_workers: AtomicU64,
    viewers: AtomicUsize,
    /// [`crate::Codec::code`] of the live video, 0 when none has been seen.
    video_codec: AtomicU8,
    /// Payload bytes received from publishers, for the room's bitrate.
    bytes_in: AtomicU64,
}

impl Room {
    fn new(id: RoomId, name: String) -> Self {
        Room {
            id,
            name,
            publisher: AtomicU64::new(NO_PUBLISHER),
            publisher_worker: AtomicUsize::new(NO_WORKER),
            viewing_workers: AtomicU64::new(0),
            viewers: AtomicUsize::new(0),
            video_codec: AtomicU8::new(0),
            bytes_in: AtomicU64::new(0),
        }
    }

    /// Makes `session` (a non-zero serial) the room's publisher if it has none. `worker` is the
    /// media worker hosting it (`None` for publishers outside the workers, such as FTL).
    pub fn try_claim_publisher(&self, session: u64, worker: Option<usize>) -> bool {
        debug_assert_ne!(session, NO_PUBLISHER);
        let won = self
            .publisher
            .compare_exchange(NO_PUBLISHER, session, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.publisher_worker
                .store(worker.unwrap_or(NO_WORKER), Ordering::Release);
        }
        won
    }

    /// Frees the publisher slot if `session` holds it.
    pub fn release_publisher(&self, session: u64) {
        if self
            .publisher
            .compare_exchange(session, NO_PUBLISHER, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.publisher_worker.store(NO_WORKER, Ordering::Release);
        }
    }

    pub fn has_publisher(&self) -> bool {
        self.publisher.load(Ordering::Acquire) != NO_PUBLISHER
    }

    /// The worker hosting the live publisher, if any.
    pub fn publisher_worker(&self) -> Option<usize> {
        match self.publisher_worker.load(Ordering::Acquire) {
            NO_WORKER => None,
            w => Some(w),
        }
    }

    /// Marks whether `worker` has viewers of the room; each worker sets only its own bit.
    pub fn set_viewing(&self, worker: usize, viewing: bool) {
        let bit = 1u64 << (worker % MAX_WORKERS);
        if viewing {
            self.viewing_workers.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.viewing_workers.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// The workers with viewers of the room, one bit each (bit `n` for worker `n`).
    pub fn viewing_workers(&self) -> u64 {
        self.viewing_workers.load(Ordering::Acquire)
    }

    /// The worker that keeps the room's GOP for workers whose first viewer joins: the
    /// publisher's, or, for a publisher outside the workers (FTL), one chosen by the room's id,
    /// which then gets every packet.
    pub fn gop_keeper(&self, workers: usize) -> usize {
        self.publisher_worker()
            .unwrap_or((self.id.0 % workers.max(1) as u64) as usize)
    }

    /// Counts a received packet. Only the publisher's thread calls this, so a load and a store
    /// do (cheaper than an atomic read-modify-write on the media path).
    pub fn record_ingress(&self, codec: crate::Codec, bytes: usize) {
        let n = self.bytes_in.load(Ordering::Relaxed);
        self.bytes_in.store(n + bytes as u64, Ordering::Relaxed);
        if codec.kind() == crate::MediaKind::Video
            && self.video_codec.load(Ordering::Relaxed) != codec.code()
        {
            self.video_codec.store(codec.code(), Ordering::Relaxed);
        }
    }

    /// Sets the room's video codec ahead of its first packet (a publisher's negotiated codec).
    pub fn announce_video_codec(&self, codec: crate::Codec) {
        self.video_codec.store(codec.code(), Ordering::Relaxed);
    }

    /// The video codec of the live publisher, if there is one and its codec is known.
    pub fn live_video_codec(&self) -> Option<&'static str> {
        self.has_publisher().then(|| self.video_codec()).flatten()
    }

    /// Payload bytes received from publishers so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Name of the last video codec published here.
    pub fn video_codec(&self) -> Option<&'static str> {
        crate::Codec::name_of_code(self.video_codec.load(Ordering::Relaxed))
    }

    pub fn viewer_joined(&self) {
        self.viewers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn viewer_left(&self) {
        self.viewers.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn viewer_count(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }
}

/// A room came into use on this node, or went out of use (cluster mode leases rooms on these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomChange {
    Opened(String),
    Closed(String),
}

/// Told of every [`RoomChange`], in order, while the directory's lock is held: keep it short
/// (hand the change to a channel).
pub type RoomObserver = Box<dyn Fn(RoomChange) + Send + Sync>;

/// Rooms by name. Holders of an `Arc<Room>` (sessions) keep a room alive; [`Rooms::release`]
/// forgets a room once nothing else holds it.
#[derive(Default)]
pub struct Rooms {
    by_name: Mutex<HashMap<String, Arc<Room>>>,
    next_id: AtomicU64,
    observer: OnceLock<RoomObserver>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("by_name", &self.by_name)
            .finish()
    }
}

impl Rooms {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the observer of rooms opening and closing (once; later calls are ignored).
    pub fn set_observer(&self, observer: RoomObserver) {
        let _ = self.observer.set(observer);
    }

    fn notify(&self, change: RoomChange) {
        if let Some(o) = self.observer.get() {
            o(change);
        }
    }

    pub fn get_or_create(&self, name: &str) -> Arc<Room> {
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(room) = map.get(name) {
            return room.clone();
        }
        let id = RoomId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let room = Arc::new(Room::new(id, name.to_owned()));
        map.insert(name.to_owned(), room.clone());
        self.notify(RoomChange::Opened(name.to_owned()));
        room
    }

    pub fn get(&self, name: &str) -> Option<Arc<Room>> {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).cloned()
    }

    /// Drops `room` (a session's handle) and forgets the room if that was the last holder.
    pub fn release(&self, room: Arc<Room>) {
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let name = room.name.clone();
        drop(room);
        if map.get(&name).is_some_and(|r| Arc::strong_count(r) == 1) {
            map.remove(&name);
            self.notify(RoomChange::Closed(name));
        }
    }

    /// A snapshot of all rooms, sorted by name.
    pub fn list(&self) -> Vec<Arc<Room>> {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let mut rooms: Vec<_> = map.values().cloned().collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        rooms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_publisher_per_room() {
        let rooms = Rooms::new();
        let room = rooms.get_or_create("a");
        assert!(room.try_claim_publisher(1, Some(0)));
        assert!(!room.try_claim_publisher(2, Some(1)));
        assert_eq!(room.publisher_worker(), Some(0));
        room.release_publisher(2); // not the holder: no effect
        assert!(room.has_publisher());
        room.release_publisher(1);
        assert!(!room.has_publisher());
        assert_eq!(room.publisher_worker(), None);
        assert!(room.try_claim_publisher(2, Some(1)));
    }

    #[test]
    fn viewing_workers_and_the_gop_keeper() {
        let rooms = Rooms::new();
        let room = rooms.get_or_create("a");
        room.set_viewing(3, true);
        room.set_viewing(0, true);
        room.set_viewing(3, true);
        assert_eq!(room.viewing_workers(), 0b1001);
        room.set_viewing(0, false);
        assert_eq!(room.viewing_workers(), 0b1000);
        // No publisher on a worker: one chosen by the room's id; else the publisher's.
        assert_eq!(room.gop_keeper(4), (room.id.0 % 4) as usize);
        assert!(room.try_claim_publisher(1, Some(2)));
        assert_eq!(room.gop_keeper(4), 2);
    }

    #[test]
    fn rooms_are_forgotten_when_unused() {
        let rooms = Rooms::new();
        let a = rooms.get_or_create("a");
        let a2 = rooms.get_or_create("a");
        assert_eq!(a.id, a2.id);
        rooms.release(a);
        assert!(rooms.get("a").is_some());
        rooms.release(a2);
        assert!(rooms.get("a").is_none());
        assert_ne!(rooms.get_or_create("a").id, RoomId(1));
    }

    #[test]
    fn observer_sees_rooms_open_and_close() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rooms = Rooms::new();
        let log = seen.clone();
        rooms.set_observer(Box::new(move |c| log.lock().unwrap().push(c)));
        let a = rooms.get_or_create("a");
        let a2 = rooms.get_or_create("a");
        rooms.release(a);
        rooms.release(a2);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                RoomChange::Opened("a".into()),
                RoomChange::Closed("a".into())
            ]
        );
    }
}
