#![no_main]

use libfuzzer_sys::fuzz_target;

// The control codec and server state machine, fed control bytes, datagrams, timeouts and
// directory answers chosen by the input.
fuzz_target!(|data: &[u8]| {
    deadsfu_ftl::fuzz::server_session(data);
});
