//! The bundled OCI layout (the README's demo), layout selectors, KServe's
//! unrelated env, JSON logs, and the static binary in an empty root.

mod common;
#[path = "support/static_binary.rs"]
mod static_binary;

use std::fs;
use std::process::Command;

use common::*;

const DEMO_DIGEST: &str = "sha256:52154286252844566c1028dc579c5a157e7a012e41e683e35ded7a5410fe60aa";

fn layout_uri(suffix: &str) -> String {
    format!(
        "oci-layout://{}{suffix}",
        repo_root().join("examples/mnist").display()
    )
}

#[test]
fn demo_layout_installs_the_seed_model() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    let run = Ocimodel::new().pull(&layout_uri(""), &dest);
    run.assert_ok();
    assert!(run.stdout().starts_with(DEMO_DIGEST), "{}", run.stdout());
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    let m = marker(&dest);
    assert_eq!(m["digest"], DEMO_DIGEST);
    assert_eq!(m["format"], "oras");
    assert_eq!(mode(&dest.join(MNIST_TITLE)), 0o664);
}

#[test]
fn layout_selectors() {
    let work = tempfile::tempdir().unwrap();
    for (i, suffix) in [":v1".to_string(), format!("@{DEMO_DIGEST}")]
        .iter()
        .enumerate()
    {
        let dest = work.path().join(format!("d{i}"));
        Ocimodel::new().pull(&layout_uri(suffix), &dest).assert_ok();
        assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    }
    let dest = work.path().join("bad");
    Ocimodel::new()
        .pull(&layout_uri(":v9"), &dest)
        .assert_fails_with(&["tag 'v9' not found", "tags: v1"]);
    Ocimodel::new()
        .run(&["oci-layout:///nonexistent/layout", dest.to_str().unwrap()])
        .assert_fails_with(&["/nonexistent/layout is not an OCI image layout"]);
}

#[test]
fn tolerates_kserve_env_and_logs_json() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    let run = Ocimodel::new()
        .env("HF_HUB_ENABLE_HF_TRANSFER", "1")
        .env("HF_XET_HIGH_PERFORMANCE", "1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("STORAGE_CONFIG", "{not json")
        .env("CONFIDENTIAL_ENABLED", "false")
        .env("OCIMODEL_LOG_FORMAT", "json")
        .pull(&layout_uri(""), &dest);
    run.assert_ok();
    let lines: Vec<serde_json::Value> = run
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(
        |l| l["fields"]["message"] == "model installed" && l["fields"]["digest"] == DEMO_DIGEST
    ));
}

/// The binary needs nothing from its root filesystem: no libc, no CA store,
/// no /dev, no /etc. Run it in an empty chroot (as FROM scratch would).
#[test]
fn static_binary_runs_in_an_empty_root() {
    require_root("chroot needs root");
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let root = tempfile::tempdir().unwrap();
    fs::copy(
        static_binary::static_ocimodel(),
        root.path().join("ocimodel"),
    )
    .unwrap();
    copy_dir(
        &repo_root().join("examples/mnist"),
        &root.path().join("layout"),
    );
    let out = Command::new("chroot")
        .arg(root.path())
        .args([
            "/ocimodel",
            "oci-layout:///layout",
            "/mnt/models/a",
            &format!("ocimodel://{}/models/mnist:v1", reg.addr),
            "/mnt/models/b",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OCIMODEL_INSECURE_REGISTRIES", &reg.addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "in an empty root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in ["a", "b"] {
        assert_eq!(
            sha256_file(&root.path().join("mnt/models").join(d).join(MNIST_TITLE)),
            MNIST_SHA256
        );
    }
    let entries: Vec<String> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !entries.contains(&"dev".to_string()),
        "nothing written outside DEST: {entries:?}"
    );
}

/// `cargo run`, `cargo build` and `cargo install --path .` build for the
/// host (macOS, arm64): no target is forced, and no static flags reach
/// build scripts and proc-macros; scripts/build-static.sh makes the static
/// binary for the image.
#[test]
fn cargo_builds_for_the_host_by_default() {
    let config = repo_root().join(".cargo/config.toml");
    if let Ok(text) = fs::read_to_string(&config) {
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert!(
            v.get("build").and_then(|b| b.get("target")).is_none(),
            "{} forces a target",
            config.display()
        );
        assert!(!text.contains("crt-static"), "{text}");
    }
    assert!(static_binary::is_static(&static_binary::static_ocimodel()));
}

/// A layout whose model blob is a FIFO fed slowly: the pull takes a few
/// seconds and must log progress lines on the configured interval.
#[test]
fn long_pulls_log_progress() {
    let work = tempfile::tempdir().unwrap();
    let (uri, writer) = slow_layout(
        &work.path().join("layout"),
        5,
        std::time::Duration::from_millis(700),
    );
    let dest = work.path().join("models");
    let run = Ocimodel::new()
        .env("OCIMODEL_PROGRESS_INTERVAL", "1")
        .pull(&uri, &dest);
    writer.join().unwrap();
    run.assert_ok();
    let stderr = run.stderr();
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains("progress:")).collect();
    assert!(
        progress.len() >= 2,
        "expected progress lines, got:\n{stderr}"
    );
    assert!(
        progress[0].contains("of 0.4 MiB") && progress[0].contains("/s, ETA"),
        "{}",
        progress[0]
    );
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
}

/// OpenShift: the initializer runs as an arbitrary UID in group 0 and the
/// model server as another one; the server must read every file.
#[test]
fn arbitrary_uid_in_group_zero_installs_and_another_reads() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require_root("switching UIDs needs root");
    let reg = Registry::start(Auth::None);
    let (layout, _) = modelcar_layout(false);
    reg.skopeo_push(layout.path(), "v1", "models/car:v1");
    // The volume: group 0, group-writable (as an emptyDir with fsGroup 0).
    let volume = tempfile::tempdir().unwrap();
    fs::set_permissions(volume.path(), fs::Permissions::from_mode(0o775)).unwrap();
    std::os::unix::fs::chown(volume.path(), Some(0), Some(0)).unwrap();
    let dest = volume.path().join("models");
    let termination = volume.path().join("termination-log");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_TERMINATION_LOG", &termination)
        .env("HOME", "/nonexistent")
        .run_as(1000930000, 0)
        .pull(&format!("ocimodel://{}/models/car:v1", reg.addr), &dest)
        .assert_ok();
    let meta = fs::metadata(dest.join("1/model.onnx")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000930000);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 0);

    // Another UID in group 0 reads (and hashes) every installed file.
    let files: Vec<String> = marker(&dest)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| dest.join(f["path"].as_str().unwrap()).display().to_string())
        .collect();
    assert_eq!(files.len(), 8);
    let out = Command::new("sha256sum")
        .args(&files)
        .uid(1000940000)
        .gid(0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "another UID cannot read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(MNIST_SHA256));
}

#[test]
fn owner_setting_chowns_the_tree() {
    require_root("chown needs root");
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    Ocimodel::new()
        .env("OCIMODEL_OWNER", "4242:0")
        .pull(&layout_uri(""), &dest)
        .assert_ok();
    for p in [dest.join(MNIST_TITLE), dest.join("v1.nb20231206162408")] {
        let meta = fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&meta),
                std::os::unix::fs::MetadataExt::gid(&meta)
            ),
            (4242, 0),
            "{}",
            p.display()
        );
    }
    Ocimodel::new()
        .env("OCIMODEL_OWNER", "nobody")
        .pull(&layout_uri(""), &work.path().join("x"))
        .assert_fails_with(&["OCIMODEL_OWNER must be uid:gid"]);
}

/// Files of one model are written concurrently; many in one new directory
/// must not trip over each other creating it (mkdir's EEXIST from another
/// writer is not an error: this failed about one pull in two with two files).
#[test]
fn many_files_in_one_new_directory_install_concurrently() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    fs::create_dir_all(model.join("a/b")).unwrap();
    for i in 0..16 {
        fs::write(
            model.join(format!("a/b/shard-{i:02}.bin")),
            vec![i as u8; 4096],
        )
        .unwrap();
    }
    let uri = push_layout(&model, &work.path().join("layout"), "oras");
    for round in 0..8 {
        let dest = work.path().join(format!("dest-{round}"));
        Ocimodel::new().pull(&uri, &dest).assert_ok();
        assert_eq!(fs::read_dir(dest.join("a/b")).unwrap().count(), 16);
    }
}

/// `OCIMODEL_HF_REPO`: the model as a repository of a Hugging Face hub
/// cache. The real `huggingface_hub` (offline, DEST as `HF_HUB_CACHE`) finds
/// the snapshot by repository id, downloads nothing, reads the file, and its
/// cache scan sees the repository, revision and `main` ref. `check` covers
/// the ref too; another id replaces the install; a bad id installs nothing.
#[test]
fn hf_repo_installs_a_hub_cache_huggingface_hub_reads() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("hub");
    let pull = |repo: &str| {
        Ocimodel::new()
            .env("OCIMODEL_HF_REPO", repo)
            .pull(&layout_uri(""), &dest)
    };
    pull("acme/mnist").assert_ok();
    // The revision: the digest's first 40 hex digits.
    let revision = &DEMO_DIGEST["sha256:".len()..][..40];
    let snapshot = dest.join(format!("models--acme--mnist/snapshots/{revision}"));
    assert_eq!(sha256_file(&snapshot.join(MNIST_TITLE)), MNIST_SHA256);
    assert_eq!(mode(&snapshot.join(MNIST_TITLE)), 0o664);
    assert_eq!(
        fs::read_to_string(dest.join("models--acme--mnist/refs/main")).unwrap(),
        revision
    );
    let m = marker(&dest);
    assert_eq!(m["hfRepo"], "acme/mnist");
    assert_eq!(m["entries"], serde_json::json!(["models--acme--mnist"]));

    let script = format!(
        r#"
import hashlib, json, sys
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download
snap = snapshot_download("acme/mnist")
path = hf_hub_download("acme/mnist", {MNIST_TITLE:?})
repos = [(r.repo_id, sorted((v.commit_hash, sorted(v.refs)) for v in r.revisions)) for r in scan_cache_dir().repos]
print(json.dumps({{"snapshot": snap, "path": path, "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(), "repos": repos}}))
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &dest)
        .env("HF_HOME", work.path().join("hf-home"))
        .output()
        .unwrap();
    assert!(out.status.success(), "huggingface_hub: {out:?}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["snapshot"], snapshot.display().to_string());
    assert_eq!(
        seen["path"],
        snapshot.join(MNIST_TITLE).display().to_string()
    );
    assert_eq!(seen["sha256"], MNIST_SHA256);
    assert_eq!(
        seen["repos"],
        serde_json::json!([["acme/mnist", [[revision, ["main"]]]]])
    );

    // A rerun is up to date; check re-hashes the files and the ref.
    let again = pull("acme/mnist");
    again.assert_ok();
    assert!(
        again.stderr().contains("up_to_date=true"),
        "{}",
        again.stderr()
    );
    let check = || Ocimodel::new().run(&["check", dest.to_str().unwrap()]);
    check().assert_ok();
    fs::write(dest.join("models--acme--mnist/refs/main"), "0".repeat(40)).unwrap();
    let changed = check();
    assert_eq!(changed.code(), 1);
    assert!(
        changed
            .stdout()
            .contains("models--acme--mnist/refs/main: expected 40 bytes"),
        "{}",
        changed.stdout()
    );

    // Another id: the new repository replaces the old one.
    pull("other/digits").assert_ok();
    assert!(!dest.join("models--acme--mnist").exists());
    assert_eq!(
        sha256_file(
            &dest
                .join(format!("models--other--digits/snapshots/{revision}"))
                .join(MNIST_TITLE)
        ),
        MNIST_SHA256
    );
    // Not a repository id: refused before anything is fetched.
    let bad = work.path().join("bad");
    Ocimodel::new()
        .env("OCIMODEL_HF_REPO", "acme/../mnist")
        .pull(&layout_uri(""), &bad)
        .assert_fails_with(&["OCIMODEL_HF_REPO", "is not a Hugging Face repository id"]);
    assert!(!bad.join(".ocimodel.json").exists());
}
