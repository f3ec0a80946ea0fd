//! H264 RTP packetization, RFC 6184 packetization mode 1: a NAL unit that fits in one payload
//! goes as a single NAL unit packet; a larger one is cut into FU-A fragments of nearly equal
//! size (no tiny last fragment).
//!
//! [`fragments`] plans the payloads of a NAL unit from its header byte and length alone, so a
//! caller writes them where it keeps payloads (a reused `Vec`, an `Arc<[u8]>`, a `Bytes`) and a
//! synthetic source can fill the bodies with made-up content without building the NAL unit
//! first. [`packetize_nal`] is the common case: one owned payload per packet of a real NAL unit.

use std::ops::Range;

/// NAL unit type of an FU-A fragment.
pub const FU_A: u8 = 28;
/// NAL unit type of a STAP-A aggregate.
pub const STAP_A: u8 = 24;
const FU_START: u8 = 0x80;
const FU_END: u8 = 0x40;

/// One RTP payload of a NAL unit: `prefix()` then the NAL unit's bytes in `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// FU indicator and FU header; unused for a single NAL unit packet.
    prefix: [u8; 2],
    fragmented: bool,
    /// The bytes of the NAL unit this payload carries (for FU-A, never the NAL header byte).
    pub body: Range<usize>,
    /// The NAL unit's last payload.
    pub last: bool,
}

impl Fragment {
    /// What precedes the body: the FU indicator and FU header, or nothing.
    pub fn prefix(&self) -> &[u8] {
        if self.fragmented { &self.prefix } else { &[] }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.prefix().len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this payload, cut from `nal`, to `out` (no allocation when `out` has room).
    pub fn write_to(&self, nal: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix());
        out.extend_from_slice(&nal[self.body.clone()]);
    }
}

/// The payloads of a NAL unit of `nal_len` bytes whose first byte is `nal_header`, each at most
/// `max_payload` bytes (FU-A needs at least 3 to carry anything; smaller limits act as 3).
pub fn fragments(nal_header: u8, nal_len: usize, max_payload: usize) -> Fragments {
    let fragmented = nal_len > max_payload && nal_len > 1;
    let per_fragment = if fragmented {
        let body = nal_len - 1;
        let room = max_payload.saturating_sub(2).max(1);
        body.div_ceil(body.div_ceil(room))
    } else {
        nal_len
    };
    Fragments {
        nal_header,
        nal_len,
        fragmented,
        per_fragment,
        next: if fragmented { 1 } else { 0 },
        done: false,
    }
}

/// Iterator over the payloads of one NAL unit; see [`fragments`].
#[derive(Debug, Clone)]
pub struct Fragments {
    nal_header: u8,
    nal_len: usize,
    fragmented: bool,
    per_fragment: usize,
    next: usize,
    done: bool,
}

impl Iterator for Fragments {
    type Item = Fragment;

    fn next(&mut self) -> Option<Fragment> {
        if self.done {
            return None;
        }
        let start = self.next;
        let end = (start + self.per_fragment).min(self.nal_len);
        let last = end == self.nal_len;
        self.next = end;
        self.done = last;
        let mut fu_header = self.nal_header & 0x1f;
        if start == 1 {
            fu_header |= FU_START;
        }
        if last {
            fu_header |= FU_END;
        }
        Some(Fragment {
            prefix: [(self.nal_header & 0xe0) | FU_A, fu_header],
            fragmented: self.fragmented,
            body: start..end,
            last,
        })
    }
}

/// The RTP payloads of `nal`, each its own `Vec`. Empty input gives no payload.
pub fn packetize_nal(nal: &[u8], max_payload: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let header = nal.first().copied().unwrap_or(0);
    fragments(header, nal.len(), max_payload)
        .filter(|_| !nal.is_empty())
        .map(move |fragment| {
            let mut payload = Vec::with_capacity(fragment.len());
            fragment.write_to(nal, &mut payload);
            payload
        })
}

/// A STAP-A payload aggregating `nal_units` (each shorter than 64 KiB), appended to `out`.
pub fn write_stap_a(nal_units: &[&[u8]], out: &mut Vec<u8>) {
    // F and NRI of the aggregate are the highest of its units' (RFC 6184 §5.7.1).
    let nri = nal_units
        .iter()
        .filter_map(|n| n.first())
        .map(|b| b & 0xe0)
        .max()
        .unwrap_or(0);
    out.push(nri | STAP_A);
    for nal in nal_units {
        out.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        out.extend_from_slice(nal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyframe::h264_keyframe_start;

    #[test]
    fn small_nal_unit_is_one_packet() {
        let payloads: Vec<Vec<u8>> = packetize_nal(&[0x67, 1, 2], 1380).collect();
        assert_eq!(payloads, [vec![0x67, 1, 2]]);
        let exact = vec![0x41; 1380];
        assert_eq!(packetize_nal(&exact, 1380).count(), 1);
        assert_eq!(packetize_nal(&[], 1380).count(), 0);
    }

    #[test]
    fn large_nal_unit_becomes_equal_fu_a_fragments() {
        let mut nal = vec![0x65];
        nal.extend((0..3000).map(|i| i as u8));
        let payloads: Vec<Vec<u8>> = packetize_nal(&nal, 1380).collect();
        assert_eq!(payloads.len(), 3);
        assert_eq!(payloads[0][..2], [0x7c, 0x85]);
        assert_eq!(payloads[1][..2], [0x7c, 0x05]);
        assert_eq!(payloads[2][..2], [0x7c, 0x45]);
        assert!(payloads.iter().all(|p| p.len() == 1002));
        let rebuilt: Vec<u8> = payloads.iter().flat_map(|p| p[2..].to_vec()).collect();
        assert_eq!(rebuilt, nal[1..]);
        assert!(h264_keyframe_start(&payloads[0]));
        assert!(!h264_keyframe_start(&payloads[1]));
    }

    #[test]
    fn fragments_respect_the_limit_at_every_size() {
        for len in 2..400 {
            for max in [3, 4, 7, 100, 101] {
                let plan: Vec<Fragment> = fragments(0x41, len, max).collect();
                assert!(plan.iter().all(|f| f.len() <= max.max(3)), "{len} {max}");
                assert_eq!(plan.iter().filter(|f| f.last).count(), 1);
                assert!(plan.last().unwrap().last);
                let covered: usize = plan.iter().map(|f| f.body.len()).sum();
                let expected = if plan.len() == 1 { len } else { len - 1 };
                assert_eq!(covered, expected, "{len} {max}");
            }
        }
    }

    #[test]
    fn write_to_reuses_the_callers_buffer() {
        let nal = vec![0x41; 2500];
        let mut buf = Vec::with_capacity(1200);
        let capacity = buf.capacity();
        for fragment in fragments(nal[0], nal.len(), 1200) {
            buf.clear();
            fragment.write_to(&nal, &mut buf);
            assert_eq!(buf.len(), fragment.len());
            assert_eq!(buf.capacity(), capacity);
        }
    }

    #[test]
    fn stap_a_holds_its_units() {
        let mut out = Vec::new();
        write_stap_a(&[&[0x67, 0x42, 0x00], &[0x68, 0xce]], &mut out);
        assert_eq!(out, [0x78, 0, 3, 0x67, 0x42, 0x00, 0, 2, 0x68, 0xce]);
        assert!(h264_keyframe_start(&out));
    }
}
