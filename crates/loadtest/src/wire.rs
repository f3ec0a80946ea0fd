//! What a cheap viewer reads without decrypting: the datagram's kind (RFC 7983 demultiplexing,
//! RFC 5761 for RTP against RTCP), the clear RTP header of an SRTP packet, and which payload
//! types the SDP gave to which track.

/// What a datagram on a WebRTC 5-tuple is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Other,
}

pub fn classify(d: &[u8]) -> DatagramKind {
    match d.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(128..=191) => match d.get(1) {
            Some(192..=223) => DatagramKind::Rtcp,
            Some(_) if d.len() >= 12 => DatagramKind::Rtp,
            _ => DatagramKind::Other,
        },
        _ => DatagramKind::Other,
    }
}

/// The fields of an RTP header that SRTP leaves in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub padding: bool,
    pub sequence: u16,
    pub ssrc: u32,
    /// Bytes before the payload (fixed header, CSRCs, extension).
    pub header_len: usize,
}

pub fn rtp_header(d: &[u8]) -> Option<RtpHeader> {
    if d.len() < 12 || d[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(d[0] & 0x0f);
    let mut header_len = 12 + 4 * csrcs;
    if d[0] & 0x10 != 0 {
        let ext = d.get(header_len + 2..header_len + 4)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if header_len > d.len() {
        return None;
    }
    Some(RtpHeader {
        payload_type: d[1] & 0x7f,
        marker: d[1] & 0x80 != 0,
        padding: d[0] & 0x20 != 0,
        sequence: u16::from_be_bytes([d[2], d[3]]),
        ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
        header_len,
    })
}

/// What a payload type carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtUse {
    Audio,
    Video,
    /// Retransmissions (RFC 4588) or other repair.
    Repair,
}

/// Payload types of a session, read from the SDP that says what the other side will send.
/// One bit per payload type and use, so a lookup (once per packet) is a shift.
#[derive(Debug, Clone, Copy, Default)]
pub struct PayloadTypes {
    audio: u128,
    video: u128,
    repair: u128,
}

impl PayloadTypes {
    pub fn from_sdp(sdp: &str) -> Self {
        let mut uses = PayloadTypes::default();
        let mut section = None;
        for line in sdp.lines().map(str::trim) {
            if let Some(m) = line.strip_prefix("m=") {
                section = if m.starts_with("audio") {
                    Some(PtUse::Audio)
                } else if m.starts_with("video") {
                    Some(PtUse::Video)
                } else {
                    None
                };
            } else if let (Some(kind), Some(map)) = (section, line.strip_prefix("a=rtpmap:")) {
                let Some((pt, codec)) = map.split_once(' ') else {
                    continue;
                };
                let Ok(pt) = pt.parse::<u8>() else { continue };
                if pt > 127 || uses.get(pt).is_some() {
                    continue; // not a payload type, or given already (the first one counts)
                }
                let name = codec.split('/').next().unwrap_or("").to_ascii_lowercase();
                let bit = 1u128 << pt;
                match (name.as_str(), kind) {
                    ("rtx" | "red" | "ulpfec" | "flexfec-03", _) => uses.repair |= bit,
                    (_, PtUse::Audio) => uses.audio |= bit,
                    (_, _) => uses.video |= bit,
                }
            }
        }
        uses
    }

    #[inline]
    pub fn get(&self, pt: u8) -> Option<PtUse> {
        let bit = 1u128 << (pt & 0x7f);
        if self.video & bit != 0 {
            Some(PtUse::Video)
        } else if self.audio & bit != 0 {
            Some(PtUse::Audio)
        } else if self.repair & bit != 0 {
            Some(PtUse::Repair)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demultiplexes_by_first_bytes() {
        assert_eq!(classify(&[0, 1, 0, 0]), DatagramKind::Stun);
        assert_eq!(classify(&[22, 0xfe, 0xfd]), DatagramKind::Dtls);
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 96;
        assert_eq!(classify(&rtp), DatagramKind::Rtp);
        rtp[1] = 0x80 | 96; // marker set: still RTP
        assert_eq!(classify(&rtp), DatagramKind::Rtp);
        rtp[1] = 200; // sender report
        assert_eq!(classify(&rtp), DatagramKind::Rtcp);
        assert_eq!(classify(&[]), DatagramKind::Other);
        assert_eq!(classify(&[70]), DatagramKind::Other);
    }

    #[test]
    fn parses_header_with_extension() {
        let mut d = vec![
            0x90,
            0x80 | 102,
            0x12,
            0x34,
            0,
            0,
            0,
            1,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        d.extend_from_slice(&[0xbe, 0xde, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8]);
        d.extend_from_slice(&[9; 30]);
        let h = rtp_header(&d).unwrap();
        assert_eq!(h.payload_type, 102);
        assert!(h.marker);
        assert!(!h.padding);
        assert_eq!(h.sequence, 0x1234);
        assert_eq!(h.ssrc, 0xdeadbeef);
        assert_eq!(h.header_len, 24);
        assert_eq!(rtp_header(&d[..20]), None, "extension runs past the end");
    }

    #[test]
    fn payload_types_from_answer() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 102 103\r\na=rtpmap:102 H264/90000\r\n\
                   a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n";
        let pts = PayloadTypes::from_sdp(sdp);
        assert_eq!(pts.get(111), Some(PtUse::Audio));
        assert_eq!(pts.get(102), Some(PtUse::Video));
        assert_eq!(pts.get(103), Some(PtUse::Repair));
        assert_eq!(pts.get(96), None);
    }
}
