//! Network faults, injected by a small proxy between ocimodel and the real
//! registry: a blob cut off mid-stream (resumed with `Range`, or restarted
//! when the registry ignores it), 503/429 with and without `Retry-After`,
//! retries running out, 404 not retried, and the overall deadline.

mod common;
#[path = "support/static_binary.rs"]
mod static_binary;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// What the proxy does to blob requests.
#[derive(Clone, Copy)]
enum Fault {
    /// Close the connection after this many response bytes, `n` times.
    Cut { after: usize },
    /// Like `Cut`, and strip `Range` so the registry resends everything.
    CutAndIgnoreRange { after: usize },
    /// Answer with this status instead of forwarding, `n` times.
    Status { code: u16, retry_after: Option<u64> },
    /// Hold the request back this long before forwarding it, `n` times.
    Delay(Duration),
}

struct Proxy {
    addr: String,
    /// Request heads seen (first line and any Range header).
    requests: Arc<Mutex<Vec<String>>>,
    injected: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(upstream: &str, fault: Fault, times: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let injected = Arc::new(AtomicUsize::new(0));
        let (upstream, log, count) = (upstream.to_string(), requests.clone(), injected.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, log, count) = (upstream.clone(), log.clone(), count.clone());
                std::thread::spawn(move || relay(client, &upstream, fault, times, &log, &count));
            }
        });
        Proxy {
            addr,
            requests,
            injected,
        }
    }

    fn saw(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains(needle))
            .count()
    }
}

/// One client connection: requests are read head by head (pulls send no
/// bodies) and forwarded; responses are copied back, faults permitting.
fn relay(
    client: TcpStream,
    upstream: &str,
    fault: Fault,
    times: usize,
    log: &Mutex<Vec<String>>,
    count: &AtomicUsize,
) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut to_server = server.try_clone().unwrap();
    let mut to_client = client.try_clone().unwrap();
    // Server → client copier, which may cut the stream.
    let cut_after: Arc<Mutex<Option<usize>>> = Arc::default();
    let copier = {
        let (mut from_server, mut to_client, cut_after) = (
            server.try_clone().unwrap(),
            client.try_clone().unwrap(),
            cut_after.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            let mut sent = 0usize;
            loop {
                let n = match from_server.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let limit = *cut_after.lock().unwrap();
                if let Some(limit) = limit {
                    if sent + n >= limit {
                        let _ = to_client.write_all(&buf[..limit.saturating_sub(sent)]);
                        let _ = to_client.shutdown(Shutdown::Both);
                        let _ = from_server.shutdown(Shutdown::Both);
                        break;
                    }
                }
                if to_client.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n;
            }
        })
    };
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = server.shutdown(Shutdown::Both);
                    let _ = copier.join();
                    return;
                }
                Ok(_) => {}
            }
            let end = line == "\r\n";
            head.push(line);
            if end {
                break;
            }
        }
        let first = head[0].clone();
        let range = head
            .iter()
            .find(|l| l.to_ascii_lowercase().starts_with("range:"))
            .cloned()
            .unwrap_or_default();
        log.lock()
            .unwrap()
            .push(format!("{} {}", first.trim(), range.trim()));
        let is_blob = first.starts_with("GET ") && first.contains("/blobs/sha256:");
        let inject = is_blob && count.load(Ordering::SeqCst) < times;
        if inject {
            count.fetch_add(1, Ordering::SeqCst);
        }
        match fault {
            Fault::Status { code, retry_after } if inject => {
                let extra = retry_after
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                let _ = to_client.write_all(format!("HTTP/1.1 {code} Busy\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
            Fault::Cut { after } if inject => *cut_after.lock().unwrap() = Some(after),
            Fault::CutAndIgnoreRange { after } if inject => {
                *cut_after.lock().unwrap() = Some(after)
            }
            Fault::Delay(d) if inject => std::thread::sleep(d),
            _ => {}
        }
        let strip_range = matches!(fault, Fault::CutAndIgnoreRange { .. });
        for line in &head {
            if strip_range && line.to_ascii_lowercase().starts_with("range:") {
                continue;
            }
            if to_server.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    }
}

fn setup() -> (Registry, String) {
    let (reg, digest) = Registry::with_mnist();
    (reg, digest)
}

fn pull_via(proxy: &Proxy, dest: &std::path::Path, env: &[(&str, &str)]) -> Run {
    let o = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &proxy.addr)
        .env("OCIMODEL_RETRIES", "5")
        .envs(env);
    o.pull(&format!("{}/models/mnist:v1", proxy.addr), dest)
}

#[test]
fn a_cut_blob_resumes_with_range() {
    let (reg, _) = setup();
    let proxy = Proxy::start(&reg.addr, Fault::Cut { after: 150_000 }, 2);
    let dest = tempfile::tempdir().unwrap();
    let run = pull_via(&proxy, dest.path(), &[]);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.path().join(MNIST_TITLE)), MNIST_SHA256);
    assert_eq!(
        proxy.injected.load(Ordering::SeqCst),
        2,
        "two cuts injected"
    );
    assert!(
        proxy.saw("range: bytes=") >= 2,
        "resumed with Range: {:?}",
        proxy.requests.lock().unwrap()
    );
    assert!(run.stderr().contains("resuming"), "{}", run.stderr());
}

#[test]
fn a_cut_blob_restarts_when_range_is_ignored() {
    let (reg, _) = setup();
    let proxy = Proxy::start(&reg.addr, Fault::CutAndIgnoreRange { after: 200_000 }, 1);
    let dest = tempfile::tempdir().unwrap();
    let run = pull_via(&proxy, dest.path(), &[]);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.path().join(MNIST_TITLE)), MNIST_SHA256);
    assert!(run.stderr().contains("ignored Range"), "{}", run.stderr());
}

#[test]
fn busy_registry_is_retried_honouring_retry_after() {
    let (reg, _) = setup();
    let proxy = Proxy::start(
        &reg.addr,
        Fault::Status {
            code: 503,
            retry_after: Some(1),
        },
        2,
    );
    let dest = tempfile::tempdir().unwrap();
    let started = Instant::now();
    pull_via(&proxy, dest.path(), &[]).assert_ok();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.injected.load(Ordering::SeqCst), 2);
    assert_eq!(sha256_file(&dest.path().join(MNIST_TITLE)), MNIST_SHA256);

    let proxy = Proxy::start(
        &reg.addr,
        Fault::Status {
            code: 429,
            retry_after: None,
        },
        1,
    );
    let dest = tempfile::tempdir().unwrap();
    pull_via(&proxy, dest.path(), &[]).assert_ok();
}

#[test]
fn retries_run_out_with_a_clear_line() {
    let (reg, _) = setup();
    let proxy = Proxy::start(
        &reg.addr,
        Fault::Status {
            code: 502,
            retry_after: Some(0),
        },
        usize::MAX,
    );
    let dest = tempfile::tempdir().unwrap();
    pull_via(&proxy, dest.path(), &[("OCIMODEL_RETRIES", "2")]).assert_fails_with(&["502", "blob"]);
    assert_eq!(proxy.saw("/blobs/sha256:"), 3, "one try and two retries");
    assert!(model_files(dest.path()).is_empty());
}

#[test]
fn not_found_is_not_retried() {
    let (reg, _) = setup();
    let proxy = Proxy::start(&reg.addr, Fault::Delay(Duration::ZERO), 0);
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &proxy.addr)
        .env("OCIMODEL_RETRIES", "5")
        .pull(&format!("{}/models/mnist:nope", proxy.addr), dest.path())
        .assert_fails_with(&["not found"]);
    assert_eq!(proxy.saw("/manifests/nope"), 1);
}

#[test]
fn the_overall_deadline_stops_a_slow_pull() {
    let (reg, _) = setup();
    let proxy = Proxy::start(&reg.addr, Fault::Delay(Duration::from_secs(5)), usize::MAX);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    let started = Instant::now();
    pull_via(&proxy, &dest, &[("OCIMODEL_TIMEOUT", "1")])
        .assert_fails_with(&["gave up after 1s (OCIMODEL_TIMEOUT)"]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(model_files(&dest).is_empty());
    // The run made DEST, so the failed pull takes it back, staging and all.
    assert!(!dest.exists(), "{} left behind", dest.display());
}

/// A token that expires mid-pull: the issuer says it lasts 300 s but signs
/// it for 2 s, and the proxy holds the blob request for 3 s. The registry
/// answers 401; ocimodel answers the new challenge once and completes.
#[test]
fn an_expired_token_is_renewed_once() {
    let issuer = TokenServer::start_with(|repo| repo.to_string(), 2);
    let reg = registry_with(Auth::Token {
        realm: issuer.realm.clone(),
        cert_pem: issuer.cert.clone(),
    });
    let proxy = Proxy::start(&reg.addr, Fault::Delay(Duration::from_secs(3)), 1);
    let dest = tempfile::tempdir().unwrap();
    pull_via(
        &proxy,
        dest.path(),
        &[(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            &docker_config(USER, PASSWORD, &proxy.addr),
        )],
    )
    .assert_ok();
    assert_eq!(sha256_file(&dest.path().join(MNIST_TITLE)), MNIST_SHA256);
    assert_eq!(
        issuer.requests.lock().unwrap().len(),
        2,
        "one token, then one renewal after the 401"
    );
    assert_eq!(
        proxy.saw("/blobs/sha256:"),
        2,
        "the blob request, refused, then repeated with the new token"
    );
}

/// A registry address that accepts no connections (a listener whose accept
/// queue is full drops new SYNs, so connecting hangs, as behind a firewall
/// that drops packets): the connect timeout fires and says so.
#[test]
fn connect_timeout_is_reported() {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: re-listening on a valid listening socket only shrinks its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let addr = listener.local_addr().unwrap().to_string();
    // Fill the accept queue; once full, further connects hang.
    let mut held = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(300))
    {
        held.push(s);
        assert!(held.len() < 64, "the accept queue never filled");
    }
    let dest = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .env("OCIMODEL_CONNECT_TIMEOUT", "1")
        .env("OCIMODEL_RETRIES", "0")
        .pull(&format!("{addr}/models/mnist:v1"), &dest.path().join("m"));
    run.assert_fails_with(&[&format!(
        "cannot connect to registry {addr} within 1s (OCIMODEL_CONNECT_TIMEOUT)"
    )]);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the connect timeout did not bound the attempt"
    );
    assert!(model_files(&dest.path().join("m")).is_empty());
    drop(held);
}

/// A name that does not resolve: one clear line. Run in a network namespace
/// of its own and an empty root (no resolv.conf: glibc asks 127.0.0.1:53,
/// where nothing listens), so no query leaves loopback.
#[test]
fn dns_failure_is_reported() {
    require_root("unshare and chroot need root");
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(
        static_binary::static_ocimodel(),
        root.path().join("ocimodel"),
    )
    .unwrap();
    let out = std::process::Command::new("/usr/bin/unshare")
        .args(["--net", "/usr/sbin/chroot"])
        .arg(root.path())
        .args([
            "/ocimodel",
            "ocimodel://registry.invalid/models/mnist:v1",
            "/mnt/models",
        ])
        .env_clear()
        .env("OCIMODEL_RETRIES", "0")
        .env("OCIMODEL_TERMINATION_LOG", "/termination-log")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = std::fs::read_to_string(root.path().join("termination-log")).unwrap();
    assert!(
        line.contains("cannot resolve registry host registry.invalid"),
        "{line}"
    );
    assert_eq!(line.trim_end().lines().count(), 1);
    assert!(model_files(&root.path().join("mnt/models")).is_empty());
}
