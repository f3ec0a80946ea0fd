//! Prints, as one JSON line, what the server's side of a DTLS handshake costs in memory with
//! deadsfu's DTLS (OpenSSL, one shared context) and the bare public-key work inside it, both
//! by the same OpenSSL on this machine: `cargo run --release -p deadsfu-rtc --example
//! dtls_handshake_cost [ROUNDS]` (default 2,000). `bench/join_storm.py` sets a join's CPU
//! against both.

fn main() {
    let rounds = std::env::args()
        .nth(1)
        .map(|r| r.parse().expect("ROUNDS is a number"))
        .unwrap_or(2000);
    let cost = deadsfu_rtc::dtls_cost::measure(rounds);
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    println!(
        "{{\"rounds\": {rounds}, \"server_handshake_us\": {:.1}, \"client_handshake_us\": {:.1}, \
         \"ecdsa_sign_us\": {:.1}, \"ecdsa_verify_us\": {:.1}, \"ecdh_keygen_us\": {:.1}, \
         \"ecdh_derive_us\": {:.1}, \"public_key_work_us\": {:.1}}}",
        us(cost.server_handshake),
        us(cost.client_handshake),
        us(cost.ecdsa_sign),
        us(cost.ecdsa_verify),
        us(cost.ecdh_keygen),
        us(cost.ecdh_derive),
        us(cost.public_key_work()),
    );
}
