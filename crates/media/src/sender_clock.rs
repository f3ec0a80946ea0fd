//! A publisher's media clock, from its RTCP sender reports: maps each stream's RTP timestamps to
//! local time through the sender's one NTP clock, so audio and video that were captured together
//! are stamped together when forwarded (viewers' sender reports, and so their lip sync, follow).

use std::time::{Duration, Instant};

use crate::packet::MediaKind;

#[derive(Debug, Clone, Copy)]
struct StreamReport {
    rtp: u32,
    ntp_us: i64,
}

/// Sender-report state of one publisher.
#[derive(Debug, Default)]
pub struct SenderClock {
    /// The sender's NTP time (µs) of the first report, and when it arrived here.
    origin: Option<(i64, Instant)>,
    audio: Option<StreamReport>,
    video: Option<StreamReport>,
}

/// A 64-bit NTP timestamp (seconds in the high half) in microseconds.
fn ntp_to_us(ntp: u64) -> i64 {
    let secs = (ntp >> 32) as i64;
    let frac = (ntp & 0xffff_ffff) as i64;
    secs * 1_000_000 + ((frac * 1_000_000) >> 32)
}

fn offset(at: Instant, us: i64) -> Instant {
    if us >= 0 {
        at + Duration::from_micros(us as u64)
    } else {
        at.checked_sub(Duration::from_micros(us.unsigned_abs()))
            .unwrap_or(at)
    }
}

impl SenderClock {
    /// Takes note of a sender report for `kind`'s stream, received at `now`.
    pub fn on_sender_report(&mut self, kind: MediaKind, ntp: u64, rtp: u32, now: Instant) {
        let ntp_us = ntp_to_us(ntp);
        self.origin.get_or_insert((ntp_us, now));
        let report = Some(StreamReport { rtp, ntp_us });
        match kind {
            MediaKind::Audio => self.audio = report,
            MediaKind::Video => self.video = report,
        }
    }

    /// When the sample with RTP timestamp `rtp` was captured, in local time; `None` before the
    /// stream's first sender report.
    pub fn capture_time(&self, kind: MediaKind, rtp: u32, clock_rate: u32) -> Option<Instant> {
        let (origin_us, origin_at) = self.origin?;
        let report = match kind {
            MediaKind::Audio => self.audio?,
            MediaKind::Video => self.video?,
        };
        let since_report = rtp.wrapping_sub(report.rtp) as i32 as i64;
        let us = report.ntp_us - origin_us + since_report * 1_000_000 / clock_rate.max(1) as i64;
        Some(offset(origin_at, us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_and_video_share_the_senders_clock() {
        let t0 = Instant::now();
        let mut clock = SenderClock::default();
        assert!(clock.capture_time(MediaKind::Video, 0, 90_000).is_none());
        // Video report at NTP 1000.0 s = RTP 90_000; audio report 0.5 s later = RTP 48_000.
        let ntp = |secs: u64, half: bool| (secs << 32) | if half { 0x8000_0000 } else { 0 };
        clock.on_sender_report(MediaKind::Video, ntp(1000, false), 90_000, t0);
        clock.on_sender_report(
            MediaKind::Audio,
            ntp(1000, true),
            48_000,
            t0 + Duration::from_millis(3),
        );
        // Video captured 1 s after its report, audio 0.5 s after its own: the same instant.
        let v = clock
            .capture_time(MediaKind::Video, 180_000, 90_000)
            .unwrap();
        let a = clock
            .capture_time(MediaKind::Audio, 72_000, 48_000)
            .unwrap();
        assert_eq!(v, t0 + Duration::from_secs(1));
        assert_eq!(a, v);
        // Before the report, and across the 32-bit wrap.
        assert_eq!(
            clock.capture_time(MediaKind::Video, 0, 90_000),
            t0.checked_sub(Duration::from_secs(1))
        );
        clock.on_sender_report(MediaKind::Video, ntp(1010, false), u32::MAX - 8_999, t0);
        assert_eq!(
            clock
                .capture_time(MediaKind::Video, 81_000, 90_000)
                .unwrap(),
            t0 + Duration::from_secs(11)
        );
    }
}
