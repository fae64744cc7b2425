#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(id) = routing::SessionId::parse(data) {
        assert!((33..=256).contains(&id.as_str().len()));
    }
});
