//! The node's mirror configuration (containerd hosts.toml, containers
//! registries.conf) never panics, whatever the files say, and every
//! endpoint it yields ends with the registry (or what moved it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ocimodel::mirrors::Mirrors;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("registry.example_5000_");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("hosts.toml"), text).unwrap();
    let conf = dir.path().join("registries.conf");
    std::fs::write(&conf, text).unwrap();
    for (hosts, confs) in [(Some(dir.path()), vec![]), (None, vec![conf.clone()])] {
        if let Ok(m) = Mirrors::load(hosts, &confs) {
            for digest in [false, true] {
                if let Ok(list) = m.endpoints(
                    "registry.example:5000",
                    "registry.example:5000",
                    "team/model",
                    digest,
                    "https",
                ) {
                    assert!(!list.is_empty());
                    assert!(list.last().unwrap().upstream);
                    for e in &list {
                        let _ = e.url("manifests", "v1");
                    }
                }
            }
        }
    }
});
