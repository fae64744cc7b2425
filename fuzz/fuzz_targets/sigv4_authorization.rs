#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| auth::fuzzing::sigv4_authorization(data));
