//! FTL's UDP datagrams: RTP media, ping packets, RTCP sender reports and generic NACKs.
//!
//! FTL peers tell datagrams apart by the second byte: RTP payload types 96/97 (with or without
//! the marker bit), `0xFA` for pings and the RTCP packet types 200 (sender report) and 205
//! (transport feedback, generic NACK).

/// Second byte of a ping packet: ftl-sdk writes payload type 250 into the whole byte.
pub const PING_TYPE: u8 = 0xFA;
/// RTCP packet type of a sender report.
pub const SENDER_REPORT_TYPE: u8 = 200;
/// RTCP packet type of transport-layer feedback (generic NACK is format 1).
pub const TRANSPORT_FEEDBACK_TYPE: u8 = 205;
/// Size of the RTP fixed header.
pub const RTP_HEADER_LEN: usize = 12;
/// Size of ftl-sdk's sender report (one report block-less SR).
pub const SENDER_REPORT_LEN: usize = 28;
/// Size of the ping packets this crate sends: ftl-sdk's 4-byte header plus a 64-bit
/// `struct timeval` as laid out on 64-bit Linux.
pub const PING_LEN: usize = 20;
/// Largest datagram either side reads; FTL packets stay under a 1500-byte MTU.
pub const MAX_DATAGRAM: usize = 2048;

/// An RTP packet, borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// The payload after the header, CSRCs and extension, without padding.
    pub payload: &'a [u8],
}

/// An RTCP sender report's sender info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    /// 64-bit NTP timestamp (seconds in the high half).
    pub ntp_time: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// A generic NACK: the media SSRC and the sequence numbers asked for again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    pub lost: Vec<u16>,
}

/// What an FTL datagram is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// RTP media (which track is decided by payload type and SSRC).
    Rtp(RtpPacket<'a>),
    /// A ping packet, to be echoed unchanged.
    Ping,
    SenderReport(SenderReport),
    Nack(Nack),
    /// Anything else: not RTP version 2, too short, or an unknown RTCP type.
    Unknown,
}

impl Datagram<'_> {
    /// The SSRC that names the stream the datagram belongs to, where it has one.
    pub fn media_ssrc(&self) -> Option<u32> {
        match self {
            Datagram::Rtp(rtp) => Some(rtp.ssrc),
            Datagram::SenderReport(report) => Some(report.ssrc),
            Datagram::Nack(nack) => Some(nack.media_ssrc),
            Datagram::Ping | Datagram::Unknown => None,
        }
    }
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Classifies and parses one datagram. Never panics, whatever the bytes.
pub fn classify(buf: &[u8]) -> Datagram<'_> {
    if buf.len() < 2 || buf[0] >> 6 != 2 {
        return Datagram::Unknown;
    }
    match buf[1] {
        PING_TYPE => Datagram::Ping,
        SENDER_REPORT_TYPE => {
            parse_sender_report(buf).map_or(Datagram::Unknown, Datagram::SenderReport)
        }
        TRANSPORT_FEEDBACK_TYPE => parse_nack(buf).map_or(Datagram::Unknown, Datagram::Nack),
        // The rest of the RTCP range (and the marker-bit aliases of it) is not used by FTL.
        192..=223 => Datagram::Unknown,
        _ => parse_rtp(buf).map_or(Datagram::Unknown, Datagram::Rtp),
    }
}

/// Parses an RTP packet (version 2, CSRCs, extension and padding handled).
pub fn parse_rtp(buf: &[u8]) -> Option<RtpPacket<'_>> {
    if buf.len() < RTP_HEADER_LEN || buf[0] >> 6 != 2 {
        return None;
    }
    let has_padding = buf[0] & 0x20 != 0;
    let has_extension = buf[0] & 0x10 != 0;
    let csrc_count = usize::from(buf[0] & 0x0f);
    let mut start = RTP_HEADER_LEN + 4 * csrc_count;
    if has_extension {
        if buf.len() < start + 4 {
            return None;
        }
        start += 4 + 4 * usize::from(u16_at(buf, start + 2));
    }
    let mut end = buf.len();
    if has_padding {
        let padding = usize::from(*buf.last()?);
        if padding == 0 {
            return None;
        }
        end = end.checked_sub(padding)?;
    }
    if start > end {
        return None;
    }
    Some(RtpPacket {
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7f,
        sequence: u16_at(buf, 2),
        timestamp: u32_at(buf, 4),
        ssrc: u32_at(buf, 8),
        payload: &buf[start..end],
    })
}

fn parse_sender_report(buf: &[u8]) -> Option<SenderReport> {
    if buf.len() < SENDER_REPORT_LEN {
        return None;
    }
    Some(SenderReport {
        ssrc: u32_at(buf, 4),
        ntp_time: (u64::from(u32_at(buf, 8)) << 32) | u64::from(u32_at(buf, 12)),
        rtp_timestamp: u32_at(buf, 16),
        packet_count: u32_at(buf, 20),
        octet_count: u32_at(buf, 24),
    })
}

fn parse_nack(buf: &[u8]) -> Option<Nack> {
    // Format 1 of transport feedback; the length field counts 32-bit words minus one.
    if buf[0] & 0x1f != 1 || buf.len() < 12 {
        return None;
    }
    let words = usize::from(u16_at(buf, 2)) + 1;
    if words < 3 || buf.len() < words * 4 {
        return None;
    }
    let mut lost = Vec::new();
    for entry in buf[12..words * 4].chunks_exact(4) {
        let first = u16_at(entry, 0);
        let bitmask = u16_at(entry, 2);
        lost.push(first);
        for bit in 0..16u16 {
            if bitmask & (1 << bit) != 0 {
                lost.push(first.wrapping_add(bit + 1));
            }
        }
    }
    Some(Nack {
        sender_ssrc: u32_at(buf, 4),
        media_ssrc: u32_at(buf, 8),
        lost,
    })
}

/// Fields of an RTP header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// The header followed by `payload`, as one datagram.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(RTP_HEADER_LEN + payload.len());
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
}

/// A ping packet as ftl-sdk sends it: `0x81 0xFA <length>` then the sender's wall clock as a
/// `struct timeval` (seconds and microseconds, 64-bit little-endian each, as on x86-64 Linux).
/// Only the sender reads the clock back, from the echo.
pub fn ping_packet(seconds: i64, microseconds: i64) -> [u8; PING_LEN] {
    let mut out = [0u8; PING_LEN];
    out[0] = 0x81;
    out[1] = PING_TYPE;
    out[2..4].copy_from_slice(&(PING_LEN as u16).to_be_bytes());
    out[4..12].copy_from_slice(&seconds.to_le_bytes());
    out[12..20].copy_from_slice(&microseconds.to_le_bytes());
    out
}

/// The clock in a ping packet built by [`ping_packet`], as (seconds, microseconds).
pub fn ping_time(buf: &[u8]) -> Option<(i64, i64)> {
    if buf.len() < PING_LEN || buf[1] != PING_TYPE {
        return None;
    }
    let seconds = i64::from_le_bytes(buf[4..12].try_into().ok()?);
    let microseconds = i64::from_le_bytes(buf[12..20].try_into().ok()?);
    Some((seconds, microseconds))
}

impl SenderReport {
    /// The 28-byte SR ftl-sdk sends (no report blocks).
    pub fn packet(&self) -> [u8; SENDER_REPORT_LEN] {
        let mut out = [0u8; SENDER_REPORT_LEN];
        out[0] = 0x80;
        out[1] = SENDER_REPORT_TYPE;
        out[2..4].copy_from_slice(&((SENDER_REPORT_LEN / 4 - 1) as u16).to_be_bytes());
        out[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        out[8..16].copy_from_slice(&self.ntp_time.to_be_bytes());
        out[16..20].copy_from_slice(&self.rtp_timestamp.to_be_bytes());
        out[20..24].copy_from_slice(&self.packet_count.to_be_bytes());
        out[24..28].copy_from_slice(&self.octet_count.to_be_bytes());
        out
    }
}

impl Nack {
    /// An RTCP generic NACK naming `lost` (packed into PID + bitmask entries, in the order
    /// given; entries are not merged across unsorted input).
    pub fn packet(&self) -> Vec<u8> {
        let mut entries: Vec<(u16, u16)> = Vec::new();
        for &sequence in &self.lost {
            if let Some((first, bitmask)) = entries.last_mut() {
                let offset = sequence.wrapping_sub(*first);
                if (1..=16).contains(&offset) {
                    *bitmask |= 1 << (offset - 1);
                    continue;
                }
            }
            entries.push((sequence, 0));
        }
        let words = 3 + entries.len();
        let mut out = Vec::with_capacity(words * 4);
        out.push(0x81);
        out.push(TRANSPORT_FEEDBACK_TYPE);
        out.extend_from_slice(&((words - 1) as u16).to_be_bytes());
        out.extend_from_slice(&self.sender_ssrc.to_be_bytes());
        out.extend_from_slice(&self.media_ssrc.to_be_bytes());
        for (first, bitmask) in entries {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&bitmask.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_media_by_second_byte() {
        let header = RtpHeader {
            marker: true,
            payload_type: 96,
            sequence: 0xabcd,
            timestamp: 90_000,
            ssrc: 124,
        };
        let packet = header.packet(&[0x65, 1, 2]);
        assert_eq!(&packet[..2], &[0x80, 0xE0]);
        let Datagram::Rtp(rtp) = classify(&packet) else {
            panic!("not RTP")
        };
        assert!(rtp.marker);
        assert_eq!(rtp.payload_type, 96);
        assert_eq!(rtp.sequence, 0xabcd);
        assert_eq!(rtp.timestamp, 90_000);
        assert_eq!(rtp.ssrc, 124);
        assert_eq!(rtp.payload, &[0x65, 1, 2]);

        let audio = RtpHeader {
            marker: false,
            payload_type: 97,
            ..header
        }
        .packet(&[1]);
        assert_eq!(audio[1], 0x61);
        assert!(matches!(
            classify(&audio),
            Datagram::Rtp(RtpPacket {
                payload_type: 97,
                ..
            })
        ));
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut packet = vec![0x80 | 0x20 | 0x10 | 1, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        packet.extend_from_slice(&[9, 9, 9, 9]); // CSRC
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]); // one-word extension
        packet.extend_from_slice(b"payload");
        packet.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let rtp = parse_rtp(&packet).unwrap();
        assert_eq!(rtp.payload, b"payload");
        // Padding longer than the packet.
        let mut bad = packet.clone();
        *bad.last_mut().unwrap() = 200;
        assert_eq!(parse_rtp(&bad), None);
        // Extension running past the end.
        assert_eq!(parse_rtp(&packet[..18]), None);
    }

    #[test]
    fn classifies_ping_and_keeps_its_clock() {
        let ping = ping_packet(1_700_000_000, 123_456);
        assert_eq!(&ping[..4], &[0x81, 0xFA, 0, 20]);
        assert_eq!(classify(&ping), Datagram::Ping);
        assert_eq!(ping_time(&ping), Some((1_700_000_000, 123_456)));
        // ftl-sdk on Windows sends 12-byte pings: still a ping.
        assert_eq!(classify(&ping[..12]), Datagram::Ping);
    }

    #[test]
    fn sender_report_round_trip() {
        let report = SenderReport {
            ssrc: 5,
            ntp_time: 0x0102_0304_0506_0708,
            rtp_timestamp: 9,
            packet_count: 10,
            octet_count: 11,
        };
        let packet = report.packet();
        assert_eq!(&packet[..4], &[0x80, 0xC8, 0, 6]);
        assert_eq!(classify(&packet), Datagram::SenderReport(report));
        assert_eq!(classify(&packet[..27]), Datagram::Unknown);
    }

    #[test]
    fn nack_round_trip_packs_bitmasks() {
        let nack = Nack {
            sender_ssrc: 1,
            media_ssrc: 101,
            lost: vec![65534, 65535, 0, 14, 15, 100],
        };
        let packet = nack.packet();
        // 65534 carries 65535, 0 and 14 (offsets 1, 2, 16) in its bitmask; 15 and 100 start entries.
        assert_eq!(u16_at(&packet, 2), 2 + 3);
        assert_eq!(classify(&packet), Datagram::Nack(nack));
    }

    #[test]
    fn rejects_truncated_and_foreign_datagrams() {
        assert_eq!(classify(&[]), Datagram::Unknown);
        assert_eq!(classify(&[0x80]), Datagram::Unknown);
        assert_eq!(classify(&[0x00, 0x60, 0, 0]), Datagram::Unknown); // version 0
        assert_eq!(classify(&[0x80, 0x60, 0, 0]), Datagram::Unknown); // short RTP
        assert_eq!(classify(&[0x80, 201, 0, 1, 0, 0, 0, 0]), Datagram::Unknown); // RR
        // NACK whose length field claims more than the datagram holds.
        assert_eq!(
            classify(&[0x81, 205, 0, 9, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0, 0]),
            Datagram::Unknown
        );
        // NACK of another feedback format.
        assert_eq!(
            classify(&[0x82, 205, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]),
            Datagram::Unknown
        );
    }
}
