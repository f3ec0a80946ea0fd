//! A STUN flood for the flood-capacity benchmark (`deadsfu-stunflood`) and the flood tests:
//! Binding requests naming a real session's ufrag with a MESSAGE-INTEGRITY that is garbage (any
//! viewer learns a ufrag from its own answer), or naming ufrags that were never issued, sent at
//! a paced rate from many source addresses with `sendmmsg`.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use deadsfu_udp::{Outgoing, SendMmsg};

/// What the flood's checks name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodKind {
    /// The ufrag of a session the flooder opened (and never connects), integrity garbage.
    RealUfrag,
    /// Ufrags the server never issued.
    UnknownUfrag,
}

/// A STUN Binding request naming `ufrag` (as the server's half of USERNAME), with the
/// attributes an ICE check carries (PRIORITY, ICE-CONTROLLING) so that a parser takes it as one,
/// and a MESSAGE-INTEGRITY of garbage; `n` makes its transaction id.
pub fn forged_check(ufrag: &str, n: u32) -> Vec<u8> {
    let username = format!("{ufrag}:evil");
    let padded = username.len().div_ceil(4) * 4;
    let mut d = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    d.extend_from_slice(&n.to_be_bytes());
    d.extend_from_slice(&[7; 8]);
    d.extend_from_slice(&[0x00, 0x06]);
    d.extend_from_slice(&(username.len() as u16).to_be_bytes());
    d.extend_from_slice(username.as_bytes());
    d.resize(20 + 4 + padded, 0);
    // PRIORITY and ICE-CONTROLLING.
    d.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x6e, 0x7f, 0x1e, 0xff]);
    d.extend_from_slice(&[0x80, 0x2a, 0x00, 0x08]);
    d.extend_from_slice(&u64::from(n).to_be_bytes());
    d.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
    d.extend_from_slice(&[0xee; 20]);
    let body = (d.len() - 20) as u16;
    d[2..4].copy_from_slice(&body.to_be_bytes());
    d
}

/// A viewer offer that never does ICE: enough for the server to make a session and answer.
pub const NEVER_CONNECTING_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtcp-mux\r\na=recvonly\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n";

/// Where a flood goes: a session's media address and its server ufrag.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub ufrag: String,
}

impl Target {
    /// The media address and ufrag of an SDP answer (its first host candidate).
    pub fn from_answer(answer: &str) -> anyhow::Result<Target> {
        let ufrag = answer
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
            .context("no ice-ufrag in the answer")?;
        let addr = answer
            .lines()
            .find_map(|l| {
                let c: Vec<&str> = l.trim().strip_prefix("a=candidate:")?.split(' ').collect();
                format!("{}:{}", c.get(4)?, c.get(5)?).parse().ok()
            })
            .context("no candidate in the answer")?;
        Ok(Target {
            addr,
            ufrag: ufrag.to_string(),
        })
    }

    /// Opens a session at a WHEP endpoint that will never connect, and returns its target.
    pub async fn open(http: &reqwest::Client, whep_url: &str) -> anyhow::Result<Target> {
        let res = http
            .post(whep_url)
            .header("content-type", "application/sdp")
            .body(NEVER_CONNECTING_OFFER)
            .send()
            .await?;
        if res.status() != 201 {
            bail!("the offer was refused: {}", res.status());
        }
        Target::from_answer(&res.text().await?)
    }
}

/// Paced sending of checks from many sources.
pub struct Flood {
    sockets: Vec<UdpSocket>,
    batch: SendMmsg,
    checks: Vec<Vec<u8>>,
    to: SocketAddr,
    next_socket: usize,
    pub sent: u64,
    /// Fresh targets that could not be had (the offer was refused or timed out).
    pub failed_reaims: u64,
}

/// Checks per `sendmmsg` call.
const BATCH: usize = 64;

impl Flood {
    /// `sources` sockets on 127.0.2.1, 127.0.2.2, … (one source address each).
    pub fn new(sources: u8) -> anyhow::Result<Flood> {
        let sockets = (0..sources.max(1))
            .map(|i| UdpSocket::bind((Ipv4Addr::new(127, 0, 2, 1 + i), 0)))
            .collect::<Result<Vec<_>, _>>()
            .context("binding the flood's sources")?;
        Ok(Flood {
            sockets,
            batch: SendMmsg::new(BATCH),
            checks: Vec::new(),
            to: SocketAddr::from(([127, 0, 0, 1], 9)),
            next_socket: 0,
            sent: 0,
            failed_reaims: 0,
        })
    }

    /// Aims the flood at `target`, with checks of `kind`.
    pub fn aim(&mut self, target: &Target, kind: FloodKind) {
        self.to = target.addr;
        self.checks = (0..256u32)
            .map(|n| match kind {
                FloodKind::RealUfrag => forged_check(&target.ufrag, n),
                FloodKind::UnknownUfrag => forged_check(&format!("nx{n:06x}"), n),
            })
            .collect();
    }

    /// Sends at `rate` checks per second until `until`, aiming again every `reaim` with a
    /// fresh target from `retarget` (sessions that never connect expire).
    pub fn run(
        &mut self,
        rate: f64,
        until: Instant,
        reaim: Duration,
        mut retarget: impl FnMut() -> anyhow::Result<Target>,
        kind: FloodKind,
    ) {
        let start = Instant::now();
        let mut sent_here = 0u64;
        let mut next_aim = start + reaim;
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            if now >= next_aim {
                // A server too busy to answer the offer keeps getting the old target's checks
                // (a flood does not stop because its victim is slow).
                match retarget() {
                    Ok(target) => self.aim(&target, kind),
                    Err(_) => self.failed_reaims += 1,
                }
                next_aim = now + reaim;
            }
            let due = (rate * now.duration_since(start).as_secs_f64()) as u64;
            let n = due.saturating_sub(sent_here).min(BATCH as u64) as usize;
            if n == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let socket = &self.sockets[self.next_socket % self.sockets.len()];
            self.next_socket += 1;
            let base = sent_here as usize;
            let to = self.to;
            let checks = &self.checks;
            let messages = (0..n).map(|i| Outgoing {
                to,
                data: &checks[(base + i) % checks.len()],
                segment_size: None,
            });
            // A full buffer or a refused send still counts as sent: the rate is what we offer.
            let _ = self.batch.send(socket.as_raw_fd(), messages);
            sent_here += n as u64;
            self.sent += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_check_names_the_ufrag_and_parses_as_stun() {
        let d = forged_check("abcd", 7);
        assert_eq!(d.len() % 4, 0);
        assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len() - 20);
        let msg = str0m::ice::StunMessage::parse(&d).expect("STUN");
        assert_eq!(msg.split_username(), Some(("abcd", "evil")));
    }

    #[test]
    fn targets_come_from_the_answer() {
        let answer = "v=0\r\na=ice-ufrag:srv1\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
        let t = Target::from_answer(answer).unwrap();
        assert_eq!((t.addr.port(), t.ufrag.as_str()), (40000, "srv1"));
        assert!(Target::from_answer("v=0\r\n").is_err());
    }
}
