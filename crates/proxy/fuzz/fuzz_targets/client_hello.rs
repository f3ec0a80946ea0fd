#![no_main]

use libfuzzer_sys::fuzz_target;

// The ClientHello reader, fed arbitrary bytes in arbitrary pieces.
fuzz_target!(|data: &[u8]| deadsfu_proxy::client_hello::fuzz(data));
