#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skuld_fuzz::damaged_peer_payload_bytes(data));
