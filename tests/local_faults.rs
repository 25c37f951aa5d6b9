//! Local faults: a full disk, a decompression bomb, two runs racing on one
//! DEST, DEST a file or read-only, absurd manifests, and SIGKILL at random
//! moments followed by a rerun.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A tmpfs of `size` at a temp dir (unmounted on drop).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str, extra: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}{extra}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn demo_uri() -> String {
    format!(
        "oci-layout://{}",
        repo_root().join("examples/mnist").display()
    )
}

fn leftovers(dest: &Path) -> Vec<String> {
    fs::read_dir(dest.join(".ocimodel"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && n != "config.json")
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn not_enough_space_is_refused_up_front() {
    require_root("mounting a tmpfs needs root");
    let fs = Tmpfs::new("256k", "");
    let dest = fs.path().join("models");
    Ocimodel::new()
        .pull(&demo_uri(), &dest)
        .assert_fails_with(&["not enough space", "needs at least 421403 bytes", "free"]);
    assert!(model_files(&dest).is_empty());
    assert!(leftovers(&dest).is_empty());
}

/// A zstd layer of zeros: tiny to download, huge to unpack.
fn bomb_layout(dir: &Path, mib: usize) -> String {
    let spec = json!({
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "json": {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "compress": "zstd",
                    "tar": [{"name": "models/zeros.bin", "data": "\u{0}".repeat(mib << 20)}]}]
    });
    let spec_file = dir.join("spec.json");
    fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/support/make_artifact.py"))
        .arg(dir.join("layout"))
        .arg(&spec_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("oci-layout://{}", dir.join("layout").display())
}

#[test]
fn a_decompression_bomb_is_stopped() {
    let work = tempfile::tempdir().unwrap();
    let uri = bomb_layout(work.path(), 64);
    let dest = work.path().join("models");
    Ocimodel::new()
        .env("OCIMODEL_MAX_EXPANDED", "16M")
        .pull(&uri, &dest)
        .assert_fails_with(&["expands beyond OCIMODEL_MAX_EXPANDED"]);
    assert!(model_files(&dest).is_empty());
    assert!(leftovers(&dest).is_empty());
    // Within the limit the same image installs.
    Ocimodel::new()
        .env("OCIMODEL_MAX_EXPANDED", "100M")
        .pull(&uri, &dest)
        .assert_ok();
    assert_eq!(
        fs::metadata(dest.join("zeros.bin")).unwrap().len(),
        64 << 20
    );
}

#[test]
fn disk_full_midway_cleans_up() {
    require_root("mounting a tmpfs needs root");
    let work = tempfile::tempdir().unwrap();
    // The layer is a few KiB (passes the space check) but unpacks to 8 MiB.
    let uri = bomb_layout(work.path(), 8);
    let fs = Tmpfs::new("2m", "");
    let dest = fs.path().join("models");
    Ocimodel::new()
        .pull(&uri, &dest)
        .assert_fails_with(&["No space left on device"]);
    assert!(model_files(&dest).is_empty());
    assert!(
        leftovers(&dest).is_empty(),
        "staging left on a full disk: {:?}",
        leftovers(&dest)
    );
}

#[test]
fn dest_that_is_a_file_or_read_only() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("models");
    fs::write(&file, b"not a dir").unwrap();
    Ocimodel::new()
        .pull(&demo_uri(), &file)
        .assert_fails_with(&["is not a directory", "models"]);
    assert_eq!(fs::read(&file).unwrap(), b"not a dir");

    // A read-only filesystem (EROFS; mounting one needs root, as every
    // tmpfs here does), then a directory this UID may not write (EACCES;
    // root may write anywhere, so another UID runs): both are refused with
    // the same line, and nothing is left in them.
    require_root("mounts a read-only tmpfs and runs as another UID");
    let ro = Tmpfs::new("1m", ",ro");
    Ocimodel::new()
        .pull(&demo_uri(), ro.path())
        .assert_fails_with(&["cannot write to destination", "read-only or not permitted"]);
    assert_eq!(fs::read_dir(ro.path()).unwrap().count(), 0);

    // The layout is copied where that UID can read it.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let layout = work.path().join("layout");
    copy_dir(&repo_root().join("examples/mnist"), &layout);
    let locked = work.path().join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    Ocimodel::new()
        .run_as(1000930000, 0)
        .pull(&format!("oci-layout://{}", layout.display()), &locked)
        .assert_fails_with(&[
            "cannot write to destination",
            "locked",
            "read-only or not permitted",
        ]);
    assert_eq!(fs::read_dir(&locked).unwrap().count(), 0);
}

#[test]
fn too_many_layers_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let blob = b"x";
    let d = sha256_hex(blob);
    fs::write(layout.join("blobs/sha256").join(&d), blob).unwrap();
    let layers: Vec<_> = (0..10_001)
        .map(|i| json!({"mediaType": "application/octet-stream", "digest": format!("sha256:{d}"), "size": 1,
                        "annotations": {"org.opencontainers.image.title": format!("f{i}")}}))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": "application/x",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2, "data": "e30="},
        "layers": layers}))
    .unwrap();
    let md = sha256_hex(&manifest);
    fs::write(layout.join("blobs/sha256").join(&md), &manifest).unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{md}"), "size": manifest.len()}]}))
        .unwrap(),
    )
    .unwrap();
    let dest = work.path().join("models");
    Ocimodel::new()
        .pull(&format!("oci-layout://{}", layout.display()), &dest)
        .assert_fails_with(&["10001 layers", "refuses more than 10000"]);
    assert!(model_files(&dest).is_empty());
}

#[test]
fn a_second_run_waits_for_the_first() {
    let work = tempfile::tempdir().unwrap();
    let (slow, writer) = slow_layout(&work.path().join("layout"), 8, Duration::from_millis(150));
    let dest = work.path().join("models");
    let mut first = Ocimodel::new().spawn(&[&slow, dest.to_str().unwrap()]);
    wait_until(
        "the first run to hold DEST's lock",
        Duration::from_secs(10),
        || holds_lock(first.child.id(), &dest.join(".ocimodel/lock")),
    );
    // The same model from elsewhere, into the same DEST, while the first runs.
    let run = Ocimodel::new().pull(&demo_uri(), &dest);
    let status = first.child.wait().unwrap();
    writer.join().unwrap();
    assert!(status.success());
    run.assert_ok();
    assert!(
        run.stderr()
            .contains("another ocimodel is installing into this destination; waiting"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("already installed"),
        "the second found the first's complete install: {}",
        run.stderr()
    );
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert!(leftovers(&dest).is_empty());
}

#[test]
fn sigkill_at_random_moments_then_rerun() {
    let dest_root = tempfile::tempdir().unwrap();
    let dest: PathBuf = dest_root.path().join("models");
    // Deterministic "random" kill points across the whole pull.
    let delays = [40u64, 170, 260, 390, 520, 650, 780, 900];
    for (i, ms) in delays.iter().enumerate() {
        let work = tempfile::tempdir().unwrap();
        let (uri, writer) = slow_layout(&work.path().join("layout"), 8, Duration::from_millis(120));
        let mut run = Ocimodel::new().spawn(&[&uri, dest.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(*ms));
        let _ = run.child.kill(); // SIGKILL
        let _ = run.child.wait();
        let _ = writer.join();
        // Invariant: DEST is either marked complete and intact, or unmarked.
        if dest.join(".ocimodel.json").exists() {
            let check = Ocimodel::new().run(&["check", dest.to_str().unwrap()]);
            assert_eq!(
                check.code(),
                0,
                "kill {i} at {ms} ms left a marked but broken tree: {}",
                check.stdout()
            );
        }
        // Start the next round from an unmarked DEST, so every kill lands mid-pull.
        let _ = fs::remove_file(dest.join(".ocimodel.json"));
    }
    // The rerun cleans whatever the dead runs left and completes.
    Ocimodel::new().pull(&demo_uri(), &dest).assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert!(leftovers(&dest).is_empty(), "{:?}", leftovers(&dest));
    let check = Ocimodel::new().run(&["check", dest.to_str().unwrap()]);
    assert_eq!(check.code(), 0, "{}", check.stdout());
}

/// F4: the entries one model may create are capped (OCIMODEL_MAX_FILES), so
/// a small layer of countless empty files cannot tie up a pull or bloat the
/// marker; at the cap, the same model installs.
#[test]
fn too_many_entries_are_refused() {
    let (layout, _) = modelcar_layout_with(&[]);
    let uri = format!("oci-layout://{}:v1", layout.path().display());
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("capped");
    Ocimodel::new()
        .env("OCIMODEL_MAX_FILES", "5")
        .pull(&uri, &dest)
        .assert_fails_with(&["more entries than OCIMODEL_MAX_FILES allows"]);
    assert!(model_files(&dest).is_empty());
    let dest = work.path().join("default");
    Ocimodel::new().pull(&uri, &dest).assert_ok();
}
