//! Sidecar mode: probes across an install, metrics, retries, SIGTERM during a
//! slow pull, and `ocimodel check`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Sidecar {
    child: Child,
    addr: String,
    termination_log: PathBuf,
    _harness: Ocimodel,
}

impl Sidecar {
    /// Starts `ocimodel URI DEST` with OCIMODEL_MODE=sidecar (the form a
    /// KServe-fixed argument list takes), plus `env`.
    fn start(uri: &str, dest: &Path, env: &[(&str, &str)]) -> Sidecar {
        let s = Sidecar::spawn(uri, dest, env);
        s.wait_for(|| s.try_get("/livez").is_some(), "the server to listen");
        s
    }

    fn spawn(uri: &str, dest: &Path, env: &[(&str, &str)]) -> Sidecar {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut harness = Ocimodel::new()
            .env("OCIMODEL_MODE", "sidecar")
            .env("OCIMODEL_LISTEN", &addr)
            .envs(env);
        // Retries are the sidecar's own business here.
        harness.cmd.env_remove("OCIMODEL_RETRIES");
        harness
            .cmd
            .args([uri, dest.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = harness.cmd.spawn().unwrap();
        Sidecar {
            child,
            addr,
            termination_log: harness.termination_log.clone(),
            _harness: harness,
        }
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        std::net::TcpStream::connect(&self.addr).ok()?;
        let r = http_get(&self.addr, path, &[]);
        Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).expect("sidecar answers")
    }

    fn wait_for(&self, mut cond: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}");
    }

    fn terminate(mut self) -> (i32, Duration, String) {
        let start = Instant::now();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            start.elapsed(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn readiness_follows_the_install_and_metrics_count_it() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (_, writer) = slow_layout(&layout, 4, Duration::from_millis(400));
    let dest = work.path().join("models");
    let uri = format!("oci-layout://{}", layout.display());
    let s = Sidecar::start(&uri, &dest, &[]);

    let (code, body) = s.get("/readyz");
    assert_eq!(code, 503, "not ready while pulling: {body}");
    assert!(body.contains("pulling"), "{body}");
    assert_eq!(s.get("/startupz").0, 503);
    assert_eq!(s.get("/livez").0, 200);
    s.wait_for(|| s.get("/readyz").0 == 200, "readiness");
    writer.join().unwrap();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert_eq!(s.get("/startupz").0, 200);
    assert_eq!(s.get("/nope").0, 404);

    let (code, metrics) = s.get("/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &metrics,
            "ocimodel_bytes_fetched_total{source=\"oci-layout\"}"
        ),
        Some(421403.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "ocimodel_blobs_fetched_total{source=\"oci-layout\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("ocimodel_pull_attempts_total{{model=\"{uri}\",result=\"success\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "ocimodel_pull_duration_seconds_count{result=\"success\"}"
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &metrics,
            "ocimodel_pull_duration_seconds_sum{result=\"success\"}"
        )
        .unwrap()
            > 1.0
    );
    assert_eq!(
        metric(
            &metrics,
            &format!(
                "ocimodel_model_ready{{model=\"{uri}\",dest=\"{}\"}}",
                dest.display()
            )
        ),
        Some(1.0)
    );
    assert!(
        metrics.contains("ocimodel_build_info{version=\""),
        "{metrics}"
    );

    // The model disappears: not ready any more, and the body says why.
    fs::remove_file(dest.join(MNIST_TITLE)).unwrap();
    let (code, body) = s.get("/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("mnist.onnx is missing"), "{body}");
    assert!(s.get("/metrics").1.contains(&format!(
        "ocimodel_model_ready{{model=\"{uri}\",dest=\"{}\"}} 0",
        dest.display()
    )));

    let (code, took, _) = s.terminate();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn sigterm_during_a_slow_pull_exits_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (_, _writer) = slow_layout(&layout, 20, Duration::from_millis(500));
    let dest = work.path().join("models");
    let s = Sidecar::start(&format!("oci-layout://{}", layout.display()), &dest, &[]);
    // Under way: the first bytes of the model are in a staged file.
    fn has_bytes(dir: &Path) -> bool {
        fs::read_dir(dir).is_ok_and(|d| {
            d.flatten().any(|e| match e.file_type() {
                Ok(t) if t.is_dir() => has_bytes(&e.path()),
                Ok(t) if t.is_file() => e.metadata().is_ok_and(|m| m.len() > 0),
                _ => false,
            })
        })
    }
    s.wait_for(
        || {
            fs::read_dir(dest.join(".ocimodel")).is_ok_and(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("staging-") && has_bytes(&e.path())
                })
            })
        },
        "the first bytes of the model in staging",
    );
    let (code, took, stderr) = s.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let left: Vec<String> = fs::read_dir(dest.join(".ocimodel"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock")
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
    assert!(model_files(&dest).is_empty());
}

#[test]
fn failed_pulls_are_retried_and_reported() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    let uri = format!("{}/models/mnist:v1", reg.addr);
    let s = Sidecar::start(&uri, &dest, &[("OCIMODEL_INSECURE_REGISTRIES", &reg.addr)]);
    s.wait_for(|| s.get("/readyz").1.contains("failed"), "a failed attempt");
    let (code, body) = s.get("/readyz");
    assert_eq!(code, 503);
    assert!(
        body.contains("not found") && body.contains("retrying"),
        "{body}"
    );
    let metrics = s.get("/metrics").1;
    assert!(
        metric(
            &metrics,
            &format!("ocimodel_pull_attempts_total{{model=\"{uri}\",result=\"failure\"}}")
        )
        .unwrap()
            >= 1.0
    );

    // The model shows up: the next attempt installs it, without a restart.
    reg.oras_push_mnist("models/mnist:v1");
    s.wait_for(|| s.get("/readyz").0 == 200, "readiness after the push");
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert_eq!(s.terminate().0, 0);
}

#[test]
fn exit_on_failure_when_asked() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let uri = format!("{}/models/absent:v1", reg.addr);
    let s = Sidecar::spawn(
        &uri,
        &work.path().join("m"),
        &[
            ("OCIMODEL_INSECURE_REGISTRIES", &reg.addr),
            ("OCIMODEL_SIDECAR_EXIT_ON_FAILURE", "true"),
        ],
    );
    let log = s.termination_log.clone();
    let mut s = s;
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let line = fs::read_to_string(log).unwrap();
    assert!(line.contains(&uri) && line.contains("not found"), "{line}");
}

#[test]
fn check_rehashes_the_installed_tree() {
    let reg = Registry::start(Auth::None);
    let (layout, _) = modelcar_layout(false);
    reg.skopeo_push(layout.path(), "v1", "models/car:v1");
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    reg.pull("models/car:v1", &dest).assert_ok();

    let check = |d: &Path| {
        let r = Ocimodel::new().run(&["check", d.to_str().unwrap()]);
        (r.code(), r.stdout())
    };
    let (code, out) = check(&dest);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok, 8 files match"), "{out}");

    // Same size, different bytes: only a re-hash sees it.
    let mut cfg = fs::read(dest.join("config.json")).unwrap();
    cfg[0] = b'[';
    fs::write(dest.join("config.json"), &cfg).unwrap();
    fs::write(dest.join("extra/stray.bin"), b"x").unwrap();
    fs::remove_file(dest.join("latest")).unwrap();
    let (code, out) = check(&dest);
    assert_eq!(code, 1);
    assert!(out.contains("3 difference(s)"), "{out}");
    assert!(out.contains("config.json: expected 32 bytes"), "{out}");
    assert!(
        out.contains("extra/stray.bin: not part of the installed model"),
        "{out}"
    );
    assert!(out.contains("latest: symlink missing"), "{out}");

    let (code, out) = check(work.path());
    assert_eq!(code, 1);
    assert!(out.contains("has no completion marker"), "{out}");
}

/// F5: the probe port is open to the cluster, so it is bounded. Connections
/// that never finish their headers (slowloris) are closed within the header
/// timeout, more than the connection cap wait rather than pile up, and
/// /livez keeps answering throughout.
#[test]
fn the_probe_port_sheds_slow_and_idle_connections() {
    use std::io::{Read, Write};
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    let uri = format!(
        "oci-layout://{}",
        repo_root().join("examples/mnist").display()
    );
    let s = Sidecar::start(&uri, &dest, &[]);
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
        c.write_all(b"GET /livez HTTP/1.1\r\nX-Slow: ").unwrap();
        slow.push(c);
    }
    let started = Instant::now();
    // Past the cap, /livez still answers once the slow ones are shed.
    let (status, body) = s.get("/livez");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "/livez took {:?}",
        started.elapsed()
    );
    // Every slow connection is closed by the server, not held forever.
    for mut c in slow {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 512];
        let closed = loop {
            match c.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // a 408 or similar, then the close
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(
            closed,
            "a slow connection was still open after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A corrupted blob counts as a verification failure (found by the error's
/// type, not its wording); a missing model does not.
#[test]
fn corrupted_content_counts_as_a_verification_failure() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    copy_dir(&repo_root().join("examples/mnist"), &layout);
    let blob = layout.join("blobs/sha256").join(MNIST_SHA256);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let uri = format!("oci-layout://{}", layout.display());
    let s = Sidecar::start(&uri, &work.path().join("m"), &[]);
    s.wait_for(|| s.get("/readyz").1.contains("failed"), "a failed attempt");
    let metrics = s.get("/metrics").1;
    let counted = metric(
        &metrics,
        &format!("ocimodel_verification_failures_total{{model=\"{uri}\"}}"),
    );
    assert!(counted.unwrap_or(0.0) >= 1.0, "{metrics}");
    assert!(s.get("/readyz").1.contains("digest mismatch"));
    assert_eq!(s.terminate().0, 0);
}

/// S3-13: a client that holds about 200 idle connections open (re-opening
/// each one the server closes) does not starve the probes: every /livez,
/// asked as a kubelet asks it (a fresh connection, a 2 s timeout), is
/// answered while the port is flooded.
#[test]
fn probes_are_answered_while_idle_connections_flood_the_port() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let work = tempfile::tempdir().unwrap();
    let uri = format!(
        "oci-layout://{}",
        repo_root().join("examples/mnist").display()
    );
    let s = Sidecar::start(&uri, &work.path().join("m"), &[]);
    let addr: std::net::SocketAddr = s.addr.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = stop.clone();
    let flooder = std::thread::spawn(move || {
        let open = || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok();
        let mut held: Vec<Option<TcpStream>> = (0..200).map(|_| open()).collect();
        while !flooding.load(Ordering::Relaxed) {
            for slot in held.iter_mut() {
                let closed = match slot {
                    None => true,
                    Some(c) => {
                        c.set_nonblocking(true).unwrap();
                        let mut b = [0u8; 64];
                        // Open and idle: nothing to read yet.
                        !matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    }
                };
                if closed {
                    *slot = open();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Let the flood fill the slots and the backlog.
    std::thread::sleep(Duration::from_secs(2));
    let probe = || -> Option<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        c.write_all(b"GET /livez HTTP/1.1\r\nHost: probe\r\n\r\n")
            .ok()?;
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    let mut answers = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let answer = probe();
        answers.push((answer, started.elapsed()));
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    for (answer, took) in &answers {
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.starts_with("HTTP/1.1 200") && a.ends_with("ok\n")),
            "a probe went unanswered ({took:?}): {answers:?}"
        );
    }
    assert_eq!(s.terminate().0, 0);
}
