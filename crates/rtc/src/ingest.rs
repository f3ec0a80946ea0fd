//! Publishers that are not WebRTC peers (FTL): their packets enter a room's fan-out exactly as a
//! WHIP publisher's do, handed to every worker with viewers of the room.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use deadsfu_media::keyframe::is_keyframe_start;
use deadsfu_media::seq::SeqExtender;
use deadsfu_media::{Codec, MediaKind, MediaPacket, Room, SourceId};

use crate::messages::PeerMessage;
use crate::shared::Shared;
use crate::worker_shell::WorkerHandle;

/// A live non-WebRTC publisher of one room. Dropping it frees the room.
pub struct Ingest {
    pub(crate) shared: Arc<Shared>,
    pub(crate) workers: Arc<[WorkerHandle]>,
    pub(crate) room: Option<Arc<Room>>,
    pub(crate) serial: u64,
    pub(crate) video_seq: SeqExtender,
    pub(crate) audio_seq: SeqExtender,
}

/// One RTP packet from a non-WebRTC publisher.
#[derive(Debug)]
pub struct IngestPacket {
    pub codec: Codec,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: bytes::Bytes,
    pub arrival: Instant,
    /// Capture time from the publisher's sender reports, when known.
    pub capture: Option<Instant>,
}

impl Ingest {
    pub fn room_name(&self) -> &str {
        self.room.as_ref().map_or("", |r| r.name.as_str())
    }

    /// Hands one packet to the room's viewers (wherever they are).
    pub fn push(&mut self, pkt: IngestPacket) {
        let Some(room) = &self.room else { return };
        let seq = match pkt.codec.kind() {
            MediaKind::Video => self.video_seq.extend(pkt.sequence),
            MediaKind::Audio => self.audio_seq.extend(pkt.sequence),
        };
        let keyframe_start =
            pkt.codec.kind() == MediaKind::Video && is_keyframe_start(pkt.codec, &pkt.payload);
        let packet = Arc::new(MediaPacket {
            source: SourceId(self.serial),
            codec: pkt.codec,
            seq,
            timestamp: pkt.timestamp,
            marker: pkt.marker,
            keyframe_start,
            arrival: pkt.arrival,
            capture: pkt.capture.unwrap_or(pkt.arrival),
            payload: pkt.payload,
        });
        room.record_ingress(packet.codec, packet.payload.len());
        // To the workers with viewers of the room, and to the one that keeps its GOP.
        let keeper = room.gop_keeper(self.workers.len());
        let mut targets = room.viewing_workers() | (1u64 << keeper);
        while targets != 0 {
            let w = targets.trailing_zeros() as usize;
            targets &= targets - 1;
            let Some(worker) = self.workers.get(w) else {
                break;
            };
            let msg = PeerMessage::Packet {
                room: room.id,
                packet: packet.clone(),
            };
            if worker.inbox.try_send(msg).is_err() {
                self.shared.ingest_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(room) = self.room.take() {
            room.release_publisher(self.serial);
            self.shared.ingests.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(room = %room.name, "ingest ended");
            self.shared.rooms.release(room);
        }
    }
}
