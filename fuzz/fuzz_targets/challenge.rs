//! The WWW-Authenticate parser never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ocimodel::auth::Challenge;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(c) = Challenge::parse(s) {
            assert!(!c.scheme.is_empty());
        }
    }
});
