//! H264 Annex-B reading and framing for the FTL client: NAL units grouped into frames, each
//! packetized by [`deadsfu_media::h264_packetize`] (single NAL unit and FU-A, as ftl-sdk sends
//! them: no STAP-A).

use bytes::Bytes;
use deadsfu_media::h264_packetize::packetize_nal;

const NAL_SLICE: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_SEI: u8 = 6;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// Splits an Annex-B byte stream at its start codes (`00 00 01` or `00 00 00 01`) into NAL
/// units, without the start codes. Bytes before the first start code are ignored.
pub fn split_nal_units(stream: &Bytes) -> Vec<Bytes> {
    let data = &stream[..];
    let mut starts = Vec::new(); // (start code position, first NAL byte)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let code_start = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((code_start, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::with_capacity(starts.len());
    for (index, &(_, begin)) in starts.iter().enumerate() {
        let end = starts.get(index + 1).map_or(data.len(), |&(code, _)| code);
        // Trailing zero bytes belong to the next start code or are padding.
        let mut end = end.max(begin);
        while end > begin && data[end - 1] == 0 {
            end -= 1;
        }
        if end > begin {
            units.push(stream.slice(begin..end));
        }
    }
    units
}

fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

fn is_slice(nal: &[u8]) -> bool {
    matches!(nal_type(nal), NAL_SLICE | NAL_IDR)
}

/// Whether a slice NAL starts a new picture: `first_mb_in_slice` (the first ue(v) after the
/// header) is 0, which is coded as a single `1` bit.
fn first_slice_of_picture(nal: &[u8]) -> bool {
    nal.get(1).is_some_and(|b| b & 0x80 != 0)
}

/// Groups NAL units into access units (frames), starting at the first SPS as ftl-sdk does.
/// Each frame is one picture plus any SPS/PPS/SEI before it.
pub fn access_units(nal_units: Vec<Bytes>) -> Vec<Vec<Bytes>> {
    let mut frames: Vec<Vec<Bytes>> = Vec::new();
    let mut current: Vec<Bytes> = Vec::new();
    let mut current_has_slice = false;
    let mut started = false;
    for nal in nal_units {
        let kind = nal_type(&nal);
        if !started {
            if kind != NAL_SPS {
                continue;
            }
            started = true;
        }
        let starts_new = current_has_slice
            && (matches!(kind, NAL_AUD | NAL_SPS | NAL_PPS | NAL_SEI)
                || (is_slice(&nal) && first_slice_of_picture(&nal)));
        if starts_new {
            frames.push(std::mem::take(&mut current));
            current_has_slice = false;
        }
        if kind == NAL_AUD {
            // Access unit delimiters carry nothing a receiver needs.
            continue;
        }
        current_has_slice |= is_slice(&nal);
        current.push(nal);
    }
    if current_has_slice {
        frames.push(current);
    }
    frames
}

/// All RTP payloads of a frame with their marker bits (set on the frame's last packet).
pub fn packetize_frame(frame: &[Bytes], max_payload: usize) -> Vec<(Vec<u8>, bool)> {
    let mut payloads: Vec<(Vec<u8>, bool)> = frame
        .iter()
        .flat_map(|nal| packetize_nal(nal, max_payload))
        .map(|payload| (payload, false))
        .collect();
    if let Some(last) = payloads.last_mut() {
        last.1 = true;
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(units: &[&[u8]]) -> Bytes {
        let mut out = vec![0xde, 0xad]; // junk before the first start code
        for (i, unit) in units.iter().enumerate() {
            if i % 2 == 0 {
                out.extend_from_slice(&[0, 0, 0, 1]);
            } else {
                out.extend_from_slice(&[0, 0, 1]);
            }
            out.extend_from_slice(unit);
        }
        Bytes::from(out)
    }

    #[test]
    fn splits_at_three_and_four_byte_start_codes() {
        let data = stream(&[&[0x67, 1], &[0x68, 2], &[0x65, 0x88, 0, 3]]);
        let units = split_nal_units(&data);
        assert_eq!(units, [&[0x67, 1][..], &[0x68, 2], &[0x65, 0x88, 0, 3]]);
    }

    #[test]
    fn groups_frames_from_the_first_sps() {
        let data = stream(&[
            &[0x41, 0x9a], // before the SPS: skipped
            &[0x09, 0xf0], // AUD
            &[0x67, 1],
            &[0x68, 2],
            &[0x65, 0x88, 1],
            &[0x65, 0x08, 2], // second slice of the same picture
            &[0x09, 0xf0],
            &[0x41, 0x9a, 3],
            &[0x41, 0x9a, 4],
        ]);
        let frames = access_units(split_nal_units(&data));
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].len(), 4);
        assert_eq!(frames[1], [&[0x41, 0x9a, 3][..]]);
        assert_eq!(frames[2], [&[0x41, 0x9a, 4][..]]);
    }

    #[test]
    fn marks_the_last_packet_of_a_frame() {
        let frame = [
            Bytes::from_static(&[0x67, 1]),
            Bytes::from_static(&[0x65, 0x88]),
        ];
        let packets = packetize_frame(&frame, 1380);
        assert_eq!(
            packets.iter().map(|p| p.1).collect::<Vec<_>>(),
            [false, true]
        );
    }
}
