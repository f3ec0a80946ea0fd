//! The client's store of recently sent packets, answered from when the server NACKs.

use bytes::Bytes;

/// How many packets ftl-sdk keeps per SSRC.
pub const DEFAULT_CAPACITY: usize = 2048;

/// Recently sent RTP packets of one SSRC, indexed by sequence number; a newer packet
/// overwrites the one `capacity` sequence numbers older.
#[derive(Debug)]
pub struct RetransmitBuffer {
    slots: Vec<Option<(u16, Bytes)>>,
}

impl Default for RetransmitBuffer {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl RetransmitBuffer {
    /// A buffer of `capacity` packets (at least 1, at most 65536).
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: vec![None; capacity.clamp(1, 1 << 16)],
        }
    }

    fn slot(&self, sequence: u16) -> usize {
        usize::from(sequence) % self.slots.len()
    }

    /// Keeps a sent packet.
    pub fn insert(&mut self, sequence: u16, packet: Bytes) {
        let slot = self.slot(sequence);
        self.slots[slot] = Some((sequence, packet));
    }

    /// The packet with this sequence number, if still held.
    pub fn get(&self, sequence: u16) -> Option<&Bytes> {
        match &self.slots[self.slot(sequence)] {
            Some((held, packet)) if *held == sequence => Some(packet),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_capacity_packets() {
        let mut buffer = RetransmitBuffer::new(4);
        for sequence in 0..6u16 {
            buffer.insert(sequence, Bytes::from(vec![sequence as u8]));
        }
        assert_eq!(buffer.get(1), None);
        assert_eq!(buffer.get(2).unwrap()[..], [2]);
        assert_eq!(buffer.get(5).unwrap()[..], [5]);
        assert_eq!(buffer.get(9), None);
    }

    #[test]
    fn survives_wraparound() {
        let mut buffer = RetransmitBuffer::default();
        buffer.insert(65535, Bytes::from_static(b"a"));
        buffer.insert(0, Bytes::from_static(b"b"));
        assert_eq!(&buffer.get(65535).unwrap()[..], b"a");
        assert_eq!(&buffer.get(0).unwrap()[..], b"b");
    }
}
