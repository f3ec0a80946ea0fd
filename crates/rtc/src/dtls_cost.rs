//! What a DTLS handshake costs the server on this machine, measured in memory (no sockets, no
//! threads, no str0m around it): the floor of a join's CPU with the DTLS that deadsfu uses, set
//! against the bare public-key work the handshake cannot avoid, done by the same OpenSSL.
//! For `examples/dtls_handshake_cost.rs` (see BENCHMARKS.md, issue 13); not used by deadsfu.

use std::time::{Duration, Instant};

use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey};
use openssl::sign::{Signer, Verifier};
use str0m::crypto::dtls::{DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion};

use crate::dtls_openssl::SharedContextDtls;

/// Mean CPU time of one operation, each measured on this thread only.
#[derive(Debug, Clone, Copy)]
pub struct DtlsCost {
    /// The server's side of a whole handshake with a connection made from the shared context:
    /// every datagram it takes and every one it gives, to the exported SRTP keys.
    pub server_handshake: Duration,
    /// The client's side of the same handshakes (the peer's cost, for comparison).
    pub client_handshake: Duration,
    /// ECDSA P-256 signature (the ServerKeyExchange).
    pub ecdsa_sign: Duration,
    /// ECDSA P-256 verification (the client's CertificateVerify).
    pub ecdsa_verify: Duration,
    /// An X25519 key pair made and its public key encoded (the server's ECDHE share: the
    /// group these connections, browsers and GStreamer's OpenSSL negotiate first).
    pub ecdh_keygen: Duration,
    /// The X25519 shared secret from the client's share as it comes on the wire.
    pub ecdh_derive: Duration,
}

impl DtlsCost {
    /// The public-key work of the server's side of a handshake: one key pair, one shared
    /// secret, one signature and one verification.
    pub fn public_key_work(&self) -> Duration {
        self.ecdsa_sign + self.ecdsa_verify + self.ecdh_keygen + self.ecdh_derive
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of `f`, added to `total`.
fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = thread_cpu();
    let out = f();
    *total += thread_cpu() - start;
    out
}

/// Everything `conn` has to send now; whether it is connected (its keys exported).
fn datagrams_out(conn: &mut dyn DtlsInstance, out: &mut Vec<Vec<u8>>) -> bool {
    let mut buf = [0u8; 2048];
    let mut keys = false;
    loop {
        match conn.poll_output(&mut buf) {
            DtlsOutput::Packet(p) => out.push(p.to_vec()),
            DtlsOutput::KeyingMaterial(..) => keys = true,
            DtlsOutput::Timeout(_) => return keys,
            _ => {}
        }
    }
}

/// One handshake between two fresh connections; adds each side's CPU time to its total.
fn one_handshake(
    provider: &SharedContextDtls,
    certs: (&str0m::config::DtlsCert, &str0m::config::DtlsCert),
    client_cpu: &mut Duration,
    server_cpu: &mut Duration,
) {
    let now = Instant::now();
    let mut client = timed(client_cpu, || {
        let mut c = provider
            .new_dtls(certs.0, now, DtlsVersion::Dtls12, None)
            .expect("a client connection");
        c.set_active(true);
        c.handle_packet(&[]).expect("the client starts");
        c
    });
    let mut server = timed(server_cpu, || {
        let mut s = provider
            .new_dtls(certs.1, now, DtlsVersion::Dtls12, None)
            .expect("a server connection");
        s.set_active(false);
        s
    });
    let (mut to_server, mut to_client): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
    let (mut client_done, mut server_done) = (false, false);
    for _ in 0..10 {
        client_done |= timed(client_cpu, || {
            for p in to_client.drain(..) {
                client.handle_packet(&p).expect("the client takes it");
            }
            datagrams_out(client.as_mut(), &mut to_server)
        });
        server_done |= timed(server_cpu, || {
            for p in to_server.drain(..) {
                server.handle_packet(&p).expect("the server takes it");
            }
            datagrams_out(server.as_mut(), &mut to_client)
        });
        if client_done && server_done && to_client.is_empty() {
            break;
        }
    }
    assert!(client_done && server_done, "the handshake completes");
    timed(client_cpu, || drop(client));
    timed(server_cpu, || drop(server));
}

/// Mean CPU time of `op` over `rounds`.
fn mean_of(rounds: u32, mut op: impl FnMut()) -> Duration {
    let start = thread_cpu();
    for _ in 0..rounds {
        op();
    }
    (thread_cpu() - start) / rounds
}

/// Measures `rounds` handshakes and as many of each public-key operation.
pub fn measure(rounds: u32) -> DtlsCost {
    let provider = SharedContextDtls::new(str0m::crypto::from_feature_flags().dtls_provider);
    let client_cert = provider.generate_certificate().expect("a certificate");
    let server_cert = provider.generate_certificate().expect("a certificate");
    // The first handshake builds the contexts; it is not counted.
    let (mut client_cpu, mut server_cpu) = (Duration::ZERO, Duration::ZERO);
    one_handshake(
        &provider,
        (&client_cert, &server_cert),
        &mut client_cpu,
        &mut server_cpu,
    );
    let (mut client_cpu, mut server_cpu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        one_handshake(
            &provider,
            (&client_cert, &server_cert),
            &mut client_cpu,
            &mut server_cpu,
        );
    }

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("a key")).expect("a key");
    // About the size of what a ServerKeyExchange signs (two randoms and the share).
    let message = [7u8; 101];
    let signature = {
        let mut signer = Signer::new(MessageDigest::sha256(), &key).expect("a signer");
        signer.sign_oneshot_to_vec(&message).expect("a signature")
    };
    let exchange_key = PKey::generate_x25519().expect("a key");
    let peer_share = PKey::generate_x25519()
        .and_then(|k| k.raw_public_key())
        .expect("a share");
    DtlsCost {
        server_handshake: server_cpu / rounds,
        client_handshake: client_cpu / rounds,
        ecdsa_sign: mean_of(rounds, || {
            let mut signer = Signer::new(MessageDigest::sha256(), &key).expect("a signer");
            signer.sign_oneshot_to_vec(&message).expect("a signature");
        }),
        ecdsa_verify: mean_of(rounds, || {
            let mut verifier = Verifier::new(MessageDigest::sha256(), &key).expect("a verifier");
            assert!(
                verifier
                    .verify_oneshot(&signature, &message)
                    .expect("checked")
            );
        }),
        ecdh_keygen: mean_of(rounds, || {
            let share = PKey::generate_x25519().expect("a key");
            share.raw_public_key().expect("encoded");
        }),
        ecdh_derive: mean_of(rounds, || {
            let share = PKey::public_key_from_raw_bytes(&peer_share, Id::X25519).expect("a share");
            let mut deriver = Deriver::new(&exchange_key).expect("a deriver");
            deriver.set_peer(&share).expect("the peer's share");
            deriver.derive_to_vec().expect("a secret");
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_handshakes_complete_and_every_figure_is_counted() {
        // `one_handshake` asserts that both sides reach their SRTP keys.
        let cost = measure(3);
        for figure in [
            cost.server_handshake,
            cost.client_handshake,
            cost.ecdsa_sign,
            cost.ecdsa_verify,
            cost.ecdh_keygen,
            cost.ecdh_derive,
        ] {
            assert!(figure > Duration::ZERO, "{cost:?}");
        }
        assert_eq!(
            cost.public_key_work(),
            cost.ecdsa_sign + cost.ecdsa_verify + cost.ecdh_keygen + cost.ecdh_derive
        );
    }
}
