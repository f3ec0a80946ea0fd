//! Helpers shared by the integration tests of several crates. A dev-dependency only: nothing
//! here belongs in a shipped binary.

use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};

/// A TCP port that was free on `ip` a moment ago, for a server started a moment later. On
/// IPv4 it is chosen below the kernel's ephemeral range (see [`tcp_port_free_on_all`]): a port
/// the kernel picks is an ephemeral one, which any outgoing connection of the tests running
/// alongside may be given before the server binds it (a server then failed to start now and
/// again). Another test may still take it first, which is rare.
pub fn free_tcp_port(ip: impl Into<IpAddr>) -> u16 {
    let ip = ip.into();
    if let IpAddr::V4(v4) = ip {
        return tcp_port_free_on_all(&[v4]);
    }
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free TCP port on {ip}: {e}"))
        .port()
}

/// A TCP port free on every one of `ips` at once (for servers that must share one port
/// number across addresses, such as nodes reached through one DNS name). It is chosen below
/// the kernel's ephemeral range: the servers are started a moment later, and meanwhile any
/// outgoing connection (theirs included) may be given an ephemeral port, which then cannot
/// be listened on.
pub fn tcp_port_free_on_all(ips: &[Ipv4Addr]) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(16_000).max(1024);
    let span = u64::from(ephemeral_low - low).max(1);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    for _ in 0..500 {
        // xorshift: a different candidate each round, different across processes.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = low + (seed % span) as u16;
        if ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no TCP port free on all of {ips:?}");
}

/// A UDP socket and a TCP listener bound to the same port on `ip`, kept open so that the
/// caller can hand the port to a server that needs both (and close them just before).
pub fn free_udp_and_tcp_port(ip: impl Into<IpAddr>) -> (UdpSocket, TcpListener) {
    let ip = ip.into();
    for _ in 0..100 {
        let udp = UdpSocket::bind((ip, 0)).expect("a free UDP port");
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bindable() {
        let port = free_tcp_port(Ipv4Addr::LOCALHOST);
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        let port = tcp_port_free_on_all(&[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)]);
        assert_ne!(port, 0);
        if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
            let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
            assert!(port < low, "{port} is below the ephemeral range ({range})");
        }
        let (udp, tcp) = free_udp_and_tcp_port(Ipv4Addr::LOCALHOST);
        assert_eq!(udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    }
}
