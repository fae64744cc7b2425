#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| routing::fuzzing::runtime_ref(data));
