//! Warm installs from the node cache cost no disk where the filesystem
//! shares extents: on a loop-mounted XFS (`reflink=1`) holding the cache and
//! the pods' DESTs, each whole file is cloned from the cache entry and the
//! clone hashed; on ext4 (no shared extents) it is copied as before, and the
//! log says which way each blob went. A cache entry a co-tenant rewrites is
//! never installed, and rewriting it later changes no pod's files.
//!
//! The images are made, mounted and removed by [`Image`] (root: loop
//! devices, mount).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Shards of the test model, each this big: 4 × 16 MiB (the bench uses 1 GiB;
/// the assertion is the same, a share of the model's size).
const SHARDS: usize = 4;
const SHARD: usize = 16 << 20;
const MODEL: u64 = (SHARDS * SHARD) as u64;

/// A filesystem image on a loop device, mounted in a temp dir: detached and
/// removed on drop, also when the test panics.
struct Image {
    dir: tempfile::TempDir,
    dev: Option<String>,
    mounted: bool,
}

impl Image {
    /// `kind`: "xfs" (with `reflink=1`) or "ext4".
    fn new(kind: &str, size: u64) -> Image {
        require_root("loop devices and mount");
        let dir = tempfile::tempdir().unwrap();
        // Other UIDs (the pods) reach the mount through here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let img = dir.path().join("image");
        fs::File::create(&img).unwrap().set_len(size).unwrap();
        let mut image = Image {
            dir,
            dev: None,
            mounted: false,
        };
        let dev = run("losetup", &["-f", "--show", img.to_str().unwrap()]);
        let dev = dev.trim().to_string();
        image.dev = Some(dev.clone());
        match kind {
            "xfs" => run("mkfs.xfs", &["-q", "-m", "reflink=1", &dev]),
            "ext4" => run("mkfs.ext4", &["-q", &dev]),
            other => panic!("no such image kind {other}"),
        };
        let mnt = image.mnt();
        fs::create_dir(&mnt).unwrap();
        run("mount", &[&dev, mnt.to_str().unwrap()]);
        image.mounted = true;
        fs::set_permissions(&mnt, fs::Permissions::from_mode(0o777)).unwrap();
        image
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Bytes in use on the filesystem once everything written is on it
    /// (`sync -f`, then statvfs).
    fn used(&self) -> u64 {
        run("sync", &["-f", self.mnt().to_str().unwrap()]);
        let c = std::ffi::CString::new(self.mnt().to_str().unwrap()).unwrap();
        // SAFETY: statvfs is plain data; a valid path and struct to fill.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        (st.f_blocks - st.f_bfree) as u64 * st.f_frsize as u64
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.mounted {
            let mnt = self.mnt();
            let ok = Command::new("umount").arg(&mnt).status();
            if !ok.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&mnt).status();
            }
        }
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// Runs a tool, failing the test with its stderr; its stdout.
#[track_caller]
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A registry holding an ORAS model of [`SHARDS`] distinct shards (each a
/// whole-file layer); the registry, the URI and the shards' bytes by name.
fn model() -> (Registry, String, Vec<(String, Vec<u8>)>) {
    model_of(SHARDS, SHARD)
}

/// The same with `n` shards of `size` bytes.
fn model_of(n: usize, size: usize) -> (Registry, String, Vec<(String, Vec<u8>)>) {
    let reg = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let shards: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
            let bytes: Vec<u8> = (0..size / 8)
                .flat_map(|_| {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
                })
                .collect();
            let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            fs::write(dir.path().join(&name), &bytes).unwrap();
            (name, bytes)
        })
        .collect();
    reg.ocimodel_push(&[
        dir.path().to_str().unwrap(),
        &format!("{}/models/sharded:v1", reg.addr),
        "--format",
        "oras",
    ]);
    let uri = format!("{}/models/sharded:v1", reg.addr);
    (reg, uri, shards)
}

/// A pod: `uid` in group 0 installs `uri` into `dest` with the node cache
/// at `cache`.
fn pod(reg: &Registry, uid: u32, cache: &Path, uri: &str, dest: &Path) -> Run {
    let run = Ocimodel::new()
        .insecure(reg)
        .run_as(uid, 0)
        .env("OCIMODEL_CACHE_DIR", cache)
        .run(&[uri, dest.to_str().unwrap()]);
    run.assert_ok();
    run
}

/// Every shard in `dest` has its bytes, and `ocimodel check` agrees.
#[track_caller]
fn installed(dest: &Path, shards: &[(String, Vec<u8>)]) {
    for (name, bytes) in shards {
        assert!(
            fs::read(dest.join(name)).unwrap() == *bytes,
            "{name} in {} differs from the model",
            dest.display()
        );
    }
    Ocimodel::new()
        .run(&["check", dest.to_str().unwrap()])
        .assert_ok();
}

/// Lines of the log that say a blob from the node cache went `way`.
fn went(run: &Run, way: &str) -> Vec<String> {
    let needle = format!("from the node cache, {way}");
    run.stderr()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// The marker's `disk`: (cloned, written) bytes.
fn disk(dest: &Path) -> (u64, u64) {
    let m = marker(dest);
    (
        m["disk"]["clonedBytes"].as_u64().unwrap(),
        m["disk"]["writtenBytes"].as_u64().unwrap(),
    )
}

fn blob_hex(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

#[test]
fn warm_pods_on_xfs_clone_from_the_cache_and_take_no_disk() {
    let (reg, uri, shards) = model();
    let image = Image::new("xfs", 768 << 20);
    let mnt = image.mnt();
    let cache = mnt.join("cache");

    // The first pod downloads into the cache and writes its own copy.
    let cold = pod(&reg, 2001, &cache, &uri, &mnt.join("pod1"));
    installed(&mnt.join("pod1"), &shards);
    assert!(went(&cold, "cloned").is_empty(), "{}", cold.stderr());
    assert_eq!(disk(&mnt.join("pod1")), (0, MODEL));

    // Three more pods, other UIDs, one after another: each clones.
    for (i, uid) in [(2, 2002), (3, 2003), (4, 2004)] {
        let dest = mnt.join(format!("pod{i}"));
        let before = image.used();
        let warm = pod(&reg, uid, &cache, &uri, &dest);
        let grew = image.used().saturating_sub(before);
        installed(&dest, &shards);
        assert_eq!(
            went(&warm, "cloned").len(),
            SHARDS,
            "every shard cloned:\n{}",
            warm.stderr()
        );
        assert!(went(&warm, "copied").is_empty(), "{}", warm.stderr());
        assert!(
            grew * 50 <= MODEL,
            "pod {i}: the filesystem grew by {grew} bytes, over 2% of the {MODEL}-byte model"
        );
        assert_eq!(disk(&dest), (MODEL, 0), "pod {i}'s marker");
        eprintln!("pod {i}: disk grew by {grew} bytes for a {MODEL}-byte model");
    }

    // A DEST on another filesystem than the cache: copied, and said why.
    let elsewhere = tempfile::tempdir().unwrap();
    fs::set_permissions(elsewhere.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let dest = elsewhere.path().join("pod5");
    let other = pod(&reg, 2005, &cache, &uri, &dest);
    installed(&dest, &shards);
    let copied = went(&other, "copied");
    assert_eq!(copied.len(), SHARDS, "{}", other.stderr());
    assert!(
        copied
            .iter()
            .all(|l| l.contains("another filesystem than the node cache")),
        "{copied:?}"
    );
    assert_eq!(disk(&dest), (0, MODEL));
}

#[test]
fn on_ext4_warm_pods_copy_as_before_and_say_so() {
    let (reg, uri, shards) = model();
    let image = Image::new("ext4", 384 << 20);
    let mnt = image.mnt();
    let cache = mnt.join("cache");
    pod(&reg, 2001, &cache, &uri, &mnt.join("pod1"));
    let before = image.used();
    let warm = pod(&reg, 2002, &cache, &uri, &mnt.join("pod2"));
    let grew = image.used() - before;
    installed(&mnt.join("pod2"), &shards);
    let copied = went(&warm, "copied");
    assert_eq!(copied.len(), SHARDS, "{}", warm.stderr());
    assert!(
        copied
            .iter()
            .all(|l| l.contains("the filesystem does not share extents")),
        "{copied:?}"
    );
    assert!(went(&warm, "cloned").is_empty(), "{}", warm.stderr());
    assert!(grew >= MODEL, "a copy takes the model's size: grew {grew}");
    assert_eq!(disk(&mnt.join("pod2")), (0, MODEL));
}

/// A co-tenant in group 0 rewrites a committed cache entry in place (same
/// size, other bytes). A pod that installed from it before keeps its files;
/// the next pod's clone fails its digest, so the entry is dropped and the
/// blob downloaded again: what it installs is the model.
#[test]
fn a_rewritten_cache_entry_is_never_installed_and_changes_no_installed_pod() {
    let (reg, uri, shards) = model();
    let image = Image::new("xfs", 768 << 20);
    let mnt = image.mnt();
    let cache = mnt.join("cache");
    pod(&reg, 2001, &cache, &uri, &mnt.join("pod1"));
    let warm = pod(&reg, 2002, &cache, &uri, &mnt.join("pod2"));
    assert_eq!(went(&warm, "cloned").len(), SHARDS, "{}", warm.stderr());

    let (victim, bytes) = &shards[0];
    let hex = blob_hex(bytes);
    let entry = cache.join("blobs/sha256").join(&hex);
    let served = reg.blob_egress(&format!("sha256:{hex}"));
    // The co-tenant: another UID in group 0, writing over the first MiB.
    let out = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=1", "conv=notrunc"])
        .arg(format!("of={}", entry.display()))
        .uid(2099)
        .gid(0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(&fs::read(&entry).unwrap()[..1 << 20], &bytes[..1 << 20]);
    assert_eq!(fs::metadata(&entry).unwrap().len(), SHARD as u64);

    // The pod that cloned it earlier: its files are its own snapshot.
    installed(&mnt.join("pod2"), &shards);

    // The next pod: the clone of the rewritten entry fails, and is refused.
    let next = pod(&reg, 2003, &cache, &uri, &mnt.join("pod3"));
    installed(&mnt.join("pod3"), &shards);
    assert!(
        next.stderr()
            .contains("does not match its digest; dropping it"),
        "{}",
        next.stderr()
    );
    assert!(
        fs::read(mnt.join("pod3").join(victim)).unwrap() == *bytes,
        "{victim}"
    );
    assert_eq!(
        reg.blob_egress(&format!("sha256:{hex}")),
        served + SHARD as u64,
        "the blob is downloaded again from the registry, once"
    );
    assert!(
        fs::read(&entry).unwrap() == *bytes,
        "the cache holds the model's blob again"
    );
}

/// The clones are hashed as any blob is: each on its own thread, so no one
/// thread does everyone's hashing (tests/node_scale.rs's property, for a
/// warm install).
#[test]
fn a_warm_install_hashes_its_clones_on_many_threads() {
    let (reg, uri, shards) = model_of(8, 64 << 20);
    let sha_seconds = sha256_cpu_seconds(shards.iter().map(|(_, b)| b.as_slice()));
    let image = Image::new("xfs", 2 << 30);
    let mnt = image.mnt();
    let cache = mnt.join("cache");
    pod(&reg, 2001, &cache, &uri, &mnt.join("pod1"));

    let dest = mnt.join("pod2");
    let mut run = Ocimodel::new()
        .insecure(&reg)
        .run_as(2002, 0)
        .env("OCIMODEL_CACHE_DIR", &cache);
    run.cmd
        .args([&uri, dest.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = run.cmd.spawn().unwrap();
    let (status, seen) = wait_sampling_threads(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    installed(&dest, &shards);
    let cloned = stderr
        .lines()
        .filter(|l| l.contains("from the node cache, cloned"))
        .count();
    assert_eq!(cloned, 8, "{stderr}");
    let busiest = seen.values().map(|(_, cpu)| *cpu).fold(0.0, f64::max);
    eprintln!(
        "sha256 of all shards on one core: {sha_seconds:.3}s; the busiest thread: {busiest:.3}s"
    );
    assert!(
        busiest <= sha_seconds / 3.0,
        "one thread did {busiest:.2}s of user CPU work, more than a third of the {sha_seconds:.3}s one core needs to hash all 8 shards: the clones' hashing is not spread over the blobs' threads"
    );
}

/// The sidecar's metrics say how many bytes of its cache hits were cloned
/// and how many written.
#[test]
fn the_sidecar_counts_cloned_and_written_bytes() {
    let (reg, uri, shards) = model();
    let image = Image::new("xfs", 768 << 20);
    let mnt = image.mnt();
    let cache = mnt.join("cache");
    pod(&reg, 2001, &cache, &uri, &mnt.join("pod1"));
    let addr = format!("127.0.0.1:{}", free_port());
    let dest = mnt.join("sidecar");
    let mut sidecar = Ocimodel::new()
        .insecure(&reg)
        .run_as(2002, 0)
        .env("OCIMODEL_CACHE_DIR", &cache)
        .env("OCIMODEL_MODE", "sidecar")
        .env("OCIMODEL_LISTEN", &addr)
        .spawn(&[&uri, dest.to_str().unwrap()]);
    wait_until(
        "the sidecar to be ready",
        std::time::Duration::from_secs(60),
        || {
            std::net::TcpStream::connect(&addr).is_ok()
                && http_get(&addr, "/readyz", &[]).status == 200
        },
    );
    let metrics = String::from_utf8(http_get(&addr, "/metrics", &[]).body).unwrap();
    let _ = sidecar.child.kill();
    let _ = sidecar.child.wait();
    installed(&dest, &shards);
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let hit = value("ocimodel_cache_bytes{result=\"hit\"}");
    assert_eq!(
        value("ocimodel_cache_hit_bytes{how=\"cloned\"}"),
        MODEL,
        "{metrics}"
    );
    // The rest of the hits (the small config blob) was read and written.
    assert_eq!(
        value("ocimodel_cache_hit_bytes{how=\"written\"}"),
        hit - MODEL,
        "{metrics}"
    );
    assert!(hit - MODEL < 4096, "{metrics}");
    assert_eq!(disk(&dest), (MODEL, 0));
}
