//! Pulls from a real registry: the seed's ORAS artifact and a modelcar image,
//! by tag and by digest, several pairs at once, reruns and replacements.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn assert_mnist_installed(dest: &Path) {
    let expected: Vec<(String, char)> = vec![
        ("v1.nb20231206162408".into(), 'd'),
        (MNIST_TITLE.into(), 'f'),
    ];
    assert_eq!(tree(dest).into_iter().collect::<Vec<_>>(), expected);
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert_eq!(mode(&dest.join(MNIST_TITLE)), 0o664);
    assert_eq!(mode(&dest.join("v1.nb20231206162408")), 0o775);
    // The marker directs deletions, so nobody but its writer edits it in
    // place; another UID in group 0 replaces it by rename.
    assert_eq!(mode(&dest.join(".ocimodel.json")), 0o644);
}

#[test]
fn oras_artifact_by_tag_and_by_digest() {
    let reg = Registry::start(Auth::None);
    let pushed = reg.oras_push_mnist("models/mnist:v1");
    assert_eq!(
        pushed["artifactType"],
        "application/vnd.unknown.artifact.v1"
    );
    let digest = reg.digest_of("models/mnist", "v1");
    let work = tempfile::tempdir().unwrap();

    // By tag, through the KServe scheme, into a DEST that does not exist yet.
    let by_tag = work.path().join("mnt/models");
    let uri = format!("ocimodel://{}/models/mnist:v1", reg.addr);
    let run = Ocimodel::for_registry(&reg).pull(&uri, &by_tag);
    run.assert_ok();
    assert_mnist_installed(&by_tag);
    assert_eq!(
        run.stdout().trim(),
        format!("{digest} {uri} {}", by_tag.display())
    );
    assert!(run.termination.contains(&digest), "{}", run.termination);
    assert!(run.stderr().contains("resolved reference to digest"));
    let m = marker(&by_tag);
    assert_eq!(m["digest"], digest.as_str());
    assert_eq!(m["format"], "oras");
    assert_eq!(m["source"], uri.as_str());
    assert_eq!(
        m["reference"],
        format!("{}/models/mnist:v1@{digest}", reg.addr).as_str()
    );
    assert_eq!(m["files"][0]["path"], MNIST_TITLE);
    assert_eq!(m["files"][0]["size"], 421403);
    assert_eq!(
        m["files"][0]["digest"],
        format!("sha256:{MNIST_SHA256}").as_str()
    );
    assert!(m["installedAt"].as_str().unwrap().ends_with('Z'));
    // Nothing left behind in the bookkeeping but the lock.
    let book: Vec<_> = fs::read_dir(by_tag.join(".ocimodel"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(book, vec!["lock"]);

    // By digest, plain reference, through the `pull` subcommand.
    let by_digest = work.path().join("by-digest");
    let uri = format!("{}/models/mnist@{digest}", reg.addr);
    Ocimodel::for_registry(&reg)
        .run(&["pull", &uri, by_digest.to_str().unwrap()])
        .assert_ok();
    assert_mnist_installed(&by_digest);
    assert_eq!(marker(&by_digest)["digest"], digest.as_str());
}

fn assert_modelcar_installed(dest: &Path) {
    let expected: Vec<(&str, char)> = vec![
        ("1", 'd'),
        ("1/model.onnx", 'f'),
        ("abs", 'l'),
        ("config.json", 'f'),
        ("extra", 'd'),
        ("extra/weights.bin", 'f'),
        ("hard.onnx", 'f'),
        ("latest", 'l'),
        ("private.bin", 'f'),
        ("run.sh", 'f'),
        ("setuid.bin", 'f'),
        ("tokenizer", 'd'),
        ("tokenizer/merges.txt", 'f'),
    ];
    let got = tree(dest);
    let got: Vec<(&str, char)> = got.iter().map(|(p, k)| (p.as_str(), *k)).collect();
    assert_eq!(got, expected, "old.txt whited out, tokenizer/vocab.txt hidden by the opaque whiteout, etc/ outside /models");
    assert_eq!(sha256_file(&dest.join("1/model.onnx")), MNIST_SHA256);
    assert_eq!(sha256_file(&dest.join("hard.onnx")), MNIST_SHA256);
    assert_eq!(
        fs::read(dest.join("config.json")).unwrap(),
        b"{\"name\": \"mnist\", \"version\": 1}\n"
    );
    assert_eq!(
        fs::read(dest.join("tokenizer/merges.txt")).unwrap(),
        b"a b\n"
    );
    let weights: Vec<u8> = (0..65536u32).map(|i| ((i * 7 + 3) % 251) as u8).collect();
    assert_eq!(fs::read(dest.join("extra/weights.bin")).unwrap(), weights);
    assert_eq!(
        fs::read_link(dest.join("latest")).unwrap(),
        Path::new("1/model.onnx")
    );
    // An absolute link inside /models is rewritten to stay inside DEST.
    assert_eq!(
        fs::read_link(dest.join("abs")).unwrap(),
        Path::new("config.json")
    );
    assert_eq!(
        fs::read(dest.join("abs")).unwrap(),
        fs::read(dest.join("config.json")).unwrap()
    );
    // Modes: group 0 can read everything; setuid dropped; private file opened up.
    assert_eq!(mode(&dest.join("run.sh")), 0o775);
    assert_eq!(mode(&dest.join("setuid.bin")), 0o775);
    assert_eq!(mode(&dest.join("private.bin")), 0o664);
    assert_eq!(
        mode(&dest.join("1")),
        0o775,
        "0700 directory opened to group and others"
    );
    assert_eq!(mode(&dest.join("1/model.onnx")), 0o664);
}

#[test]
fn modelcar_image_with_gzip_zstd_and_whiteouts() {
    let reg = Registry::start(Auth::None);
    let (layout, digest) = modelcar_layout(false);
    reg.skopeo_push(layout.path(), "v1", "models/car:v1");
    assert_eq!(
        reg.digest_of("models/car", "v1"),
        digest,
        "skopeo kept the digest"
    );
    let work = tempfile::tempdir().unwrap();

    let by_tag = work.path().join("tag");
    Ocimodel::for_registry(&reg)
        .pull(&format!("oci://{}/models/car:v1", reg.addr), &by_tag)
        .assert_ok();
    assert_modelcar_installed(&by_tag);
    let m = marker(&by_tag);
    assert_eq!(m["format"], "image");
    assert_eq!(m["subpath"], "/models");
    assert_eq!(m["digest"], digest.as_str());
    assert_eq!(m["links"]["latest"], "1/model.onnx");

    let by_digest = work.path().join("digest");
    Ocimodel::for_registry(&reg)
        .pull(&format!("{}/models/car@{digest}", reg.addr), &by_digest)
        .assert_ok();
    assert_modelcar_installed(&by_digest);

    // The whole image root when asked.
    let all = work.path().join("all");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_SUBPATH", "/")
        .pull(&format!("{}/models/car@{digest}", reg.addr), &all)
        .assert_ok();
    assert_eq!(fs::read(all.join("etc/hostname")).unwrap(), b"modelcar\n");
    assert_eq!(
        fs::read_link(all.join("models/abs")).unwrap(),
        Path::new("config.json")
    );
    assert_eq!(marker(&all)["subpath"], "/");
}

#[test]
fn several_pairs_in_one_call() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let (layout, _) = modelcar_layout(false);
    reg.skopeo_push(layout.path(), "v1", "models/car:v1");
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("mnt/models/a");
    let b = work.path().join("mnt/models/b");
    let run = Ocimodel::for_registry(&reg).run(&[
        &format!("ocimodel://{}/models/mnist:v1", reg.addr),
        a.to_str().unwrap(),
        &format!("ocimodel://{}/models/car:v1", reg.addr),
        b.to_str().unwrap(),
    ]);
    run.assert_ok();
    assert_mnist_installed(&a);
    assert_modelcar_installed(&b);
    assert_eq!(run.stdout().lines().count(), 2);
    assert_eq!(run.termination.lines().count(), 1);
    assert!(run.termination.contains("mnist") && run.termination.contains("car"));
}

#[test]
fn rerun_on_complete_dest_needs_no_registry() {
    let (reg, digest) = Registry::with_mnist();
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    let uri = format!("ocimodel://{}/models/mnist@{digest}", reg.addr);
    Ocimodel::for_registry(&reg).pull(&uri, &dest).assert_ok();
    let installed_at = marker(&dest)["installedAt"].clone();
    let addr = reg.addr.clone();
    drop(reg);

    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .pull(&uri, &dest);
    run.assert_ok();
    assert!(
        run.stderr().contains("already installed"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        run.stdout().trim(),
        format!("{digest} {uri} {}", dest.display())
    );
    assert_eq!(
        marker(&dest)["installedAt"],
        installed_at,
        "marker untouched"
    );
    assert_mnist_installed(&dest);

    // A damaged install is not taken as complete: with the registry gone the
    // rerun must try to fetch (and so fail, clearly).
    fs::remove_file(dest.join(MNIST_TITLE)).unwrap();
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .pull(&uri, &dest);
    run.assert_fails_with(&["cannot reach registry", &addr]);
}

#[test]
fn another_model_replaces_the_content() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let (layout, car_digest) = modelcar_layout(false);
    reg.skopeo_push(layout.path(), "v1", "models/car:v1");
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    // A file the user put there, not ours: must survive.
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("README.user"), b"mine").unwrap();

    reg.pull("models/mnist:v1", &dest).assert_ok();
    assert!(dest.join(MNIST_TITLE).is_file());
    reg.pull("models/car:v1", &dest).assert_ok();
    assert!(
        !dest.join("v1.nb20231206162408").exists(),
        "the old model is gone"
    );
    assert_eq!(sha256_file(&dest.join("1/model.onnx")), MNIST_SHA256);
    assert_eq!(fs::read(dest.join("README.user")).unwrap(), b"mine");
    assert_eq!(marker(&dest)["digest"], car_digest.as_str());
}

#[test]
fn require_digest_refuses_tags() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_REQUIRE_DIGEST", "true")
        .pull(&format!("{}/models/mnist:v1", reg.addr), &dest)
        .assert_fails_with(&["no digest", "OCIMODEL_REQUIRE_DIGEST"]);
    assert!(model_files(&dest).is_empty());
}

#[test]
fn index_picks_the_platform() {
    let reg = Registry::start(Auth::None);
    let (layout, index_digest) = modelcar_layout_with(&["--index"]);
    reg.skopeo_push(layout.path(), "v1", "models/multi:v1");
    assert_eq!(reg.digest_of("models/multi", "v1"), index_digest);
    let uri = format!("{}/models/multi:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();

    let amd = work.path().join("amd64");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_PLATFORM", "linux/amd64")
        .pull(&uri, &amd)
        .assert_ok();
    assert_modelcar_installed(&amd);
    let m = marker(&amd);
    assert_eq!(
        m["digest"],
        index_digest.as_str(),
        "the marker keeps the digest the reference named"
    );
    assert!(m["manifestDigest"].as_str().unwrap().starts_with("sha256:"));
    assert_ne!(m["manifestDigest"], m["digest"]);

    // The flag form, through `pull`.
    let arm_flag = work.path().join("arm64-flag");
    Ocimodel::for_registry(&reg)
        .run(&[
            "pull",
            "--platform",
            "linux/arm64",
            &uri,
            arm_flag.to_str().unwrap(),
        ])
        .assert_ok();
    assert_eq!(fs::read(arm_flag.join("arch.txt")).unwrap(), b"arm64\n");

    let arm = work.path().join("arm64-env");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_PLATFORM", "linux/arm64")
        .pull(&uri, &arm)
        .assert_ok();
    assert_eq!(tree(&arm).into_keys().collect::<Vec<_>>(), vec!["arch.txt"]);
    assert_eq!(fs::read(arm.join("arch.txt")).unwrap(), b"arm64\n");

    let none = work.path().join("s390x");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_PLATFORM", "linux/s390x")
        .pull(&uri, &none)
        .assert_fails_with(&[
            "no manifest for platform linux/s390x",
            "linux/arm64/v8, linux/amd64",
            "OCIMODEL_PLATFORM",
        ]);
}

#[test]
fn docker_schema2_image() {
    let reg = Registry::start(Auth::None);
    let (layout, _) = modelcar_layout_with(&["--no-zstd"]);
    // skopeo converts to Docker media types (manifest v2, rootfs.diff.tar.gzip).
    reg.skopeo_push_with(
        layout.path(),
        "v1",
        "models/docker:v1",
        &["--format", "v2s2"],
    );
    let resp = http_get(
        &reg.addr,
        "/v2/models/docker/manifests/v1",
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
    );
    let manifest: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let dest = tempfile::tempdir().unwrap();
    reg.pull("models/docker:v1", dest.path()).assert_ok();
    assert_modelcar_installed(dest.path());
}
