//! Routing of datagrams on the shared FTL UDP socket to sessions (no I/O).
//!
//! A session's client address is learned from the first media datagram that carries one of the
//! session's SSRCs and comes from the IP of its control connection, and followed if it changes
//! (NAT rebinding). Pings carry no SSRC: they go to the session owning the source address, or,
//! before any address is learned, are echoed straight back when the source IP is the control
//! peer of some session (FTL clients ping before their first media packet).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::udp::{self, Datagram};

/// Identifies a session inside the server shell.
pub type SessionId = u64;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Session(SessionId),
    /// A ping from a known client IP with no session bound yet: echo it to the sender.
    EchoToSender,
    Drop,
}

#[derive(Debug)]
struct Entry {
    peer_ip: IpAddr,
    ssrcs: Vec<u32>,
    address: Option<SocketAddr>,
}

#[derive(Debug, Default)]
pub struct Demux {
    sessions: HashMap<SessionId, Entry>,
    by_ssrc: HashMap<u32, SessionId>,
    by_address: HashMap<SocketAddr, SessionId>,
    /// How many sessions have each control peer IP.
    peer_ips: HashMap<IpAddr, usize>,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SSRC {ssrc} is already used by another FTL session")]
pub struct SsrcInUse {
    pub ssrc: u32,
}

impl Demux {
    /// Adds a streaming session whose control connection comes from `peer_ip`.
    pub fn register(
        &mut self,
        id: SessionId,
        peer_ip: IpAddr,
        ssrcs: &[u32],
    ) -> Result<(), SsrcInUse> {
        if let Some(&ssrc) = ssrcs.iter().find(|ssrc| self.by_ssrc.contains_key(ssrc)) {
            return Err(SsrcInUse { ssrc });
        }
        self.remove(id);
        for &ssrc in ssrcs {
            self.by_ssrc.insert(ssrc, id);
        }
        *self.peer_ips.entry(peer_ip).or_default() += 1;
        self.sessions.insert(
            id,
            Entry {
                peer_ip,
                ssrcs: ssrcs.to_vec(),
                address: None,
            },
        );
        Ok(())
    }

    pub fn remove(&mut self, id: SessionId) {
        let Some(entry) = self.sessions.remove(&id) else {
            return;
        };
        for ssrc in entry.ssrcs {
            self.by_ssrc.remove(&ssrc);
        }
        if let Some(address) = entry.address {
            self.by_address.remove(&address);
        }
        if let Some(count) = self.peer_ips.get_mut(&entry.peer_ip) {
            *count -= 1;
            if *count == 0 {
                self.peer_ips.remove(&entry.peer_ip);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Decides where a datagram from `from` goes, learning addresses on the way.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Route {
        let ssrc = match udp::classify(datagram) {
            Datagram::Rtp(rtp) => Some(rtp.ssrc),
            Datagram::SenderReport(report) => Some(report.ssrc),
            Datagram::Ping => None,
            // Clients do not send NACKs; unknown bytes are not worth a lookup.
            Datagram::Nack(_) | Datagram::Unknown => return Route::Drop,
        };
        if let Some(ssrc) = ssrc {
            let Some(&id) = self.by_ssrc.get(&ssrc) else {
                return Route::Drop;
            };
            let entry = self.sessions.get_mut(&id).expect("indexes agree");
            if entry.peer_ip != from.ip() {
                return Route::Drop;
            }
            if entry.address != Some(from) {
                if let Some(old) = entry.address.replace(from) {
                    self.by_address.remove(&old);
                }
                // A stale binding of this address to another session is replaced.
                if let Some(previous) = self.by_address.insert(from, id)
                    && previous != id
                    && let Some(other) = self.sessions.get_mut(&previous)
                {
                    other.address = None;
                }
            }
            return Route::Session(id);
        }
        if let Some(&id) = self.by_address.get(&from) {
            return Route::Session(id);
        }
        if self.peer_ips.contains_key(&from.ip()) {
            return Route::EchoToSender;
        }
        Route::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::RtpHeader;

    fn rtp(ssrc: u32) -> Vec<u8> {
        RtpHeader {
            marker: false,
            payload_type: 96,
            sequence: 1,
            timestamp: 2,
            ssrc,
        }
        .packet(&[0x41])
    }

    #[test]
    fn learns_and_follows_client_addresses() {
        let mut demux = Demux::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        demux.register(1, ip, &[11, 10]).unwrap();
        demux.register(2, ip, &[21, 20]).unwrap();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let ping = udp::ping_packet(0, 0);
        // Before media: pings from the peer IP are echoed directly.
        assert_eq!(demux.route(a, &ping), Route::EchoToSender);
        assert_eq!(demux.route(a, &rtp(11)), Route::Session(1));
        assert_eq!(demux.route(b, &rtp(20)), Route::Session(2));
        assert_eq!(demux.route(a, &ping), Route::Session(1));
        assert_eq!(demux.route(b, &ping), Route::Session(2));
        // Session 1's client moves to a new port.
        let c: SocketAddr = "127.0.0.1:5002".parse().unwrap();
        assert_eq!(demux.route(c, &rtp(10)), Route::Session(1));
        assert_eq!(demux.route(c, &ping), Route::Session(1));
        assert_eq!(demux.route(a, &ping), Route::EchoToSender);
        demux.remove(1);
        assert_eq!(demux.route(c, &rtp(10)), Route::Drop);
        demux.remove(2);
        assert_eq!(demux.route(b, &ping), Route::Drop);
        assert!(demux.is_empty());
    }

    #[test]
    fn drops_other_ips_unknown_ssrcs_and_junk() {
        let mut demux = Demux::default();
        demux
            .register(1, "127.0.0.1".parse().unwrap(), &[11])
            .unwrap();
        let stranger: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(demux.route(stranger, &rtp(11)), Route::Drop);
        assert_eq!(demux.route(stranger, &udp::ping_packet(0, 0)), Route::Drop);
        assert_eq!(demux.route(client, &rtp(12)), Route::Drop);
        assert_eq!(demux.route(client, b"junk"), Route::Drop);
        assert_eq!(
            demux.register(2, "127.0.0.1".parse().unwrap(), &[11]),
            Err(SsrcInUse { ssrc: 11 })
        );
    }
}
