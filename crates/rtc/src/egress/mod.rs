//! A viewer's media egress: deadsfu sends viewers' media itself, not through str0m. Once DTLS
//! has given the SRTP keys, each room packet is rewritten onto the viewer's own sequence and
//! timeline, sealed straight into the turn's send buffer and sent to the peer's nominated
//! address; sent video is remembered for NACKs, and sender reports are ours to send.
//!
//! str0m keeps ICE, DTLS and the viewer's RTCP (which it decrypts and shows us); its own RTCP for
//! these streams never leaves, since it knows nothing of the media we sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use deadsfu_media::{Codec, MediaKind, MediaPacket, RoomId};
use str0m::Rtc;
use str0m::media::{Mid, Pt};
use str0m::rtp::{Extension, Ssrc};

use crate::budget::PerSecond;
use crate::codec::{negotiated_pts, viewer_pt};
use crate::dtls_tap::SrtpKeys;
use crate::metrics::Counters;
use crate::send_batch::SendBatch;
use crate::srtp::{RTCP_OVERHEAD, SCRATCH, SrtpSender};

mod recent_video;
#[cfg(test)]
mod tests;
mod track_out;

pub(crate) use recent_video::RecentVideo;
use track_out::{REPORT_INTERVAL, TrackOut, Wire};

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

/// One track a viewer's egress sends: the send stream str0m made for an answered section.
#[derive(Debug, Clone)]
pub(crate) struct TrackPlan {
    pub kind: MediaKind,
    pub mid: Mid,
    pub ssrc: Ssrc,
    pub pts: Vec<(Pt, Codec)>,
    /// The offer's extension id for the MID header extension, if any.
    pub mid_id: Option<u8>,
}

impl ViewerEgress {
    /// The send streams str0m made for the answer's first video and audio sections, and the
    /// CNAME the answer gave the first of them.
    pub fn plan(rtc: &mut Rtc, mids: &[(MediaKind, Mid)]) -> (Vec<TrackPlan>, String) {
        let mut tracks: Vec<TrackPlan> = Vec::new();
        let mut cname = String::new();
        for &(kind, mid) in mids {
            if tracks.iter().any(|t| t.kind == kind) {
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
            if cname.is_empty() {
                cname = media.cname().to_string();
            }
            tracks.push(TrackPlan {
                kind,
                mid,
                ssrc,
                pts,
                mid_id,
            });
        }
        (tracks, cname)
    }

    /// The egress of `tracks` (a plan's: at most one audio and one video), its reports sent
    /// as `cname`.
    pub fn new(tracks: Vec<TrackPlan>, cname: String, now: Instant) -> Self {
        let mut egress = ViewerEgress {
            video: None,
            audio: None,
            srtp: None,
            destination: None,
            cname,
            next_report: None,
            resends: PerSecond::new(RESENDS_PER_SECOND, now),
        };
        for t in tracks {
            let slot = match t.kind {
                MediaKind::Video => &mut egress.video,
                MediaKind::Audio => &mut egress.audio,
            };
            *slot = Some(TrackOut::new(t.ssrc, t.pts, t.kind, t.mid, t.mid_id));
        }
        egress
    }

    pub fn has_tracks(&self) -> bool {
        self.video.is_some() || self.audio.is_some()
    }

    /// Takes the SRTP keys of a completed DTLS handshake: from now on this viewer's media is
    /// sent by the worker. False when the keys are unusable.
    pub fn set_srtp_keys(&mut self, keys: &SrtpKeys) -> bool {
        if let Some(video) = &mut self.video {
            video.keep_history();
        }
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
    /// one is due. Returns false when nothing was sent. The batch's video packets are in the
    /// room's [`RecentVideo`] from `first_video_place` on ([`RecentVideo::push_videos`]).
    pub fn write(
        &mut self,
        packets: &[(RoomId, Arc<MediaPacket>)],
        first_video_place: u64,
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
        let mut video_place = first_video_place;
        for (_, pkt) in packets {
            let (out, place) = match pkt.kind() {
                MediaKind::Video => {
                    video_place += 1;
                    (&mut self.video, Some(video_place - 1))
                }
                MediaKind::Audio => (&mut self.audio, None),
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
            out.send_new(&mut wire, *pt, rw, pkt, pkt.capture, place);
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
            out.send_new(&mut wire, *pt, *rw, pkt, now, None);
            bytes += pkt.payload.len();
        }
        bytes
    }

    /// Sends again the video packets a NACK reports lost: (pid, blp) pairs of RFC 4585 6.2.1.
    /// `recent` is the viewer's room's recent video on this worker.
    pub fn resend_lost(
        &mut self,
        ssrc: u32,
        entries: impl Iterator<Item = (u16, u16)>,
        recent: Option<&RecentVideo>,
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
                if self.resends.take(now) && track.resend(seq, &mut wire, recent) {
                    Counters::add(&counters.retransmissions, 1);
                }
            }
        }
    }

    /// Ends the current segments: the viewer restarts at the next keyframe (room switch). What
    /// was sent before is no longer resent: its places are in the former room's ring.
    pub fn resync(&mut self) {
        for t in [&mut self.video, &mut self.audio].into_iter().flatten() {
            t.track.resync();
            t.forget_history();
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
impl ViewerEgress {
    /// The SSRCs and CNAME it sends with (tests).
    #[cfg(test)]
    pub(crate) fn sent_as(&self) -> (Vec<u32>, &str) {
        let ssrcs = [&self.video, &self.audio]
            .into_iter()
            .flatten()
            .map(|t| *t.ssrc)
            .collect();
        (ssrcs, &self.cname)
    }

    /// A viewer with one H264 track (SSRC 1111, payload type 96) keyed with `keys`: the egress
    /// of the unit tests and of the fuzz target.
    pub(crate) fn one_video_track(dest: SocketAddr, now: Instant, keys: &SrtpKeys) -> Self {
        let mut egress = ViewerEgress {
            video: Some(TrackOut::new(
                Ssrc::from(1111),
                vec![(Pt::from(96), Codec::H264 { profile: 0x42e0 })],
                MediaKind::Video,
                Mid::from("0"),
                Some(4),
            )),
            audio: None,
            srtp: None,
            destination: Some(dest),
            cname: "egress".into(),
            next_report: None,
            resends: PerSecond::new(RESENDS_PER_SECOND, now),
        };
        assert!(egress.set_srtp_keys(keys), "test keys are usable");
        egress
    }
}

pub(crate) fn fuzz_nacks(data: &[u8]) {
    let now = Instant::now();
    let keys = SrtpKeys {
        profile: str0m::crypto::dtls::SrtpProfile::AEAD_AES_128_GCM,
        material: (0..56u8).collect(),
        we_are_client: false,
    };
    let mut egress =
        ViewerEgress::one_video_track(SocketAddr::from(([127, 0, 0, 1], 4000)), now, &keys);
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
    let mut recent = RecentVideo::default();
    let first = recent.push_videos(&packets);
    egress.write(&packets, first, &mut sends, &counters, now, &clock);
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
            Some(&recent),
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
