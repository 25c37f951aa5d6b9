//! Reference parsing never panics, and what parses prints back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ocimodel::reference::Target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(t) = Target::parse(s) {
        let again = Target::parse(&t.to_string()).expect("a printed reference parses");
        assert_eq!(again.to_string(), t.to_string());
    }
});
