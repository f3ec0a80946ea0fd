//! One outgoing track of a viewer: its own SSRC and numbering, the sealed packets' history for
//! NACKs, and its sender reports.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadsfu_media::rewrite::Rewritten;
use deadsfu_media::{Codec, MediaKind, MediaPacket, ViewerTrack};
use str0m::media::{Mid, Pt};
use str0m::rtp::Ssrc;

use super::recent_video::RecentVideo;
use crate::metrics::Counters;
use crate::send_batch::SendBatch;
use crate::srtp::SrtpSender;
use crate::srtp::{RTP_OVERHEAD, SCRATCH};
use std::net::SocketAddr;

/// Sender reports go out this often per stream (RFC 3550 allows 5 s; browsers use the mapping
/// for lip sync, so sooner is better after a start or switch).
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Video packets kept per viewer for retransmission (their places in the room's recent video,
/// not the packets): 2 s at 1 Mbit/s, a quarter second at 8 Mbit/s, 32 bytes each.
pub(super) const HISTORY: usize = 256;

pub(super) struct TrackOut {
    pub(super) ssrc: Ssrc,
    pub(super) pts: Vec<(Pt, Codec)>,
    pub(super) track: ViewerTrack,
    pub(super) clock_rate: u32,
    /// The RTP header extension block (SDES MID), the same on every packet.
    pub(super) extension: ([u8; 24], usize),
    /// Sent packets by sequence number, for NACKs (video only).
    pub(super) history: Vec<Option<Sent>>,
    pub(super) packets: u32,
    pub(super) octets: u32,
    /// Timestamp and capture time of the newest packet, for sender reports.
    pub(super) last: Option<(u32, Instant)>,
}

/// Where a viewer's packets go, and how.
pub(super) struct Wire<'a> {
    pub(super) srtp: &'a mut SrtpSender,
    pub(super) to: SocketAddr,
    pub(super) sends: &'a mut SendBatch,
    pub(super) counters: &'a Counters,
}

/// The RTP header fields of a packet as it was sent to one viewer.
#[derive(Clone, Copy)]
pub(super) struct SentHeader {
    pub(super) index: u64,
    pub(super) timestamp: u32,
    pub(super) pt: u8,
    pub(super) marker: bool,
}

/// A packet in a viewer's NACK history.
pub(super) struct Sent {
    pub(super) header: SentHeader,
    pub(super) packet: SentPacket,
}

/// Where a sent packet's payload is kept for a retransmission.
pub(super) enum SentPacket {
    /// Its place in the room's [`RecentVideo`] on this worker (every forwarded packet).
    Recent(u64),
    /// Held here: a GOP replay, older than what the room's ring holds (a join or a switch).
    Held(Arc<MediaPacket>),
}

impl TrackOut {
    pub(super) fn new(
        ssrc: Ssrc,
        pts: Vec<(Pt, Codec)>,
        kind: MediaKind,
        mid: Mid,
        mid_id: Option<u8>,
    ) -> Self {
        let mut extension = ([0u8; 24], 0);
        if let Some(id) = mid_id.filter(|id| (1..=14).contains(id))
            && (1..=16).contains(&mid.len())
        {
            // RFC 8285 one-byte header: 0xBEDE, length in words, then id/len and the MID.
            let body = 1 + mid.len();
            let words = body.div_ceil(4);
            let e = &mut extension.0;
            e[..2].copy_from_slice(&[0xbe, 0xde]);
            e[2..4].copy_from_slice(&(words as u16).to_be_bytes());
            e[4] = (id << 4) | (mid.len() as u8 - 1);
            e[5..5 + mid.len()].copy_from_slice(mid.as_bytes());
            extension.1 = 4 + 4 * words;
        }
        TrackOut {
            ssrc,
            pts,
            track: ViewerTrack::new(kind, rand::random::<u16>() & 0x7fff, rand::random()),
            clock_rate: match kind {
                MediaKind::Video => 90_000,
                MediaKind::Audio => 48_000,
            },
            extension,
            // Made when the viewer connects (`keep_history`): a session that never does
            // should not hold it.
            history: Vec::new(),
            packets: 0,
            octets: 0,
            last: None,
        }
    }

    /// Encrypts and queues one packet.
    pub(super) fn send(&self, wire: &mut Wire, p: &SentHeader, payload: &[u8]) {
        let mut header = [0u8; 12 + 24];
        let ext_len = self.extension.1;
        header[0] = if ext_len > 0 { 0x90 } else { 0x80 };
        header[1] = ((p.marker as u8) << 7) | (p.pt & 0x7f);
        header[2..4].copy_from_slice(&(p.index as u16).to_be_bytes());
        header[4..8].copy_from_slice(&p.timestamp.to_be_bytes());
        header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        header[12..12 + ext_len].copy_from_slice(&self.extension.0[..ext_len]);
        let header = &header[..12 + ext_len];
        let max = header.len() + payload.len() + RTP_OVERHEAD + SCRATCH;
        let srtp = &mut *wire.srtp;
        let counters = wire.counters;
        wire.sends.write(wire.to, max, counters, |out| {
            // Fail closed: a packet that could not be sealed is dropped and counted.
            srtp.protect_rtp(header, payload, p.index, out)
                .unwrap_or_else(|| {
                    Counters::add(&counters.seal_failures, 1);
                    0
                })
        });
    }

    /// Sends `pkt` (already rewritten) and remembers it for NACKs: by its place in the room's
    /// recent video when it has one, else (a replay) by a reference of its own.
    pub(super) fn send_new(
        &mut self,
        wire: &mut Wire,
        pt: u8,
        rw: Rewritten,
        pkt: &Arc<MediaPacket>,
        capture: Instant,
        place: Option<u64>,
    ) {
        let header = SentHeader {
            index: rw.seq,
            timestamp: rw.timestamp,
            pt,
            marker: pkt.marker,
        };
        self.send(wire, &header, &pkt.payload);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(pkt.payload.len() as u32);
        self.last = Some((rw.timestamp, capture));
        if !self.history.is_empty() {
            let packet = match place {
                Some(place) => SentPacket::Recent(place),
                None => SentPacket::Held(pkt.clone()),
            };
            self.history[rw.seq as usize % HISTORY] = Some(Sent { header, packet });
        }
    }

    /// From now on, sent packets are kept for NACKs (video tracks, once connected).
    pub(super) fn keep_history(&mut self) {
        if self.history.is_empty() {
            self.history = (0..HISTORY).map(|_| None).collect();
        }
    }

    /// Forgets what was sent (a room switch: the places it kept are in another room's ring).
    pub(super) fn forget_history(&mut self) {
        self.history.iter_mut().for_each(|h| *h = None);
    }

    /// Sends packet `seq` again if it is still in the history and its payload still kept.
    pub(super) fn resend(&self, seq: u16, wire: &mut Wire, recent: Option<&RecentVideo>) -> bool {
        if self.history.is_empty() {
            return false;
        }
        let Some(sent) = &self.history[seq as usize % HISTORY] else {
            return false;
        };
        if sent.header.index as u16 != seq {
            return false;
        }
        let payload = match &sent.packet {
            SentPacket::Recent(place) => recent.and_then(|r| r.get(*place)),
            SentPacket::Held(pkt) => Some(pkt),
        };
        let Some(pkt) = payload else {
            return false;
        };
        self.send(wire, &sent.header, &pkt.payload);
        true
    }

    /// The SR and SDES compound packet for this stream at `now`, in `out`; returns its length.
    pub(super) fn report(
        &self,
        cname: &str,
        now: Instant,
        wall: SystemTime,
        out: &mut [u8],
    ) -> usize {
        let Some((ts, at)) = self.last else {
            return 0;
        };
        let ticks = now.saturating_duration_since(at).as_secs_f64() * self.clock_rate as f64;
        let rtp_time = ts.wrapping_add(ticks as u64 as u32);
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        // NTP counts from 1900.
        let ntp_secs = since_epoch.as_secs() + 2_208_988_800;
        let ntp_frac = ((since_epoch.subsec_nanos() as u64) << 32) / 1_000_000_000;
        // SR: header, SSRC, NTP, RTP time, packet and octet counts (RFC 3550 6.4.1).
        out[0] = 0x80;
        out[1] = 200;
        out[2..4].copy_from_slice(&6u16.to_be_bytes());
        out[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        out[8..12].copy_from_slice(&(ntp_secs as u32).to_be_bytes());
        out[12..16].copy_from_slice(&(ntp_frac as u32).to_be_bytes());
        out[16..20].copy_from_slice(&rtp_time.to_be_bytes());
        out[20..24].copy_from_slice(&self.packets.to_be_bytes());
        out[24..28].copy_from_slice(&self.octets.to_be_bytes());
        // SDES with the CNAME (RFC 3550 6.5), padded to a word boundary with the end item.
        let name = &cname.as_bytes()[..cname.len().min(255)];
        let chunk = 4 + 2 + name.len() + 1;
        let chunk_padded = chunk.div_ceil(4) * 4;
        let sdes = &mut out[28..28 + 4 + chunk_padded];
        sdes.fill(0);
        sdes[0] = 0x81;
        sdes[1] = 202;
        sdes[2..4].copy_from_slice(&((chunk_padded / 4) as u16).to_be_bytes());
        sdes[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        sdes[8] = 1; // CNAME
        sdes[9] = name.len() as u8;
        sdes[10..10 + name.len()].copy_from_slice(name);
        28 + 4 + chunk_padded
    }
}
