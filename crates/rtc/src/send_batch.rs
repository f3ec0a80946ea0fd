//! Outgoing datagrams gathered during one turn of a worker, grouped for as few system calls as
//! possible, and handed to a [`DatagramSink`] (the worker's socket, or a test's recorder).
//!
//! Datagrams are written (or encrypted) straight into one preallocated buffer. Consecutive
//! datagrams to the same peer that have the same size (the last may be shorter) become one
//! message for UDP generic segmentation offload (`UDP_SEGMENT`), so the packets of a frame
//! travel through the kernel as one. A packet fanned out to 300 viewers used to be 300 `sendto`
//! calls, the largest single cost of the worker.

use std::net::SocketAddr;

use crate::metrics::Counters;

/// Messages per flush (one `sendmmsg` call).
pub(crate) const MAX_BATCH: usize = 64;
/// Bytes of datagrams held before they are sent.
const BUFFER_BYTES: usize = 512 * 1024;
/// Largest datagram a caller may write.
pub(crate) const MAX_DATAGRAM: usize = 2048;
/// Segments per GSO message (the kernel takes 64 at most on older versions).
const MAX_SEGMENTS: u16 = 32;
/// Bytes per GSO message (below the 65,507-byte UDP limit, with room to spare).
const MAX_GSO_BYTES: usize = 60_000;

/// One message: a datagram, or a run of equal-size datagrams to one peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message {
    pub to: SocketAddr,
    pub start: usize,
    pub len: usize,
    /// Size of every segment but the last.
    pub segment: usize,
    pub segments: u16,
    /// A shorter last segment closes the message.
    open: bool,
}

/// What a sink did with a flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendReport {
    pub datagrams: u64,
    pub bytes: u64,
    pub dropped: u64,
}

/// Where a batch goes when it is flushed.
pub(crate) trait DatagramSink: Send {
    /// Sends `messages`, whose bytes are in `buf`.
    fn send(&mut self, buf: &[u8], messages: &[Message]) -> SendReport;
    /// Whether runs to one peer may be sent as one segmented message.
    fn gso(&self) -> bool;
}

/// Datagrams waiting to be sent, in order.
pub(crate) struct SendBatch {
    sink: Box<dyn DatagramSink>,
    buf: Box<[u8]>,
    used: usize,
    messages: Vec<Message>,
    gso: bool,
}

impl SendBatch {
    pub fn new(sink: Box<dyn DatagramSink>) -> Self {
        let gso = sink.gso();
        SendBatch {
            sink,
            buf: vec![0u8; BUFFER_BYTES].into_boxed_slice(),
            used: 0,
            messages: Vec::with_capacity(MAX_BATCH),
            gso,
        }
    }

    /// Queues a copy of `data`.
    pub fn push(&mut self, to: SocketAddr, data: &[u8], counters: &Counters) {
        if data.len() > MAX_DATAGRAM {
            tracing::debug!(len = data.len(), "oversized datagram not sent");
            return;
        }
        self.write(to, data.len(), counters, |out| {
            out[..data.len()].copy_from_slice(data);
            data.len()
        });
    }

    /// Queues the datagram `fill` writes into the buffer it is given (at least `max_len`
    /// bytes); `fill` returns the datagram's length (0: nothing to send).
    pub fn write(
        &mut self,
        to: SocketAddr,
        max_len: usize,
        counters: &Counters,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) {
        let max_len = max_len.min(MAX_DATAGRAM + 64);
        if self.used + max_len > self.buf.len() || self.messages.len() >= MAX_BATCH {
            self.flush(counters);
        }
        let start = self.used;
        let len = fill(&mut self.buf[start..start + max_len]).min(max_len);
        if len == 0 {
            return;
        }
        self.used += len;
        if self.gso
            && let Some(last) = self.messages.last_mut()
            && last.open
            && last.to == to
            && last.start + last.len == start
            && last.segments < MAX_SEGMENTS
            && last.len + len <= MAX_GSO_BYTES
            && len <= last.segment
        {
            last.len += len;
            last.segments += 1;
            last.open = len == last.segment;
            return;
        }
        self.messages.push(Message {
            to,
            start,
            len,
            segment: len,
            segments: 1,
            open: true,
        });
    }

    /// Sends everything queued.
    pub fn flush(&mut self, counters: &Counters) {
        if self.messages.is_empty() {
            self.used = 0;
            return;
        }
        let report = self.sink.send(&self.buf[..self.used], &self.messages);
        Counters::add(&counters.packets_out, report.datagrams);
        Counters::add(&counters.bytes_out, report.bytes);
        if report.dropped > 0 {
            Counters::add(&counters.send_drops, report.dropped);
        }
        self.gso = self.sink.gso();
        self.messages.clear();
        self.used = 0;
    }
}

/// Every datagram of `messages` as (destination, offset in the buffer, length).
pub(crate) fn split_messages(
    messages: &[Message],
) -> impl Iterator<Item = (SocketAddr, usize, usize)> + '_ {
    messages.iter().flat_map(|m| {
        let last = m.len - m.segment * (m.segments as usize - 1);
        (0..m.segments as usize).map(move |i| {
            let len = if i + 1 == m.segments as usize {
                last
            } else {
                m.segment
            };
            (m.to, m.start + i * m.segment, len)
        })
    })
}

/// A datagram as a [`RecordingSink`] keeps it.
pub(crate) type Datagram = (SocketAddr, Vec<u8>);

/// A sink that keeps every datagram (for tests of whatever sends).
#[derive(Clone, Default)]
pub(crate) struct RecordingSink {
    pub sent: std::sync::Arc<std::sync::Mutex<Vec<Datagram>>>,
    pub no_gso: bool,
}

impl RecordingSink {
    /// Takes what was sent so far.
    pub fn take(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl DatagramSink for RecordingSink {
    fn send(&mut self, buf: &[u8], messages: &[Message]) -> SendReport {
        let mut sent = self.sent.lock().unwrap();
        let mut report = SendReport::default();
        for (to, start, len) in split_messages(messages) {
            sent.push((to, buf[start..start + len].to_vec()));
            report.datagrams += 1;
            report.bytes += len as u64;
        }
        report
    }

    fn gso(&self) -> bool {
        !self.no_gso
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Equal-size datagrams to one peer are one segmented message; a shorter one closes it, a
    /// larger one or another peer starts a new one; every datagram comes out whole and in order.
    #[test]
    fn groups_runs_to_one_peer_and_keeps_datagrams_whole() {
        let sink = RecordingSink::default();
        let counters = Counters::default();
        let mut batch = SendBatch::new(Box::new(sink.clone()));
        let plan: Vec<(u16, usize)> = vec![(1, 1000); 4]
            .into_iter()
            .chain([(1, 300)])
            .chain(vec![(2, 500); 3])
            .chain([(1, 1000), (1, 1200)])
            .collect();
        for (i, (peer, len)) in plan.iter().enumerate() {
            batch.push(addr(*peer), &vec![i as u8; *len], &counters);
        }
        let segments: Vec<u16> = batch.messages.iter().map(|m| m.segments).collect();
        assert_eq!(segments, vec![5, 3, 1, 1]);
        batch.flush(&counters);
        let sent = sink.take();
        assert_eq!(sent.len(), plan.len());
        for (i, ((peer, len), (to, data))) in plan.iter().zip(&sent).enumerate() {
            assert_eq!((*to, data.len()), (addr(*peer), *len), "datagram {i}");
            assert!(data.iter().all(|b| *b == i as u8));
        }
    }

    /// A turn larger than one flush goes out in several, in order, nothing lost.
    #[test]
    fn flushes_when_full_and_keeps_order() {
        let sink = RecordingSink {
            no_gso: true,
            ..Default::default()
        };
        let counters = Counters::default();
        let mut batch = SendBatch::new(Box::new(sink.clone()));
        for i in 0..(3 * MAX_BATCH + 5) as u16 {
            batch.push(addr(i), &i.to_be_bytes(), &counters);
        }
        batch.flush(&counters);
        let sent = sink.take();
        assert_eq!(sent.len(), 3 * MAX_BATCH + 5);
        assert!(
            sent.iter()
                .enumerate()
                .all(|(i, (_, d))| d[..] == (i as u16).to_be_bytes())
        );
    }
}
