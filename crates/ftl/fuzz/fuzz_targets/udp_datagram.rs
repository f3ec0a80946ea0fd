#![no_main]

use libfuzzer_sys::fuzz_target;

// Classification and parsing of FTL UDP datagrams.
fuzz_target!(|data: &[u8]| deadsfu_ftl::fuzz::udp_datagram(data));
