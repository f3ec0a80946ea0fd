#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    deadsfu_rtc::fuzz::dtls_passive(data);
});
