//! One model, four sources — registry, OCI layout, OCI archive, Docker
//! archive — installs the same tree with the same file list in the marker.

mod common;

use std::fs;
use std::process::Command;

use common::*;

fn skopeo_copy(from: String, to: String, extra: &[&str]) {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .args(extra)
        .arg(&from)
        .arg(&to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {from} {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn registry_layout_oci_archive_and_docker_archive_agree() {
    let reg = Registry::start(Auth::None);
    // gzip only: Docker archives cannot carry zstd layers.
    let (layout, digest) = modelcar_layout_with(&["--no-zstd"]);
    reg.skopeo_push(layout.path(), "v1", "models/car:v1");
    let work = tempfile::tempdir().unwrap();
    let oci_tar = work.path().join("car-oci.tar");
    let docker_tar = work.path().join("car-docker.tar");
    skopeo_copy(
        format!("oci:{}:v1", layout.path().display()),
        format!("oci-archive:{}:v1", oci_tar.display()),
        &["--preserve-digests"],
    );
    skopeo_copy(
        format!("oci:{}:v1", layout.path().display()),
        format!("docker-archive:{}:models/car:v1", docker_tar.display()),
        &[],
    );

    let sources = [
        ("registry", format!("{}/models/car:v1", reg.addr)),
        (
            "layout",
            format!("oci-layout://{}:v1", layout.path().display()),
        ),
        (
            "oci-archive",
            format!("oci-archive://{}:v1", oci_tar.display()),
        ),
        (
            "docker-archive",
            format!("docker-archive://{}:models/car:v1", docker_tar.display()),
        ),
        (
            "docker-archive-only",
            format!("docker-archive://{}", docker_tar.display()),
        ),
    ];
    let mut results = Vec::new();
    for (name, uri) in &sources {
        let dest = work.path().join(name);
        let verb = if *name == "registry" {
            "pull"
        } else {
            "unpack"
        };
        let run = Ocimodel::for_registry(&reg).run(&[verb, uri, dest.to_str().unwrap()]);
        assert_eq!(run.code(), 0, "{name}: {}", run.stderr());
        results.push((name, tree(&dest), marker(&dest)));
    }
    let (_, first_tree, first_marker) = &results[0];
    assert!(first_tree.contains_key("1/model.onnx"));
    for (name, t, m) in &results[1..] {
        assert_eq!(t, first_tree, "{name}: tree differs");
        assert_eq!(
            m["files"], first_marker["files"],
            "{name}: file list differs"
        );
        assert_eq!(m["links"], first_marker["links"], "{name}: links differ");
        assert_eq!(m["format"], "image");
    }
    // Layouts and OCI archives keep the registry's digest; a Docker archive
    // keeps no manifest, so its digest is that of the synthesised one.
    for (name, _, m) in &results[..3] {
        assert_eq!(m["digest"], digest.as_str(), "{name}");
    }
    assert_ne!(results[3].2["digest"], digest.as_str());
    assert!(results[2].2["reference"]
        .as_str()
        .unwrap()
        .starts_with("oci-archive://"));
}

#[test]
fn the_demo_layout_as_an_archive_and_archive_errors() {
    let work = tempfile::tempdir().unwrap();
    let tarball = work.path().join("mnist.tar");
    // A plain `tar` of the layout directory: entries are "./index.json", ...
    let st = Command::new("tar")
        .arg("-C")
        .arg(repo_root().join("examples/mnist"))
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let dest = work.path().join("out");
    Ocimodel::new()
        .run(&[
            "unpack",
            &format!("oci-archive://{}", tarball.display()),
            dest.to_str().unwrap(),
        ])
        .assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);

    Ocimodel::new()
        .run(&[
            "unpack",
            &format!("oci-archive://{}:nope", tarball.display()),
            work.path().join("x").to_str().unwrap(),
        ])
        .assert_fails_with(&["tag 'nope' not found", "tags: v1"]);
    Ocimodel::new()
        .run(&[
            "unpack",
            &format!("docker-archive://{}", tarball.display()),
            work.path().join("y").to_str().unwrap(),
        ])
        .assert_fails_with(&["no manifest.json", "docker save"]);
    let not_tar = work.path().join("junk.tar");
    fs::write(&not_tar, vec![7u8; 4096]).unwrap();
    Ocimodel::new()
        .run(&[
            "unpack",
            &format!("oci-archive://{}", not_tar.display()),
            work.path().join("z").to_str().unwrap(),
        ])
        .assert_fails_with(&["junk.tar is not a tar archive"]);
}
