//! Using the whole node: the work of a many-blob install is spread over
//! threads. Sampled from `/proc/PID/task/*/stat` while the binary runs (user
//! CPU time per thread, which load on the machine does not inflate), so it
//! shows on 2 cores what caps the rate on 16: one thread doing everyone's
//! hashing. User time, not system time: hashing is all user time, while the
//! kernel's copy of writes into the page cache (system time) varies tenfold
//! with the state of this VM's memory and is spread over the writers anyway.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use common::*;

/// Writes `n` shards of `size` bytes of distinct, incompressible-looking
/// content; their paths.
fn shards(dir: &Path, n: usize, size: usize) -> Vec<std::path::PathBuf> {
    fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let path = dir.join(format!("model-{:05}-of-{n:05}.safetensors", i + 1));
            let mut f = fs::File::create(&path).unwrap();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..size >> 20 {
                for w in buf.chunks_exact_mut(8) {
                    // xorshift64*
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    w.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
                }
                f.write_all(&buf).unwrap();
            }
            path
        })
        .collect()
}

#[test]
fn an_eight_shard_install_hashes_on_many_threads() {
    let work = tempfile::tempdir().unwrap();
    let files = shards(&work.path().join("model"), 8, 64 << 20);
    let uri = push_layout(
        &work.path().join("model"),
        &work.path().join("layout"),
        "oras",
    );
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
    let sha_seconds = sha256_cpu_seconds(bytes.iter().map(Vec::as_slice));

    let dest = work.path().join("dest");
    let mut run = Ocimodel::new();
    run.cmd
        .args([&uri, dest.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = run.cmd.spawn().unwrap();
    let (status, seen) = wait_sampling_threads(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    for f in &files {
        let installed = dest.join(f.file_name().unwrap());
        assert_eq!(sha256_file(&installed), sha256_file(f), "{}", f.display());
    }

    let mut threads: Vec<(String, f64)> = seen.into_values().collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let busiest = threads[0].1;
    let total: f64 = threads.iter().map(|t| t.1).sum();
    eprintln!(
        "sha256 of all bytes on one core: {sha_seconds:.3}s; ocimodel's user time: all threads {total:.2}s; the busiest: {:?}",
        &threads[..threads.len().min(12)]
    );
    assert!(
        busiest <= sha_seconds / 3.0,
        "one thread did {busiest:.2}s of user CPU work, more than a third of the {sha_seconds:.3}s one core needs to hash all 8 shards: the hashing is not spread over the blobs' threads"
    );
}

/// A new cgroup with a CPU quota of half a CPU (v1's `cpu` controller or
/// v2's `cpu.max`, whichever this machine mounts); its `cgroup.procs`.
/// Removed when the guard drops, after its processes have exited.
struct Quota(std::path::PathBuf);

impl Quota {
    fn half_a_cpu() -> Quota {
        let name = format!("ocimodel-test-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let dir = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
            fs::write(dir.join("cpu.cfs_quota_us"), "50000").unwrap();
            dir
        } else {
            let controllers = fs::read_to_string(v2.join("cgroup.controllers"))
                .expect("neither cgroup v1's cpu controller nor cgroup v2 is mounted");
            assert!(
                controllers.split_whitespace().any(|c| c == "cpu"),
                "cgroup v2 without the cpu controller: {controllers}"
            );
            let _ = fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            let dir = v2.join(&name);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("cpu.max"), "50000 100000").unwrap();
            dir
        };
        Quota(dir)
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// KServe gives an initializer one CPU or less: the binary reads its
/// cgroup's quota and sizes its busy threads to it (the log says how many).
#[test]
fn a_cpu_quota_sizes_the_work_to_it() {
    require_root("making a cgroup with a CPU quota");
    let work = tempfile::tempdir().unwrap();
    let files = shards(&work.path().join("model"), 4, 4 << 20);
    let uri = push_layout(
        &work.path().join("model"),
        &work.path().join("layout"),
        "oras",
    );
    let dest = work.path().join("dest");
    let quota = Quota::half_a_cpu();
    let tl = work.path().join("termination-log");
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#,
            "sh",
            quota.0.to_str().unwrap(),
            env!("CARGO_BIN_EXE_ocimodel"),
            &uri,
            dest.to_str().unwrap(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", work.path())
        .env("OCIMODEL_TERMINATION_LOG", &tl)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let pulling = stderr
        .lines()
        .find(|l| l.contains("pulling"))
        .unwrap_or_else(|| panic!("no 'pulling' line:\n{stderr}"));
    assert!(pulling.contains("cpus=1"), "{pulling}");
    for f in &files {
        assert_eq!(
            sha256_file(&dest.join(f.file_name().unwrap())),
            sha256_file(f)
        );
    }
    // Outside the cgroup, the same binary sees this machine's CPUs.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let run = Ocimodel::new().pull(&uri, &work.path().join("dest2"));
    run.assert_ok();
    assert!(
        run.stderr().contains(&format!("cpus={cpus}")),
        "{}",
        run.stderr()
    );
}
