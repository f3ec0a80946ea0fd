//! Reading Opus packets out of an Ogg file (RFC 3533 framing, RFC 7845 Opus mapping).

use bytes::Bytes;

/// One Opus packet and its length in 48 kHz samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusPacket {
    pub data: Bytes,
    pub samples: u32,
}

/// Why an Ogg Opus file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OggError {
    #[error("not an Ogg file (no `OggS` page at offset {0})")]
    NotOgg(usize),
    #[error("Ogg page at offset {0} is truncated")]
    Truncated(usize),
    #[error("first Ogg stream is not Opus (no OpusHead)")]
    NotOpus,
}

/// The audio packets of the first logical stream of an Ogg Opus file, without the `OpusHead`
/// and `OpusTags` header packets. Pages of other streams are skipped; CRCs are not checked.
pub fn read_opus_packets(file: &Bytes) -> Result<Vec<OpusPacket>, OggError> {
    let data = &file[..];
    let mut offset = 0;
    let mut serial = None;
    let mut packets: Vec<Bytes> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    while offset < data.len() {
        let page = data.get(offset..).unwrap_or_default();
        if page.len() < 27 {
            return Err(OggError::Truncated(offset));
        }
        if &page[..4] != b"OggS" {
            return Err(OggError::NotOgg(offset));
        }
        let page_serial = u32::from_le_bytes([page[14], page[15], page[16], page[17]]);
        let segment_count = usize::from(page[26]);
        let lacing = page
            .get(27..27 + segment_count)
            .ok_or(OggError::Truncated(offset))?;
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let body_start = 27 + segment_count;
        let body = page
            .get(body_start..body_start + body_len)
            .ok_or(OggError::Truncated(offset))?;
        offset += body_start + body_len;
        if *serial.get_or_insert(page_serial) != page_serial {
            continue;
        }
        let mut at = 0;
        for &len in lacing {
            let len = usize::from(len);
            partial.extend_from_slice(&body[at..at + len]);
            at += len;
            // A lacing value under 255 ends a packet; 255 means it continues.
            if len < 255 {
                packets.push(Bytes::from(std::mem::take(&mut partial)));
            }
        }
    }
    let mut packets = packets.into_iter();
    match packets.next() {
        Some(head) if head.starts_with(b"OpusHead") => {}
        _ => return Err(OggError::NotOpus),
    }
    Ok(packets
        .filter(|packet| !packet.starts_with(b"OpusTags") && !packet.is_empty())
        .map(|data| OpusPacket {
            samples: opus_packet_samples(&data),
            data,
        })
        .collect())
}

/// The duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716 §3.1);
/// 960 (20 ms) when the packet is too short to tell.
pub fn opus_packet_samples(packet: &[u8]) -> u32 {
    let Some(&toc) = packet.first() else {
        return 960;
    };
    let config = toc >> 3;
    let frame_samples: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(1, |b| u32::from(b & 0x3f)).max(1),
    };
    // A packet holds at most 120 ms.
    (frame_samples * frames).min(5760)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an Ogg Opus file (zero CRCs) holding `packets`; also used by other tests.
    pub(crate) fn ogg_opus_file(packets: &[Vec<u8>]) -> Vec<u8> {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, 0]);
        let mut all = vec![head, b"OpusTags\0\0\0\0\0\0\0\0".to_vec()];
        all.extend(packets.iter().cloned());
        let mut out = Vec::new();
        for (sequence, packet) in all.iter().enumerate() {
            let mut lacing = vec![255u8; packet.len() / 255];
            lacing.push((packet.len() % 255) as u8);
            out.extend_from_slice(b"OggS");
            out.push(0);
            out.push(if sequence == 0 { 2 } else { 0 });
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&7u32.to_le_bytes());
            out.extend_from_slice(&(sequence as u32).to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.push(lacing.len() as u8);
            out.extend_from_slice(&lacing);
            out.extend_from_slice(packet);
        }
        out
    }

    #[test]
    fn reads_packets_after_the_headers() {
        let long = vec![0xf8; 600]; // spans lacing values of 255
        let file = ogg_opus_file(&[vec![0xf8, 1, 2], long.clone(), vec![0x18, 9]]);
        let packets = read_opus_packets(&Bytes::from(file)).unwrap();
        assert_eq!(packets.len(), 3);
        assert_eq!(&packets[0].data[..], &[0xf8, 1, 2]);
        assert_eq!(packets[0].samples, 960);
        assert_eq!(packets[1].data, long);
        assert_eq!(packets[2].samples, 2880); // SILK 60 ms
    }

    #[test]
    fn rejects_non_ogg_and_truncated_files() {
        assert_eq!(
            read_opus_packets(&Bytes::from_static(
                b"RIFF...................................."
            )),
            Err(OggError::NotOgg(0))
        );
        let file = ogg_opus_file(&[vec![0xf8, 1]]);
        assert_eq!(
            read_opus_packets(&Bytes::from(file[..file.len() - 1].to_vec())),
            Err(OggError::Truncated(file.len() - 30))
        );
        assert_eq!(
            read_opus_packets(&Bytes::new()).unwrap_err(),
            OggError::NotOpus
        );
    }

    #[test]
    fn computes_packet_durations() {
        assert_eq!(opus_packet_samples(&[0xf8]), 960); // CELT 20 ms
        assert_eq!(opus_packet_samples(&[0xe0]), 120); // CELT 2.5 ms
        assert_eq!(opus_packet_samples(&[0xf9]), 1920); // two 20 ms frames
        assert_eq!(opus_packet_samples(&[0xfb, 0x03]), 2880); // code 3, three frames
        assert_eq!(opus_packet_samples(&[0x78]), 960); // hybrid 20 ms
        assert_eq!(opus_packet_samples(&[]), 960);
    }
}
