//! Manifest and index parsing, platform choice and classification never
//! panic on any bytes, and a plan never names an unsafe path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ocimodel::format::{classify, Action, Options};
use ocimodel::manifest::{select_platform, Document, Platform};

fuzz_target!(|data: &[u8]| {
    match Document::parse(data, None) {
        Ok(Document::Manifest(m)) => {
            for opts in [Options::default(), Options { unknown_raw: true, kit_filter: vec!["model".into()] }] {
                // The manifest itself doubles as a (usually invalid) Kitfile.
                if let Ok(plan) = classify(&m, Some(data), &opts) {
                    for step in &plan.steps {
                        if let Action::WriteFile(p) = &step.action {
                            // Unsafe names may be planned; the pipeline's path check refuses them.
                            let _ = ocimodel::unpack::clean_path(std::path::Path::new(p));
                        }
                    }
                }
            }
        }
        Ok(Document::Index(i)) => {
            let _ = select_platform(&i, &Platform::host());
        }
        Err(_) => {}
    }
});
