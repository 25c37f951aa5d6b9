//! The tar extractor on arbitrary layers, as an image changeset and as an
//! artifact: it may refuse, but nothing may ever appear outside its root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ocimodel::manifest::Compression;
use ocimodel::select::Filter;
use ocimodel::unpack::{Subtree, Tree};

fuzz_target!(|data: &[u8]| {
    // tmpfs when there is one: the "filesystem" is memory.
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).unwrap();
    for mode in 0..2 {
        let root = dir.path().join(format!("root{mode}"));
        std::fs::create_dir(&root).unwrap();
        let mut tree = Tree::new(root, Filter::default());
        let ok = if mode == 0 {
            tree.apply_tar(&mut &data[..], Compression::None, &Subtree::parse("/models").unwrap())
        } else {
            tree.extract_tar(&mut &data[..], Compression::None, &[], None, None)
        };
        if ok.is_ok() {
            let _ = tree.finish(None);
        }
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec!["root0", "root1"], "something was written outside the tree");
});
