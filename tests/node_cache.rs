//! The node cache (`OCIMODEL_CACHE_DIR`) against the real registry, whose
//! access log counts every blob GET: concurrent pulls on one node download
//! each blob once; a partial download left by a killed run resumes with
//! `Range`; corrupted or planted entries are dropped and fetched again,
//! never installed; a digest reference installs with the registry gone.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

const SIZE: usize = 24 << 20;

/// A registry holding one ORAS model: `weights.bin` (24 MiB, deterministic)
/// and `config.json`. Returns the registry, the manifest digest and the
/// weights' blob digest.
fn model() -> (Registry, String, String, Vec<u8>) {
    let reg = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let weights: Vec<u8> = (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(dir.path().join("weights.bin"), &weights).unwrap();
    fs::write(dir.path().join("config.json"), b"{\"layers\": 2}\n").unwrap();
    let digest = reg.ocimodel_push(&[
        dir.path().to_str().unwrap(),
        &format!("{}/models/big:v1", reg.addr),
        "--format",
        "oras",
    ]);
    let blob = format!("sha256:{}", sha256_hex(&weights));
    (reg, digest, blob, weights)
}

fn cached(cache: &Path) -> Ocimodel {
    Ocimodel::new().env("OCIMODEL_CACHE_DIR", cache)
}

/// Pulls `models/big:v1` from `reg` into `dest` through the node cache,
/// then stops the registry; its address, for pulls that find it gone.
fn cache_tag_then_stop(cache: &Path, reg: Registry, dest: &Path) -> String {
    cached(cache)
        .insecure(&reg)
        .pull(&format!("{}/models/big:v1", reg.addr), dest)
        .assert_ok();
    let addr = reg.addr.clone();
    drop(reg.stop());
    addr
}

fn blob_path(cache: &Path, digest: &str) -> PathBuf {
    cache
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[track_caller]
fn installed(dest: &Path, weights: &[u8]) {
    assert_eq!(fs::read(dest.join("weights.bin")).unwrap(), weights);
    Ocimodel::new()
        .run(&["check", dest.to_str().unwrap()])
        .assert_ok();
}

#[test]
fn concurrent_pulls_on_one_node_download_each_blob_once() {
    let (reg, _, blob, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let uri = format!("{}/models/big:v1", reg.addr);
    let mut pulls: Vec<_> = (0..4)
        .map(|i| {
            let dest = work.path().join(format!("pod{i}"));
            let mut o = cached(&cache).insecure(&reg);
            o.cmd.args([uri.as_str(), dest.to_str().unwrap()]);
            o.cmd.stdout(std::process::Stdio::null());
            o.cmd.stderr(std::process::Stdio::piped());
            (o.cmd.spawn().unwrap(), o)
        })
        .collect();
    for (child, _) in pulls.iter_mut() {
        assert!(child.wait().unwrap().success());
    }
    for i in 0..4 {
        installed(&work.path().join(format!("pod{i}")), &weights);
    }
    assert_eq!(
        reg.blob_egress(&blob),
        SIZE as u64,
        "registry egress: one download per node"
    );
    // What the cache holds is exactly the blob, shared with group 0.
    assert_eq!(sha256_file(&blob_path(&cache, &blob)), &blob[7..]);
    assert_eq!(mode(&blob_path(&cache, &blob)) & 0o060, 0o060);
    // A later pod on the node needs no download at all.
    let later = work.path().join("later");
    let run = cached(&cache).insecure(&reg).pull(&uri, &later);
    run.assert_ok();
    assert!(
        run.stderr().contains("from the node cache"),
        "{}",
        run.stderr()
    );
    installed(&later, &weights);
    assert_eq!(reg.blob_egress(&blob), SIZE as u64);
}

#[test]
fn a_partial_download_resumes_with_range() {
    let (reg, _, blob, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // What a run killed at 60 % leaves: the verified prefix in ingest/.
    let ingest = cache.join("ingest/sha256");
    fs::create_dir_all(&ingest).unwrap();
    let kept = SIZE * 6 / 10;
    fs::write(ingest.join(&blob[7..]), &weights[..kept]).unwrap();
    let dest = work.path().join("m");
    let run = cached(&cache)
        .insecure(&reg)
        .pull(&format!("{}/models/big:v1", reg.addr), &dest);
    resumed(&run, kept, &dest, &weights);
    fetched_only_the_rest(&reg, &blob, kept as u64);
    assert!(
        !ingest.join(&blob[7..]).exists(),
        "the partial was committed"
    );
    assert!(blob_path(&cache, &blob).exists());
}

#[test]
fn corrupted_planted_or_garbage_entries_are_dropped_and_fetched_again() {
    let (reg, _, blob, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let uri = format!("{}/models/big:v1", reg.addr);
    let pull = |name: &str| {
        let dest = work.path().join(name);
        let run = cached(&cache).insecure(&reg).pull(&uri, &dest);
        run.assert_ok();
        installed(&dest, &weights);
        run
    };
    pull("first");
    assert_eq!(reg.blob_egress(&blob), SIZE as u64);
    // Disk rot or a co-tenant: one byte flipped in the committed blob.
    let entry = blob_path(&cache, &blob);
    let mut bytes = fs::read(&entry).unwrap();
    bytes[SIZE / 2] ^= 1;
    fs::write(&entry, &bytes).unwrap();
    let run = pull("after-corruption");
    assert!(
        run.stderr().contains("was corrupted; it was dropped"),
        "{}",
        run.stderr()
    );
    assert_eq!(reg.blob_egress(&blob), 2 * SIZE as u64);
    assert_eq!(
        sha256_file(&entry),
        &blob[7..],
        "the entry was fetched again"
    );
    // A planted entry of the right size and other content: the same.
    fs::write(&entry, vec![0u8; SIZE]).unwrap();
    pull("after-plant");
    assert_eq!(reg.blob_egress(&blob), 3 * SIZE as u64);
    // A garbage partial download: replayed, refused, and fetched afresh.
    fs::remove_file(&entry).unwrap();
    fs::write(
        cache.join("ingest/sha256").join(&blob[7..]),
        vec![1u8; 1000],
    )
    .unwrap();
    pull("after-garbage-partial");
    assert_eq!(sha256_file(&entry), &blob[7..]);
}

#[test]
fn a_digest_reference_installs_with_the_registry_gone() {
    let (reg, digest, _, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let uri = format!("{}/models/big@{digest}", reg.addr);
    let first = work.path().join("first");
    cached(&cache).insecure(&reg).pull(&uri, &first).assert_ok();
    let addr = reg.addr.clone();
    drop(reg.stop());
    let offline = work.path().join("offline");
    let run = cached(&cache)
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .pull(&uri, &offline);
    run.assert_ok();
    installed(&offline, &weights);
    // A tag still needs the registry to say what it means.
    Ocimodel::new()
        .env("OCIMODEL_CACHE_DIR", &cache)
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .pull(&format!("{addr}/models/big:v1"), &work.path().join("tag"))
        .assert_fails_with(&["cannot reach registry"]);
}

/// A LocalModelCache job's rerun must not trust a folder that exists:
/// with OCIMODEL_RECHECK=digest every file is re-hashed and what differs is
/// installed again; the default (size) trusts same-size files.
#[test]
fn a_rerun_with_digest_recheck_repairs_the_tree() {
    let (reg, digest, _, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let dest = work.path().join("mnt/models");
    let uri = format!("{}/models/big@{digest}", reg.addr);
    let pull = |recheck: &str| {
        cached(&cache)
            .insecure(&reg)
            .env("OCIMODEL_RECHECK", recheck)
            .pull(&uri, &dest)
    };
    pull("digest").assert_ok();
    // Same size, other bytes (disk rot, a tenant's edit).
    let mut damaged = weights.clone();
    damaged[7] ^= 0xff;
    fs::write(dest.join("weights.bin"), &damaged).unwrap();
    let run = pull("size");
    run.assert_ok();
    assert!(
        run.stderr().contains("already installed"),
        "{}",
        run.stderr()
    );
    assert_eq!(fs::read(dest.join("weights.bin")).unwrap(), damaged);
    let run = pull("digest");
    run.assert_ok();
    assert!(
        run.stderr()
            .contains("the installed tree differs from its marker"),
        "{}",
        run.stderr()
    );
    installed(&dest, &weights);
    // Repaired from the node cache, not the registry.
    assert!(
        run.stderr().contains("from the node cache"),
        "{}",
        run.stderr()
    );
    assert!(pull("digest").stderr().contains("already installed"));
}

/// The sidecar's metrics say what came from the node cache.
#[test]
fn the_sidecar_reports_cache_hits_and_misses() {
    let (reg, _, _, _) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let uri = format!("{}/models/big:v1", reg.addr);
    cached(&cache)
        .insecure(&reg)
        .pull(&uri, &work.path().join("first"))
        .assert_ok();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut sidecar = cached(&cache)
        .insecure(&reg)
        .env("OCIMODEL_MODE", "sidecar")
        .env("OCIMODEL_LISTEN", &addr)
        .spawn(&[&uri, work.path().join("second").to_str().unwrap()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let up = std::net::TcpStream::connect(&addr).is_ok();
        if up && http_get(&addr, "/readyz", &[]).status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sidecar never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let metrics = String::from_utf8(http_get(&addr, "/metrics", &[]).body).unwrap();
    let _ = sidecar.child.kill();
    let _ = sidecar.child.wait();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(
        value("ocimodel_cache_blobs{result=\"hit\"}") >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        value("ocimodel_cache_blobs{result=\"miss\"}"),
        0.0,
        "{metrics}"
    );
    assert!(value("ocimodel_cache_bytes{result=\"hit\"}") >= SIZE as f64);
}

/// A loopback proxy that relays to `upstream` at about `rate` bytes per
/// second per connection (a slow link), so a pull can be killed mid-blob.
fn slow_proxy(upstream: &str, rate: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; rate / 20];
                loop {
                    match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c_out.write_all(&buf[..n]).is_err() {
                                return;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Waits until `partial` holds a quarter of the blob, then SIGKILLs the
/// pull (as an OOM kill or an eviction would); returns what it kept.
fn kill_mid_blob(mut pull: Spawned, partial: &Path) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::metadata(partial).map(|m| m.len()).unwrap_or(0) < (SIZE / 4) as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the download never got going"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pull.child.kill().unwrap();
    pull.child.wait().unwrap();
    let kept = fs::metadata(partial).unwrap().len();
    assert!(kept < SIZE as u64, "{kept}");
    kept
}

#[track_caller]
/// The run succeeded by resuming at `kept` bytes, and DEST holds the model.
fn resumed(run: &Run, kept: impl std::fmt::Display, dest: &Path, weights: &[u8]) {
    run.assert_ok();
    assert!(
        run.stderr().contains(&format!("resume_at={kept}")),
        "{}",
        run.stderr()
    );
    installed(dest, weights);
}

/// The registry served exactly the bytes a killed run did not have, as
/// ranged GETs (several when the rest is big enough to split). The killed
/// run fetched over one stream (a 200), so every 206 is the rerun's.
#[track_caller]
fn fetched_only_the_rest(reg: &Registry, blob: &str, kept: u64) {
    let served: Vec<_> = reg
        .blob_responses(blob)
        .into_iter()
        .filter(|(status, _)| *status == 206)
        .collect();
    assert!(!served.is_empty(), "no ranged GET");
    assert_eq!(
        served.iter().map(|(_, n)| n).sum::<u64>(),
        SIZE as u64 - kept,
        "the rerun fetched more than the missing bytes: {served:?}"
    );
}

/// SIGKILL mid-blob (as an OOM kill or an eviction would), then a rerun
/// against the registry: it resumes from what the killed run had, with
/// ranged GETs for the rest only.
#[test]
fn a_pull_killed_mid_blob_resumes_on_the_next_run() {
    let (reg, digest, blob, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let proxy = slow_proxy(&reg.addr, 8 << 20);
    // The proxy passes the registry's answers through, so the manifest
    // names the same blobs; only the link is slow.
    let partial = cache.join("ingest/sha256").join(&blob[7..]);
    // One stream for the killed run, so its GET is told from the rerun's.
    let killed = cached(&cache)
        .env("OCIMODEL_INSECURE_REGISTRIES", &proxy)
        .env("OCIMODEL_RANGE_CONNECTIONS", "1")
        .spawn(&[
            &format!("{proxy}/models/big@{digest}"),
            work.path().join("killed").to_str().unwrap(),
        ]);
    let kept_now = kill_mid_blob(killed, &partial);

    let dest = work.path().join("m");
    let run = cached(&cache)
        .insecure(&reg)
        .pull(&format!("{}/models/big@{digest}", reg.addr), &dest);
    run.assert_ok();
    installed(&dest, &weights);
    fetched_only_the_rest(&reg, &blob, kept_now);
}

/// Without a node cache, big downloads (OCIMODEL_RESUME_MIN) are kept as
/// they arrive in DEST's own bookkeeping, so a killed init container's
/// next run (the emptyDir survives container restarts) resumes too; once
/// installed, nothing of them stays.
#[test]
fn without_a_cache_dir_a_killed_pull_resumes_from_dest() {
    let (reg, digest, blob, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("mnt/models");
    let partial = dest
        .join(".ocimodel/partials/ingest/sha256")
        .join(&blob[7..]);
    let proxy = slow_proxy(&reg.addr, 8 << 20);
    let killed = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &proxy)
        .env("OCIMODEL_RANGE_CONNECTIONS", "1")
        .env("OCIMODEL_RESUME_MIN", "1M")
        .spawn(&[
            &format!("{proxy}/models/big@{digest}"),
            dest.to_str().unwrap(),
        ]);
    let kept = kill_mid_blob(killed, &partial);
    assert_eq!(
        mode(&dest.join(".ocimodel/partials")),
        0o700,
        "private to its writer"
    );

    let run = Ocimodel::for_registry(&reg)
        .env("OCIMODEL_RESUME_MIN", "1M")
        .pull(&format!("{}/models/big@{digest}", reg.addr), &dest);
    resumed(&run, kept, &dest, &weights);
    fetched_only_the_rest(&reg, &blob, kept);
    assert!(!partial.exists(), "a delivered download is not kept");

    // Below the threshold (default 4G), nothing is kept at all.
    let small = work.path().join("small");
    Ocimodel::for_registry(&reg)
        .pull(&format!("{}/models/big@{digest}", reg.addr), &small)
        .assert_ok();
    assert!(!small.join(".ocimodel/partials").exists());
}

/// The cache is shared by pods with other UIDs in group 0: what one
/// downloaded, another reads (and can repair).
#[test]
fn pods_with_other_uids_in_group_zero_share_the_cache() {
    require_root("acting as two UIDs");
    let (reg, _, blob, weights) = model();
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let cache = work.path().join("cache");
    let uri = format!("{}/models/big:v1", reg.addr);
    for (uid, name) in [(1000930000, "a"), (1000940000, "b")] {
        let run = cached(&cache)
            .insecure(&reg)
            .run_as(uid, 0)
            .pull(&uri, &work.path().join(name));
        run.assert_ok();
        installed(&work.path().join(name), &weights);
    }
    assert_eq!(reg.blob_egress(&blob), SIZE as u64);
    // The second UID can drop a bad entry the first one committed.
    let entry = blob_path(&cache, &blob);
    let mut bytes = fs::read(&entry).unwrap();
    bytes[0] ^= 1;
    fs::write(&entry, &bytes).unwrap();
    cached(&cache)
        .insecure(&reg)
        .run_as(1000940000, 0)
        .pull(&uri, &work.path().join("c"))
        .assert_ok();
    installed(&work.path().join("c"), &weights);
    assert_eq!(sha256_file(&entry), &blob[7..]);
}

// The node cache is a trust boundary (security review 3, S3-1 to S3-6):
// pods of every namespace on a node can mount it, all in group 0. Here a
// co-tenant (UID 1000, GID 0) plants things in it between pulls.

const COTENANT: u32 = 1000;

/// A node directory every UID may enter, holding the cache at `cache`.
fn node_dir() -> tempfile::TempDir {
    require_root("acting as a co-tenant with another UID");
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    work
}

/// Runs `script` in the cache as the co-tenant (UID 1000, GID 0).
#[track_caller]
fn cotenant(cache: &Path, script: &str) {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cache)
        .uid(COTENANT)
        .gid(0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "co-tenant `{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory only root may enter, holding three files of root's.
fn root_only(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir(dir).unwrap();
    for name in ["a", "b", "c"] {
        fs::write(dir.join(name), name.repeat(100)).unwrap();
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    dir.to_path_buf()
}

#[track_caller]
fn untouched(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{} was chmodded", dir.display());
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"], "{}", dir.display());
    for name in ["a", "b", "c"] {
        assert_eq!(
            fs::read(dir.join(name)).unwrap(),
            name.repeat(100).as_bytes()
        );
    }
}

/// A second, small model (`models/other:v1`); its reference.
fn other_model(reg: &Registry) -> String {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("other.bin"), vec![7u8; 300_000]).unwrap();
    let uri = format!("{}/models/other:v1", reg.addr);
    reg.ocimodel_push(&[dir.path().to_str().unwrap(), &uri, "--format", "oras"]);
    uri
}

/// Runs `o` with `args`, killing it (and failing) after `limit`; returns
/// the run and how long it took.
fn run_within(
    mut o: Ocimodel,
    args: &[&str],
    limit: std::time::Duration,
) -> (Run, std::time::Duration) {
    let started = std::time::Instant::now();
    let child = o
        .cmd
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let termination = fs::read_to_string(&o.termination_log).unwrap_or_default();
            (
                Run {
                    out: out.unwrap(),
                    termination,
                },
                started.elapsed(),
            )
        }
        Err(_) => {
            // SAFETY: kill(2) on the child this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!(
                "`ocimodel {}` still running after {limit:?}",
                args.join(" ")
            );
        }
    }
}

/// S3-1 (root run): symlinks a co-tenant plants for `blobs/sha256`,
/// `ingest`, `locks/sha256` and `manifests/sha256` make ocimodel chmod,
/// create or delete nothing where they point; the pull still works.
/// Before: the root-only directories became 0775, `sha256/` was created in
/// the `ingest` target, and eviction deleted root's files.
#[test]
fn planted_cache_symlinks_redirect_no_chmod_create_or_delete() {
    let (reg, digest, _, weights) = model();
    let other = other_model(&reg);
    let work = node_dir();
    let cache = work.path().join("cache");
    let first = work.path().join("first");
    cached(&cache)
        .insecure(&reg)
        .pull(&format!("{}/models/big@{digest}", reg.addr), &first)
        .assert_ok();
    let victims: Vec<PathBuf> = ["blobs", "ingest", "locks", "manifests"]
        .iter()
        .map(|n| root_only(&work.path().join(format!("root-only-{n}"))))
        .collect();
    cotenant(
        &cache,
        &format!(
            "mv blobs/sha256 blobs/old && ln -s {} blobs/sha256 && \
             mv ingest ingest.old && ln -s {} ingest && \
             mv locks/sha256 locks/old && ln -s {} locks/sha256 && \
             mv manifests/sha256 manifests/old && ln -s {} manifests/sha256",
            victims[0].display(),
            victims[1].display(),
            victims[2].display(),
            victims[3].display()
        ),
    );
    let second = work.path().join("second");
    cached(&cache)
        .insecure(&reg)
        .env("OCIMODEL_CACHE_MAX", "1")
        .pull(&other, &second)
        .assert_ok();
    Ocimodel::new()
        .run(&["check", second.to_str().unwrap()])
        .assert_ok();
    for v in &victims {
        untouched(v);
    }
    installed(&first, &weights);
}

/// S3-1 as the shipped manifests run it (non-root, GID 0): a co-tenant
/// points `blobs/sha256` at the victim's installed model; the victim's
/// next pull, with a cap, deletes and writes nothing there.
/// Before: model A's weights.bin, config.json and marker were evicted.
#[test]
fn a_planted_blobs_symlink_cannot_evict_the_victims_own_model() {
    use std::os::unix::fs::PermissionsExt;
    const VICTIM: u32 = 1001;
    let (reg, _, _, weights) = model();
    let other = other_model(&reg);
    let work = node_dir();
    let cache = work.path().join("cache");
    let home = work.path().join("victim");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(VICTIM), Some(0)).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    let a = home.join("a");
    let victim = || cached(&cache).insecure(&reg).run_as(VICTIM, 0);
    victim()
        .pull(&format!("{}/models/big:v1", reg.addr), &a)
        .assert_ok();
    let before: Vec<_> = fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    cotenant(
        &cache,
        &format!(
            "mv blobs/sha256 blobs/old && ln -s {} blobs/sha256",
            a.display()
        ),
    );
    victim()
        .env("OCIMODEL_CACHE_MAX", "1")
        .pull(&other, &home.join("b"))
        .assert_ok();
    let after: Vec<_> = fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "entries of the installed model changed");
    installed(&a, &weights);
}

/// S3-3: a FIFO a co-tenant plants as a cached blob is dropped and the blob
/// fetched again, within OCIMODEL_TIMEOUT. Before: the pull hung (0 %)
/// until killed, past its own timeout.
#[test]
fn a_fifo_planted_as_a_cached_blob_is_dropped_not_waited_on() {
    let (reg, digest, blob, weights) = model();
    let work = node_dir();
    let cache = work.path().join("cache");
    let uri = format!("{}/models/big@{digest}", reg.addr);
    cached(&cache)
        .insecure(&reg)
        .pull(&uri, &work.path().join("first"))
        .assert_ok();
    let hex = &blob[7..];
    cotenant(
        &cache,
        &format!("rm blobs/sha256/{hex} && mkfifo blobs/sha256/{hex}"),
    );
    let dest = work.path().join("second");
    let (run, _) = run_within(
        cached(&cache).insecure(&reg).env("OCIMODEL_TIMEOUT", "20"),
        &[&uri, dest.to_str().unwrap()],
        std::time::Duration::from_secs(40),
    );
    run.assert_ok();
    installed(&dest, &weights);
    assert!(
        run.stderr().contains("is not a regular file; dropping it"),
        "{}",
        run.stderr()
    );
    assert!(fs::symlink_metadata(blob_path(&cache, &blob))
        .unwrap()
        .is_file());
    assert_eq!(sha256_file(&blob_path(&cache, &blob)), hex);
}

/// S3-4: cache trouble a co-tenant makes (a directory at the blob's lock or
/// ingest name, a flock held on its lock) costs a download, never the pull.
/// The victim is another UID in group 0, which cannot remove what the
/// co-tenant made. Before: "Is a directory" at once; the held lock failed
/// the pull after OCIMODEL_LOCK_TIMEOUT.
#[test]
fn cache_trouble_falls_back_to_the_network() {
    const VICTIM: u32 = 1001;
    let (reg, _, blob, weights) = model();
    let work = node_dir();
    let cache = work.path().join("cache");
    let uri = format!("{}/models/big:v1", reg.addr);
    cached(&cache)
        .insecure(&reg)
        .pull(&uri, &work.path().join("warm"))
        .assert_ok();
    let hex = &blob[7..];
    let pull = |name: &str| {
        let dest = work.path().join(name);
        let (run, took) = run_within(
            cached(&cache)
                .insecure(&reg)
                .run_as(VICTIM, 0)
                .env("OCIMODEL_LOCK_TIMEOUT", "3"),
            &[&uri, dest.to_str().unwrap()],
            std::time::Duration::from_secs(60),
        );
        run.assert_ok();
        installed(&dest, &weights);
        assert!(
            run.stderr().contains("downloading this blob without it"),
            "{}",
            run.stderr()
        );
        took
    };
    for (name, plant, undo) in [
        (
            "lock-dir",
            format!("mkdir -m 700 locks/sha256/{hex} && touch locks/sha256/{hex}/x"),
            format!("rm -r locks/sha256/{hex}"),
        ),
        (
            "ingest-dir",
            format!("mkdir -m 700 ingest/sha256/{hex} && touch ingest/sha256/{hex}/x"),
            format!("rm -r ingest/sha256/{hex}"),
        ),
    ] {
        cotenant(
            &cache,
            &format!("rm -f blobs/sha256/{hex} locks/sha256/{hex} && {plant}"),
        );
        pull(name);
        cotenant(&cache, &undo);
    }
    cotenant(&cache, &format!("rm -f blobs/sha256/{hex}"));
    let mut holder = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("flock")
            .arg(cache.join("locks/sha256").join(hex))
            .args(["sleep", "120"])
            .uid(COTENANT)
            .gid(0)
            .spawn()
            .unwrap()
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let took = pull("held-lock");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

/// S3-5: a pod without credentials does not get another tenant's private
/// model from the cache; a pod whose own credentials the registry accepts
/// does (asked with a HEAD), and so, with the registry gone or hanging,
/// does a pod presenting a credential a pull from the network used. Cached
/// files are for group 0 only. Before: the pod without credentials
/// installed it (exit 0) and the registry was never asked; blobs were 0664.
#[test]
fn the_cache_serves_a_private_model_only_to_pods_that_may_pull_it() {
    let plain = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("weights.bin"), vec![3u8; 2 << 20]).unwrap();
    let digest = plain.ocimodel_push(&[
        dir.path().to_str().unwrap(),
        &format!("{}/private/m:v1", plain.addr),
        "--format",
        "oras",
    ]);
    let reg = Registry::start_in(
        plain.stop(),
        Auth::Users(vec![
            ("alice".into(), "alice-pw".into()),
            ("bob".into(), "bob-pw".into()),
        ]),
    );
    let work = node_dir();
    let cache = work.path().join("cache");
    let uri = format!("{}/private/m@{digest}", reg.addr);
    let addr = reg.addr.clone();
    let pod = |uid: u32, user: Option<&str>| {
        let o = cached(&cache)
            .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
            .run_as(uid, 0);
        match user {
            Some(u) => o.env(
                "OCIMODEL_DOCKER_CONFIG_JSON",
                docker_config(u, &format!("{u}-pw"), &addr),
            ),
            None => o,
        }
    };
    let dest = |name: &str| work.path().join(name).to_str().unwrap().to_string();
    pod(1000930000, Some("alice"))
        .run(&[&uri, &dest("alice")])
        .assert_ok();
    let blobs_before = reg.log().matches("/blobs/sha256:").count();
    // No credentials: the registry is asked, and says no.
    pod(1000940000, None)
        .run(&[&uri, &dest("nobody")])
        .assert_fails_with(&["requires authentication"]);
    assert!(!work.path().join("nobody/weights.bin").exists());
    // Not for others: files 0660, directories 2770, group 0.
    let blob = fs::read_dir(cache.join("blobs/sha256"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&blob), 0o660);
    for d in ["", "blobs", "blobs/sha256", "manifests", "manifests/sha256"] {
        assert_eq!(mode(&cache.join(d)), 0o2770, "{d}");
    }
    // Other credentials the registry accepts: confirmed, then from the cache.
    let run = pod(1000950000, Some("bob")).run(&[&uri, &dest("bob")]);
    run.assert_ok();
    assert!(
        run.stderr().contains("the registry confirmed"),
        "{}",
        run.stderr()
    );
    assert!(reg.log().contains("\"HEAD /v2/private/m/manifests/sha256:"));
    assert_eq!(
        reg.log().matches("/blobs/sha256:").count(),
        blobs_before,
        "the blobs came from the cache"
    );

    // The registry accepts connections and never answers.
    drop(reg.stop());
    let _hang = hanging_listener(&addr);
    for (uid, user, name) in [(1000930000, "alice", "alice2"), (1000950000, "bob", "bob2")] {
        let (run, _) = run_within(
            pod(uid, Some(user)),
            &[&uri, &dest(name)],
            std::time::Duration::from_secs(60),
        );
        run.assert_ok();
    }
    let (run, took) = run_within(
        pod(1000940000, None),
        &[&uri, &dest("nobody2")],
        std::time::Duration::from_secs(60),
    );
    run.assert_fails_with(&["could not confirm"]);
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

/// A loopback listener on `addr` that accepts connections and never
/// answers (a wedged registry), until dropped.
struct Hanging(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Hanging {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn hanging_listener(addr: &str) -> Hanging {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    Hanging(stop)
}

/// S3-6: OCIMODEL_CACHE_MAX counts partial downloads too, and evicts an
/// abandoned one (a co-tenant's, two days old, nobody writing it). Before:
/// it stayed, and the cache held 8 MiB over the cap.
#[test]
fn cache_max_counts_and_evicts_abandoned_partials() {
    let (reg, _, _, _) = model();
    let other = other_model(&reg);
    let work = node_dir();
    let cache = work.path().join("cache");
    cached(&cache)
        .insecure(&reg)
        .pull(&other, &work.path().join("warm"))
        .assert_ok();
    let hex = sha256_hex(b"abandoned");
    cotenant(
        &cache,
        &format!(
            "head -c 8388608 /dev/zero > ingest/sha256/{hex} && touch -d '2 days ago' ingest/sha256/{hex}"
        ),
    );
    cached(&cache)
        .insecure(&reg)
        .env("OCIMODEL_CACHE_MAX", "1M")
        .pull(
            &format!("{}/models/big:v1", reg.addr),
            &work.path().join("big"),
        )
        .assert_ok();
    assert!(
        !cache.join("ingest/sha256").join(&hex).exists(),
        "the abandoned partial is still there"
    );
}

/// A manifest a tag resolved to is cached by its digest, so a digest
/// reference installs with the registry gone (refusing connections) after
/// pods pulled the tag. Before: it failed after 16-22 s.
#[test]
fn a_digest_installs_offline_after_pods_pulled_its_tag() {
    let (reg, digest, _, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let addr = cache_tag_then_stop(&cache, reg, &work.path().join("tag"));
    let dest = work.path().join("offline");
    let (run, took) = run_within(
        cached(&cache).env("OCIMODEL_INSECURE_REGISTRIES", &addr),
        &[
            &format!("{addr}/models/big@{digest}"),
            dest.to_str().unwrap(),
        ],
        std::time::Duration::from_secs(60),
    );
    run.assert_ok();
    installed(&dest, &weights);
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

/// A registry that accepts connections and never answers does not hold a
/// cached digest pull: it installs from the cache within 120 s. Before: it
/// ran past 5 minutes (here: killed at 150 s).
#[test]
fn a_registry_that_never_answers_does_not_hold_a_cached_digest_pull() {
    let (reg, digest, _, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let addr = cache_tag_then_stop(&cache, reg, &work.path().join("tag"));
    let _hang = hanging_listener(&addr);
    let dest = work.path().join("offline");
    let (run, took) = run_within(
        cached(&cache).env("OCIMODEL_INSECURE_REGISTRIES", &addr),
        &[
            &format!("{addr}/models/big@{digest}"),
            dest.to_str().unwrap(),
        ],
        std::time::Duration::from_secs(150),
    );
    run.assert_ok();
    installed(&dest, &weights);
    assert!(took < std::time::Duration::from_secs(120), "{took:?}");
}
