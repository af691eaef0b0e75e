#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skuld_fuzz::http_request_bytes(data));
