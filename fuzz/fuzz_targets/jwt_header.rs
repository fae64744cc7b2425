#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| auth::fuzzing::jwt_header(data));
