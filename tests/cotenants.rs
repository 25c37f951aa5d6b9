//! DEST is shared: an emptyDir (0777), a PVC, a node volume. Whoever else
//! can write it may plant symlinks and FIFOs, rename entries or edit the
//! bookkeeping; none of that may make ocimodel (running as root here, as
//! with `OCIMODEL_OWNER` or a systemd unit) write, chmod, read or delete
//! anything outside DEST. And another UID in group 0 must still be able to
//! check, update and replace a model on the same DEST.
//!
//! These tests need root (to be root, and to act as other UIDs); CI runs
//! as root. They fail, never skip, elsewhere.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const MODEL_DIR: &str = "v1.nb20231206162408";
const INSTALLER: u32 = 1000930000;
const OTHER: u32 = 1000940000;

fn layout_uri() -> String {
    format!(
        "oci-layout://{}",
        repo_root().join("examples/mnist").display()
    )
}

/// A world-writable directory (an emptyDir) holding DEST, and a victim file
/// outside it: root's, 0600, with known content.
struct Scene {
    tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        require_root("acting as several UIDs");
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        fs::create_dir(tmp.path().join("dest")).unwrap();
        fs::set_permissions(tmp.path().join("dest"), fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(tmp.path().join("victim"), b"root's secret").unwrap();
        fs::set_permissions(tmp.path().join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
        Scene { tmp }
    }

    fn dest(&self) -> PathBuf {
        self.tmp.path().join("dest")
    }

    fn book(&self) -> PathBuf {
        self.dest().join(".ocimodel")
    }

    fn victim(&self) -> PathBuf {
        self.tmp.path().join("victim")
    }

    #[track_caller]
    fn victim_untouched(&self) {
        assert_eq!(fs::read(self.victim()).unwrap(), b"root's secret");
        assert_eq!(mode(&self.victim()), 0o600);
    }

    fn pull(&self, env: &[(&str, &str)]) -> Run {
        Ocimodel::new().envs(env).pull(&layout_uri(), &self.dest())
    }

    #[track_caller]
    fn installed(&self) {
        assert_eq!(
            sha256_file(&self.dest().join(MODEL_DIR).join("mnist.onnx")),
            MNIST_SHA256
        );
        Ocimodel::new()
            .run(&["check", &self.dest().display().to_string()])
            .assert_ok();
    }
}

/// F1: symlinks planted in DEST/.ocimodel before a run are replaced, never
/// written, created or chmodded through.
#[test]
fn planted_bookkeeping_symlinks_are_never_followed() {
    let s = Scene::new();
    fs::create_dir(s.book()).unwrap();
    let nowhere = s.tmp.path().join("created-by-ocimodel");
    for name in ["config.json", "marker.tmp", "journal.json"] {
        symlink(s.victim(), s.book().join(name)).unwrap();
    }
    symlink(&nowhere, s.book().join("lock")).unwrap();
    s.pull(&[]).assert_ok();
    s.installed();
    s.victim_untouched();
    assert!(
        !nowhere.exists(),
        "a file was created through the lock symlink"
    );
    // The marker itself, planted as a symlink in a fresh DEST, is replaced.
    let s = Scene::new();
    symlink(s.victim(), s.dest().join(".ocimodel.json")).unwrap();
    s.pull(&[]).assert_ok();
    s.victim_untouched();
    s.installed();
    assert!(!fs::symlink_metadata(s.dest().join(".ocimodel.json"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// F1: `.ocimodel` itself as a symlink to another directory is refused;
/// nothing is created or deleted there.
#[test]
fn bookkeeping_directory_as_a_symlink_is_refused() {
    let s = Scene::new();
    let other = s.tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("staging-1-1"), b"keep").unwrap();
    fs::write(other.join("marker.tmp"), b"keep").unwrap();
    symlink(&other, s.book()).unwrap();
    s.pull(&[]).assert_fails_with(&[
        ".ocimodel is not a directory (a symlink or a file was put there); remove it",
    ]);
    let mut names: Vec<String> = fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["marker.tmp", "staging-1-1"]);
}

/// The pull paused on a FIFO-fed blob, its staging directory located.
struct Paused {
    scene: Scene,
    child: std::process::Child,
    writer: std::thread::JoinHandle<()>,
    _layout: tempfile::TempDir,
    staging: PathBuf,
}

fn paused_pull() -> Paused {
    let scene = Scene::new();
    let layout = tempfile::tempdir().unwrap();
    let (uri, writer) = slow_layout(layout.path(), 40, Duration::from_millis(100));
    let mut cmd = Ocimodel::new();
    cmd.cmd.args([uri, scene.dest().display().to_string()]);
    cmd.cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = cmd.cmd.spawn().unwrap();
    let started = Instant::now();
    let staging = loop {
        let found = fs::read_dir(scene.book()).ok().and_then(|rd| {
            rd.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("staging-")
            })
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no staging directory appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Paused {
        scene,
        child,
        writer,
        _layout: layout,
        staging,
    }
}

impl Paused {
    fn finish(mut self) -> (Scene, std::process::ExitStatus) {
        let status = self.child.wait().unwrap();
        self.writer.join().unwrap();
        (self.scene, status)
    }
}

/// F1 mid-pull and F2: planted while the pull runs, bookkeeping symlinks
/// are still not followed; the staging tree is private (0700) while it is
/// filled, and swapping the staging directory's name for a symlink to
/// another directory redirects nothing.
#[test]
fn plants_and_swaps_during_a_pull_redirect_nothing() {
    let p = paused_pull();
    assert_eq!(
        mode(&p.staging) & 0o777,
        0o700,
        "staging must be private while filled"
    );
    // Another UID, even in group 0, cannot look inside.
    let probe = std::process::Command::new("ls")
        .arg(&p.staging)
        .uid_gid(1000, 0)
        .output()
        .unwrap();
    assert!(
        !probe.status.success(),
        "another UID could list the staging directory"
    );

    for name in ["marker.tmp", "journal.json", "config.json"] {
        let _ = fs::remove_file(p.scene.book().join(name));
        symlink(p.scene.victim(), p.scene.book().join(name)).unwrap();
    }
    let elsewhere = p.scene.tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let moved = p.scene.book().join("moved-away");
    fs::rename(&p.staging, &moved).unwrap();
    symlink(&elsewhere, &p.staging).unwrap();

    let (s, status) = p.finish();
    assert!(status.success(), "the pull failed");
    s.installed();
    s.victim_untouched();
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "something was written through the swapped staging name"
    );
}

trait UidGid {
    fn uid_gid(&mut self, uid: u32, gid: u32) -> &mut Self;
}

impl UidGid for std::process::Command {
    fn uid_gid(&mut self, uid: u32, gid: u32) -> &mut Self {
        use std::os::unix::process::CommandExt;
        self.uid(uid).gid(gid)
    }
}

/// F8: a marker edited or replaced by someone else never makes ocimodel
/// delete what that someone does not own, and never makes `check` read
/// outside DEST.
#[test]
fn a_forged_marker_drives_no_deletion_and_no_reads_outside() {
    let s = Scene::new();
    s.pull(&[]).assert_ok();
    // Root's own directory, which uid 1000 could not remove.
    let precious = s.dest().join("precious");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("data"), b"keep me").unwrap();
    fs::set_permissions(&precious, fs::Permissions::from_mode(0o755)).unwrap();
    // uid 1000 replaces the marker with one that claims `precious`.
    let marker_path = s.dest().join(".ocimodel.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(&marker_path).unwrap()).unwrap();
    m["entries"] = serde_json::json!([MODEL_DIR, "precious"]);
    let forged = s.dest().join("forged");
    fs::write(&forged, serde_json::to_vec(&m).unwrap()).unwrap();
    std::os::unix::fs::chown(&forged, Some(1000), Some(1000)).unwrap();
    fs::rename(&forged, &marker_path).unwrap();
    // A rerun with other settings would replace the install: the forged
    // list is not root's, so root deletes nothing it names, and refuses to
    // clobber what it can no longer prove it installed.
    s.pull(&[("OCIMODEL_INCLUDE", "*.onnx")])
        .assert_fails_with(&["already exists and was not installed by ocimodel"]);
    assert_eq!(fs::read(precious.join("data")).unwrap(), b"keep me");
    assert!(s.dest().join(MODEL_DIR).join("mnist.onnx").exists());
    // The same list written by root itself is followed.
    std::os::unix::fs::chown(&marker_path, Some(0), Some(0)).unwrap();
    fs::remove_dir_all(&precious).unwrap();
    s.pull(&[("OCIMODEL_INCLUDE", "*.onnx")]).assert_ok();
    s.installed();

    // A marker naming a path outside DEST is refused by `check`.
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(&marker_path).unwrap()).unwrap();
    m["files"][0]["path"] = serde_json::json!("../victim");
    fs::write(&marker_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let run = Ocimodel::new().run(&["check", &s.dest().display().to_string()]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stdout()
            .contains("the marker names a path outside the model: \"../victim\""),
        "{}",
        run.stdout()
    );
    assert!(!run.stdout().contains(&sha256_hex(b"root's secret")));
}

/// F9: a marker that is a symlink to /dev/zero, or a FIFO, is refused at
/// once (no unbounded read, no hang); so is a layout's index.json.
#[test]
fn markers_and_indexes_that_are_not_small_regular_files_are_refused() {
    let s = Scene::new();
    s.pull(&[]).assert_ok();
    let marker_path = s.dest().join(".ocimodel.json");
    let check = || Ocimodel::new().run(&["check", &s.dest().display().to_string()]);
    fs::remove_file(&marker_path).unwrap();
    symlink("/dev/zero", &marker_path).unwrap();
    let started = Instant::now();
    let run = check();
    assert_eq!(run.code(), 1);
    assert!(run.stdout().contains("cannot be read"), "{}", run.stdout());
    fs::remove_file(&marker_path).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&marker_path)
        .status()
        .unwrap()
        .success());
    let run = check();
    assert_eq!(run.code(), 1);
    assert!(
        run.stdout().contains("is not a regular file"),
        "{}",
        run.stdout()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a bad marker stalled check"
    );

    let layout = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("examples/mnist"), layout.path());
    fs::remove_file(layout.path().join("index.json")).unwrap();
    symlink("/dev/zero", layout.path().join("index.json")).unwrap();
    let out = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .run(&[
            format!("oci-layout://{}", layout.path().display()),
            out.path().join("m").display().to_string(),
        ])
        .assert_fails_with(&["index.json is not a regular file"]);
}

/// F15: the same directory under two names is refused before anything is
/// written, as a literal duplicate already was.
#[test]
fn one_directory_under_two_names_is_refused() {
    let s = Scene::new();
    let alias = s.tmp.path().join("alias");
    symlink(s.dest(), &alias).unwrap();
    let dangling = s.tmp.path().join("dangling");
    symlink(s.tmp.path().join("later"), &dangling).unwrap();
    for (a, b) in [
        (s.dest(), alias.clone()),
        (dangling.clone(), s.tmp.path().join("later")),
    ] {
        Ocimodel::new()
            .run(&[
                layout_uri(),
                a.display().to_string(),
                layout_uri(),
                b.display().to_string(),
            ])
            .assert_fails_with(&["are the same directory"]);
    }
    assert_eq!(fs::read_dir(s.dest()).unwrap().count(), 0);
    assert!(!s.tmp.path().join("later").exists());
}

/// The product requirement: a model installed by one UID in group 0 is
/// checked, kept (a no-op rerun), updated and replaced by another UID in
/// group 0 on the same DEST, as OpenShift restarts and LocalModelCache
/// jobs do. Before, the second UID got "cannot open lock file: Permission
/// denied" even for the no-op rerun.
#[test]
fn another_uid_in_group_zero_checks_updates_and_replaces() {
    let s = Scene::new();
    let pull_as = |uid: u32, env: &[(&str, &str)]| {
        Ocimodel::new()
            .run_as(uid, 0)
            .envs(env)
            .pull(&layout_uri(), &s.dest())
    };
    pull_as(INSTALLER, &[]).assert_ok();
    let lock = s.book().join("lock");
    assert_eq!(mode(&lock), 0o660, "the lock is for group 0 only");
    assert_eq!(
        fs::metadata(s.dest().join(MODEL_DIR)).unwrap().uid(),
        INSTALLER
    );
    // A no-op rerun, a check, then a replacement, all as the other UID.
    let rerun = pull_as(OTHER, &[]);
    rerun.assert_ok();
    assert!(
        rerun.stderr().contains("already installed"),
        "{}",
        rerun.stderr()
    );
    Ocimodel::new()
        .run_as(OTHER, 0)
        .run(&["check", &s.dest().display().to_string()])
        .assert_ok();
    pull_as(OTHER, &[("OCIMODEL_INCLUDE", "*.onnx")]).assert_ok();
    assert_eq!(fs::metadata(s.dest().join(MODEL_DIR)).unwrap().uid(), OTHER);
    s.installed();
    // And back again by the first UID.
    pull_as(INSTALLER, &[]).assert_ok();
    assert_eq!(
        fs::metadata(s.dest().join(MODEL_DIR)).unwrap().uid(),
        INSTALLER
    );
    s.installed();
}

/// F10: a held lock is waited on with a bound (OCIMODEL_LOCK_TIMEOUT) and a
/// clear line, not forever.
#[test]
fn a_held_lock_is_waited_on_with_a_bound() {
    let s = Scene::new();
    s.pull(&[]).assert_ok();
    let lock = s.book().join("lock");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    wait_until("flock to hold the lock", Duration::from_secs(10), || {
        holds_lock(holder.id(), &lock)
    });
    let started = Instant::now();
    let run = s.pull(&[
        ("OCIMODEL_LOCK_TIMEOUT", "2"),
        ("OCIMODEL_INCLUDE", "*.onnx"),
    ]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    run.assert_fails_with(&["has been locked by another ocimodel for 2s (OCIMODEL_LOCK_TIMEOUT)"]);
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// F14: outside group 0 (a laptop, a shared server) the umask decides who
/// may read what ocimodel writes, and no ancestor of DEST is chmodded.
#[test]
fn outside_group_zero_the_umask_is_honoured() {
    let s = Scene::new();
    let dest = s.tmp.path().join("home/user/models/private");
    let mut cmd = Ocimodel::new().run_as(1000, 1000);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
    }
    cmd.run(&[layout_uri(), dest.display().to_string()])
        .assert_ok();
    assert_eq!(mode(&dest.join(MODEL_DIR).join("mnist.onnx")), 0o600);
    assert_eq!(mode(&dest.join(MODEL_DIR)), 0o700);
    assert_eq!(mode(&dest), 0o700);
    for ancestor in ["home", "home/user", "home/user/models"] {
        assert_eq!(mode(&s.tmp.path().join(ancestor)), 0o700, "{ancestor}");
    }
}

/// S3-2: a `DEST/.ocimodel/partials` a co-tenant made, with symlinked
/// subdirectories, is replaced by one of root's own (0700) before a root run
/// writes resumable downloads into it: nothing is created outside DEST.
/// Before: root created `sha256/` and a lock file per blob in the directory
/// the `locks` symlink named.
#[test]
fn a_partials_directory_a_cotenant_made_is_replaced() {
    let s = Scene::new();
    let (reg, digest) = Registry::with_mnist();
    let elsewhere: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| {
            let d = s.tmp.path().join(format!("root-only-{n}"));
            fs::create_dir(&d).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
            d
        })
        .collect();
    let partials = s.book().join("partials");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p {p}/ingest && ln -s {a} {p}/locks && ln -s {b} {p}/ingest/sha256",
            p = partials.display(),
            a = elsewhere[0].display(),
            b = elsewhere[1].display()
        ))
        .uid_gid(1000, 0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_RESUME_MIN", "0")
        .run(&[
            format!("{}/models/mnist@{digest}", reg.addr),
            s.dest().display().to_string(),
        ])
        .assert_ok();
    Ocimodel::new()
        .run(&["check", &s.dest().display().to_string()])
        .assert_ok();
    for d in &elsewhere {
        assert_eq!(
            fs::read_dir(d).unwrap().count(),
            0,
            "{} was written through a planted symlink",
            d.display()
        );
    }
    if partials.exists() {
        assert_eq!(fs::metadata(&partials).unwrap().uid(), 0);
        assert_eq!(mode(&partials), 0o700);
    }
    s.victim_untouched();
}
