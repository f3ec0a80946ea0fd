//! A viewer's media egress: deadsfu sends viewers' media itself, not through str0m. Once DTLS
//! has given the SRTP keys, each room packet is rewritten onto the viewer's own sequence and
//! timeline, sealed straight into the turn's send buffer and sent to the peer's nominated
//! address; sent video is remembered for NACKs, and sender reports are ours to send.
//!
//! str0m keeps ICE, DTLS and the viewer's RTCP (which it decrypts and shows us); its own RTCP for
//! these streams never leaves, since it knows nothing of the media we sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadsfu_media::rewrite::Rewritten;
use deadsfu_media::{Codec, MediaKind, MediaPacket, RoomId, ViewerTrack};
use str0m::Rtc;
use str0m::media::{Mid, Pt};
use str0m::rtp::{Extension, Ssrc};

use crate::budget::PerSecond;
use crate::codec::{negotiated_pts, viewer_pt};
use crate::dtls_tap::SrtpKeys;
use crate::metrics::Counters;
use crate::send_batch::SendBatch;
use crate::srtp::{RTCP_OVERHEAD, RTP_OVERHEAD, SCRATCH, SrtpSender};

/// Maps the worker's monotonic clock to wall-clock time (sender reports carry NTP time), so the
/// egress needs no clock of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    at: Instant,
    wall: SystemTime,
}

impl WallClock {
    pub fn new(at: Instant, wall: SystemTime) -> Self {
        WallClock { at, wall }
    }

    pub fn wall_at(&self, now: Instant) -> SystemTime {
        match now.checked_duration_since(self.at) {
            Some(d) => self.wall + d,
            None => self.wall - self.at.duration_since(now),
        }
    }
}

/// One viewer's outgoing media.
pub(crate) struct ViewerEgress {
    video: Option<TrackOut>,
    audio: Option<TrackOut>,
    /// Present from the end of the DTLS handshake.
    srtp: Option<SrtpSender>,
    /// Where str0m sends this peer's datagrams (the nominated ICE pair).
    destination: Option<SocketAddr>,
    cname: String,
    next_report: Option<Instant>,
    resends: PerSecond,
}

/// Retransmissions a viewer may have per second. A NACK is one small packet that can name 17
/// lost ones, so a misbehaving peer must not turn NACKs into unbounded work for the worker; a
/// healthy viewer of an 8 Mbit/s stream at 25% loss stays below this.
const RESENDS_PER_SECOND: u64 = 500;

/// Sender reports go out this often per stream (RFC 3550 allows 5 s; browsers use the mapping
/// for lip sync, so sooner is better after a start or switch).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Video packets kept per viewer for retransmission (the packets themselves are shared): 2 s at
/// 1 Mbit/s, a quarter second at 8 Mbit/s, 24 bytes each.
const HISTORY: usize = 256;

struct TrackOut {
    ssrc: Ssrc,
    pts: Vec<(Pt, Codec)>,
    track: ViewerTrack,
    clock_rate: u32,
    /// The RTP header extension block (SDES MID), the same on every packet.
    extension: ([u8; 24], usize),
    /// Sent packets by sequence number, for NACKs (video only).
    history: Vec<Option<Sent>>,
    packets: u32,
    octets: u32,
    /// Timestamp and capture time of the newest packet, for sender reports.
    last: Option<(u32, Instant)>,
}

/// Where a viewer's packets go, and how.
struct Wire<'a> {
    srtp: &'a mut SrtpSender,
    to: SocketAddr,
    sends: &'a mut SendBatch,
    counters: &'a Counters,
}

/// A packet as it was sent to one viewer.
struct Sent {
    index: u64,
    timestamp: u32,
    pt: u8,
    marker: bool,
    packet: Arc<MediaPacket>,
}

impl TrackOut {
    fn new(
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
        let history = match kind {
            MediaKind::Video => (0..HISTORY).map(|_| None).collect(),
            MediaKind::Audio => Vec::new(),
        };
        TrackOut {
            ssrc,
            pts,
            track: ViewerTrack::new(kind, rand::random::<u16>() & 0x7fff, rand::random()),
            clock_rate: match kind {
                MediaKind::Video => 90_000,
                MediaKind::Audio => 48_000,
            },
            extension,
            history,
            packets: 0,
            octets: 0,
            last: None,
        }
    }

    /// Encrypts and queues one packet.
    fn send(&self, wire: &mut Wire, p: &Sent) {
        let mut header = [0u8; 12 + 24];
        let ext_len = self.extension.1;
        header[0] = if ext_len > 0 { 0x90 } else { 0x80 };
        header[1] = ((p.marker as u8) << 7) | (p.pt & 0x7f);
        header[2..4].copy_from_slice(&(p.index as u16).to_be_bytes());
        header[4..8].copy_from_slice(&p.timestamp.to_be_bytes());
        header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        header[12..12 + ext_len].copy_from_slice(&self.extension.0[..ext_len]);
        let header = &header[..12 + ext_len];
        let payload = &p.packet.payload;
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

    /// Sends `pkt` (already rewritten) and remembers it for NACKs.
    fn send_new(
        &mut self,
        wire: &mut Wire,
        pt: u8,
        rw: Rewritten,
        pkt: &Arc<MediaPacket>,
        capture: Instant,
    ) {
        let sent = Sent {
            index: rw.seq,
            timestamp: rw.timestamp,
            pt,
            marker: pkt.marker,
            packet: pkt.clone(),
        };
        self.send(wire, &sent);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(pkt.payload.len() as u32);
        self.last = Some((rw.timestamp, capture));
        if !self.history.is_empty() {
            self.history[rw.seq as usize % HISTORY] = Some(sent);
        }
    }

    /// Sends packet `seq` again if it is still in the history.
    fn resend(&self, seq: u16, wire: &mut Wire) -> bool {
        if self.history.is_empty() {
            return false;
        }
        match &self.history[seq as usize % HISTORY] {
            Some(sent) if sent.index as u16 == seq => {
                self.send(wire, sent);
                true
            }
            _ => false,
        }
    }

    /// The SR and SDES compound packet for this stream at `now`, in `out`; returns its length.
    fn report(&self, cname: &str, now: Instant, wall: SystemTime, out: &mut [u8]) -> usize {
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

impl ViewerEgress {
    /// Finds the send streams str0m made for the answer's first video and audio sections.
    pub fn new(rtc: &mut Rtc, mids: &[(MediaKind, Mid)], now: Instant) -> Self {
        let mut egress = ViewerEgress {
            video: None,
            audio: None,
            srtp: None,
            destination: None,
            cname: String::new(),
            next_report: None,
            resends: PerSecond::new(RESENDS_PER_SECOND, now),
        };
        for &(kind, mid) in mids {
            let slot = match kind {
                MediaKind::Video => &mut egress.video,
                MediaKind::Audio => &mut egress.audio,
            };
            if slot.is_some() {
                continue;
            }
            let pts = negotiated_pts(rtc, mid);
            if pts.is_empty() {
                continue;
            }
            let Some(ssrc) = rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc())
            else {
                continue;
            };
            let Some(media) = rtc.media(mid) else {
                continue;
            };
            let mid_id = media.remote_extmap().id_of(Extension::RtpMid);
            if egress.cname.is_empty() {
                egress.cname = media.cname().to_string();
            }
            *slot = Some(TrackOut::new(ssrc, pts, kind, mid, mid_id));
        }
        egress
    }

    pub fn has_tracks(&self) -> bool {
        self.video.is_some() || self.audio.is_some()
    }

    /// Takes the SRTP keys of a completed DTLS handshake: from now on this viewer's media is
    /// sent by the worker. False when the keys are unusable.
    pub fn set_srtp_keys(&mut self, keys: &SrtpKeys) -> bool {
        self.srtp = SrtpSender::new(&crate::dtls_tap::crypto_provider(), keys);
        self.srtp.is_some()
    }

    /// Looks at a datagram str0m wants to send; false when it must not go out. The destination
    /// of str0m's non-STUN datagrams is the nominated pair's, where media goes, and str0m's own
    /// RTCP is held back: it knows nothing of the media we sent.
    pub fn check_transmit(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        let first = data.first().copied().unwrap_or(0);
        if first < 4 {
            return true; // STUN (RFC 7983): replies go to whoever asked.
        }
        self.destination = Some(to);
        let rtcp =
            (128..192).contains(&first) && data.get(1).is_some_and(|b| (192..224).contains(b));
        !(rtcp && self.srtp.is_some())
    }

    /// The viewer's RTCP came authenticated (str0m decrypted it) from `from`: media follows the
    /// path the peer uses, which after an ICE restart is a new one.
    pub fn follow(&mut self, from: SocketAddr) {
        self.destination = Some(from);
    }

    /// Sends room packets (rewritten, sealed and queued in `sends`), then a sender report when
    /// one is due. Returns false when nothing was sent.
    pub fn write(
        &mut self,
        packets: &[(RoomId, Arc<MediaPacket>)],
        sends: &mut SendBatch,
        counters: &Counters,
        now: Instant,
        clock: &WallClock,
    ) -> bool {
        let (Some(srtp), Some(to)) = (&mut self.srtp, self.destination) else {
            return false;
        };
        let mut wire = Wire {
            srtp,
            to,
            sends,
            counters,
        };
        let mut sent = false;
        for (_, pkt) in packets {
            let out = match pkt.kind() {
                MediaKind::Video => &mut self.video,
                MediaKind::Audio => &mut self.audio,
            };
            let Some(out) = out else {
                continue;
            };
            let Some(pt) = viewer_pt(&out.pts, pkt.codec) else {
                continue;
            };
            let Some(rw) = out.track.rewrite(pkt) else {
                continue;
            };
            out.send_new(&mut wire, *pt, rw, pkt, pkt.capture);
            sent = true;
        }
        if sent {
            self.send_reports(sends, counters, now, clock);
        }
        sent
    }

    /// Sends a cached GOP at once (a join or a room switch).
    pub fn replay(
        &mut self,
        gop: &[Arc<MediaPacket>],
        sends: &mut SendBatch,
        counters: &Counters,
        now: Instant,
    ) -> usize {
        let (Some(out), Some(first)) = (&mut self.video, gop.first()) else {
            return 0;
        };
        let (Some(srtp), Some(to)) = (&mut self.srtp, self.destination) else {
            return 0;
        };
        let Some(pt) = viewer_pt(&out.pts, first.codec) else {
            return 0;
        };
        let mut wire = Wire {
            srtp,
            to,
            sends,
            counters,
        };
        let mapped = out.track.replay(gop, now);
        let mut bytes = 0;
        for (pkt, rw) in gop.iter().zip(&mapped) {
            out.send_new(&mut wire, *pt, *rw, pkt, now);
            bytes += pkt.payload.len();
        }
        bytes
    }

    /// Sends again the video packets a NACK reports lost: (pid, blp) pairs of RFC 4585 6.2.1.
    pub fn resend_lost(
        &mut self,
        ssrc: u32,
        entries: impl Iterator<Item = (u16, u16)>,
        sends: &mut SendBatch,
        counters: &Counters,
        now: Instant,
    ) {
        let (Some(srtp), Some(to)) = (&mut self.srtp, self.destination) else {
            return;
        };
        let Some(track) = self.video.as_ref().filter(|t| *t.ssrc == ssrc) else {
            return;
        };
        let mut wire = Wire {
            srtp,
            to,
            sends,
            counters,
        };
        for (pid, blp) in entries {
            // The packet `pid`, and those of the set bits of `blp` after it.
            let lost = std::iter::once(pid).chain(
                (0..16u16)
                    .filter(|bit| blp & (1 << bit) != 0)
                    .map(|bit| pid.wrapping_add(bit + 1)),
            );
            for seq in lost {
                Counters::add(&counters.nacks_received, 1);
                if self.resends.take(now) && track.resend(seq, &mut wire) {
                    Counters::add(&counters.retransmissions, 1);
                }
            }
        }
    }

    /// Ends the current segments: the viewer restarts at the next keyframe (room switch).
    pub fn resync(&mut self) {
        for t in [&mut self.video, &mut self.audio].into_iter().flatten() {
            t.track.resync();
        }
    }

    /// Sends what is due of the sender reports.
    fn send_reports(
        &mut self,
        sends: &mut SendBatch,
        counters: &Counters,
        now: Instant,
        clock: &WallClock,
    ) {
        if self.next_report.is_some_and(|t| now < t) {
            return;
        }
        let (Some(srtp), Some(to)) = (&mut self.srtp, self.destination) else {
            return;
        };
        self.next_report = Some(now + REPORT_INTERVAL);
        let wall = clock.wall_at(now);
        for track in [&self.video, &self.audio].into_iter().flatten() {
            let mut plain = [0u8; 28 + 4 + 8 + 256];
            let len = track.report(&self.cname, now, wall, &mut plain);
            if len == 0 {
                continue;
            }
            sends.write(to, len + RTCP_OVERHEAD + SCRATCH, counters, |out| {
                srtp.protect_rtcp(&plain[..len], out).unwrap_or_else(|| {
                    Counters::add(&counters.seal_failures, 1);
                    0
                })
            });
        }
    }
}

/// Fuzzing: a viewer that was sent 64 video packets gets NACKs made of `data` as
/// (ssrc, pid, blp) reports; retransmissions stay within the budget, the buffer within bounds.
pub(crate) fn fuzz_nacks(data: &[u8]) {
    let now = Instant::now();
    let keys = SrtpKeys {
        profile: str0m::crypto::dtls::SrtpProfile::AEAD_AES_128_GCM,
        material: (0..56u8).collect(),
        we_are_client: false,
    };
    let mut egress = ViewerEgress {
        video: Some(TrackOut::new(
            Ssrc::from(1111),
            vec![(Pt::from(96), Codec::H264 { profile: 0x42e0 })],
            MediaKind::Video,
            Mid::from("0"),
            Some(4),
        )),
        audio: None,
        srtp: SrtpSender::new(&crate::dtls_tap::crypto_provider(), &keys),
        destination: Some(SocketAddr::from(([127, 0, 0, 1], 4000))),
        cname: "fuzz".into(),
        next_report: None,
        resends: PerSecond::new(RESENDS_PER_SECOND, now),
    };
    let sink = crate::send_batch::RecordingSink::default();
    let mut sends = SendBatch::new(Box::new(sink.clone()));
    let counters = Counters::default();
    let clock = WallClock::new(now, SystemTime::now());
    let packets: Vec<(RoomId, Arc<MediaPacket>)> = (0..64u64)
        .map(|i| {
            let pkt = MediaPacket {
                source: deadsfu_media::SourceId(1),
                codec: Codec::H264 { profile: 0x42e0 },
                seq: i,
                timestamp: i as u32 * 3000,
                marker: true,
                keyframe_start: i == 0,
                arrival: now,
                capture: now,
                payload: vec![0x65; 100 + i as usize].into(),
            };
            (RoomId(1), Arc::new(pkt))
        })
        .collect();
    egress.write(&packets, &mut sends, &counters, now, &clock);
    for report in data.chunks_exact(8) {
        let ssrc = if report[0] & 1 == 0 {
            1111
        } else {
            u32::from_be_bytes([report[0], report[1], report[2], report[3]])
        };
        let pid = u16::from_be_bytes([report[4], report[5]]);
        let blp = u16::from_be_bytes([report[6], report[7]]);
        egress.resend_lost(
            ssrc,
            std::iter::once((pid, blp)),
            &mut sends,
            &counters,
            now,
        );
    }
    sends.flush(&counters);
    let mut snap = crate::metrics::MetricsSnapshot::default();
    snap.add(&counters);
    assert!(snap.retransmissions <= RESENDS_PER_SECOND);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send_batch::RecordingSink;
    use crate::srtp::tests::test_keys;
    use deadsfu_media::SourceId;

    fn egress(dest: SocketAddr, now: Instant) -> ViewerEgress {
        let track = TrackOut::new(
            Ssrc::from(1111),
            vec![(Pt::from(96), Codec::H264 { profile: 0x42e0 })],
            MediaKind::Video,
            Mid::from("0"),
            Some(4),
        );
        let crypto = crate::dtls_tap::crypto_provider();
        ViewerEgress {
            video: Some(track),
            audio: None,
            srtp: SrtpSender::new(&crypto, &test_keys()),
            destination: Some(dest),
            cname: "test".into(),
            next_report: None,
            resends: PerSecond::new(RESENDS_PER_SECOND, now),
        }
    }

    fn packets(n: u64, now: Instant) -> Vec<(RoomId, Arc<MediaPacket>)> {
        (0..n)
            .map(|i| {
                let pkt = MediaPacket {
                    source: SourceId(7),
                    codec: Codec::H264 { profile: 0x42e0 },
                    seq: 1000 + i,
                    timestamp: 90_000,
                    marker: i + 1 == n,
                    // An IDR slice: the segment may start here.
                    keyframe_start: i == 0,
                    arrival: now,
                    capture: now,
                    payload: vec![0x65; 1000].into(),
                };
                (RoomId(1), Arc::new(pkt))
            })
            .collect()
    }

    /// Packets go out sealed to the viewer, then a sender report; NACKed ones go out again, byte
    /// for byte, to wherever the viewer's authenticated RTCP now comes from; unknown ones not.
    #[test]
    fn resends_nacked_packets_on_the_viewers_current_path() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let now = Instant::now();
        let clock = WallClock::new(now, SystemTime::now());
        let sink = RecordingSink::default();
        let mut sends = SendBatch::new(Box::new(sink.clone()));
        let counters = Counters::default();
        let mut e = egress(a, now);
        assert!(e.write(&packets(4, now), &mut sends, &counters, now, &clock));
        sends.flush(&counters);
        let sent = sink.take();
        // Four media packets (payload + header + tag), then the first sender report.
        assert_eq!(sent.len(), 5, "{sent:?}");
        assert!(sent.iter().all(|(to, _)| *to == a));
        assert!(
            sent[..4]
                .iter()
                .all(|(_, d)| d.len() > 1000 && d[..] != [0x65; 1000][..])
        );
        let first_seq = e
            .video
            .as_ref()
            .unwrap()
            .history
            .iter()
            .flatten()
            .map(|h| h.index)
            .min()
            .unwrap() as u16;
        e.follow(b);
        e.resend_lost(
            1111,
            [(first_seq + 1, 0b10)].into_iter(),
            &mut sends,
            &counters,
            now,
        );
        e.resend_lost(
            1111,
            [(first_seq.wrapping_add(200), 0)].into_iter(),
            &mut sends,
            &counters,
            now,
        );
        sends.flush(&counters);
        let resent = sink.take();
        assert_eq!(resent.len(), 2, "{resent:?}");
        assert_eq!(resent[0], (b, sent[1].1.clone()), "the same sealed bytes");
        assert_eq!(resent[1], (b, sent[3].1.clone()));
        let mut snap = crate::metrics::MetricsSnapshot::default();
        snap.add(&counters);
        assert_eq!((snap.nacks_received, snap.retransmissions), (3, 2));
    }

    /// Retransmissions are capped per second, whatever the NACKs ask.
    #[test]
    fn resends_are_capped_per_second() {
        let now = Instant::now();
        let clock = WallClock::new(now, SystemTime::now());
        let sink = RecordingSink::default();
        let mut sends = SendBatch::new(Box::new(sink.clone()));
        let counters = Counters::default();
        let mut e = egress("127.0.0.1:4000".parse().unwrap(), now);
        e.write(&packets(16, now), &mut sends, &counters, now, &clock);
        let first = e
            .video
            .as_ref()
            .unwrap()
            .history
            .iter()
            .flatten()
            .map(|h| h.index)
            .min()
            .unwrap() as u16;
        for _ in 0..100 {
            e.resend_lost(
                1111,
                [(first, 0x7fff)].into_iter(),
                &mut sends,
                &counters,
                now,
            );
        }
        let mut snap = crate::metrics::MetricsSnapshot::default();
        snap.add(&counters);
        assert_eq!(snap.retransmissions, RESENDS_PER_SECOND);
    }
}
