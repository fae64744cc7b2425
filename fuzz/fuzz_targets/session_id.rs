#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| routing::fuzzing::session_id(data));
