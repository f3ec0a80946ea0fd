//! `deadsfu proxy`: the cluster's front line (DESIGN.md §1, §2). It never decrypts HTTPS and
//! never touches WebRTC media.
//!
//! - `client_hello`: reads a TLS ClientHello whole (sans-IO) for its SNI and ALPN.
//! - `route_table`: plain data (nodes, hostnames, FTL channels) and the routing decisions;
//!   `route_cache` keeps it current from Redis (events, periodic resync, survives outages).
//! - `https_front`: accept, limits, hello, route, connect, PROXY v2 header, replay, `pipe`.
//! - `http_front`: port 80: ACME HTTP-01 answers from Redis, 308 to HTTPS for the rest.
//! - `ftl`: the FTL proxy: answers the handshake itself, opens its own session to the SFU,
//!   relays control and UDP.
//! - `admin`: `/metrics`, `/healthz`, `/readyz`.

pub mod client_hello;
pub mod ftl;
pub mod ftl_routes;
mod ftl_wiring;
pub mod http_front;
pub mod https_front;
pub mod net_util;
pub mod pipe;
pub mod route_cache;
pub mod route_table;
mod run;

pub use run::{ProxyArgs, run};
